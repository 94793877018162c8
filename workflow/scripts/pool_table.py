"""Snakemake script: one table for a pool that serves several target sets (methods x target
sets x models, the paper's Table 2 layout)."""

from tarot_select.experiments import report, stages

with stages.stage(snakemake.log[0], snakemake.threads):
    report.write_pool_table(
        dict(snakemake.params.records),
        snakemake.output.csv,
        snakemake.output.md,
        pool=snakemake.wildcards.pool,
        otm_jsons=dict(snakemake.params.otm) or None,
    )
