"""Snakemake script: the paper's Fig. 6 (t-SNE of the segmentation task's selections)."""

from tarot_select.experiments import stages
from tarot_select.experiments.report import paper

with stages.stage(snakemake.log[0], snakemake.threads):
    paper.plot_tsne_exhibit(dict(snakemake.params.tsne), snakemake.params.paper, snakemake.output[0])
