"""Snakemake script: one LDS ensemble member (trained model and its output gradients)."""

from tarot_select.experiments import lds_stages, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    lds_stages.lds_model_features(
        stages.job_task(snakemake.params.job, snakemake.threads),
        snakemake.input.data,
        member=int(snakemake.wildcards.member),
        features=snakemake.params.features,
        out_path=snakemake.output.features,
    )
