"""Snakemake script: LDS of every method at every ensemble size."""

from tarot_select import lds_pipeline, pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    lds = snakemake.params.lds
    lds_pipeline.lds_evaluate(
        snakemake.input.masks,
        snakemake.input.outputs,
        list(snakemake.input.members),
        methods=lds["methods"],
        ensembles=lds["ensembles"],
        out_path=snakemake.output.scores,
        whitening=lds["whitening"],
        ridge=float(lds["ridge"]),
        eps=float(lds["eps"]),
        n_bootstrap=int(lds["bootstrap"]),
        seed=int(snakemake.params.seed),
    )
