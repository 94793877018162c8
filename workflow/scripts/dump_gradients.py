"""Snakemake script: projected per-sample gradient features of one shard of a split."""

from tarot_select import pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = pipeline.load_task(snakemake.config, snakemake.wildcards.task)
    split = snakemake.wildcards.split
    pipeline.dump_gradients(
        task,
        snakemake.input.data,
        snakemake.input.proxy,
        split.removesuffix("_adam"),
        snakemake.output.features,
        snakemake.params.features,
        adam=split.endswith("_adam"),
        device=snakemake.params.device,
        shard=int(snakemake.wildcards.shard),
        n_shards=int(snakemake.params.features["shards"]),
        stats_path=snakemake.output.stats,
    )
