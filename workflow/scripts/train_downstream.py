"""Snakemake script: train the downstream model from scratch on a selection."""

from tarot_select import pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = pipeline.load_task(snakemake.config, snakemake.wildcards.task)
    pipeline.train_downstream(
        task, snakemake.input.data, snakemake.input.selection, int(snakemake.wildcards.seed), snakemake.output.model
    )
