rule train_proxy:
    input:
        data=data_dir,
    output:
        directory(f"{RESULTS}/{{task}}/proxy"),
    log:
        f"{RESULTS}/{{task}}/logs/train_proxy.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/train_proxy.tsv"
    conda:
        torch_env
    threads: res("train_proxy", "threads")
    resources:
        mem_mb=res("train_proxy", "mem_mb"),
        runtime=res("train_proxy", "runtime"),
        gpu=res("train_proxy", "gpu"),
    params:
        job=job_params("proxy"),
    script:
        "../scripts/train_proxy.py"
