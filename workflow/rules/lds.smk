# Influence-estimation benchmark (TAROT Fig. 4 / Table 6): the linear datamodeling score of
# WFD, its ablations, TRAK and Grad-Dot, for every task under lds.tasks. Subset models are
# trained in lds.chunks jobs; each ensemble member (a model trained on the whole training
# set, with its output gradients) is one job.


rule lds_masks:
    input:
        data=data_dir,
        external=lds_external_masks,
    output:
        masks=f"{RESULTS}/{{task}}/lds/masks.npy",
        sidecar=f"{RESULTS}/{{task}}/lds/masks.json",
    log:
        f"{RESULTS}/{{task}}/logs/lds_masks.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/lds_masks.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: res("lds_masks", "threads")
    resources:
        mem_mb=res("lds_masks", "mem_mb"),
        runtime=res("lds_masks", "runtime"),
    params:
        job=job_params("data"),
        subsets=LDS_SUBSETS,
    script:
        "../scripts/lds_masks.py"


rule lds_train_subsets:
    input:
        data=data_dir,
        masks=f"{RESULTS}/{{task}}/lds/masks.npy",
    output:
        outputs=f"{RESULTS}/{{task}}/lds/outputs/chunk{{chunk}}.npy",
        sidecar=f"{RESULTS}/{{task}}/lds/outputs/chunk{{chunk}}.json",
    log:
        f"{RESULTS}/{{task}}/logs/lds_train_subsets_{{chunk}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/lds_train_subsets_{{chunk}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: res("lds_train_subsets", "threads")
    resources:
        mem_mb=res("lds_train_subsets", "mem_mb"),
        runtime=res("lds_train_subsets", "runtime"),
        gpu=res("lds_train_subsets", "gpu"),
    params:
        job=job_params("downstream"),
        n_chunks=config["lds"]["chunks"],
    script:
        "../scripts/lds_train_subsets.py"


rule lds_gather_outputs:
    input:
        masks=f"{RESULTS}/{{task}}/lds/masks.npy",
        chunks=lds_output_chunks,
        external=lds_external_outputs,
    output:
        outputs=f"{RESULTS}/{{task}}/lds/outputs.npy",
        sidecar=f"{RESULTS}/{{task}}/lds/outputs.json",
    log:
        f"{RESULTS}/{{task}}/logs/lds_gather_outputs.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/lds_gather_outputs.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: res("lds_gather_outputs", "threads")
    resources:
        mem_mb=res("lds_gather_outputs", "mem_mb"),
        runtime=res("lds_gather_outputs", "runtime"),
    script:
        "../scripts/lds_gather_outputs.py"


rule lds_member:
    input:
        data=data_dir,
    output:
        features=f"{RESULTS}/{{task}}/lds/members/member{{member}}.npz",
    log:
        f"{RESULTS}/{{task}}/logs/lds_member_{{member}}.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/lds_member_{{member}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: res("lds_member", "threads")
    resources:
        mem_mb=res("lds_member", "mem_mb"),
        runtime=res("lds_member", "runtime"),
        gpu=res("lds_member", "gpu"),
    params:
        job=job_params("downstream"),
        features=config["lds"]["features"],
    script:
        "../scripts/lds_member.py"


rule lds_evaluate:
    input:
        masks=f"{RESULTS}/{{task}}/lds/masks.npy",
        outputs=f"{RESULTS}/{{task}}/lds/outputs.npy",
        members=lds_member_files,
    output:
        scores=f"{RESULTS}/{{task}}/lds/lds.json",
    log:
        f"{RESULTS}/{{task}}/logs/lds_evaluate.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/lds_evaluate.tsv"
    conda:
        "../../envs/select.yaml"
    threads: res("lds_evaluate", "threads")
    resources:
        mem_mb=res("lds_evaluate", "mem_mb"),
        runtime=res("lds_evaluate", "runtime"),
    params:
        lds=LDS_SCORING,
        seed=config["seed"],
    script:
        "../scripts/lds_evaluate.py"


rule lds_report:
    input:
        scores=f"{RESULTS}/{{task}}/lds/lds.json",
    output:
        csv=f"{RESULTS}/tables/{{task}}_lds.csv",
        md=f"{RESULTS}/tables/{{task}}_lds.md",
        figure=report(
            f"{RESULTS}/figures/{{task}}_lds.png",
            caption="../report/lds.rst",
            category="Influence estimation (LDS)",
        ),
    log:
        f"{RESULTS}/{{task}}/logs/lds_report.log",
    benchmark:
        f"{RESULTS}/{{task}}/benchmarks/lds_report.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    script:
        "../scripts/lds_report.py"
