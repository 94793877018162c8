"""Training pieces shared by the tasks.

For the classifier tasks (digits, mnist_mlp, cifar10_resnet9): deterministic mini-batch
loops over in-memory tensors and their proxy training (:func:`train_adam_proxy`). For the
tasks whose data stay on disk (motion, segmentation): index batches of any dataset
(:func:`batch_of`, :class:`IndexBatches`, :class:`JoinedDatasets`) and the seeded epoch loop
:func:`train_epochs`. For all: the cosine learning-rate schedule, batched evaluation
without gradients, CPU copies of states, the proxy checkpoints (:class:`ProxyCheckpoints`),
the validation of what :meth:`~tarot_select.tasks.base.Task.train_downstream` receives
(:func:`check_request`), and :class:`EpochLog`, the one place that reports how a training is
going (a log line per epoch and, for interactive runs, a progress bar).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from .base import SPLITS, Metric, ProxyCheckpoint, RunContext, TaskData

__all__ = [
    "EpochLog",
    "IndexBatches",
    "JoinedDatasets",
    "ProxyCheckpoints",
    "accuracy_and_margin",
    "adam",
    "batch_of",
    "check_indices",
    "check_request",
    "check_seed",
    "check_weights",
    "cosine_lr",
    "cpu_state",
    "epoch_order",
    "evaluated_epochs",
    "logits",
    "run_epoch",
    "set_lr",
    "tensors",
    "to_cpu",
    "train_adam_proxy",
    "train_epochs",
    "train_proxy_pool",
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


def check_request(
    data: TaskData, split: str, indices: Any, weights: Any, seed: Any, task: str
) -> tuple[torch.utils.data.Dataset, np.ndarray, np.ndarray | None, int]:
    """What :meth:`~tarot_select.tasks.base.Task.train_downstream` receives, validated in this
    order: ``split`` (one of :data:`~tarot_select.tasks.base.SPLITS`), ``seed``
    (:func:`check_seed`), ``indices`` (:func:`check_indices`) and ``weights``
    (:func:`check_weights`); messages start with ``task``.

    Returns
    -------
    tuple
        ``(dataset of the split, indices int64, weights or None, seed)``.
    """
    if split not in SPLITS:
        raise TarotInputError(f"{task}: unknown split {split!r}; one of {SPLITS}")
    seed = check_seed(seed, task)
    dataset = data.split(split)
    idx = check_indices(indices, len(dataset), split, task)  # type: ignore[arg-type]
    return dataset, idx, check_weights(weights, len(idx), task), seed


def evaluated_epochs(epochs: int, every: int, final: bool = False) -> list[int]:
    """Epochs (1-based) evaluated during a training of ``epochs`` epochs: every ``every``-th
    (none for 0), and the last one when ``final``."""
    rows = [e for e in range(1, epochs + 1) if every > 0 and e % every == 0]
    if final and epochs not in rows:
        rows.append(epochs)
    return rows


# --------------------------------------------------------------------------- index batches


def batch_of(dataset: Any, idx: np.ndarray) -> Any:
    """Items ``idx`` of a dataset (any order, repeats allowed), stacked into one batch.

    The dataset's own ``batch(idx)`` when it has one (array slices); through a ``Subset`` to
    its dataset; else the items stacked: a dict of tensors for dict items, a tuple of
    tensors for tuple items.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if hasattr(dataset, "batch"):
        return dataset.batch(idx)
    if isinstance(dataset, torch.utils.data.Subset):
        return batch_of(dataset.dataset, np.asarray(dataset.indices, dtype=np.int64)[idx])
    items = [dataset[int(i)] for i in idx]
    if isinstance(items[0], Mapping):
        return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
    return tuple(torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(len(items[0])))


class IndexBatches:
    """Re-iterable batches (:func:`batch_of`) of a dataset in index order, ``batch_size`` rows
    each (the last one shorter): gradient dumping and evaluation passes."""

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int) -> None:
        self.dataset, self.batch_size = dataset, max(1, int(batch_size))

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        n = len(self.dataset)  # type: ignore[arg-type]
        for start in range(0, n, self.batch_size):
            yield batch_of(self.dataset, np.arange(start, min(start + self.batch_size, n)))


