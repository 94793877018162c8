"""The cifar10_resnet9 task: the ResNet-9 models, TRAK's training recipe, the task class."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...embed import pool_feature_maps
from ...errors import TarotInputError
from ...io import atomic_path, library_versions, save_npz, write_json_atomic
from .._config import seeded
from .._training import (
    EpochLog,
    accuracy_and_margin,
    check_indices,
    check_seed,
    check_weights,
    cpu_state,
    epoch_order,
    logits,
    set_lr,
    tensors,
    to_cpu,
)
from ..base import SPLITS, ClassifierOutputsMixin, Metric, ProxyCheckpoint, Task, TaskData, load_prepared_arrays
from .data import N_CLASSES, load_cifar10
from .settings import ARCHS, Cifar10Settings

__all__ = ["ARCHS", "CIFAR10_MEAN", "CIFAR10_STD", "Cifar10Task", "ResNet9", "count_parameters"]

logger = logging.getLogger(__name__)

#: Per-channel mean and std of TRAK's CIFAR-10 code (pixels scaled to [0, 1]).
CIFAR10_MEAN: Final[tuple[float, float, float]] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Final[tuple[float, float, float]] = (0.2023, 0.1994, 0.2010)

_MANIFEST: Final[str] = "data.json"
_INDEX_FILE: Final[str] = "indices.npz"
_EVAL_BATCH: Final[int] = 1024
_CROP_PAD: Final[int] = 4

# Stream identifiers of the seeded generators (second entry of the seed).
_STREAM_PROXY, _STREAM_DOWNSTREAM = 0, 1


# --------------------------------------------------------------------------- model


class _ConvBN(nn.Sequential):
    """Convolution without bias, batch norm, ReLU (not in-place, for ``torch.func``)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size=kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )


