"""Training pieces shared by the classifier tasks (digits, mnist_mlp, cifar10_resnet9).

Deterministic mini-batch loops over in-memory tensors, the cosine learning-rate schedule,
and the validation of the ``indices`` / ``weights`` that
:meth:`~tarot_select.tasks.base.Task.train_downstream` receives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TarotInputError

__all__ = [
    "adam",
    "check_indices",
    "check_weights",
    "cosine_lr",
    "epoch_order",
    "run_epoch",
    "set_lr",
    "tensors",
]


def tensors(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` tensors of a dataset of ``(x, y)`` items (no copy for a TensorDataset)."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        parts = [tensors(d) for d in dataset.datasets]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


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
    """One pass over ``x[order]`` in mini-batches; returns the mean training loss."""
    model.train()
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