class JoinedDatasets:
    """Several datasets indexed as one, in order (candidates ∪ targets for a proxy).

    :meth:`batch` takes each part's rows through :func:`batch_of` and puts them back in the
    order of ``idx``; the parts' batches must be dicts of tensors or tuples of tensors.
    """

    def __init__(self, parts: Sequence[torch.utils.data.Dataset]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def batch(self, idx: np.ndarray) -> Any:
        idx = np.asarray(idx, dtype=np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        chunks = []
        for k in np.unique(which):
            rows = np.flatnonzero(which == k)
            chunks.append((torch.from_numpy(rows), batch_of(self.parts[k], idx[rows] - self.offsets[k])))
        first = chunks[0][1]
        if isinstance(first, Mapping):
            return {name: _scatter(len(idx), [(rows, b[name]) for rows, b in chunks]) for name in first}
        return tuple(_scatter(len(idx), [(rows, b[j]) for rows, b in chunks]) for j in range(len(first)))


def _scatter(n: int, chunks: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """A tensor of ``n`` rows whose rows ``rows`` are ``t``, for every ``(rows, t)`` of ``chunks``."""
    first = chunks[0][1]
    full = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
    for rows, t in chunks:
        full[rows] = t
    return full


# --------------------------------------------------------------------------- training loops


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[np.ndarray]],
    loss_of: Callable[[np.ndarray], torch.Tensor],
    lr_at: Callable[[int, int], float],
    *,
    log: EpochLog,
    rng: np.random.Generator,
    device: torch.device,
    on_epoch: Callable[[int, float, float, torch.optim.Optimizer], None],
    grad_clip: float = 0.0,
) -> None:
    """The epoch loop of a training over batches of sample indices.

    For every epoch of ``log`` (0-based), in train mode, for every index batch ``idx`` of
    ``batches(epoch)``: the learning rate becomes ``lr_at(epoch, step)`` (``step`` counts the
    optimizer steps of the whole training from 0), then one optimizer step on
    ``loss_of(idx)`` (the batch's mean training loss, forward pass included), the gradient's
    global norm clipped to ``grad_clip`` first (0: not clipped). After every epoch:
    ``on_epoch(epoch, mean learning rate of its steps, mean loss per sample, optimizer)``.

    The model's random operations (dropout) draw from torch's generator, seeded once from
    ``rng`` before the first epoch (and before ``batches(0)``) and restored afterwards (with
    ``device``'s generator for CUDA), so a training is a function of its seed. The model
    and the optimizer must already be on ``device``.
    """
    step = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(rng.integers(2**62)))
        for epoch in log:
            model.train()
            lr_sum, loss_sum, seen, steps = 0.0, 0.0, 0, 0
            for idx in batches(epoch):
                lr = lr_at(epoch, step)
                set_lr(optimizer, lr)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_of(idx)
                loss.backward()
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                step += 1
                steps += 1
                lr_sum += lr
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
            on_epoch(epoch, lr_sum / max(steps, 1), loss_sum / max(seen, 1), optimizer)


class ProxyCheckpoints:
    """What a proxy training does after every epoch (the ``on_epoch`` of :func:`train_epochs`).

    It reports the epoch (:meth:`EpochLog.end`) and, after each of the last
    ``cfg["checkpoints"]`` of ``cfg["epochs"]`` epochs, writes ``out_dir/ckpt_{epoch}.pt``
    (``epoch`` 1-based) with ``{"model": state_dict, "optimizer": optimizer state}`` (CPU
    tensors) and appends its :class:`~tarot_select.tasks.base.ProxyCheckpoint` to
    :attr:`saved` (``lr``: the learning rate reported for the epoch; ``extra``: the mean
    training loss).
    """

    def __init__(self, model: nn.Module, out_dir: Path, cfg: Mapping[str, Any], log: EpochLog) -> None:
        self.model, self.out_dir, self.log = model, Path(out_dir), log
        self.first_saved = cfg["epochs"] - cfg["checkpoints"]
        self.saved: list[ProxyCheckpoint] = []

    def __call__(self, epoch: int, lr: float, loss: float, optimizer: torch.optim.Optimizer) -> None:
        self.log.end(loss, lr)
        if epoch < self.first_saved:
            return
        path = self.out_dir / f"ckpt_{epoch + 1}.pt"
        with atomic_path(path) as tmp:
            torch.save({"model": cpu_state(self.model), "optimizer": to_cpu(optimizer.state_dict())}, tmp)
        self.saved.append(ProxyCheckpoint(path=str(path), lr=lr, epoch=epoch + 1, extra={"train_loss": loss}))


def train_proxy_pool(
    fit: Callable[..., None],
    model: nn.Module,
    data: TaskData,
    cfg: Mapping[str, Any],
    rng: np.random.Generator,
    out_dir: Path,
    log: EpochLog,
) -> list[ProxyCheckpoint]:
    """A proxy training on candidates ∪ targets (:class:`JoinedDatasets`), shuffled anew every
    epoch by ``rng``, saving its last checkpoints (:class:`ProxyCheckpoints`).

    ``fit`` is the task's training loop, called once as ``fit(model, fetch, order_of_epoch,
    cfg, log, rng, on_epoch)``: ``fetch(idx)`` gives the batch of pool rows ``idx``,
    ``order_of_epoch()`` an epoch's order of the pool, ``on_epoch(epoch, lr, mean loss,
    optimizer)`` must follow every epoch. Returns the saved checkpoints.
    """
    pool = JoinedDatasets([data.candidates, data.targets])
    checkpoints = ProxyCheckpoints(model, out_dir, cfg, log)
    fit(model, pool.batch, lambda: rng.permutation(len(pool)), cfg, log, rng, checkpoints)
    return checkpoints.saved


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
    epochs = EpochLog(log, f"{name} proxy", cfg["epochs"], context.progress)
    end_of_epoch = ProxyCheckpoints(model, out_dir, cfg, epochs)
    for epoch in epochs:
        lr = cosine_lr(cfg["lr"], epoch, cfg["epochs"])
        set_lr(optimizer, lr)
        loss = run_epoch(model, optimizer, x, y, torch.randperm(len(y), generator=generator), cfg["batch_size"])
        end_of_epoch(epoch, lr, loss, optimizer)
    return end_of_epoch.saved
