"""Snakemake script: the LDS subset masks (drawn, or the user's file)."""

from tarot_select import lds_pipeline, pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    lds = snakemake.params.lds
    lds_pipeline.lds_masks(
        pipeline.load_task(snakemake.config, snakemake.wildcards.task),
        snakemake.input.data,
        n_subsets=int(lds["subsets"]),
        fraction=float(lds["fraction"]),
        seed=int(snakemake.params.seed),
        out_path=snakemake.output.masks,
        external=snakemake.input.external or None,
    )
