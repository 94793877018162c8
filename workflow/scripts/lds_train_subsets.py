"""Snakemake script: train the models of one chunk of LDS subsets; record their target outputs."""

from tarot_select import lds_pipeline, pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    lds_pipeline.lds_train_chunk(
        pipeline.load_task(snakemake.config, snakemake.wildcards.task),
        snakemake.input.data,
        snakemake.input.masks,
        chunk=int(snakemake.wildcards.chunk),
        n_chunks=int(snakemake.params.n_chunks),
        out_path=snakemake.output.outputs,
    )
