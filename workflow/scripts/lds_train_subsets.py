"""Snakemake script: train one chunk of the LDS subset models and record their outputs."""

from tarot_select.experiments import lds_stages, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    lds_stages.lds_train_chunk(
        stages.job_task(snakemake.params.job, snakemake.threads),
        snakemake.input.data,
        snakemake.input.masks,
        chunk=int(snakemake.wildcards.chunk),
        n_chunks=int(snakemake.params.n_chunks),
        out_path=snakemake.output.outputs,
    )
