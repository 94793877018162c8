"""Snakemake script: concatenate the shards of a split, in order."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.gather_features(list(snakemake.input.shards), snakemake.output.features)
