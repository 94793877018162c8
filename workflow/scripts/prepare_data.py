"""Snakemake script: materialise a task's splits."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.prepare_data(stages.job_task(snakemake.params.job, snakemake.threads), snakemake.output[0])
