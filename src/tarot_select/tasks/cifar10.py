"""CIFAR-10 with ResNet-9: the paper-scale task of the LDS benchmark (TAROT Fig. 4, as in TRAK).

Images
------
A local copy of CIFAR-10 in torchvision's layout; nothing is ever downloaded. Config key
``root`` (required) is the folder that *contains* ``cifar-10-batches-py/``, i.e. what
``torchvision.datasets.CIFAR10(root, download=False)`` takes. That folder holds the
python pickles ``data_batch_1`` … ``data_batch_5`` (training, 10,000 images each),
``test_batch`` (10,000) and ``batches.meta``; every batch is a dict with ``data``, a
``(n, 3072)`` uint8 array (the 1,024 red, then green, then blue pixels of each 32×32
image, rows first), and ``labels``, ``n`` integers in 0..9 (keys are ``bytes`` or
``str`` depending on how the pickle is read; both are accepted).

If :mod:`torchvision` can be imported, the batches are read by
``torchvision.datasets.CIFAR10(root, train=…, download=False)``, which also checks the
files' md5 sums (so a modified copy is refused); otherwise the pickles are read directly
with :mod:`pickle` (the same arrays, without the md5 check). Either way, only the files
under ``root`` are read. Pickles can run code when loaded: point ``root`` only at a copy
of CIFAR-10 you trust.

Splits
------
Fixed slices in file order; the task seed does not change them (TRAK's benchmark uses
fixed training and test sets):

* ``candidates`` = the first ``n_train`` training images (default all 50,000): the
  training set of the LDS models (subsets are drawn from it);
* ``targets`` = the first ``n_targets`` test images (default: all 10,000, or all but the
  ``n_evaluation`` evaluation images): the examples whose margins LDS predicts;
* ``evaluation`` = the same images as ``targets`` (same order, same dataset object) when
  ``n_evaluation = 0`` (default: in an influence benchmark the targets *are* the
  held-out test images), otherwise the ``n_evaluation`` test images that follow the
  targets, disjoint from them.

:meth:`Cifar10Task.prepare` copies no image: it writes a manifest (``data.json``: the
absolute ``root``, the file each split comes from, counts, per-class counts) and
``indices.npz`` (``{split}_index``, the image indices within the training or test set,
and ``{split}_y``, their labels, so that :meth:`Cifar10Task.load` can tell when ``root``
no longer holds the same data). :meth:`Cifar10Task.load` re-reads the batches (about
180 MB, cached per process) and returns :class:`~torch.utils.data.TensorDataset` splits
of ``(uint8 image (3, 32, 32), int64 label)``: raw pixels, 150 MB for the 50,000
candidates instead of 600 MB as float32. The model scales and normalises them itself.

Model
-----
:class:`ResNet9`, the first operation of which is ``x / 255`` followed by the standard
CIFAR-10 normalisation of TRAK's code (mean ``(0.4914, 0.4822, 0.4465)``, std
``(0.2023, 0.1994, 0.2010)``), so it takes raw pixels (uint8 or float, 0..255). Two
variants (config ``arch``), both conv(no bias)-BatchNorm-ReLU blocks with
``width`` = 64 channels in the first block:

``trak``    (default) the ResNet-9 of TRAK's CIFAR-10 code (``construct_rn9`` in
            ``MadryLab/trak`` ``examples/cifar_quickstart.ipynb``): 64, 128 (5×5, stride 2),
            residual 2×128, 256, max-pool, residual 2×256, 128 (no padding), global max-pool,
            linear 128 → 10 without bias, output × 0.2; 2.3 M parameters. The one to
            use when comparing with TRAK's CIFAR-10 numbers.
``myrtle``  the ResNet-9 of the fast CIFAR-10 trainings (Page's DAWNBench entry,
            ``cifar10-fast``): 64, 128, max-pool, residual 2×128, 256, max-pool, 512,
            max-pool, residual 2×512, global max-pool, linear 512 → 10 without bias,
            output × 0.125; 6.6 M parameters.

Batch norm is the one part that needs care for attribution: per-sample gradients
(:func:`tarot_select.gradients.per_sample_gradients`, ``vmap`` over ``grad`` of a
``functional_call``) must be taken in **eval** mode, where batch norm uses its running
statistics and every sample is independent of the others;
:class:`~tarot_select.featurize.GradientFeaturizer` (and so
:func:`tarot_select.lds.gradient_features_for_lds` and the ``dump_gradients`` stage)
switches the model to eval mode. :meth:`Cifar10Task.loss_fn` and
:meth:`~tarot_select.tasks.base.ClassifierOutputsMixin.output_fn` are plain functions of
``forward(x)`` and run under :func:`torch.func.vmap` / :func:`torch.func.grad`. ReLUs are
not in-place, and the global pool is an ``amax`` over the spatial dimensions. In float32,
batched (``vmap``) and single-sample convolutions round differently, so where a ReLU
pre-activation lies within rounding of zero the two gradients can differ at that kink
(one of 40 images in the tests); in float64 they agree to 1e-5.

Training
--------
TRAK's recipe: mini-batch SGD with momentum 0.9 and weight decay 5e-4 on every
parameter, a triangular ("one-cycle") learning rate per step, rising linearly from 0 to
``lr`` at epoch ``lr_peak_epoch`` and falling linearly to 0 at the end, 24 epochs, peak
lr 0.4, batch size 512, no label smoothing. No augmentation by default, so that a
training run is a deterministic function of its data and seed (what LDS assumes);
``augment: true`` adds random crops (zero padding 4) and horizontal flips to every
training batch (proxy and downstream; never to gradients, outputs or evaluation).
Initialisation, shuffling, sampling and augmentation are all seeded.

The proxy (:meth:`Cifar10Task.train_proxy`, trained on candidates ∪ targets, as every
task's proxy) uses Adam by default, because its checkpoints must carry Adam moments for
LESS-style preconditioning (``dump_gradients`` with ``adam=True``);
``proxy.optimizer: sgd`` gives it TRAK's SGD recipe instead (then set ``proxy.lr``, e.g.
0.4), but such checkpoints cannot be Adam-preconditioned.

Config block
------------
``root``            folder containing ``cifar-10-batches-py/`` (required)
``n_train``         candidates: the first ``n_train`` training images (None: all 50,000)
``n_targets``       targets: the first ``n_targets`` test images (None: all not used for evaluation)
``n_evaluation``    separate evaluation images after the targets (0: evaluation = targets)
``arch``            ``"trak"`` or ``"myrtle"`` (``"trak"``)
``width``           channels of the first block; the others scale with it (64)
``augment``         random crop + flip in training (false)
``device``          torch device of training and evaluation (``"cpu"``)
``proxy``           ``{optimizer: adam, epochs: 24, lr: 0.001, batch_size: 512, weight_decay: 0.0,
                    momentum: 0.9, lr_peak_epoch: 5, checkpoints: 3}``
``downstream``      ``{epochs: 24, lr: 0.4, batch_size: 512, weight_decay: 5e-4, momentum: 0.9,
                    lr_peak_epoch: 5}``

``momentum`` is SGD's; ``lr_peak_epoch`` may be fractional and must be below ``epochs``
(0: start at the peak and decay linearly).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import TarotInputError
from ..io import atomic_path, library_versions, write_json_atomic
from ..lds import margin
from . import register

# Training pieces shared with the digits task (no task-specific messages in them).
from ._config import check_block, check_int, check_real, merge_settings, seeded
from ._training import check_indices, check_weights, epoch_order, set_lr, tensors
from .base import SPLITS, ClassifierOutputsMixin, ProxyCheckpoint, Task, TaskData

__all__ = [
    "ARCHS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DEFAULTS",
    "Cifar10Task",
    "ResNet9",
    "count_parameters",
    "load_cifar10",
]

logger = logging.getLogger(__name__)

N_CLASSES: Final[int] = 10
IMAGE_SHAPE: Final[tuple[int, int, int]] = (3, 32, 32)
#: Folder under ``root`` that torchvision's ``CIFAR10`` reads.
BATCH_FOLDER: Final[str] = "cifar-10-batches-py"
TRAIN_FILES: Final[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES: Final[tuple[str, ...]] = ("test_batch",)
META_FILE: Final[str] = "batches.meta"
#: Per-channel mean and std of TRAK's CIFAR-10 code (pixels scaled to [0, 1]).
CIFAR10_MEAN: Final[tuple[float, float, float]] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Final[tuple[float, float, float]] = (0.2023, 0.1994, 0.2010)
#: Model variants of :class:`ResNet9`.
ARCHS: Final[tuple[str, ...]] = ("trak", "myrtle")
OPTIMIZERS: Final[tuple[str, ...]] = ("adam", "sgd")

DEFAULTS: Final[dict[str, Any]] = {
    "root": None,
    "n_train": None,
    "n_targets": None,
    "n_evaluation": 0,
    "arch": "trak",
    "width": 64,
    "augment": False,
    "device": "cpu",
    "proxy": {
        "optimizer": "adam",
        "epochs": 24,
        "lr": 0.001,
        "batch_size": 512,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "lr_peak_epoch": 5,
        "checkpoints": 3,
    },
    "downstream": {
        "epochs": 24,
        "lr": 0.4,
        "batch_size": 512,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "lr_peak_epoch": 5,
    },
}
_NESTED: Final[tuple[str, ...]] = ("proxy", "downstream")
_MANIFEST: Final[str] = "data.json"
_INDEX_FILE: Final[str] = "indices.npz"
_EVAL_BATCH: Final[int] = 1024
_CROP_PAD: Final[int] = 4

# Stream identifiers of the seeded generators (second entry of the seed).
_STREAM_PROXY, _STREAM_DOWNSTREAM = 0, 1


# --------------------------------------------------------------------------- data


def _batch_dir(root: str | Path) -> Path:
    return Path(root) / BATCH_FOLDER


def _missing_files(root: str | Path) -> list[str]:
    """Names of the CIFAR-10 files missing under ``root/cifar-10-batches-py`` (existence only)."""
    folder = _batch_dir(root)
    return [name for name in (*TRAIN_FILES, *TEST_FILES, META_FILE) if not (folder / name).is_file()]


def _check_arrays(x: Any, y: Any, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 (N, 3, 32, 32), int64 (N,))`` from ``(N, 3072)`` / ``(N, 3, 32, 32)`` pixels, or TarotInputError."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 2 and x.shape[1] == int(np.prod(IMAGE_SHAPE)):
        x = x.reshape(len(x), *IMAGE_SHAPE)
    if x.shape[1:] != IMAGE_SHAPE or y.shape != (x.shape[0],) or len(x) == 0:
        raise TarotInputError(
            f"cifar10: {origin} holds images {x.shape} and labels {y.shape}; need (N, 3072) or (N, 3, 32, 32) and (N,)"
        )
    if x.dtype != np.uint8:
        raise TarotInputError(f"cifar10: {origin} holds pixels of dtype {x.dtype}; CIFAR-10 pixels are uint8")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= N_CLASSES:
        raise TarotInputError(f"cifar10: {origin} needs integer labels in 0..9")
    return x, y.astype(np.int64)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (n, 3, 32, 32)`` and labels ``int64 (n,)`` of one CIFAR-10 pickle."""
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise TarotInputError(f"cifar10: cannot read {path} as a CIFAR-10 batch: {exc}") from None
    if not isinstance(entry, Mapping):
        raise TarotInputError(f"cifar10: {path} holds a {type(entry).__name__}, not a CIFAR-10 batch dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or "labels" not in entry:
        raise TarotInputError(f"cifar10: {path} lacks 'data' or 'labels' (has {sorted(map(str, entry))})")
    return _check_arrays(entry["data"], entry["labels"], str(path))


def _read_pickles(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = _batch_dir(root)
    parts = [[_read_batch(folder / name) for name in names] for names in (TRAIN_FILES, TEST_FILES)]
    (x_tr, y_tr), (x_te, y_te) = [
        (np.concatenate([p[0] for p in part]), np.concatenate([p[1] for p in part])) for part in parts
    ]
    return x_tr, y_tr, x_te, y_te


def _read_torchvision(root: Path, datasets: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    out: list[np.ndarray] = []
    for train in (True, False):
        try:
            ds = datasets.CIFAR10(root=str(root), train=train, download=False)
        except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
            raise TarotInputError(
                f"cifar10: torchvision cannot read CIFAR-10 under {root} ({exc}); the files are missing, "
                "incomplete, or not the original ones (torchvision checks their md5 sums)"
            ) from None
        images = np.asarray(ds.data)  # (N, 32, 32, 3), channels last
        if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise TarotInputError(f"cifar10: torchvision read images of shape {images.shape} from {root}")
        x, y = _check_arrays(
            np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
            np.asarray(ds.targets),
            f"{_batch_dir(root)} ({'train' if train else 'test'})",
        )
        out += [x, y]
    return out[0], out[1], out[2], out[3]


def _torchvision_datasets() -> Any | None:
    """``torchvision.datasets`` if it imports, else None (then the pickles are read directly)."""
    try:
        from torchvision import datasets
    except ImportError:
        return None
    except (RuntimeError, OSError) as exc:  # e.g. a torchvision built for another torch
        logger.warning("cifar10: torchvision is installed but does not import (%s); reading the pickles directly", exc)
        return None
    return datasets


def load_cifar10(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All images of a local CIFAR-10, read-only, never downloading.

    Parameters
    ----------
    root : str
        Folder that contains ``cifar-10-batches-py/`` (see the module docstring).

    Returns
    -------
    x_train : np.ndarray, uint8, shape (N_train, 3, 32, 32)
        Training images in file order (``data_batch_1`` … ``data_batch_5``).
    y_train : np.ndarray, int64, shape (N_train,)
    x_test : np.ndarray, uint8, shape (N_test, 3, 32, 32)
        ``test_batch``.
    y_test : np.ndarray, int64, shape (N_test,)

    Raises
    ------
    TarotInputError
        If a file is missing or does not hold a CIFAR-10 batch.

    Notes
    -----
    Read by ``torchvision.datasets.CIFAR10(root, train=…, download=False)`` (with its md5
    checks) when torchvision imports, else from the pickles directly. The last result is
    cached, keyed by ``root`` and the size and modification time of every file.
    """
    path = Path(root)
    missing = _missing_files(path)
    if missing:
        raise TarotInputError(f"cifar10: {_batch_dir(path)} lacks {', '.join(missing)}")
    stats = [(_batch_dir(path) / name).stat() for name in (*TRAIN_FILES, *TEST_FILES, META_FILE)]
    return _load_cached(str(path), tuple((st.st_size, st.st_mtime_ns) for st in stats))


@functools.lru_cache(maxsize=1)
def _load_cached(
    root: str, signature: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`load_cifar10` for a root whose files have the given ``(size, mtime)`` signature."""
    path = Path(root)
    datasets = _torchvision_datasets()
    if datasets is not None:
        logger.debug("cifar10: reading %s with torchvision (download=False)", path)
        arrays = _read_torchvision(path, datasets)
    else:
        logger.debug("cifar10: reading the pickles under %s", path)
        arrays = _read_pickles(path)
    for a in arrays:
        a.flags.writeable = False
    return arrays


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
    desc: str,
    progress: bool,
    after_epoch: Callable[[int, float, float], None] | None = None,
) -> None:
    """Train ``model`` for ``cfg["epochs"]`` passes with the triangular per-step lr schedule.

    Every epoch visits ``x[order_of_epoch()]`` in mini-batches of ``cfg["batch_size"]``
    (the number of samples per epoch must not change). ``after_epoch(epoch, mean_lr,
    mean_loss)`` runs after each epoch (``epoch`` 0-based).
    """
    epochs, batch_size = int(cfg["epochs"]), int(cfg["batch_size"])
    order = order_of_epoch()
    steps_per_epoch = math.ceil(len(order) / batch_size)
    total_steps = epochs * steps_per_epoch
    peak_step = float(cfg["lr_peak_epoch"]) * steps_per_epoch
    model.to(device)
    model.train()
    step = 0
    for epoch in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress):
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
        mean_lr, mean_loss = lr_sum / steps_per_epoch, loss_sum / max(count, 1)
        logger.debug("%s epoch %d: mean lr %.3g, loss %.4f", desc, epoch + 1, mean_lr, mean_loss)
        if after_epoch is not None:
            after_epoch(epoch, mean_lr, mean_loss)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, Mapping):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_cpu(v) for v in tree]
    return tree


