rule table:
    input:
        records=run_records,
        otm=(
            f"{RESULTS}/{{task}}/selections/otm.json"
            if config["otm"]["enabled"]
            else []
        ),
    output:
        csv=f"{RESULTS}/tables/{{task}}.csv",
        md=f"{RESULTS}/tables/{{task}}.md",
    log:
        f"{RESULTS}/{{task}}/logs/table.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/table.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("table", "threads")
    resources:
        mem_mb=res("table", "mem_mb"),
        runtime=res("table", "runtime"),
    script:
        "../scripts/table.py"


rule pool_table:
    input:
        records=pool_record_files,
        otm=pool_otm_files,
    output:
        csv=f"{RESULTS}/tables/{{pool}}_by_target.csv",
        md=f"{RESULTS}/tables/{{pool}}_by_target.md",
    log:
        f"{RESULTS}/{{pool}}/logs/pool_table.log",
    benchmark:
        f"{RESULTS}/{{pool}}/benchmarks/pool_table.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("table", "threads")
    resources:
        mem_mb=res("table", "mem_mb"),
        runtime=res("table", "runtime"),
    params:
        records=pool_records,
        otm=pool_otm_summaries,
    script:
        "../scripts/pool_table.py"


rule figure_metric_vs_ratio:
    input:
        records=run_records,
    output:
        report(
            f"{RESULTS}/figures/{{task}}_metric_vs_ratio.png",
            caption="../report/metric_vs_ratio.rst",
            category="Downstream performance",
        ),
    log:
        f"{RESULTS}/{{task}}/logs/figure_metric_vs_ratio.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/figure_metric_vs_ratio.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    script:
        "../scripts/figure_metric_vs_ratio.py"


# The t-SNE embeds the un-whitened projected gradients (whitened ones are isotropic by
# construction) and colours the candidates by the source the prepared data records.
rule figure_tsne:
    input:
        candidates=pool_candidates,
        targets=f"{RESULTS}/{{task}}/features/targets.npy",
        selections=tsne_selection_files,
        data=data_dir,
    output:
        report(
            f"{RESULTS}/figures/{{task}}_tsne.png",
            caption="../report/tsne.rst",
            category="Selected data",
        ),
    log:
        f"{RESULTS}/{{task}}/logs/figure_tsne.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/figure_tsne.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    params:
        job=job_params("data"),
        combine=config["features"]["combine"],
        seed=config["seed"],
        max_points=config["report"]["tsne_max_points"],
    script:
        "../scripts/figure_tsne.py"
