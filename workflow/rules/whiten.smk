rule whiten:
    input:
        candidates=pool_candidates,
        targets=f"{RESULTS}/{{task}}/features/targets.npy",
        stats=whitening_stats,
    output:
        candidates=f"{RESULTS}/{{task}}/features/wfd_candidates.npy",
        candidates_sidecar=f"{RESULTS}/{{task}}/features/wfd_candidates.json",
        targets=f"{RESULTS}/{{task}}/features/wfd_targets.npy",
        targets_sidecar=f"{RESULTS}/{{task}}/features/wfd_targets.json",
        neighbors=f"{RESULTS}/{{task}}/features/wfd_neighbors.npz",
    log:
        f"{RESULTS}/{{task}}/logs/whiten.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/whiten.tsv"
    conda:
        "../../envs/select.yaml"
    threads: res("whiten", "threads")
    resources:
        mem_mb=res("whiten", "mem_mb"),
        runtime=res("whiten", "runtime"),
    params:
        whitening=config["whitening"],
    script:
        "../scripts/whiten.py"
