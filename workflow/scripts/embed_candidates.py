"""Snakemake script: Influence Distillation's JVP embeddings of every candidate of a pool."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.embed_candidates(
        stages.job_task(snakemake.params.job, snakemake.threads),
        snakemake.input.data,
        snakemake.input.proxy,
        snakemake.output.features,
        snakemake.params.settings,
    )
