# Config validation, names of things, and input functions shared by the rules.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tarot_select.config import check_config
from tarot_select.errors import TarotInputError
from tarot_select.pipeline import selection_name

validate(config, schema="../schemas/config.schema.yaml", set_default=True)
try:
    check_config(config)
except TarotInputError as exc:
    raise WorkflowError(f"config error: {exc}") from None

RESULTS = config["results"]
TASKS = list(config["tasks"])
LDS = config["lds"]
LDS_TASKS = list(LDS["tasks"]) if LDS["enabled"] else []
SEEDS = [int(s) for s in config["seeds"]]
FEATURE_SPLITS = ["candidates", "targets", "candidates_adam"]
RESOURCE_DEFAULTS = {"mem_mb": 2000, "runtime": 30, "threads": 1, "gpu": 0}


wildcard_constraints:
    task="[A-Za-z0-9-]+",
    selection="[a-z_]+(\\.r[0-9.e-]+)?",
    seed="[0-9]+",
    shard="[0-9]+",
    split="candidates|targets|candidates_adam",
    chunk="[0-9]+",
    member="[0-9]+",


def selections():
    """Names of every selection the config asks for (see pipeline.selection_name)."""
    ratios = config["ratios"]
    names = [selection_name(m, r) for m in config["methods"] for r in ratios]
    if config["weighting"]["enabled"]:
        names += [selection_name("tarot_weighted", r) for r in ratios]
    if config["otm"]["enabled"]:
        names.append("otm")
    return names + list(config["references"])


SELECTIONS = selections()


def res(rule_name, key):
    """Resource ``key`` of ``rule_name`` from config.resources (falling back to default)."""
    table = config["resources"]
    value = table.get(rule_name, {}).get(key)
    if value is None:
        value = table.get("default", {}).get(key, RESOURCE_DEFAULTS[key])
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
    for task in LDS_TASKS:
        out += [
            f"{RESULTS}/tables/{task}_lds.csv",
            f"{RESULTS}/tables/{task}_lds.md",
            f"{RESULTS}/figures/{task}_lds.png",
        ]
    return out


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
    """Raw and whitened feature files a selection reads."""
    base = f"{RESULTS}/{wildcards.task}/features"
    return {
        "candidates": f"{base}/candidates.npy",
        "targets": f"{base}/targets.npy",
        "candidates_adam": f"{base}/candidates_adam.npy",
        "wfd_candidates": f"{base}/wfd_candidates.npy",
        "wfd_targets": f"{base}/wfd_targets.npy",
        "wfd_neighbors": f"{base}/wfd_neighbors.npz",
    }


def feature_shards(wildcards):
    """Shard files of one split, in order."""
    return expand(
        f"{RESULTS}/{wildcards.task}/features/shards/{wildcards.split}.{{shard}}.npy",
        shard=range(config["features"]["shards"]),
    )


def whitening_stats(wildcards):
    """Per-shard whitening sums of candidates and targets."""
    return expand(
        f"{RESULTS}/{wildcards.task}/features/shards/{{split}}.{{shard}}.stats.npz",
        split=["candidates", "targets"],
        shard=range(config["features"]["shards"]),
    )


def run_records(wildcards):
    """Evaluation records of every (selection, seed) of a task."""
    return expand(
        f"{RESULTS}/{wildcards.task}/metrics/{{selection}}/seed{{seed}}.json",
        selection=SELECTIONS,
        seed=SEEDS,
    )


def tsne_selection_files(wildcards):
    """Selections shown in the t-SNE figure: every method at report.tsne_ratio, and OTM."""
    ratio = config["report"]["tsne_ratio"]
    names = [selection_name(m, ratio) for m in config["methods"]]
    if config["otm"]["enabled"]:
        names.append("otm")
    return [f"{RESULTS}/{wildcards.task}/selections/{n}.csv" for n in names]
