"""Snakemake script: t-SNE of target vs selected features per method (paper Fig. 6)."""

from pathlib import Path

from tarot_select import pipeline, report
from tarot_select.io import load_features

with pipeline.stage(snakemake.log[0], snakemake.threads):
    selections = {}
    for csv in snakemake.input.selections:
        indices, _, meta = pipeline.read_selection(csv)
        selections[meta["method"] if meta["method"] == "otm" else Path(csv).stem] = indices
    report.plot_tsne(
        load_features(snakemake.input.targets).array,
        selections,
        load_features(snakemake.input.candidates).array,
        snakemake.output[0],
        seed=snakemake.params.seed,
        max_points=snakemake.params.max_points,
        title=f"{snakemake.wildcards.task}: target vs selected (t-SNE of WFD features)",
    )
