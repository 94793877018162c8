# Config validation, names of things, and input functions shared by the rules.
# Torch-free: planning a run imports only the tasks' settings dataclasses.
import sys

from tarot_select.errors import TarotInputError
from tarot_select.experiments import plan
from tarot_select.experiments.config import load_config
from tarot_select.experiments.naming import parse_selection, selection_name

# The whole config is checked before any job: a mistake stops Snakemake with exit status 2
# and one line on stderr that names the key (see tarot_select.experiments.config). The
# folder, disk and memory checks run in the main process only, not in a cluster job's.
try:
    load_config(
        config,
        workflow.source_path("../schemas/config.schema.yaml"),
        overrides=workflow.config_settings.config,
        environment=workflow.is_main_process,
    )
except TarotInputError as exc:
    print(f"config error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

RESULTS = config["results"]
# Units: one per (task, target set); a single-target task is one unit of its own name.
UNITS = plan.units(config)
TASKS = list(UNITS)
LDS = config["lds"]
LDS_TASKS = list(LDS["tasks"]) if LDS["enabled"] else []
# What the LDS subset masks and the LDS scoring depend on (their jobs' params).
LDS_SUBSETS = {key: LDS[key] for key in ("subsets", "fraction")}
LDS_SCORING = {
    key: LDS[key]
    for key in ("methods", "ensembles", "whitening", "eps", "ridge", "bootstrap")
}
SEEDS = [int(s) for s in config["seeds"]]
SELECTIONS = plan.selections(config)
RUNS = plan.runs(config)


wildcard_constraints:
    task="[A-Za-z0-9-]+",
    pool="[A-Za-z0-9-]+",
    selection="[a-z_]+(-s[0-9]+)?(\\.r[0-9.e-]+)?",
    seed="[0-9]+",
    shard="[0-9]+",
    split="candidates|targets|candidates_adam|candidates_output|targets_output|landmarks_adam",
    chunk="[0-9]+",
    member="[0-9]+",
    wfd="wfd|wfd_concat",


def pool_of(name):
    """The task block (candidate pool and proxy) of a unit or task name."""
    unit = UNITS.get(name)
    return unit.task if unit is not None else name


def pool_path(wildcards, leaf):
    return f"{RESULTS}/{pool_of(wildcards.task)}/{leaf}"


def data_dir(wildcards):
    """The prepared data of the unit's pool."""
    return pool_path(wildcards, "data")


def proxy_dir(wildcards):
    """The proxy checkpoints of the unit's pool."""
    return pool_path(wildcards, "proxy")


def job_params(stage):
    """Params of a job of ``stage``: the task settings it depends on, seed, device, target."""

    def params(wildcards):
        name = wildcards.task
        task = pool_of(name)
        unit = UNITS.get(name)
        return {
            **plan.stage_params(config, task, stage),
            "device": plan.task_device(config, task),
            "target": unit.target if unit is not None else None,
        }

    return params


def res(rule_name, key):
    """Resource ``key`` of ``rule_name`` for the job's task (task block, then config.resources)."""

    def value(wildcards):
        task = pool_of(wildcards.task) if "task" in wildcards.keys() else None
        return plan.resource(config, rule_name, key, task)

    return value


def all_outputs(wildcards):
    """Tables and figures of every task."""
    out = []
    for task in TASKS:
        out += [
            f"{RESULTS}/tables/{task}.csv",
            f"{RESULTS}/tables/{task}.md",
            f"{RESULTS}/figures/{task}_metric_vs_ratio.png",
            f"{RESULTS}/figures/{task}_tsne.png",
        ]
    for pool in multi_target_pools():
        out += [
            f"{RESULTS}/tables/{pool}_by_target.csv",
            f"{RESULTS}/tables/{pool}_by_target.md",
        ]
    for task in LDS_TASKS:
        out += [
            f"{RESULTS}/tables/{task}_lds.csv",
            f"{RESULTS}/tables/{task}_lds.md",
            f"{RESULTS}/figures/{task}_lds.png",
        ]
    return out


def multi_target_pools():
    """Task blocks that serve several target sets (their units share the pool)."""
    pools = [unit.task for unit in UNITS.values() if unit.target is not None]
    return list(dict.fromkeys(pools))


def pool_units(wildcards):
    """The units (target sets) of the pool ``wildcards.pool``, in config order."""
    return [name for name, unit in UNITS.items() if unit.task == wildcards.pool]


def pool_records(wildcards):
    """Per unit of the pool, the run records of its table."""
    return {
        unit: [f"{RESULTS}/{unit}/metrics/{sel}/seed{seed}.json" for sel, seed in RUNS]
        for unit in pool_units(wildcards)
    }


def pool_record_files(wildcards):
    """Every run record of the pool's units (the pool table's input)."""
    return [path for paths in pool_records(wildcards).values() for path in paths]


def pool_otm_summaries(wildcards):
    """Per unit of the pool, OTM's selection summary (none without OTM)."""
    if not config["otm"]["enabled"]:
        return {}
    return {
        unit: f"{RESULTS}/{unit}/selections/otm.json" for unit in pool_units(wildcards)
    }


def pool_otm_files(wildcards):
    """OTM's selection summaries of the pool's units (the pool table's input)."""
    return list(pool_otm_summaries(wildcards).values())


def lds_external(task, key):
    """The user's LDS file ``key`` (masks or outputs) for ``task``, or None."""
    return LDS["external"].get(task, {}).get(key)


def lds_external_masks(wildcards):
    """The user's subset masks of this task (e.g. TRAK's published ones), if any."""
    path = lds_external(wildcards.task, "masks")
    return [path] if path else []


def lds_external_outputs(wildcards):
    """The user's recorded subset-model outputs of this task, if any."""
    path = lds_external(wildcards.task, "outputs")
    return [path] if path else []


def lds_output_chunks(wildcards):
    """Outputs of the subset-model chunks (none when the user gives the outputs)."""
    if lds_external(wildcards.task, "outputs"):
        return []
    return expand(
        f"{RESULTS}/{wildcards.task}/lds/outputs/chunk{{chunk}}.npy",
        chunk=range(LDS["chunks"]),
    )


def lds_member_files(wildcards):
    """Features of the ensemble members the largest ensemble size needs."""
    return expand(
        f"{RESULTS}/{wildcards.task}/lds/members/member{{member}}.npz",
        member=range(max(LDS["ensembles"])),
    )


def feature_files(wildcards):
    """Raw and whitened feature files a selection reads (candidates from the pool; the
    tarot_concat ablation reads the WFD features of concatenated checkpoint blocks; DsDm,
    for a task with model outputs, its margin gradients and the proxy)."""
    base = f"{RESULTS}/{wildcards.task}/features"
    pool = pool_path(wildcards, "features")
    method = parse_selection(wildcards.selection)[0]
    if method == "infdist":
        return infdist_files(wildcards)
    wfd = "wfd_concat" if method == "tarot_concat" else "wfd"
    files = {
        "candidates": f"{pool}/candidates.npy",
        "targets": f"{base}/targets.npy",
        "candidates_adam": f"{pool}/candidates_adam.npy",
        "wfd_candidates": f"{base}/{wfd}_candidates.npy",
        "wfd_targets": f"{base}/{wfd}_targets.npy",
        "wfd_neighbors": f"{base}/{wfd}_neighbors.npz",
    }
    if method == "dsdm" and plan.has_model_outputs(config, pool_of(wildcards.task)):
        files |= {
            "candidates_output": f"{pool}/candidates_output.npy",
            "targets_output": f"{base}/targets_output.npy",
            "proxy": proxy_dir(wildcards),
        }
    return files


def infdist_files(wildcards):
    """What Influence Distillation reads: the pool's JVP embeddings, the landmarks' gradient
    features (the pool's, Adam-preconditioned), the unit's target features, and the WFD
    features that measure every selection's OT distance to the target."""
    base = f"{RESULTS}/{wildcards.task}/features"
    pool = pool_path(wildcards, "features")
    return {
        "embeddings": f"{pool}/embeddings.npy",
        "landmarks": f"{pool}/landmarks_adam.npy",
        "targets": f"{base}/targets.npy",
        "wfd_candidates": f"{base}/wfd_candidates.npy",
        "wfd_targets": f"{base}/wfd_targets.npy",
    }


def landmark_params(wildcards):
    """The landmark draw of a dump_gradients job (empty but for the landmarks split)."""
    return plan.infdist_landmarks(config, wildcards.split)


def infdist_embedding_params(wildcards):
    """What the embedding job depends on (infdist block, seed, projection kind, batch size)."""
    return plan.infdist_embedding(config)


def whiten_combine(wildcards):
    """How the whitening job combines checkpoint blocks (sum, lr_sum or concat)."""
    return "concat" if wildcards.wfd == "wfd_concat" else config["features"]["combine"]


def feature_shards(wildcards):
    """Shard files of one split, in order."""
    return expand(
        f"{RESULTS}/{wildcards.task}/features/shards/{wildcards.split}.{{shard}}.npy",
        shard=range(config["features"]["shards"]),
    )


def pool_candidates(wildcards):
    """The pool's candidate features (shared by every target set of the task)."""
    return pool_path(wildcards, "features/candidates.npy")


def whitening_stats(wildcards):
    """Per-shard whitening sums of the pool's candidates and the unit's targets (combined as
    features.combine says; the concat ablation fits on the gathered features instead).
    """
    if whiten_combine(wildcards) != config["features"]["combine"]:
        return []
    shards = range(config["features"]["shards"])
    return expand(
        pool_path(wildcards, "features/shards/candidates.{shard}.stats.npz"),
        shard=shards,
    ) + expand(
        f"{RESULTS}/{wildcards.task}/features/shards/targets.{{shard}}.stats.npz",
        shard=shards,
    )


def run_records(wildcards):
    """Evaluation records of every (selection, seed) of a task (a per-seed draw: its seed only)."""
    return [
        f"{RESULTS}/{wildcards.task}/metrics/{sel}/seed{seed}.json"
        for sel, seed in RUNS
    ]


def repeat_factor(wildcards):
    """Uniform repetition of the selection's samples in its downstream training."""
    return plan.repeat_factor(config, wildcards.selection)


def select_settings(wildcards):
    """The global settings this selection depends on (a reference: none)."""
    return plan.select_settings(config, wildcards.selection)


def tsne_selection_files(wildcards):
    """Selections shown in the t-SNE figure: every method at report.tsne_ratio, and OTM."""
    ratio = config["report"]["tsne_ratio"]
    draw = SEEDS[0]
    names = [
        selection_name(m, ratio, draw if m in plan.PER_SEED_METHODS else None)
        for m in config["methods"]
    ]
    if config["otm"]["enabled"]:
        names.append("otm")
    return [f"{RESULTS}/{wildcards.task}/selections/{n}.csv" for n in names]


def torch_env(wildcards):
    """The conda env file of a torch job, as the task's settings choose (``conda_env``):
    envs/torch.yaml, or envs/mmseg.yaml for the segmentation task's mmseg backend."""
    return f"../../envs/{plan.task_env(config, pool_of(wildcards.task))}.yaml"


# ------------------------------------------------------------------ the paper's exhibits
# Inputs of workflow/rules/paper.smk: each exhibit reads the tasks of its kind that the
# config has (none: the exhibit says "not run").

#: The paper's published numbers, each with the figure or table it comes from.
PAPER_NUMBERS = f"{workflow.basedir}/workflow/resources/paper_numbers.yaml"


def paper_numbers(wildcards):
    """The paper's numbers, parsed here (the exhibits' ``params.paper``)."""
    import yaml

    with open(PAPER_NUMBERS) as fh:
        return yaml.safe_load(fh)


def unit_kind(unit):
    """The task kind of a unit (``segmentation``, ``motion``, ``instruct``, ``digits``, ...)."""
    return plan.task_settings(config, UNITS[unit].task, check=False).kind


def unit_record_files(unit):
    """Every run record of a unit (what its table averages)."""
    return [f"{RESULTS}/{unit}/metrics/{sel}/seed{seed}.json" for sel, seed in RUNS]


def paper_units(kind=None):
    """Input function: per unit (of ``kind``, or every unit), its kind, target set and run records."""

    def units(wildcards):
        return {
            name: {
                "kind": unit_kind(name),
                "target": unit.target,
                "records": unit_record_files(name),
            }
            for name, unit in UNITS.items()
            if kind is None or unit_kind(name) == kind
        }

    return units


def paper_unit_files(kind=None):
    """Input function: the run records of the units of ``kind`` (every unit: None)."""

    def files(wildcards):
        return [
            path
            for unit in paper_units(kind)(wildcards).values()
            for path in unit["records"]
        ]

    return files


def paper_lds_scores(wildcards):
    """Per LDS task, its scores (``lds.json``)."""
    return {task: f"{RESULTS}/{task}/lds/lds.json" for task in LDS_TASKS}


def paper_lds_files(wildcards):
    """The LDS tasks' scores (Fig. 4, Table 6, the claims)."""
    return list(paper_lds_scores(wildcards).values())


def paper_tsne_figures(wildcards):
    """Per segmentation unit, its t-SNE figure (Fig. 6)."""
    return {
        unit: f"{RESULTS}/figures/{unit}_tsne.png"
        for unit in UNITS
        if unit_kind(unit) == "segmentation"
    }


def paper_tsne_files(wildcards):
    """The segmentation units' t-SNE figures."""
    return list(paper_tsne_figures(wildcards).values())


def paper_exhibits(wildcards):
    """Every file of results/paper/ (the `paper` target)."""
    names = [
        "fig4_lds.png",
        "tab6_wfd_ablation.md",
        "fig5_segmentation.png",
        "fig6_tsne.png",
        "fig7_motion.png",
        "tab2_instruction.md",
        "claims.md",
    ]
    return [f"{RESULTS}/paper/{name}" for name in names]


def neighbor_shard_files(wildcards):
    """The per-shard neighbour lists of one WFD feature set (whitening.neighbor_shards of them)."""
    shards = config["whitening"].get("neighbor_shards", 1)
    return [
        f"{RESULTS}/{wildcards.task}/features/neighbor_shards/{wildcards.wfd}.{s}.npz"
        for s in range(shards)
    ]
