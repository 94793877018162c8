"""Snakemake script: the paper's Table 2 (instruction tuning), the paper's columns beside ours."""

from tarot_select.experiments import stages
from tarot_select.experiments.report import paper

with stages.stage(snakemake.log[0], snakemake.threads):
    paper.write_tab2(dict(snakemake.params.units), snakemake.params.paper, snakemake.output[0])
