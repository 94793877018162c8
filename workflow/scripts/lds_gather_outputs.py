"""Snakemake script: join the chunks' outputs (or read the user's outputs file)."""

from tarot_select import lds_pipeline, pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    lds_pipeline.lds_gather_outputs(
        list(snakemake.input.chunks),
        snakemake.input.masks,
        snakemake.output.outputs,
        external=snakemake.input.external or None,
    )
