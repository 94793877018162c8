"""What a workflow config asks for, torch-free: units, selections, each job's parameters.

The Snakemake process (``workflow/rules/common.smk``) builds its rules' inputs and
``params`` from these functions; they import only the tasks' settings dataclasses.

Pools, targets and units
------------------------
A config block ``tasks.<name>`` is a candidate *pool* with its proxy (``results/<name>/``:
data, proxy, candidate features). A task whose settings name several target sets
(:meth:`~tarot_select.tasks.settings.TaskSettings.target_names`) serves each from the same
pool: every target set is a *unit* ``<name>-<target>`` with its own target features,
whitening, selections, trainings and table (``results/<name>-<target>/``), while the
expensive candidate gradients are computed once. A task with one target set is one unit
named like the task, so all its files live under ``results/<name>/``.

Job parameters
--------------
:func:`stage_params` gives each job exactly the settings its output depends on (see
:meth:`~tarot_select.tasks.settings.TaskSettings.for_stage`) plus the seed, so that editing
one setting reruns exactly the dependent jobs (Snakemake reruns a job whose ``params``
changed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import TarotInputError
from ..tasks.registry import get_spec
from ..tasks.settings import TaskSettings
from .naming import REFERENCES, parse_selection, selection_draw, selection_name

__all__ = [
    "PER_SEED_METHODS",
    "RESOURCE_DEFAULTS",
    "Unit",
    "has_model_outputs",
    "infdist_embedding",
    "infdist_landmarks",
    "repeat_factor",
    "resource",
    "runs",
    "select_settings",
    "selections",
    "stage_params",
    "task_blocks",
    "task_device",
    "task_settings",
    "units",
]

#: Methods drawn once per downstream seed (their subset is part of the run's randomness).
PER_SEED_METHODS: frozenset[str] = frozenset({"random"})

#: Resources of a rule that neither the task block nor the config's table sets.
RESOURCE_DEFAULTS: dict[str, int] = {"mem_mb": 2000, "runtime": 30, "threads": 1, "gpu": 0}


@dataclass(frozen=True)
class Unit:
    """One (pool, target set) pair: the ``{task}`` wildcard of per-target rules.

    Attributes
    ----------
    name : str
        ``<task>`` for a single-target task, ``<task>-<target>`` otherwise.
    task : str
        The config block (pool and proxy) it belongs to.
    target : str or None
        The target set, None for a single-target task.
    """

    name: str
    task: str
    target: str | None


def task_blocks(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every task block by name: ``tasks`` and, when the LDS benchmark is enabled, ``lds.tasks``."""
    lds = config.get("lds", {}) or {}
    blocks = dict(lds.get("tasks", {}) or {}) if lds.get("enabled", False) else {}
    blocks.update(config.get("tasks", {}) or {})
    return blocks


def task_settings(config: Mapping[str, Any], task: str, *, check: bool = True) -> TaskSettings:
    """The settings dataclass of task block ``task`` (checked)."""
    blocks = task_blocks(config)
    if task not in blocks:
        raise TarotInputError(f"task {task!r} is not in the config (tasks, lds.tasks: {', '.join(blocks)})")
    block = blocks[task]
    where = f"lds.tasks.{task}" if task not in (config.get("tasks") or {}) else f"tasks.{task}"
    if not isinstance(block, Mapping):
        raise TarotInputError(f"{where}: must be a mapping with a kind, got {block!r}")
    try:
        spec = get_spec(block.get("kind"))
    except TarotInputError as exc:
        raise TarotInputError(f"{where}.kind: {exc}") from None
    return spec.settings.from_config(block, where, check=check)


def units(config: Mapping[str, Any]) -> dict[str, Unit]:
    """Every unit of the selection tasks (``tasks``), by name, in config order."""
    out: dict[str, Unit] = {}
    for task in config.get("tasks", {}) or {}:
        targets = task_settings(config, task, check=False).target_names()
        if not targets:
            out[task] = Unit(task, task, None)
        for target in targets:
            name = f"{task}-{target}"
            out[name] = Unit(name, task, target)
    return out


def selections(config: Mapping[str, Any]) -> list[str]:
    """File stems of every selection the config asks for (:func:`~.naming.selection_name`).

    ``random`` is drawn once per downstream seed (``random-s<seed>.r<ratio>``), so the
    spread of its table cell includes the variance of the subset, not only of training.
    """
    seeds = [int(s) for s in config["seeds"]]
    names = []
    for method in config["methods"]:
        for ratio in config["ratios"]:
            draws = seeds if method in PER_SEED_METHODS else [None]
            names += [selection_name(method, ratio, draw) for draw in draws]
    if config["weighting"]["enabled"]:
        names += [selection_name("tarot_weighted", r) for r in config["ratios"]]
    if config["otm"]["enabled"]:
        names.append("otm")
        if config["otm"].get("weighted", False):
            names.append("otm_weighted")
    return names + list(config["references"])