class _Residual(nn.Module):
    """``x + body(x)`` with ``body`` two 3×3 :class:`_ConvBN` of ``channels``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_ConvBN(channels, channels), _ConvBN(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + body(x)``."""
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 for 32×32 RGB images with raw pixel values (see the module docstring).

    Parameters
    ----------
    width : int, default 64
        Channels of the first block; the later blocks have 2, 4 (and, for ``myrtle``, 8)
        times as many.
    arch : {"trak", "myrtle"}, default "trak"
        TRAK's ``construct_rn9`` or the ``cifar10-fast`` ResNet-9.
    n_classes : int, default 10

    Notes
    -----
    Uses batch norm: call ``eval()`` before computing per-sample gradients or outputs.
    """

    def __init__(self, width: int = 64, arch: str = "trak", n_classes: int = N_CLASSES) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise TarotInputError(f"cifar10: unknown arch {arch!r}; one of {ARCHS}")
        w = int(width)
        if arch == "trak":
            self.features = nn.Sequential(
                _ConvBN(3, w),
                _ConvBN(w, 2 * w, kernel_size=5, stride=2, padding=2),
                _Residual(2 * w),
                _ConvBN(2 * w, 4 * w),
                nn.MaxPool2d(2),
                _Residual(4 * w),
                _ConvBN(4 * w, 2 * w, padding=0),
            )
            out_channels, self.scale = 2 * w, 0.2
        else:
            self.features = nn.Sequential(
                _ConvBN(3, w),
                _ConvBN(w, 2 * w),
                nn.MaxPool2d(2),
                _Residual(2 * w),
                _ConvBN(2 * w, 4 * w),
                nn.MaxPool2d(2),
                _ConvBN(4 * w, 8 * w),
                nn.MaxPool2d(2),
                _Residual(8 * w),
            )
            out_channels, self.scale = 8 * w, 0.125
        self.head = nn.Linear(out_channels, n_classes, bias=False)
        self.arch = arch
        # Not in the state dict: constants of the input scaling.
        self.register_buffer("pixel_mean", 255.0 * torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", 255.0 * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` for images ``(B, 3, 32, 32)`` with pixel values 0..255."""
        h = (x.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        h = self.features(h).amax(dim=(2, 3))
        return self.head(h) * self.scale


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (batch-norm running statistics not included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- training


def _triangular_lr(peak: float, step: int, peak_step: float, total_steps: int) -> float:
    """TRAK's one-cycle schedule: 0 → ``peak`` linearly until ``peak_step``, then → 0 at ``total_steps``."""
    if step < peak_step:
        return peak * step / peak_step
    return peak * max(total_steps - step, 0) / max(total_steps - peak_step, 1e-12)


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random 32×32 crops of the zero-padded (4 pixels) images and random horizontal flips.

    ``x`` is ``(B, C, H, W)`` (any dtype); the offsets and flips come from ``rng``.
    """
    b, _, h, w = x.shape
    pad = _CROP_PAD
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H + 2p, W + 2p, C)
    rows = torch.from_numpy(rng.integers(0, 2 * pad + 1, size=b))[:, None] + torch.arange(h)
    cols = torch.from_numpy(rng.integers(0, 2 * pad + 1, size=b))[:, None] + torch.arange(w)
    out = padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = torch.from_numpy(rng.random(b) < 0.5)[:, None, None, None]
    return torch.where(flip, out.flip(3), out).contiguous()


def _optimizer(model: nn.Module, cfg: Mapping[str, Any], kind: str) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam over the named parameters (the state dict records names)."""
    params = list(model.named_parameters())
    if kind == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    order_of_epoch: Callable[[], np.ndarray],
    cfg: Mapping[str, Any],
    rng: np.random.Generator,
    augment: bool,
    device: torch.device,
    log: EpochLog,
) -> Iterator[tuple[int, float, float]]:
    """Train ``model`` for ``cfg["epochs"]`` passes with the triangular per-step lr schedule.

    Every epoch visits ``x[order_of_epoch()]`` in mini-batches of ``cfg["batch_size"]``
    (the number of samples per epoch must not change), moved to ``device``. Yields
    ``(epoch, mean_lr, mean_loss)`` after each epoch (``epoch`` 0-based) for the caller to
    report with ``log`` (whose iteration gives the epochs) and to save checkpoints.
    """
    epochs, batch_size = int(cfg["epochs"]), int(cfg["batch_size"])
    order = order_of_epoch()
    steps_per_epoch = math.ceil(len(order) / batch_size)
    total_steps = epochs * steps_per_epoch
    peak_step = float(cfg["lr_peak_epoch"]) * steps_per_epoch
    model.to(device)
    model.train()
    step = 0
    for epoch in log:
        if epoch > 0:
            order = order_of_epoch()
        lr_sum, loss_sum, count = 0.0, 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start : start + batch_size])
            xb = _augment(x[idx], rng) if augment else x[idx]
            lr = _triangular_lr(float(cfg["lr"]), step, peak_step, total_steps)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb.to(device)), y[idx].to(device))
            loss.backward()
            optimizer.step()
            step += 1
            lr_sum += lr
            loss_sum += float(loss.detach()) * len(idx)
            count += len(idx)
        yield epoch, lr_sum / steps_per_epoch, loss_sum / max(count, 1)


# --------------------------------------------------------------------------- task


