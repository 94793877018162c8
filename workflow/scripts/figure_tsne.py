"""Snakemake script: t-SNE of the un-whitened gradients, each method's selection against the
targets, candidates coloured by source (paper Fig. 6)."""

from tarot_select.experiments import report, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    report.tsne.plot_task_tsne(
        snakemake.input.candidates,
        snakemake.input.targets,
        list(snakemake.input.selections),
        snakemake.output[0],
        data_dir=snakemake.input.data,
        job=snakemake.params.job,
        combine=snakemake.params.combine,
        seed=snakemake.params.seed,
        max_points=snakemake.params.max_points,
        title=f"{snakemake.wildcards.task}: selections in the pool (t-SNE of projected gradients, not whitened)",
    )
