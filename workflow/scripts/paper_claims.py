"""Snakemake script: claims.md, each of the paper's claims with its verdict on this run."""

from tarot_select.experiments import stages
from tarot_select.experiments.report import paper

with stages.stage(snakemake.log[0], snakemake.threads):
    paper.write_claims(
        dict(snakemake.params.lds), dict(snakemake.params.units), snakemake.params.paper, snakemake.output[0]
    )
