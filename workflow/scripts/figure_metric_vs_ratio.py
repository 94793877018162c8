"""Snakemake script: metric against selected ratio, per method (paper Figs. 5 and 7)."""

from tarot_select import pipeline, report

with pipeline.stage(snakemake.log[0], snakemake.threads):
    task = pipeline.load_task(snakemake.config, snakemake.wildcards.task)
    runs = report.collect_runs(snakemake.input.records)
    report.plot_metric_vs_ratio(
        runs, snakemake.output[0], metric_name=task.metric, title=f"{snakemake.wildcards.task}: {task.metric}"
    )
