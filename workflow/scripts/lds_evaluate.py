"""Snakemake script: LDS of every attribution method and ensemble size."""

from tarot_select.experiments import lds_stages, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    lds = snakemake.params.lds
    lds_stages.lds_evaluate(
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
