"""Snakemake script: whiten candidates and targets jointly (WFD features)."""

from tarot_select import pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    w = snakemake.params.whitening
    pipeline.whiten_features(
        snakemake.input.candidates,
        snakemake.input.targets,
        snakemake.output.candidates,
        snakemake.output.targets,
        method=w["method"],
        normalize=w["normalize"],
        eps=w["eps"],
        stats=list(snakemake.input.stats),
        out_neighbors=snakemake.output.neighbors,
        neighbors_k=w["neighbors"],
    )
