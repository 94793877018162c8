"""Snakemake script: LDS table and figure of one task."""

from tarot_select.experiments import stages
from tarot_select.experiments.report import lds as lds_report

with stages.stage(snakemake.log[0], snakemake.threads):
    task = snakemake.wildcards.task
    lds_report.write_lds_table(snakemake.input.scores, snakemake.output.csv, snakemake.output.md, task)
    lds_report.plot_lds(snakemake.input.scores, snakemake.output.figure, task)
