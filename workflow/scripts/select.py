"""Snakemake script: one selection (a method at a ratio, OTM, or a reference)."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.select_for_job(
        stages.job_task(snakemake.params.job, snakemake.threads),
        snakemake.wildcards.selection,
        snakemake.input,
        snakemake.output.selection,
        snakemake.params.settings,
    )
