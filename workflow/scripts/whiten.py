"""Snakemake script: fit the whitening and write the WFD features and neighbour lists."""

from tarot_select.experiments import stages

with stages.stage(snakemake.log[0], snakemake.threads):
    w = snakemake.params.whitening
    stages.whiten_features(
        snakemake.input.candidates,
        snakemake.input.targets,
        snakemake.output.candidates,
        snakemake.output.targets,
        method=w["method"],
        normalize=w["normalize"],
        eps=w["eps"],
        stats=list(snakemake.input.stats),
        out_neighbors=snakemake.output.get("neighbors"),  # absent when a sharded search makes them
        neighbors_k=w["neighbors"],
        combine=snakemake.params.combine,
    )
