rule train_downstream:
    input:
        data=data_dir,
        selection=f"{RESULTS}/{{task}}/selections/{{selection}}.csv",
    output:
        model=f"{RESULTS}/{{task}}/models/{{selection}}/seed{{seed}}.pt",
    log:
        f"{RESULTS}/{{task}}/logs/train_downstream_{{selection}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/train_downstream_{{selection}}_seed{{seed}}.tsv"
    conda:
        torch_env
    threads: res("train_downstream", "threads")
    resources:
        mem_mb=res("train_downstream", "mem_mb"),
        runtime=res("train_downstream", "runtime"),
        gpu=res("train_downstream", "gpu"),
    params:
        job=job_params("downstream"),
        repeat=repeat_factor,
    script:
        "../scripts/train_downstream.py"


rule evaluate:
    input:
        data=data_dir,
        model=f"{RESULTS}/{{task}}/models/{{selection}}/seed{{seed}}.pt",
        selection=f"{RESULTS}/{{task}}/selections/{{selection}}.csv",
    output:
        record=f"{RESULTS}/{{task}}/metrics/{{selection}}/seed{{seed}}.json",
    log:
        f"{RESULTS}/{{task}}/logs/evaluate_{{selection}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/evaluate_{{selection}}_seed{{seed}}.tsv"
    conda:
        torch_env
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu"),
    params:
        job=job_params("downstream"),
    script:
        "../scripts/evaluate.py"
