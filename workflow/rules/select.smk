rule select:
    input:
        unpack(feature_files),
        data=data_dir,
    output:
        selection=f"{RESULTS}/{{task}}/selections/{{selection}}.csv",
        sidecar=f"{RESULTS}/{{task}}/selections/{{selection}}.json",
    log:
        f"{RESULTS}/{{task}}/logs/select_{{selection}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/select_{{selection}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: res("select", "threads")
    resources:
        mem_mb=res("select", "mem_mb"),
        runtime=res("select", "runtime"),
    params:
        job=job_params("proxy"),
        settings={
            "seed": config["seed"],
            "repeat": config["weighting"]["repeat"],
            "folds": config["otm"]["folds"],
            "patience": config["otm"]["patience"],
            "ot_method": config["ot"]["method"],
            "reg": config["ot"]["reg"],
        },
    script:
        "../scripts/select.py"
