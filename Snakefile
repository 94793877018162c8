# TAROT: targeted data selection by optimal transport.
# proxy training -> gradient dumping -> whitening -> selection -> downstream
# retraining -> evaluation -> tables and figures, for every task in the config.
from snakemake.utils import min_version

min_version("9.0")


# The default config, unless one is given with --configfile (which would otherwise be
# merged into the default, so a config for another task would still run digits).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/proxy.smk"
include: "workflow/rules/gradients.smk"
include: "workflow/rules/whiten.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/downstream.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/lds.smk"
include: "workflow/rules/paper.smk"


# Rules that only read small files and write a table or a figure: on a cluster they run
# in the Snakemake process itself instead of waiting in the queue.
localrules:
    all,
    table,
    pool_table,
    figure_metric_vs_ratio,
    figure_tsne,
    lds_report,
    paper,
    paper_lds,
    paper_ablation,
    paper_segmentation,
    paper_tsne,
    paper_motion,
    paper_instruction,
    paper_claims,


rule all:
    default_target: True
    input:
        all_outputs,


# The paper's figures, tables and claims (workflow/rules/paper.smk) from whatever tasks the
# config ran, under results/paper/: `snakemake paper --cores 2 --configfile config/paper_mini.yaml`.
rule paper:
    input:
        paper_exhibits,
