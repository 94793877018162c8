"""Checks on the workflow config that the JSON schema cannot express.

The Snakefile validates ``config`` against ``workflow/schemas/config.schema.yaml``
(unknown keys, types, ranges, defaults) and then calls :func:`check_config`, so every
mistake is reported, naming its key, before any job runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import TarotInputError
from ..tasks.registry import get_spec
from ..tasks.settings import RESOURCE_KEYS
from .naming import ratio_token
from .plan import task_settings, units

__all__ = ["DEVICE", "RULES", "check_config"]

#: Device names a task block may give (the global ``device`` is checked by the schema).
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

#: Rules whose resources a config may set (``resources.<rule>``, also inside a task block).
RULES: tuple[str, ...] = (
    "default",
    "prepare_data",
    "train_proxy",
    "dump_gradients",
    "gather_features",
    "whiten",
    "select",
    "train_downstream",
    "evaluate",
    "table",
    "figures",
    "lds_masks",
    "lds_train_subsets",
    "lds_gather_outputs",
    "lds_member",
    "lds_evaluate",
)


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`TarotInputError` naming the offending key if the config cannot run.

    Torch-free: it runs in the Snakemake process before any job. Checks: ratios that
    differ only past the file-name precision; the t-SNE ratio is one of ``ratios``; the
    results path is not a file; every task block (``tasks`` and, when enabled,
    ``lds.tasks``) reads into its kind's settings dataclass (unknown keys, types, bounds,
    dataset paths, cross-field checks) and its ``resources`` name known rules and keys;
    LDS tasks support model outputs; task, LDS-task and unit names do not collide; user
    LDS files exist.
    """
    ratios = [float(r) for r in config.get("ratios", [])]
    tokens: dict[str, float] = {}
    for r in ratios:
        if ratio_token(r) in tokens:
            raise TarotInputError(
                f"ratios: {tokens[ratio_token(r)]!r} and {r!r} name the same files (ratio {ratio_token(r)}); "
                "keep one of them"
            )
        tokens[ratio_token(r)] = r
    tsne = config.get("report", {}).get("tsne_ratio")
    if tsne is not None and ratios and float(tsne) not in ratios:
        raise TarotInputError(f"report.tsne_ratio: {tsne} is not one of ratios {ratios}")
    results = Path(config.get("results", "results"))
    if results.exists() and not results.is_dir():
        raise TarotInputError(f"results: {results} exists and is not a directory")
    lds = config.get("lds", {})
    lds_tasks = lds.get("tasks", {}) if lds.get("enabled", False) else {}
    tasks = config.get("tasks", {})
    if not tasks and not lds_tasks:
        raise TarotInputError("tasks: the config has no task; add a block under tasks (or lds.tasks with lds.enabled)")
    both = sorted(set(lds_tasks) & set(tasks))
    if both:
        raise TarotInputError(f"lds.tasks: {both} also named under tasks; task names share results/<task>/")
    for where, blocks in (("tasks", tasks), ("lds.tasks", lds_tasks)):
        for name, block in blocks.items():
            settings = task_settings(config, name)
            _check_resources(settings.resources, f"{where}.{name}.resources")
            if settings.device is not None and not DEVICE.fullmatch(settings.device):
                raise TarotInputError(
                    f"{where}.{name}.device: {settings.device!r} is not a device (cpu, cuda, cuda:N, mps, auto)"
                )
            if where == "lds.tasks" and not get_spec(settings.kind).model_outputs:
                raise TarotInputError(
                    f"lds.tasks.{name}: task kind {settings.kind!r} does not support the LDS benchmark "
                    "(it has no model outputs)"
                )
    names = set(tasks) | set(lds_tasks)
    for unit in units(config).values():
        if unit.target is not None and unit.name in names:
            raise TarotInputError(
                f"tasks.{unit.task}: target set {unit.target!r} makes unit {unit.name!r}, "
                "which is also a task name; rename one"
            )
    if lds_tasks:
        _check_lds(lds, lds_tasks)


def _check_resources(resources: Mapping[str, Any] | None, where: str) -> None:
    """A task block's ``resources``: known rules, known keys, positive integers."""
    for rule, block in (resources or {}).items():
        if rule not in RULES:
            raise TarotInputError(f"{where}.{rule}: unknown rule; one of {', '.join(RULES)}")
        if not isinstance(block, Mapping):
            raise TarotInputError(f"{where}.{rule}: must be a mapping of {', '.join(RESOURCE_KEYS)}")
        for key, value in block.items():
            if key not in RESOURCE_KEYS:
                raise TarotInputError(f"{where}.{rule}.{key}: unknown resource; one of {', '.join(RESOURCE_KEYS)}")
            low = 0 if key == "gpu" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TarotInputError(f"{where}.{rule}.{key}: must be an integer >= {low}, got {value!r}")


def _check_lds(lds: Mapping[str, Any], tasks: Mapping[str, Any]) -> None:
    """The LDS block: user files exist and belong to LDS tasks; masks and outputs come together."""
    for name, files in lds.get("external", {}).items():
        if name not in tasks:
            raise TarotInputError(f"lds.external.{name}: not one of lds.tasks ({', '.join(tasks)})")
        if bool(files.get("masks")) != bool(files.get("outputs")):
            raise TarotInputError(f"lds.external.{name}: give both masks and outputs (outputs are per mask row)")
        for key in ("masks", "outputs"):
            if not Path(files[key]).is_file():
                raise TarotInputError(f"lds.external.{name}.{key}: file not found: {files[key]}")
