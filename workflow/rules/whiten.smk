# WFD features: "wfd" combines the checkpoint blocks as features.combine says (sum: the
# paper's Eq. 4); "wfd_concat" keeps them concatenated (the tarot_concat ablation).


rule whiten:
    input:
        candidates=pool_candidates,
        targets=f"{RESULTS}/{{task}}/features/targets.npy",
        stats=whitening_stats,
    output:
        candidates=f"{RESULTS}/{{task}}/features/{{wfd}}_candidates.npy",
        candidates_sidecar=f"{RESULTS}/{{task}}/features/{{wfd}}_candidates.json",
        targets=f"{RESULTS}/{{task}}/features/{{wfd}}_targets.npy",
        targets_sidecar=f"{RESULTS}/{{task}}/features/{{wfd}}_targets.json",
        neighbors=f"{RESULTS}/{{task}}/features/{{wfd}}_neighbors.npz",
    log:
        f"{RESULTS}/{{task}}/logs/whiten_{{wfd}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/whiten_{{wfd}}.tsv"
    conda:
        "../../envs/select.yaml"
    threads: res("whiten", "threads")
    resources:
        mem_mb=res("whiten", "mem_mb"),
        runtime=res("whiten", "runtime"),
    params:
        whitening=config["whitening"],
        combine=whiten_combine,
    script:
        "../scripts/whiten.py"
