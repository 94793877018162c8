"""Snakemake script: materialise a task's splits."""

from tarot_select import pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = pipeline.load_task(snakemake.config, snakemake.wildcards.task)
    pipeline.prepare_data(task, snakemake.output[0])
