"""Snakemake script: gather the subset models' outputs (or check the user's)."""

from tarot_select.experiments import lds_stages, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    lds_stages.lds_gather_outputs(
        list(snakemake.input.chunks),
        snakemake.input.masks,
        snakemake.output.outputs,
        external=snakemake.input.external or None,
    )
