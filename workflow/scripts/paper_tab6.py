"""Snakemake script: the paper's Table 6 (LDS of WFD and its ablations), the paper's columns beside ours."""

from tarot_select.experiments import stages
from tarot_select.experiments.report import paper

with stages.stage(snakemake.log[0], snakemake.threads):
    paper.write_tab6(dict(snakemake.params.lds), snakemake.params.paper, snakemake.output[0])
