"""Snakemake script: results table (mean ± std per method and ratio) of a task."""

import json

from tarot_select import pipeline, report

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = pipeline.load_task(snakemake.config, snakemake.wildcards.task)
    runs = report.collect_runs(snakemake.input.records)
    otm_ratio = None
    if snakemake.input.otm:
        with open(snakemake.input.otm) as fh:
            otm_ratio = json.load(fh)["chosen_ratio"]
    report.write_tables(
        runs,
        snakemake.output.csv,
        snakemake.output.md,
        metric_name=task.metric,
        higher_is_better=task.higher_is_better,
        otm_ratio=otm_ratio,
        title=f"{snakemake.wildcards.task}: downstream {task.metric}",
    )
