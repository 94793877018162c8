"""Snakemake script: concatenate a split's gradient shards in order."""

from tarot_select import pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    pipeline.gather_features(list(snakemake.input.shards), snakemake.output.features)
