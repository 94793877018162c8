"""Snakemake script: train the downstream model from scratch on a selection."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.train_downstream(
        stages.job_task(snakemake.params.job, snakemake.threads),
        snakemake.input.data,
        snakemake.input.selection,
        int(snakemake.wildcards.seed),
        snakemake.output.model,
        repeat=snakemake.params.repeat,
    )
