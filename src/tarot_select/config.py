"""Checks on the workflow config that the JSON schema cannot express.

The Snakefile validates ``config`` against ``workflow/schemas/config.schema.yaml``
(unknown keys, types, ranges, defaults) and then calls :func:`check_config`, so every
mistake is reported, naming its key, before any job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import TarotInputError
from .tasks import get_task, require_model_outputs

__all__ = ["check_config"]


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`TarotInputError` naming the offending key if the config cannot run.

    Checks: the t-SNE ratio is one of ``ratios``; the results path is not a file; every
    task block (``tasks`` and, when enabled, ``lds.tasks``) builds and passes its own
    :meth:`~tarot_select.tasks.Task.check` (dataset paths exist, sizes are consistent);
    LDS task names differ from selection task names; user LDS files exist.
    """
    ratios = [float(r) for r in config.get("ratios", [])]
    tsne = config.get("report", {}).get("tsne_ratio")
    if tsne is not None and ratios and float(tsne) not in ratios:
        raise TarotInputError(f"report.tsne_ratio: {tsne} is not one of ratios {ratios}")
    results = Path(config.get("results", "results"))
    if results.exists() and not results.is_dir():
        raise TarotInputError(f"results: {results} exists and is not a directory")
    lds = config.get("lds", {})
    lds_tasks = lds.get("tasks", {}) if lds.get("enabled", False) else {}
    both = sorted(set(lds_tasks) & set(config.get("tasks", {})))
    if both:
        raise TarotInputError(f"lds.tasks: {both} also named under tasks; task names share results/<task>/")
    blocks = [("tasks", config.get("tasks", {})), ("lds.tasks", lds_tasks)]
    for where, tasks in blocks:
        for name, block in tasks.items():
            try:
                task = get_task(block["kind"], block, seed=int(config.get("seed", 0)))
                task.check()
                if where == "lds.tasks":
                    require_model_outputs(task)
            except TarotInputError as exc:
                raise TarotInputError(f"{where}.{name}: {exc}") from None
    if lds_tasks:
        _check_lds(lds, lds_tasks)


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
