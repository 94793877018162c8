"""Snakemake script: join the shards' neighbour lists into those of the whole pool."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.merge_neighbor_shards(
        list(snakemake.input.parts), snakemake.output[0], k=snakemake.params.k, features=snakemake.input.candidates
    )
