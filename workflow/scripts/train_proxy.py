"""Snakemake script: train the proxy model and save its checkpoints."""

from tarot_select import pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = pipeline.load_task(snakemake.config, snakemake.wildcards.task)
    pipeline.train_proxy(task, snakemake.input.data, snakemake.output[0])
