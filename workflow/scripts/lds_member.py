"""Snakemake script: one LDS ensemble member (full-data model, output-gradient features)."""

from tarot_select import lds_pipeline, pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    lds_pipeline.lds_model_features(
        pipeline.load_task(snakemake.config, snakemake.wildcards.task),
        snakemake.input.data,
        member=int(snakemake.wildcards.member),
        features=snakemake.params.features,
        out_path=snakemake.output.features,
        device=pipeline.resolve_device(snakemake.params.device),
    )
