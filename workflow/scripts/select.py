"""Snakemake script: one selection (method at a ratio, OTM, or a reference)."""

from tarot_select import pipeline

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = pipeline.load_task(snakemake.config, snakemake.wildcards.task)
    method, ratio = pipeline.parse_selection(snakemake.wildcards.selection)
    groups = task.load(snakemake.input.data).target_groups if method == "less" else None
    pipeline.make_selection(
        method,
        ratio,
        {key: snakemake.input[key] for key in pipeline.FEATURE_KEYS},
        snakemake.output.selection,
        snakemake.params.settings,
        target_groups=groups,
    )
