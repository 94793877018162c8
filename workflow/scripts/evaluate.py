"""Snakemake script: evaluate a downstream model and write its run record."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.evaluate_model(
        stages.job_task(snakemake.params.job, snakemake.threads),
        snakemake.input.data,
        snakemake.input.model,
        snakemake.input.selection,
        int(snakemake.wildcards.seed),
        snakemake.output.record,
    )
