# Gradient dumping fans out: every split is cut into features.shards contiguous shards,
# one job each (one SLURM job each on a cluster), gathered before whitening. Each shard
# also writes its whitening sums, so no job has to hold every feature at once.


rule dump_gradients:
    input:
        data=data_dir,
        proxy=proxy_dir,
    output:
        features=f"{RESULTS}/{{task}}/features/shards/{{split}}.{{shard}}.npy",
        sidecar=f"{RESULTS}/{{task}}/features/shards/{{split}}.{{shard}}.json",
        stats=f"{RESULTS}/{{task}}/features/shards/{{split}}.{{shard}}.stats.npz",
    log:
        f"{RESULTS}/{{task}}/logs/dump_gradients_{{split}}.{{shard}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/dump_gradients_{{split}}.{{shard}}.tsv"
    conda:
        torch_env
    threads: res("dump_gradients", "threads")
    resources:
        mem_mb=res("dump_gradients", "mem_mb"),
        runtime=res("dump_gradients", "runtime"),
        gpu=res("dump_gradients", "gpu"),
    params:
        job=job_params("proxy"),
        features=config["features"],
        landmarks=landmark_params,
    script:
        "../scripts/dump_gradients.py"


# Influence Distillation's cheap embeddings of every candidate: forward-mode JVPs of the
# first blocks of the proxy (no backward pass), one job per pool.
rule embed_candidates:
    input:
        data=data_dir,
        proxy=proxy_dir,
    output:
        features=f"{RESULTS}/{{task}}/features/embeddings.npy",
        sidecar=f"{RESULTS}/{{task}}/features/embeddings.json",
    log:
        f"{RESULTS}/{{task}}/logs/embed_candidates.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/embed_candidates.tsv"
    conda:
        torch_env
    threads: res("embed_candidates", "threads")
    resources:
        mem_mb=res("embed_candidates", "mem_mb"),
        runtime=res("embed_candidates", "runtime"),
        gpu=res("embed_candidates", "gpu"),
    params:
        job=job_params("proxy"),
        settings=infdist_embedding_params,
    script:
        "../scripts/embed_candidates.py"


rule gather_features:
    input:
        shards=feature_shards,
    output:
        features=f"{RESULTS}/{{task}}/features/{{split}}.npy",
        sidecar=f"{RESULTS}/{{task}}/features/{{split}}.json",
    log:
        f"{RESULTS}/{{task}}/logs/gather_features_{{split}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/gather_features_{{split}}.tsv"
    conda:
        "../../envs/select.yaml"
    threads: res("gather_features", "threads")
    resources:
        mem_mb=res("gather_features", "mem_mb"),
        runtime=res("gather_features", "runtime"),
    script:
        "../scripts/gather_features.py"
