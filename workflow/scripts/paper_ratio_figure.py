"""Snakemake script: the paper's Fig. 5 (segmentation) or Fig. 7 (motion): metric vs selected ratio."""

from tarot_select.experiments import stages
from tarot_select.experiments.report import paper

with stages.stage(snakemake.log[0], snakemake.threads):
    paper.plot_ratio_exhibit(
        dict(snakemake.params.units), snakemake.params.paper, snakemake.output[0], snakemake.params.exhibit
    )