class Cifar10Task(ClassifierOutputsMixin, Task):
    """CIFAR-10 with ResNet-9 (see :mod:`tarot_select.tasks.cifar10` for data, splits, model and settings).

    Parameters
    ----------
    config : mapping
        The task's settings (:class:`~.settings.Cifar10Settings`) or config block (``root``
        is required).
    seed : int
        Seeds the proxy's initialisation, shuffling and augmentation (not the splits).
    """

    name = "cifar10_resnet9"
    SETTINGS = Cifar10Settings
    metrics = (
        Metric("accuracy", higher_is_better=True, unit="%", scale=100.0),
        Metric("mean_margin", higher_is_better=True, unit="", scale=1.0),
    )

    # ------------------------------------------------------------------ data
    def _split_indices(self, n_train_images: int, n_test_images: int) -> dict[str, tuple[str, np.ndarray]]:
        """``{split: (source set "train" or "test", image indices)}`` for the given image counts."""
        s = self.settings
        n_train = n_train_images if s["n_train"] is None else s["n_train"]
        if n_train > n_train_images:
            raise TarotInputError(f"cifar10: n_train={n_train} exceeds the {n_train_images} training images")
        n_eval = s["n_evaluation"]
        n_targets = n_test_images - n_eval if s["n_targets"] is None else s["n_targets"]
        if n_targets < 1 or n_targets + n_eval > n_test_images:
            raise TarotInputError(
                f"cifar10: n_targets + n_evaluation = {n_targets} + {n_eval} needs at least one target and at most "
                f"the {n_test_images} test images"
            )
        targets = np.arange(n_targets, dtype=np.int64)
        evaluation = np.arange(n_targets, n_targets + n_eval, dtype=np.int64) if n_eval > 0 else targets
        return {
            "candidates": ("train", np.arange(n_train, dtype=np.int64)),
            "targets": ("test", targets),
            "evaluation": ("test", evaluation),
        }

    def prepare(self, out_dir: Path) -> None:
        """Write the manifest ``out_dir/data.json`` and ``out_dir/indices.npz`` (no image copies).

        ``indices.npz`` holds ``{split}_index`` (int64 image indices within the training
        or test set) and ``{split}_y`` (their labels); ``data.json`` the absolute ``root``,
        the set each split comes from (``sources``), counts and per-class counts.
        """
        out = Path(out_dir)
        root = Path(self.settings["root"]).resolve()
        _, y_tr, _, y_te = load_cifar10(str(root))
        splits = self._split_indices(len(y_tr), len(y_te))
        labels = {"train": y_tr, "test": y_te}
        arrays: dict[str, np.ndarray] = {}
        for split, (source, idx) in splits.items():
            arrays[f"{split}_index"] = idx
            arrays[f"{split}_y"] = labels[source][idx]
        save_npz(out / _INDEX_FILE, arrays, {"task": self.name, "manifest": _MANIFEST})
        manifest = {
            "task": self.name,
            "seed": self.seed,
            "root": str(root),
            "config": self.settings,
            "sources": {split: source for split, (source, _) in splits.items()},
            "n_images": {"train": len(y_tr), "test": len(y_te)},
            "evaluation_is_targets": self.settings["n_evaluation"] == 0,
            "counts": {split: len(arrays[f"{split}_y"]) for split in SPLITS},
            "per_class": {split: np.bincount(arrays[f"{split}_y"], minlength=N_CLASSES).tolist() for split in SPLITS},
            "versions": library_versions(),
        }
        write_json_atomic(out / _MANIFEST, manifest)
        logger.info(
            "cifar10: %d candidates, %d targets, %d evaluation images of %s listed in %s",
            *manifest["counts"].values(),
            root,
            out,
        )

    def load(self, data_dir: Path, target: str | None = None) -> TaskData:
        """Read the manifest and the images it names into
        :class:`~torch.utils.data.TensorDataset` splits of ``(uint8 (3, 32, 32), int64)``
        (one target set: ``target`` is ignored).

        With ``n_evaluation = 0`` the ``evaluation`` split is the ``targets`` dataset object.
        """
        folder = Path(data_dir)
        if not (folder / _MANIFEST).is_file() or not (folder / _INDEX_FILE).is_file():
            raise TarotInputError(f"cifar10: {folder} lacks {_MANIFEST} or {_INDEX_FILE}; run prepare first")
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            detail = " ".join(str(exc).split())[:120]
            raise TarotInputError(
                f"cifar10: {folder / _MANIFEST} is not readable JSON ({detail}); delete {folder} and prepare again"
            ) from None
        arrays = load_prepared_arrays(folder / _INDEX_FILE)  # checked against indices.json
        missing = [f"{s}_{k}" for s in SPLITS for k in ("index", "y") if f"{s}_{k}" not in arrays]
        if missing:
            raise TarotInputError(f"cifar10: {folder / _INDEX_FILE} lacks arrays {missing}")
        root = manifest["root"]
        x_tr, y_tr, x_te, y_te = load_cifar10(str(root))
        images = {"train": (x_tr, y_tr), "test": (x_te, y_te)}
        datasets: dict[str, torch.utils.data.TensorDataset] = {}
        for split in SPLITS:
            source = manifest["sources"][split]
            x, y = images[source]
            idx = arrays[f"{split}_index"]
            if idx.size and idx.max() >= len(y):
                raise TarotInputError(f"cifar10: {root} holds fewer {source} images than prepare saw; prepare again")
            if not np.array_equal(y[idx], arrays[f"{split}_y"]):
                raise TarotInputError(f"cifar10: the {source} labels under {root} changed since prepare; prepare again")
            if split == "evaluation" and manifest["evaluation_is_targets"]:
                datasets[split] = datasets["targets"]
            else:
                datasets[split] = torch.utils.data.TensorDataset(
                    torch.from_numpy(x[idx]), torch.from_numpy(y[idx].astype(np.int64))
                )
        return TaskData(
            candidates=datasets["candidates"],
            targets=datasets["targets"],
            evaluation=datasets["evaluation"],
            sources=np.full(len(datasets["candidates"]), "cifar10_train"),
        )

    # ----------------------------------------------------------------- proxy
    def proxy_model(self) -> nn.Module:
        """A fresh :class:`ResNet9` (``arch``, ``width``), initialised under ``manual_seed(seed)``."""
        return seeded(functools.partial(ResNet9, self.settings["width"], self.settings["arch"]), self.seed)

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets (``proxy.optimizer``, triangular lr per step).

        Trains on :attr:`context.device <tarot_select.tasks.base.RunContext.device>` and
        logs one line per epoch (``progress`` is ignored: the context decides on a progress
        bar). After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt``
        (``epoch`` 1-based) receives ``{"model": state_dict, "optimizer": optimizer_state_dict}``
        (CPU tensors); its :attr:`ProxyCheckpoint.lr` is the mean learning rate of the
        steps of that epoch.
        """
        cfg = self.settings["proxy"]
        device = self.context.torch_device
        model = self.proxy_model().to(device)
        x_c, y_c = tensors(data.candidates)
        x_t, y_t = tensors(data.targets)
        x, y = torch.cat([x_c, x_t]), torch.cat([y_c, y_t]).long()
        optimizer = _optimizer(model, cfg, cfg["optimizer"])
        rng = np.random.default_rng([self.seed, _STREAM_PROXY])
        first_saved = cfg["epochs"] - cfg["checkpoints"]
        saved: list[ProxyCheckpoint] = []
        log = EpochLog(logger, f"{self.name} proxy", cfg["epochs"], self.context.progress)
        epochs = _fit(
            model, optimizer, x, y, lambda: rng.permutation(len(y)), cfg, rng, self.settings["augment"], device, log
        )
        for epoch, lr, loss in epochs:
            log.end(loss, lr)
            if epoch < first_saved:
                continue
            path = Path(out_dir) / f"ckpt_{epoch + 1}.pt"
            with atomic_path(path) as tmp:
                torch.save({"model": cpu_state(model), "optimizer": to_cpu(optimizer.state_dict())}, tmp)
            saved.append(ProxyCheckpoint(path=str(path), lr=lr, epoch=epoch + 1, extra={"train_loss": loss}))
        return saved

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Cross-entropy of ``forward(x)`` against ``y`` for a sample ``(x, y)`` of batch size 1.

        Works under :func:`torch.func.vmap` / :func:`torch.func.grad` when the model is in
        eval mode (batch norm on running statistics).
        """
        return F.cross_entropy(forward(sample[0]), sample[1])

    def embedding_blocks(self, model: nn.Module) -> list[str]:
        """The stages of :class:`ResNet9` in forward order: every ``features.<i>`` that holds
        weights (conv-BN-ReLU blocks and residual blocks; the max-pools are skipped), then
        ``head`` (the logits). ``trak``: 7 blocks, the fourth ``(B, 4 width, 16, 16)``."""
        features = model.get_submodule("features")
        names = [f"features.{i}" for i, m in enumerate(features) if any(p.requires_grad for p in m.parameters())]
        return [*names, "head"]

    def embedding_reduce(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """Feature maps average-pooled to at most 8 x 8, then flattened
        (:func:`~tarot_select.embed.pool_feature_maps`, linear); the logits flattened."""
        return pool_feature_maps(output)

    # ------------------------------------------------------------ downstream
    def downstream_model(self) -> nn.Module:
        """A fresh :class:`ResNet9` (``arch``, ``width``; default initialisation)."""
        return ResNet9(self.settings["width"], self.settings["arch"])

    def train_downstream(
        self,
        data: TaskData,
        split: str,
        indices: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train a fresh :class:`ResNet9` on ``split[indices]`` with TRAK's SGD recipe.

        ``downstream.epochs`` shuffled passes in mini-batches of ``downstream.batch_size``;
        SGD with ``momentum`` and ``weight_decay``; learning rate triangular per step
        (peak ``lr`` at ``lr_peak_epoch``); on :attr:`context.device
        <tarot_select.tasks.base.RunContext.device>`. ``weights``: None (each index once per
        epoch), integer repeat counts (index ``i`` ``weights[i]`` times per epoch), or float
        masses (``len(indices)`` draws with replacement per epoch). Initialisation, order,
        draws and augmentation are seeded by ``seed``: the same arguments give the same
        state dict (on the same device and library versions). Every epoch logs its loss,
        learning rate and time, and every ``downstream.eval_every`` epochs the accuracy on
        ``data.evaluation`` (eval mode: batch-norm statistics are not updated);
        ``progress`` is ignored (the context decides on a progress bar).

        Returns
        -------
        dict
            The model's state dict (detached CPU tensors, batch-norm statistics included).
        """
        if split not in SPLITS:
            raise TarotInputError(f"cifar10: unknown split {split!r}; one of {SPLITS}")
        seed = check_seed(seed, "cifar10")
        x_all, y_all = tensors(data.split(split))
        idx = check_indices(indices, len(y_all), split, "cifar10")
        w = check_weights(weights, len(idx), "cifar10")
        cfg = self.settings["downstream"]
        device = self.context.torch_device
        model = seeded(functools.partial(ResNet9, self.settings["width"], self.settings["arch"]), seed).to(device)
        optimizer = _optimizer(model, cfg, "sgd")
        rng = np.random.default_rng([seed, _STREAM_DOWNSTREAM])
        every = cfg["eval_every"]
        log = EpochLog(logger, f"{self.name} downstream", cfg["epochs"], self.context.progress)
        epochs = _fit(
            model,
            optimizer,
            x_all,
            y_all.long(),
            lambda: epoch_order(idx, w, rng),
            cfg,
            rng,
            self.settings["augment"],
            device,
            log,
        )
        for epoch, lr, loss in epochs:
            due = every > 0 and (epoch + 1) % every == 0 and log.wanted
            log.end(loss, lr, {self.primary_metric: self._scores(model, data)[self.metric]} if due else None)
        return cpu_state(model)

    def _scores(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        """``accuracy`` and ``mean_margin`` of ``model`` (on the context's device) on ``data.evaluation``."""
        x, y = tensors(data.evaluation)
        return accuracy_and_margin(logits(model, x, _EVAL_BATCH, self.context.torch_device), y)

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """``accuracy`` and ``mean_margin`` (mean correct-class margin) on ``data.evaluation``."""
        model = self.downstream_model()
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise TarotInputError(f"cifar10: state does not fit the downstream model: {exc}") from None
        return self._scores(model.to(self.context.torch_device), data)
