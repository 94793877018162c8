"""Snakemake script: LDS table (csv, md) and figure of a task."""

from tarot_select import lds_report, pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = snakemake.wildcards.task
    lds_report.write_lds_table(snakemake.input.scores, snakemake.output.csv, snakemake.output.md, task)
    lds_report.plot_lds(snakemake.input.scores, snakemake.output.figure, task)
