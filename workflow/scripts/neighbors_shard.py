"""Snakemake script: the nearest WFD candidates of every target within one range of the pool."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.neighbor_shard(
        snakemake.input.candidates,
        snakemake.input.targets,
        snakemake.output[0],
        k=snakemake.params.k,
        shard=int(snakemake.wildcards.shard),
        shards=snakemake.params.shards,
    )
