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

Influence benchmarks (LDS, :mod:`tarot_select.lds`) need four more methods, the
:class:`ModelOutputs` protocol; :class:`ClassifierOutputsMixin` implements the last three
for classifiers whose items are ``(x, y)``:

``downstream_model`` a fresh downstream model (to load a :meth:`Task.train_downstream` state into)
``output_fn``        the scalar model output whose gradient TRAK / WFD features use
``outputs``          that output of a trained downstream model on every example of a split
``train_weights``    TRAK's per-example out-to-loss factor :math:`1 - p_y`

The proxy model (for gradients) and the downstream model (trained on the selection) may
differ: that is how transfer is shown (e.g. AutoBots proxy, Wayformer downstream).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from scipy import special
from torch import nn

from ..errors import TarotInputError
from ..lds import margin

__all__ = [
    "SPLITS",
    "ClassifierOutputsMixin",
    "ModelOutputs",
    "ProxyCheckpoint",
    "Task",
    "TaskData",
    "require_model_outputs",
]

#: Batch size of the forward passes in :class:`ClassifierOutputsMixin`.
_OUTPUT_BATCH = 512

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


@runtime_checkable
class ModelOutputs(Protocol):
    """What a task adds to :class:`Task` for influence benchmarks (LDS, :mod:`tarot_select.lds`).

    A task supports the LDS benchmark when it has all four methods (``isinstance(task,
    ModelOutputs)``; :func:`require_model_outputs` raises a clear error otherwise).
    :class:`ClassifierOutputsMixin` gives the last three to classifiers.
    """

    def downstream_model(self) -> nn.Module:
        """A freshly initialised downstream model, the architecture that
        :meth:`Task.train_downstream` trains and whose state dict it returns."""

    def output_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Per-sample scalar *model output* whose gradient attribution features use.

        Same calling convention as :meth:`Task.loss_fn` (``sample`` is one item as a batch
        of size 1), so it can be passed as the ``loss_fn`` of a
        :class:`~tarot_select.featurize.GradientFeaturizer`. For classifiers: the
        correct-class margin :func:`tarot_select.lds.margin` (TRAK's output function).
        """

    def outputs(self, data: TaskData, state: Mapping[str, Any], split: str) -> np.ndarray:
        """:meth:`output_fn` of the trained downstream model ``state`` on every example of
        ``split``, shape ``(n_split,)`` float64, in index order (no gradients)."""

    def train_weights(self, data: TaskData, state: Mapping[str, Any], split: str) -> np.ndarray:
        """TRAK's out-to-loss factor per example of ``split``, shape ``(n_split,)`` float64:
        :math:`-\\partial L / \\partial f`, i.e. :math:`1 - p_y` for the margin output."""


def require_model_outputs(task: Task) -> ModelOutputs:
    """``task`` itself, or :class:`~tarot_select.errors.TarotInputError` if it cannot serve
    the LDS benchmark (it lacks a :class:`ModelOutputs` method)."""
    if not isinstance(task, ModelOutputs):
        missing = [m for m in ("downstream_model", "output_fn", "outputs", "train_weights") if not hasattr(task, m)]
        raise TarotInputError(
            f"task kind {task.name!r} does not support the LDS benchmark (it lacks {', '.join(missing)})"
        )
    return task


class ClassifierOutputsMixin:
    """:meth:`ModelOutputs.output_fn`, :meth:`~ModelOutputs.outputs` and :meth:`~ModelOutputs.train_weights` for
    classifiers: items are ``(x, y)`` with integer labels ``y`` and the downstream model
    maps a batch of ``x`` to logits ``(B, C)``.

    Put it before :class:`Task` in the bases; the class must implement
    :meth:`ModelOutputs.downstream_model`. The output is the margin
    :math:`f = \\ell_y - \\log\\sum_{c\\ne y} e^{\\ell_c}` and the train weight
    :math:`1 - p_y = \\sigma(-f)` (with :math:`p = \\operatorname{softmax}(\\ell)`).
    """

    def output_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Margin of ``forward(x)`` at label ``y`` for a sample ``(x, y)`` of batch size 1."""
        return margin(forward(sample[0]), sample[1]).sum()

    def _margins(self, data: TaskData, state: Mapping[str, Any], split: str) -> np.ndarray:
        model = self.downstream_model()  # type: ignore[attr-defined]
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise TarotInputError(f"state does not fit the downstream model: {exc}") from None
        model.eval()
        loader = torch.utils.data.DataLoader(data.split(split), batch_size=_OUTPUT_BATCH, shuffle=False)
        with torch.no_grad():
            parts = [margin(model(batch[0].float()), batch[1]) for batch in loader]
        return torch.cat(parts).double().numpy()

    def outputs(self, data: TaskData, state: Mapping[str, Any], split: str) -> np.ndarray:
        """Margins of the trained downstream model ``state`` on ``split``, shape ``(n_split,)``."""
        return self._margins(data, state, split)

    def train_weights(self, data: TaskData, state: Mapping[str, Any], split: str) -> np.ndarray:
        """:math:`1 - p_y = \\sigma(-f)` on ``split``, shape ``(n_split,)``, in ``(0, 1)``."""
        f = self._margins(data, state, split)
        return special.expit(-f)
