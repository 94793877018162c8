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
from .tasks import get_task

__all__ = ["check_config"]


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`TarotInputError` naming the offending key if the config cannot run.

    Checks: the t-SNE ratio is one of ``ratios``; the results path is not a file; every
    task block builds and passes its own :meth:`~tarot_select.tasks.Task.check` (dataset
    paths exist, sizes are consistent).
    """
    ratios = [float(r) for r in config.get("ratios", [])]
    tsne = config.get("report", {}).get("tsne_ratio")
    if tsne is not None and ratios and float(tsne) not in ratios:
        raise TarotInputError(f"report.tsne_ratio: {tsne} is not one of ratios {ratios}")
    results = Path(config.get("results", "results"))
    if results.exists() and not results.is_dir():
        raise TarotInputError(f"results: {results} exists and is not a directory")
    for name, block in config.get("tasks", {}).items():
        try:
            get_task(block["kind"], block, seed=int(config.get("seed", 0))).check()
        except TarotInputError as exc:
            raise TarotInputError(f"tasks.{name}: {exc}") from None
