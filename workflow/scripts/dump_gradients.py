"""Snakemake script: projected per-sample gradient features of one shard of a split."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    split = snakemake.wildcards.split
    stages.dump_gradients(
        stages.job_task(snakemake.params.job, snakemake.threads),
        snakemake.input.data,
        snakemake.input.proxy,
        split.removesuffix("_adam").removesuffix("_output"),
        snakemake.output.features,
        snakemake.params.features,
        adam=split.endswith("_adam"),
        shard=int(snakemake.wildcards.shard),
        n_shards=int(snakemake.params.features["shards"]),
        stats_path=snakemake.output.stats,
        output=split.endswith("_output"),
        landmarks=snakemake.params.landmarks,
    )
