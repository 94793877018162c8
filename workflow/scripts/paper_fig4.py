"""Snakemake script: the paper's Fig. 4 (LDS of WFD and TRAK against the ensemble size)."""

from tarot_select.experiments import stages
from tarot_select.experiments.report import paper

with stages.stage(snakemake.log[0], snakemake.threads):
    paper.plot_fig4(dict(snakemake.params.lds), snakemake.params.paper, snakemake.output[0])