# --------------------------------------------------------------------------- config checks


_merge = functools.partial(merge_settings, DEFAULTS, nested=_NESTED)
_int = functools.partial(check_int, task="cifar10")
_real = functools.partial(check_real, task="cifar10")


def _optional_int(value: Any, name: str) -> int | None:
    return None if value is None else _int(value, name)


def _check_training(block: Any, name: str) -> None:
    check_block(block, name, DEFAULTS[name], task="cifar10")
    epochs = _int(block["epochs"], f"{name}.epochs")
    _int(block["batch_size"], f"{name}.batch_size")
    _real(block["lr"], f"{name}.lr", 0.0, low_open=True)
    _real(block["weight_decay"], f"{name}.weight_decay", 0.0)
    _real(block["momentum"], f"{name}.momentum", 0.0, 1.0)
    _real(block["lr_peak_epoch"], f"{name}.lr_peak_epoch (below {name}.epochs)", 0.0, float(epochs))
    if "checkpoints" in DEFAULTS[name]:
        checkpoints = _int(block["checkpoints"], f"{name}.checkpoints")
        if checkpoints > epochs:
            raise TarotInputError(f"cifar10: {name}.checkpoints={checkpoints} exceeds {name}.epochs={epochs}")
    if "optimizer" in DEFAULTS[name] and block["optimizer"] not in OPTIMIZERS:
        raise TarotInputError(f"cifar10: {name}.optimizer must be one of {OPTIMIZERS}, got {block['optimizer']!r}")


