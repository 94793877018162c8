# WFD features: "wfd" combines the checkpoint blocks as features.combine says (sum: the
# paper's Eq. 4); "wfd_concat" keeps them concatenated (the tarot_concat ablation).


# The nearest WFD candidates of every target: found in the whitening pass itself, or,
# with whitening.neighbor_shards > 1, by one job per range of the pool (neighbors_shard,
# e.g. SLURM jobs on several nodes) whose lists neighbors_merge joins into the same file.
NEIGHBOR_SHARDS = config["whitening"].get("neighbor_shards", 1)
WHITEN_OUTPUTS = {
    "candidates": f"{RESULTS}/{{task}}/features/{{wfd}}_candidates.npy",
    "candidates_sidecar": f"{RESULTS}/{{task}}/features/{{wfd}}_candidates.json",
    "targets": f"{RESULTS}/{{task}}/features/{{wfd}}_targets.npy",
    "targets_sidecar": f"{RESULTS}/{{task}}/features/{{wfd}}_targets.json",
}
if NEIGHBOR_SHARDS == 1:
    WHITEN_OUTPUTS["neighbors"] = f"{RESULTS}/{{task}}/features/{{wfd}}_neighbors.npz"


rule whiten:
    input:
        candidates=pool_candidates,
        targets=f"{RESULTS}/{{task}}/features/targets.npy",
        stats=whitening_stats,
    output:
        **WHITEN_OUTPUTS,
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


if NEIGHBOR_SHARDS > 1:

    rule neighbors_shard:
        input:
            candidates=f"{RESULTS}/{{task}}/features/{{wfd}}_candidates.npy",
            targets=f"{RESULTS}/{{task}}/features/{{wfd}}_targets.npy",
        output:
            f"{RESULTS}/{{task}}/features/neighbor_shards/{{wfd}}.{{shard}}.npz",
        log:
            f"{RESULTS}/{{task}}/logs/neighbors_{{wfd}}.{{shard}}.log",
        benchmark:
            f"{RESULTS}/{{task}}/benchmarks/neighbors_{{wfd}}.{{shard}}.tsv"
        conda:
            "../../envs/select.yaml"
        threads: res("whiten", "threads")
        resources:
            mem_mb=res("whiten", "mem_mb"),
            runtime=res("whiten", "runtime"),
        params:
            k=config["whitening"]["neighbors"],
            shards=NEIGHBOR_SHARDS,
        script:
            "../scripts/neighbors_shard.py"

    rule neighbors_merge:
        input:
            parts=neighbor_shard_files,
            candidates=f"{RESULTS}/{{task}}/features/{{wfd}}_candidates.npy",
        output:
            f"{RESULTS}/{{task}}/features/{{wfd}}_neighbors.npz",
        log:
            f"{RESULTS}/{{task}}/logs/neighbors_{{wfd}}.log",
        benchmark:
            f"{RESULTS}/{{task}}/benchmarks/neighbors_{{wfd}}.tsv"
        conda:
            "../../envs/select.yaml"
        threads: 1
        resources:
            mem_mb=res("whiten", "mem_mb"),
            runtime=res("whiten", "runtime"),
        params:
            k=config["whitening"]["neighbors"],
        script:
            "../scripts/neighbors_merge.py"