def runs(config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Every (selection, downstream seed) the tables average over: each selection with every
    seed, but a per-seed draw only with its own seed."""
    seeds = [int(s) for s in config["seeds"]]
    out = []
    for name in selections(config):
        draw = selection_draw(name)
        out += [(name, seed) for seed in seeds if draw is None or seed == draw]
    return out


def repeat_factor(config: Mapping[str, Any], selection: str) -> float:
    """Uniform repetition of a selection's samples in downstream training.

    With ``weighting.enabled``, ``tarot_weighted`` trains on OT-potential repeat counts that
    sum to R × |S|; every other selection at a ratio then repeats each sample R times
    (``weighting.repeat``), so that all methods at a ratio take the same number of steps
    (the paper's "uniform repetition to match the same size"). OTM and the references: 1;
    ``otm_weighted`` trains on its own counts (R × |S| samples per epoch, against |S| for ``otm``).
    """
    method, ratio = parse_selection(selection)
    if not config["weighting"]["enabled"] or ratio is None or method == "tarot_weighted":
        return 1.0
    return float(config["weighting"]["repeat"])


def select_settings(config: Mapping[str, Any], selection: str) -> dict[str, Any]:
    """The global settings one selection depends on (the select job's ``params.settings``).

    Every selection records its OT distance to the target (``ot.method``, ``ot.reg``); the
    seed draws ``random`` subsets and OTM's folds; ``weighting.repeat`` sets the
    OT-potential repeat counts of ``tarot_weighted`` and ``otm_weighted`` only;
    ``otm.folds``/``otm.patience`` matter to OTM (and ``otm_weighted``) only; the references (``full``, ``target_only``) depend on none. A key
    left out takes the library default, so editing, say, the repetition factor reruns
    ``tarot_weighted`` and the trainings, not every selection.
    """
    method, _ = parse_selection(selection)
    if method in REFERENCES:
        return {}
    out: dict[str, Any] = {"ot_method": config["ot"]["method"], "reg": config["ot"]["reg"]}
    if method in ("random", "otm", "otm_weighted"):
        out["seed"] = config["seed"]
    if method in ("tarot_weighted", "otm_weighted"):
        out["repeat"] = config["weighting"]["repeat"]
    if method in ("otm", "otm_weighted"):
        out["folds"] = config["otm"]["folds"]
        out["patience"] = config["otm"]["patience"]
    if method == "infdist":
        out["seed"] = config["seed"]
        out["infdist"] = {k: config["infdist"][k] for k in ("kernel", "bandwidth", "damping", "strategy")}
    return out


def infdist_embedding(config: Mapping[str, Any]) -> dict[str, Any]:
    """What Influence Distillation's embeddings depend on (the embedding job's params): the
    number of first blocks, tangents, dimension, the projection kind, the seed of the
    tangents and projection, and the batch size."""
    block = config["infdist"]
    return {
        "blocks": int(block["blocks"]),
        "tangents": int(block["tangents"]),
        "dim": int(block["dim"]),
        "proj_kind": "rademacher" if config["features"]["proj_kind"] == "none" else config["features"]["proj_kind"],
        "seed": int(config["seed"]),
        "batch_size": int(config["features"]["batch_size"]),
    }


def infdist_landmarks(config: Mapping[str, Any], split: str) -> dict[str, int]:
    """The landmark draw of a gradient-dumping job: ``{"count", "seed"}`` for the
    ``landmarks_adam`` split, empty for every other split (so that editing
    ``infdist.landmarks`` reruns the landmark gradients only)."""
    if split != "landmarks_adam":
        return {}
    return {"count": int(config["infdist"]["landmarks"]), "seed": int(config["seed"])}


def stage_params(config: Mapping[str, Any], task: str, stage: str) -> dict[str, Any]:
    """What a job of ``stage`` for task block ``task`` depends on: ``{"task": settings, "seed": int}``.

    ``settings`` is :meth:`~tarot_select.tasks.settings.TaskSettings.for_stage` with the
    ``kind``; the jobs build the task from it and from nothing else.
    """
    settings = task_settings(config, task, check=False)
    return {"task": {"kind": settings.kind, **settings.for_stage(stage)}, "seed": int(config.get("seed", 0))}


def has_model_outputs(config: Mapping[str, Any], task: str) -> bool:
    """Whether task ``task`` has model outputs (then DsDm scores TRAK datamodels of its margin)."""
    return get_spec(task_settings(config, task, check=False).kind).model_outputs


def task_device(config: Mapping[str, Any], task: str) -> str:
    """The device of task ``task``'s jobs: its own ``device`` key, else the global ``device``."""
    own = task_settings(config, task, check=False).device
    return str(own or config.get("device", "auto"))


def task_env(config: Mapping[str, Any], task: str) -> str:
    """The conda env name (``envs/<name>.yaml``) of task ``task``'s torch jobs."""
    return task_settings(config, task, check=False).conda_env()


def resource(config: Mapping[str, Any], rule: str, key: str, task: str | None = None) -> int:
    """Resource ``key`` of ``rule`` for task ``task``.

    Looked up in order: the task block's ``resources.<rule>``, the config's
    ``resources.<rule>``, the task block's ``resources.default``, the config's
    ``resources.default``, then :data:`RESOURCE_DEFAULTS`.
    """
    own: Mapping[str, Any] = {}
    if task is not None:
        own = task_settings(config, task, check=False).resources or {}
    table = config.get("resources", {}) or {}
    for block in (own.get(rule), table.get(rule), own.get("default"), table.get("default")):
        if block and block.get(key) is not None:
            return int(block[key])
    return RESOURCE_DEFAULTS[key]
