rule dump_gradients:
    input:
        data=f"{RESULTS}/{{task}}/data",
        proxy=f"{RESULTS}/{{task}}/proxy",
    output:
        features=f"{RESULTS}/{{task}}/features/{{split}}.npy",
        sidecar=f"{RESULTS}/{{task}}/features/{{split}}.json",
    log:
        f"{RESULTS}/{{task}}/logs/dump_gradients_{{split}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/dump_gradients_{{split}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: res("dump_gradients", "threads")
    resources:
        mem_mb=res("dump_gradients", "mem_mb"),
        runtime=res("dump_gradients", "runtime"),
    params:
        features=config["features"],
        device=config["device"],
    script:
        "../scripts/dump_gradients.py"
