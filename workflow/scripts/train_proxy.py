"""Snakemake script: train the proxy and save its checkpoints."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    stages.train_proxy(stages.job_task(snakemake.params.job, snakemake.threads), snakemake.input.data, snakemake.output[0])
