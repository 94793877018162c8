"""Snakemake script: metric against selected ratio, per method (paper Figs. 5 and 7).

The metric's display (scale, unit) comes from the records' ``metric_spec``.
"""

from tarot_select.experiments import report, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    report.plot_task_metric_vs_ratio(snakemake.input.records, snakemake.output[0], task=snakemake.wildcards.task)
