rule prepare_data:
    output:
        directory(f"{RESULTS}/{{task}}/data"),
    log:
        f"{RESULTS}/{{task}}/logs/prepare_data.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/prepare_data.tsv"
    conda:
        torch_env
    threads: res("prepare_data", "threads")
    resources:
        mem_mb=res("prepare_data", "mem_mb"),
        runtime=res("prepare_data", "runtime"),
    params:
        job=job_params("data"),
    script:
        "../scripts/prepare_data.py"
