"""Snakemake script: the LDS subset masks (drawn, or the user's)."""

from tarot_select.experiments import lds_stages, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    job = snakemake.params.job
    lds_stages.lds_masks(
        stages.job_task(job, snakemake.threads),
        snakemake.input.data,
        n_subsets=int(snakemake.params.subsets["subsets"]),
        fraction=float(snakemake.params.subsets["fraction"]),
        seed=int(job["seed"]),
        out_path=snakemake.output.masks,
        external=snakemake.input.external or None,
    )
