"""The task protocol: what a task must provide for the pipeline to select data for it.

A task is one module under :mod:`tarot_select.tasks` plus one config block; the
Snakemake rules only call the methods below, so adding a task needs no new rule.

Stages and the methods they call
--------------------------------
``prepare_data``     :meth:`Task.check` (also at config load), :meth:`Task.prepare`
``train_proxy``      :meth:`Task.train_proxy` → checkpoints (weights, learning rate, Adam state)
``dump_gradients``   :meth:`Task.proxy_model`, :meth:`Task.loss_fn`, :meth:`Task.gradient_batches`
``train_downstream`` :meth:`Task.train_downstream` on a weighted index list of one split
``evaluate``         :meth:`Task.evaluate` → ``{metric: value}``; :attr:`Task.metric` is the primary one

The proxy model (for gradients) and the downstream model (trained on the selection) may
differ: that is how transfer is shown (e.g. AutoBots proxy, Wayformer downstream).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Task", "TaskData", "ProxyCheckpoint", "SPLITS"]

#: Splits every task provides. ``candidates`` is the pool, ``targets`` the target sample
#: used for selection, ``evaluation`` the held-out set of the target domain.
SPLITS: tuple[str, ...] = ("candidates", "targets", "evaluation")


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task, as torch datasets, and where candidates come from.

    Attributes
    ----------
    candidates, targets, evaluation : torch.utils.data.Dataset
        Map-style datasets; item ``i`` of ``candidates`` is candidate index ``i``.
    sources : np.ndarray, shape (n_candidates,), str
        Name of the source (sub-dataset) of every candidate, for per-source reports.
    target_groups : np.ndarray, shape (n_targets,), or None
        Subtask label per target (used by LESS), if the task has subtasks.
    """

    candidates: torch.utils.data.Dataset
    targets: torch.utils.data.Dataset
    evaluation: torch.utils.data.Dataset
    sources: np.ndarray
    target_groups: np.ndarray | None = None

    def split(self, name: str) -> torch.utils.data.Dataset:
        """Dataset of split ``name`` (one of :data:`SPLITS`)."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; one of {SPLITS}")
        return getattr(self, name)


@dataclass(frozen=True)
class ProxyCheckpoint:
    """One saved proxy checkpoint.

    ``path`` holds a dict ``{"model": state_dict, "optimizer": adam_state_dict}``;
    ``lr`` is the learning rate in force at that point (the TracIn / LESS weight).
    """

    path: str
    lr: float
    epoch: int
    extra: Mapping[str, Any] = field(default_factory=dict)


class Task(ABC):
    """Base class of every task. Subclasses set :attr:`name` and :attr:`metric`.

    Parameters
    ----------
    config : mapping
        The task's config block (validated by the workflow schema).
    seed : int
        Global seed; every random choice of the task derives from it.
    """

    #: Registry name, used in config and in file paths.
    name: str = ""
    #: Primary metric reported in tables (a key of :meth:`evaluate`'s result).
    metric: str = ""
    #: Whether a larger metric is better (marks the best entry in tables).
    higher_is_better: bool = True

    def __init__(self, config: Mapping[str, Any], seed: int = 0) -> None:
        self.config = dict(config)
        self.seed = int(seed)

    # ------------------------------------------------------------------ data
    def check(self) -> None:
        """Raise :class:`~tarot_select.errors.TarotInputError` if the task cannot run
        (a dataset path that does not exist, an inconsistent setting). Must be cheap:
        it runs when the workflow loads its config, before any job."""

    @abstractmethod
    def prepare(self, out_dir: Path) -> None:
        """Materialise the splits under ``out_dir`` (arrays, or manifests of files for
        large datasets). Deterministic given the config and seed."""

    @abstractmethod
    def load(self, data_dir: Path) -> TaskData:
        """Load the splits that :meth:`prepare` wrote."""

    # ----------------------------------------------------------------- proxy
    @abstractmethod
    def proxy_model(self) -> nn.Module:
        """A freshly initialised proxy model (weights are loaded from checkpoints)."""

    @abstractmethod
    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets, saving checkpoints under ``out_dir``."""

    @abstractmethod
    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Per-sample loss for gradients: ``sample`` is one item as a batch of size 1,
        ``forward`` the functional model call (see :mod:`tarot_select.gradients`)."""

    def gradient_batches(self, dataset: torch.utils.data.Dataset, batch_size: int = 64) -> Iterable[Any]:
        """Batches of ``dataset`` in index order (no shuffling) for gradient dumping."""
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)

    # ------------------------------------------------------------ downstream
    @abstractmethod
    def train_downstream(
        self,
        data: TaskData,
        split: str,
        indices: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train the downstream model from scratch on ``data.split(split)[indices]``.

        ``weights`` are per-sample repeat counts or masses (None: uniform); the task
        decides how to honour them (e.g. repeat counts per epoch, or a weighted sampler
        with the same number of steps). Returns a state dict that :meth:`evaluate` takes.
        """

    @abstractmethod
    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """Metrics of a trained downstream model on ``data.evaluation``."""
