"""Snakemake script: t-SNE of target vs selected features per method (paper Fig. 6)."""

from tarot_select.experiments import report, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    report.plot_tsne_files(
        snakemake.input.candidates,
        snakemake.input.targets,
        list(snakemake.input.selections),
        snakemake.output[0],
        seed=snakemake.params.seed,
        max_points=snakemake.params.max_points,
        title=f"{snakemake.wildcards.task}: target vs selected (t-SNE of WFD features)",
    )
