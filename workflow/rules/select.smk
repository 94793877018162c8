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
        torch_env
    threads: res("select", "threads")
    resources:
        mem_mb=res("select", "mem_mb"),
        runtime=res("select", "runtime"),
    params:
        job=job_params("proxy"),
        settings=select_settings,
    script:
        "../scripts/select.py"
