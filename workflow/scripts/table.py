"""Snakemake script: results table (mean ± std per method and ratio) of a task.

The metric's display (scale, unit) and direction come from the records' ``metric_spec``.
"""

from tarot_select.experiments import report, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    report.write_task_tables(
        snakemake.input.records,
        snakemake.output.csv,
        snakemake.output.md,
        task=snakemake.wildcards.task,
        otm_json=snakemake.input.otm or None,
    )
