"""Snakemake script: evaluate a downstream model and write its run record."""

from tarot_select import pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = pipeline.load_task(snakemake.config, snakemake.wildcards.task)
    pipeline.evaluate_model(
        task,
        snakemake.input.data,
        snakemake.input.model,
        snakemake.input.selection,
        int(snakemake.wildcards.seed),
        snakemake.output.record,
    )
