"""Task discovery: every package under :mod:`tarot_select.tasks` with a ``SPEC`` is a task kind.

A task kind is a subpackage ``tarot_select/tasks/<kind>/`` whose ``__init__`` defines
``SPEC = TaskSpec(...)``: the kind's name, its settings dataclass (torch-free) and the
dotted path of its :class:`~tarot_select.tasks.base.Task` class, imported only when a job
builds the task. Packages outside this project register through the entry-point group
``tarot_select.tasks`` (``name = "package.module:SPEC"``). There is no list to edit.

This module imports no torch: the Snakemake process uses it to check configs.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ..errors import TarotInputError
from .settings import TaskSettings

if TYPE_CHECKING:  # pragma: no cover
    from .base import RunContext, Task

__all__ = ["ENTRY_POINT_GROUP", "TaskSpec", "get_spec", "get_task", "task_kinds"]

log = logging.getLogger(__name__)

#: Entry-point group through which other packages add task kinds.
ENTRY_POINT_GROUP = "tarot_select.tasks"


@dataclass(frozen=True)
class TaskSpec:
    """What the registry knows of a task kind without importing its model code.

    Attributes
    ----------
    kind : str
        Name used as ``kind:`` in config blocks.
    settings : type[TaskSettings]
        The kind's settings dataclass (keys, defaults, checks).
    task : str
        ``"module:Class"`` of its :class:`~tarot_select.tasks.base.Task` subclass.
    model_outputs : bool
        The task class implements :class:`~tarot_select.tasks.base.ModelOutputs` (it can
        serve the LDS benchmark); a test holds this flag to the class.
    summary : str
        One line for listings.
    """

    kind: str
    settings: type[TaskSettings]
    task: str
    model_outputs: bool = False
    summary: str = ""

    def task_class(self) -> type[Task]:
        """Import and return the task class."""
        module, _, name = self.task.partition(":")
        return getattr(importlib.import_module(module), name)


@lru_cache(maxsize=1)
def _discover() -> dict[str, TaskSpec]:
    specs: dict[str, TaskSpec] = {}
    package = importlib.import_module(__package__ or "tarot_select.tasks")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg or info.name.startswith("_"):
            continue
        spec = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, TaskSpec):
            _add(specs, spec, f"{package.__name__}.{info.name}")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = entry.load()
        except Exception as exc:  # a broken plug-in must not hide the built-in tasks
            log.warning("task entry point %s failed to load: %s", entry.name, exc)
            continue
        if isinstance(spec, TaskSpec):
            _add(specs, spec, entry.value)
    return specs


def _add(specs: dict[str, TaskSpec], spec: TaskSpec, origin: str) -> None:
    if spec.kind in specs:
        raise RuntimeError(f"task kind {spec.kind!r} defined twice (again in {origin})")
    specs[spec.kind] = spec


def task_kinds() -> dict[str, TaskSpec]:
    """Every known task kind, by name."""
    return dict(_discover())


def get_spec(kind: Any) -> TaskSpec:
    """The :class:`TaskSpec` of ``kind``, or :class:`TarotInputError` listing the known kinds."""
    specs = _discover()
    if kind not in specs:
        raise TarotInputError(f"unknown task kind {kind!r}; choose one of {', '.join(sorted(specs))}")
    return specs[kind]


def get_task(
    kind: str,
    config: Mapping[str, Any] | TaskSettings | None = None,
    seed: int = 0,
    context: RunContext | None = None,
    *,
    check: bool = True,
) -> Task:
    """Build task ``kind`` from its settings or config block (see :class:`~tarot_select.tasks.base.Task`)."""
    spec = get_spec(kind)
    return spec.task_class()(config, seed=seed, context=context, check=check)
