"""Training pieces shared by the classifier tasks (digits, mnist_mlp, cifar10_resnet9).

Deterministic mini-batch loops over in-memory tensors, the cosine learning-rate schedule,
batched evaluation without gradients, CPU copies of states for checkpoints, the
validation of what :meth:`~tarot_select.tasks.base.Task.train_downstream` receives, and
:class:`EpochLog`, the one place that reports how a training is going (a log line per
epoch and, for interactive runs, a progress bar).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import TarotInputError
from ..io import atomic_path
from ..outputs import margin
from .base import Metric, ProxyCheckpoint, RunContext, TaskData

__all__ = [
    "train_adam_proxy",
    "EpochLog",
    "accuracy_and_margin",
    "adam",
    "check_indices",
    "check_seed",
    "check_weights",
    "cosine_lr",
    "cpu_state",
    "epoch_order",
    "logits",
    "run_epoch",
    "set_lr",
    "tensors",
    "to_cpu",
]


class EpochLog:
    """Per-epoch report of one training: an INFO line per epoch and an optional progress bar.

    Iterate over it for the 0-based epoch numbers (it times each epoch and drives the
    bar), and call :meth:`end` once per epoch. The line reads, e.g.::

        digits downstream epoch 3/30: loss 0.4123, lr 0.00291, accuracy 71.5 %, 0.21 s

    (loss: mean training loss of the epoch; lr: the learning rate of the epoch, the mean
    over its steps for per-step schedules; metrics in their displayed unit; seconds since
    the epoch began). Reporting consumes no random numbers and changes no model state.

    Parameters
    ----------
    logger : logging.Logger
        The task module's logger.
    stage : str
        What trains, e.g. ``"digits downstream"``.
    epochs : int
        Number of epochs.
    progress : bool
        Show a tqdm bar (the task's :attr:`RunContext.progress
        <tarot_select.tasks.base.RunContext.progress>`).
    """

    def __init__(self, logger: logging.Logger, stage: str, epochs: int, progress: bool = False) -> None:
        self.logger = logger
        self.stage = stage
        self.epochs = int(epochs)
        self.progress = bool(progress)
        self._bar: Any = None
        self._epoch = -1
        self._start = 0.0

    @property
    def wanted(self) -> bool:
        """Whether anyone sees the report (INFO is enabled or a bar is shown): compute
        per-epoch metrics only then."""
        return self.progress or self.logger.isEnabledFor(logging.INFO)

    def __iter__(self) -> Iterator[int]:
        with tqdm(range(self.epochs), desc=self.stage, unit="epoch", disable=not self.progress) as bar:
            self._bar = bar
            for epoch in bar:
                self._epoch, self._start = epoch, time.perf_counter()
                yield epoch

    def end(self, loss: float, lr: float, metrics: Mapping[Metric, float] | None = None) -> None:
        """Report the epoch just trained: mean training ``loss``, learning rate ``lr`` and
        optional ``metrics`` (stored values; shown as ``value * scale`` with the unit)."""
        seconds = time.perf_counter() - self._start
        shown = {
            m.name: f"{value * m.scale:.4g}{' ' + m.unit if m.unit else ''}" for m, value in (metrics or {}).items()
        }
        parts = [f"loss {loss:.4f}", f"lr {lr:.3g}", *(f"{name} {text}" for name, text in shown.items())]
        self.logger.info(
            "%s epoch %d/%d: %s, %.2f s", self.stage, self._epoch + 1, self.epochs, ", ".join(parts), seconds
        )
        if self._bar is not None and self.progress:
            self._bar.set_postfix({"loss": f"{loss:.4f}", "lr": f"{lr:.3g}", **shown}, refresh=False)


def tensors(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` tensors of a dataset of ``(x, y)`` items (no copy for a TensorDataset)."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        parts = [tensors(d) for d in dataset.datasets]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


def logits(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Outputs of ``model`` on ``x`` in eval mode without gradients, in batches of
    ``batch_size`` moved to ``device``; returned on the CPU. The model's train / eval mode
    is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def accuracy_and_margin(scores: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``accuracy`` (arg-max equals the label) and ``mean_margin`` (mean correct-class margin,
    :func:`~tarot_select.outputs.margin`) of logits ``scores`` ``(n, C)`` for labels ``y``."""
    y = y.long()
    return {
        "accuracy": float((scores.argmax(1) == y).double().mean()),
        "mean_margin": float(margin(scores, y).double().mean()),
    }


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as detached CPU copies."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def to_cpu(tree: Any) -> Any:
    """``tree`` (e.g. an optimizer state dict) with every tensor as a detached CPU copy."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, Mapping):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_cpu(v) for v in tree]
    return tree


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Learning rate of 0-based ``epoch``: ``base * (1 + cos(pi * epoch / epochs)) / 2``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
) -> float:
    """One pass over ``x[order]`` in mini-batches; returns the mean training loss.

    ``order`` may live on the CPU; it is moved to the device of ``x``."""
    model.train()
    order = order.to(x.device)
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam over the named parameters (the state dict then records parameter names)."""
    return torch.optim.Adam(list(model.named_parameters()), lr=lr)


def check_seed(seed: Any, task: str) -> int:
    """``seed`` as a non-negative int, or :class:`TarotInputError` starting with ``task``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TarotInputError(f"{task}: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_indices(indices: Any, n: int, split: str, task: str) -> np.ndarray:
    """``indices`` as ``int64``: a non-empty 1-D integer array within ``[0, n)``; messages start with ``task``."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise TarotInputError(f"{task}: indices must be a non-empty 1-D array, got shape {idx.shape}")
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise TarotInputError(f"{task}: indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise TarotInputError(f"{task}: indices must lie in [0, {n}) for split {split!r}")
    return idx.astype(np.int64)


def check_weights(weights: Any, n: int, task: str) -> np.ndarray | None:
    """``None``, ``int64`` repeat counts, or ``float64`` masses, validated; messages start with ``task``."""
    if weights is None:
        return None
    w = np.asarray(weights)
    if w.shape != (n,):
        raise TarotInputError(f"{task}: weights must have shape ({n},) like indices, got {w.shape}")
    if w.dtype == np.bool_ or not (np.issubdtype(w.dtype, np.integer) or np.issubdtype(w.dtype, np.floating)):
        raise TarotInputError(f"{task}: weights must be integer counts or float masses, got dtype {w.dtype}")
    if np.issubdtype(w.dtype, np.floating) and not np.isfinite(w).all():
        raise TarotInputError(f"{task}: weights must be finite")
    if (w < 0).any() or w.sum() <= 0:
        raise TarotInputError(f"{task}: weights must be non-negative with a positive sum")
    return w.astype(np.int64) if np.issubdtype(w.dtype, np.integer) else w.astype(np.float64)


def epoch_order(idx: np.ndarray, weights: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Sample indices seen in one epoch, shuffled.

    ``None``: every index once. Integer counts: index ``i`` ``weights[i]`` times. Float
    masses: ``len(idx)`` draws with replacement, probability proportional to the mass.
    """
    if weights is None:
        seen = idx
    elif np.issubdtype(weights.dtype, np.integer):
        seen = np.repeat(idx, weights)
    else:
        seen = rng.choice(idx, size=len(idx), replace=True, p=weights / weights.sum())
    return seen[rng.permutation(len(seen))]


def train_adam_proxy(
    model: nn.Module,
    data: TaskData,
    cfg: Mapping[str, Any],
    seed: int,
    out_dir: Path,
    context: RunContext,
    name: str,
    log: logging.Logger,
) -> list[ProxyCheckpoint]:
    """The classifier tasks' proxy training: Adam with a per-epoch cosine decay on
    candidates ∪ targets, shuffled by a generator seeded with ``seed``, on ``context.device``.

    After each of the last ``cfg["checkpoints"]`` of ``cfg["epochs"]`` epochs,
    ``out_dir/ckpt_{epoch}.pt`` (``epoch`` 1-based) receives ``{"model", "optimizer"}``
    (CPU tensors); its :attr:`ProxyCheckpoint.lr` is the learning rate of that epoch. One
    log line per epoch (:class:`EpochLog`).
    """
    device = context.torch_device
    model = model.to(device)
    x_c, y_c = tensors(data.candidates)
    x_t, y_t = tensors(data.targets)
    x, y = torch.cat([x_c, x_t]).float().to(device), torch.cat([y_c, y_t]).long().to(device)
    optimizer = adam(model, cfg["lr"])
    generator = torch.Generator().manual_seed(seed)
    first_saved = cfg["epochs"] - cfg["checkpoints"]
    saved: list[ProxyCheckpoint] = []
    epochs = EpochLog(log, f"{name} proxy", cfg["epochs"], context.progress)
    for epoch in epochs:
        lr = cosine_lr(cfg["lr"], epoch, cfg["epochs"])
        set_lr(optimizer, lr)
        loss = run_epoch(model, optimizer, x, y, torch.randperm(len(y), generator=generator), cfg["batch_size"])
        epochs.end(loss, lr)
        if epoch >= first_saved:
            path = Path(out_dir) / f"ckpt_{epoch + 1}.pt"
            with atomic_path(path) as tmp:
                torch.save({"model": cpu_state(model), "optimizer": to_cpu(optimizer.state_dict())}, tmp)
            saved.append(ProxyCheckpoint(path=str(path), lr=lr, epoch=epoch + 1, extra={"train_loss": loss}))
    return saved
