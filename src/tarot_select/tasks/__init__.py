"""Tasks: what the pipeline selects data for (datasets, proxy and downstream models, metrics).

Each task kind is a subpackage with a ``SPEC`` (:class:`~.registry.TaskSpec`), found by
:mod:`~.registry` without a list to edit. :mod:`~.base` holds the protocol
(:class:`~.base.Task`), :mod:`~.settings` the typed settings. Importing this package (and
the registry, and the settings) costs no torch import; the protocol's names load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import TaskSpec, get_spec, get_task, task_kinds
from .settings import Settings, TaskSettings, setting

__all__ = [
    "SPLITS",
    "Metric",
    "ModelOutputs",
    "ProxyCheckpoint",
    "RunContext",
    "Settings",
    "Task",
    "TaskData",
    "TaskSettings",
    "TaskSpec",
    "get_spec",
    "get_task",
    "require_model_outputs",
    "setting",
    "task_kinds",
]

_BASE_NAMES = frozenset(
    {"SPLITS", "Metric", "ModelOutputs", "ProxyCheckpoint", "RunContext", "Task", "TaskData", "require_model_outputs"}
)


def __getattr__(name: str) -> Any:
    """The protocol's names (:mod:`~.base`, which imports torch) load on first use."""
    if name in _BASE_NAMES:
        value = getattr(importlib.import_module(".base", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