def _check_model(settings: Mapping[str, Any]) -> None:
    if settings["arch"] not in ARCHS:
        raise TarotInputError(f"cifar10: arch must be one of {ARCHS}, got {settings['arch']!r}")
    _int(settings["width"], "width")


# --------------------------------------------------------------------------- task


@register
class Cifar10Task(ClassifierOutputsMixin, Task):
    """CIFAR-10 with ResNet-9 (see the module docstring for data, splits, model and config).

    Parameters
    ----------
    config : mapping
        The task's config block; missing keys take :data:`DEFAULTS` (``root`` is required).
    seed : int
        Seeds the proxy's initialisation, shuffling and augmentation (not the splits).
    """

    name = "cifar10_resnet9"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, config: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__(config, seed)
        self.settings = _merge(self.config)

    # ------------------------------------------------------------------ data
    def check(self) -> None:
        """Raise :class:`TarotInputError` for a setting the task cannot honour.

        Cheap: ``root`` is only checked for the existence of the batch files; the image
        counts are checked against ``n_train`` / ``n_targets`` / ``n_evaluation`` when
        :meth:`prepare` reads them.
        """
        s = self.settings
        if self.seed < 0:
            raise TarotInputError(f"cifar10: seed must be >= 0, got {self.seed}")
        extra = sorted(set(s) - set(DEFAULTS) - {"kind"})
        if extra:
            logger.warning("cifar10: ignoring unknown config keys %s", extra)
        root = s["root"]
        if root is None:
            raise TarotInputError(
                f"cifar10: root is required: the folder that contains {BATCH_FOLDER}/ (torchvision's CIFAR10 root)"
            )
        if not isinstance(root, (str, Path)) or not str(root):
            raise TarotInputError(f"cifar10: root must be a folder name, got {root!r}")
        if not Path(root).is_dir():
            raise TarotInputError(f"cifar10: root: folder not found: {root}")
        missing = _missing_files(root)
        if missing:
            hint = ""
            if Path(root).name == BATCH_FOLDER or (Path(root) / TRAIN_FILES[0]).is_file():
                hint = f"; root must be the folder that contains {BATCH_FOLDER}/, not that folder itself"
            raise TarotInputError(
                f"cifar10: root: {_batch_dir(root)} lacks the CIFAR-10 batch file(s) {', '.join(missing)}{hint}"
            )
        _optional_int(s["n_train"], "n_train")
        _optional_int(s["n_targets"], "n_targets")
        _int(s["n_evaluation"], "n_evaluation", minimum=0)
        _check_model(s)
        if not isinstance(s["augment"], bool):
            raise TarotInputError(f"cifar10: augment must be true or false, got {s['augment']!r}")
        try:
            torch.device(s["device"])
        except (RuntimeError, TypeError) as exc:
            raise TarotInputError(f"cifar10: device: not a torch device: {s['device']!r} ({exc})") from None
        _check_training(s["proxy"], "proxy")
        _check_training(s["downstream"], "downstream")

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
        self.check()
        out = Path(out_dir)
        root = Path(self.settings["root"]).resolve()
        _, y_tr, _, y_te = load_cifar10(str(root))
        splits = self._split_indices(len(y_tr), len(y_te))
        labels = {"train": y_tr, "test": y_te}
        arrays: dict[str, np.ndarray] = {}
        for split, (source, idx) in splits.items():
            arrays[f"{split}_index"] = idx
            arrays[f"{split}_y"] = labels[source][idx]
        with atomic_path(out / _INDEX_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        manifest = {
            "task": self.name,
            "seed": self.seed,
            "root": str(root),
            "config": {**self.settings, "root": str(self.settings["root"])},
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

    def load(self, data_dir: Path) -> TaskData:
        """Read the manifest and the images it names into
        :class:`~torch.utils.data.TensorDataset` splits of ``(uint8 (3, 32, 32), int64)``.

        With ``n_evaluation = 0`` the ``evaluation`` split is the ``targets`` dataset object.
        """
        folder = Path(data_dir)
        if not (folder / _MANIFEST).is_file() or not (folder / _INDEX_FILE).is_file():
            raise TarotInputError(f"cifar10: {folder} lacks {_MANIFEST} or {_INDEX_FILE}; run prepare first")
        manifest = json.loads((folder / _MANIFEST).read_text())
        with np.load(folder / _INDEX_FILE, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
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
        _check_model(self.settings)
        return seeded(functools.partial(ResNet9, self.settings["width"], self.settings["arch"]), self.seed)

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets (``proxy.optimizer``, triangular lr per step).

        After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt``
        (``epoch`` 1-based) receives ``{"model": state_dict, "optimizer": optimizer_state_dict}``
        (CPU tensors); its :attr:`ProxyCheckpoint.lr` is the mean learning rate of the
        steps of that epoch.
        """
        self.check()
        cfg = self.settings["proxy"]
        device = torch.device(self.settings["device"])
        model = self.proxy_model().to(device)
        x_c, y_c = tensors(data.candidates)
        x_t, y_t = tensors(data.targets)
        x, y = torch.cat([x_c, x_t]), torch.cat([y_c, y_t]).long()
        optimizer = _optimizer(model, cfg, cfg["optimizer"])
        rng = np.random.default_rng([self.seed, _STREAM_PROXY])
        first_saved = cfg["epochs"] - cfg["checkpoints"]
        saved: list[ProxyCheckpoint] = []

        def save(epoch: int, lr: float, loss: float) -> None:
            if epoch < first_saved:
                return
            path = Path(out_dir) / f"ckpt_{epoch + 1}.pt"
            with atomic_path(path) as tmp:
                torch.save({"model": _cpu_state(model), "optimizer": _to_cpu(optimizer.state_dict())}, tmp)
            saved.append(ProxyCheckpoint(path=str(path), lr=lr, epoch=epoch + 1, extra={"train_loss": loss}))

        _fit(
            model,
            optimizer,
            x,
            y,
            lambda: rng.permutation(len(y)),
            cfg,
            rng,
            self.settings["augment"],
            device,
            "cifar10 proxy",
            progress,
            after_epoch=save,
        )
        return saved

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Cross-entropy of ``forward(x)`` against ``y`` for a sample ``(x, y)`` of batch size 1.

        Works under :func:`torch.func.vmap` / :func:`torch.func.grad` when the model is in
        eval mode (batch norm on running statistics).
        """
        return F.cross_entropy(forward(sample[0]), sample[1])

    # ------------------------------------------------------------ downstream
    def downstream_model(self) -> nn.Module:
        """A fresh :class:`ResNet9` (``arch``, ``width``; default initialisation)."""
        _check_model(self.settings)
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
        (peak ``lr`` at ``lr_peak_epoch``). ``weights``: None (each index once per epoch),
        integer repeat counts (index ``i`` ``weights[i]`` times per epoch), or float
        masses (``len(indices)`` draws with replacement per epoch). Initialisation,
        order, draws and augmentation are seeded by ``seed``: the same arguments give the
        same state dict (on the same device and library versions).

        Returns
        -------
        dict
            The model's state dict (detached CPU tensors, batch-norm statistics included).
        """
        self.check()
        if split not in SPLITS:
            raise TarotInputError(f"cifar10: unknown split {split!r}; one of {SPLITS}")
        _int(seed, "seed", minimum=0)
        x_all, y_all = tensors(data.split(split))
        idx = check_indices(indices, len(y_all), split, "cifar10")
        w = check_weights(weights, len(idx), "cifar10")
        cfg = self.settings["downstream"]
        device = torch.device(self.settings["device"])
        model = seeded(functools.partial(ResNet9, self.settings["width"], self.settings["arch"]), int(seed)).to(device)
        optimizer = _optimizer(model, cfg, "sgd")
        rng = np.random.default_rng([int(seed), _STREAM_DOWNSTREAM])
        _fit(
            model,
            optimizer,
            x_all,
            y_all.long(),
            lambda: epoch_order(idx, w, rng),
            cfg,
            rng,
            self.settings["augment"],
            device,
            "cifar10 downstream",
            progress,
        )
        return _cpu_state(model)

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """``accuracy`` and ``mean_margin`` (mean correct-class margin) on ``data.evaluation``."""
        model = self.downstream_model()
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise TarotInputError(f"cifar10: state does not fit the downstream model: {exc}") from None
        device = torch.device(self.settings["device"])
        model.to(device).eval()
        x, y = tensors(data.evaluation)
        with torch.no_grad():
            logits = torch.cat([model(x[i : i + _EVAL_BATCH].to(device)).cpu() for i in range(0, len(y), _EVAL_BATCH)])
        y = y.long()
        return {
            "accuracy": float((logits.argmax(1) == y).double().mean()),
            "mean_margin": float(margin(logits, y).double().mean()),
        }
