"""Task registry: ``get_task(name, config, seed)`` builds a task from its config block."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import TarotInputError
from .base import SPLITS, ModelOutputs, ProxyCheckpoint, Task, TaskData, require_model_outputs

__all__ = [
    "SPLITS",
    "TASKS",
    "ModelOutputs",
    "ProxyCheckpoint",
    "Task",
    "TaskData",
    "get_task",
    "register",
    "require_model_outputs",
]

TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator adding a task to :data:`TASKS` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    TASKS[cls.name] = cls
    return cls


def get_task(kind: str, config: Mapping[str, Any], seed: int = 0) -> Task:
    """Instantiate the task ``kind`` with its config block."""
    _load_builtin()
    if kind not in TASKS:
        raise TarotInputError(f"unknown task kind {kind!r}; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[kind](config, seed=seed)


def _load_builtin() -> None:
    from . import cifar10, digits, mnist  # noqa: F401  (register themselves)
