"""Domain-shifted handwritten digits: a small, download-free task for the whole pipeline.

The 1,797 8×8 images of :func:`sklearn.datasets.load_digits` (values 0..16, scaled to
``[0, 1]``) are split once into a *held-out* part (targets and evaluation) and a
*candidate* part. Every candidate source draws ``per_source`` images from the candidate
part and transforms them; the target domain is an equal-share mixture of some of those
styles, applied to held-out images. No base image is shared between the candidates and
the targets ∪ evaluation.

Sources (``sources``)
---------------------
``clean``        the images as they are
``rotated``      rotation by a random angle in ±[20°, 40°] (``scipy.ndimage.rotate``, bilinear)
``inverted``     ``1 - x``
``noisy``        additive Gaussian noise, σ = 0.3, clipped to ``[0, 1]``
``blurred``      ``scipy.ndimage.gaussian_filter`` with σ = 0.8
``shifted``      integer shift by 1 or 2 pixels (either sign) along both axes, zero fill
``label_noise``  clean images whose labels are replaced by a uniformly random *wrong* label

Every random choice comes from a NumPy generator seeded with ``[seed, *stream]``, where the
stream names the purpose (and the source by its position in :data:`ALL_SOURCES`), so one
source's images do not change when other sources are added to or removed from the config.

Config block (all keys optional)
--------------------------------
``sources``        candidate sources, default all of :data:`ALL_SOURCES`
``per_source``     candidates per source (200)
``target_styles``  styles mixed in equal shares into targets and evaluation (``["rotated", "noisy"]``)
``n_targets``      target samples (100)
``n_evaluation``   evaluation samples (400)
``proxy``          ``{epochs: 8, lr: 0.003, batch_size: 64, checkpoints: 3, width: 16}``
``downstream``     ``{epochs: 30, lr: 0.003, batch_size: 32, width: 16}``

Both models are the same small CNN (:class:`DigitsCNN`, no batch norm), trained with Adam
and a per-epoch cosine learning-rate decay, so successive proxy checkpoints carry
different learning rates and Adam moments (what TracIn- and LESS-style weighting need).
"""

from __future__ import annotations

import functools
import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from ..errors import TarotInputError
from ..io import atomic_path, library_versions, write_json_atomic
from . import register
from ._config import check_block, check_int, check_real, merge_settings, seeded
from ._training import adam, check_indices, check_weights, cosine_lr, epoch_order, run_epoch, set_lr, tensors
from .base import SPLITS, ClassifierOutputsMixin, ProxyCheckpoint, Task, TaskData

__all__ = ["ALL_SOURCES", "DEFAULTS", "DigitsCNN", "DigitsTask", "StyledTensorDataset", "transform_images"]

logger = logging.getLogger(__name__)

#: Every candidate source the task knows, in a fixed order (the order seeds the streams).
ALL_SOURCES: Final[tuple[str, ...]] = ("clean", "rotated", "inverted", "noisy", "blurred", "shifted", "label_noise")
#: Sources that may not appear in the target mixture (target labels are always correct).
NON_TARGET_STYLES: Final[frozenset[str]] = frozenset({"label_noise"})
#: Number of images in ``sklearn.datasets.load_digits()`` (checked when the data are loaded).
N_DIGITS: Final[int] = 1797
N_CLASSES: Final[int] = 10

DEFAULTS: Final[dict[str, Any]] = {
    "sources": list(ALL_SOURCES),
    "per_source": 200,
    "target_styles": ["rotated", "noisy"],
    "n_targets": 100,
    "n_evaluation": 400,
    "images": None,
    "proxy": {"epochs": 8, "lr": 0.003, "batch_size": 64, "checkpoints": 3, "width": 16},
    "downstream": {"epochs": 30, "lr": 0.003, "batch_size": 32, "width": 16},
}
_NESTED: Final[tuple[str, ...]] = ("proxy", "downstream")
_DATA_FILE: Final[str] = "data.npz"
_META_FILE: Final[str] = "data.json"
_EVAL_BATCH: Final[int] = 512

# Stream identifiers of the seeded generators (second and later entries of the seed).
_STREAM_SPLIT, _STREAM_CANDIDATES, _STREAM_TARGETS, _STREAM_EVALUATION = 0, 1, 2, 3
_STREAM_DOWNSTREAM = 4


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def _digits(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Base images as read-only ``(images float32 in [0, 1], labels int64)``.

    ``path`` is None for scikit-learn's bundled copy, or a local ``.npz`` with ``images``
    (N, 8, 8), values 0..16 as in UCI optdigits, and ``labels`` (N,) in 0..9, e.g. the full
    5,620-image UCI set.
    """
    if path is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the digits task needs scikit-learn: pip install scikit-learn") from exc
        bunch = load_digits()
        raw, labels = np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
        if raw.shape != (N_DIGITS, 8, 8):
            raise RuntimeError(f"load_digits() returned images of shape {raw.shape}, expected ({N_DIGITS}, 8, 8)")
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                raw, labels = np.asarray(z["images"], dtype=np.float64), np.asarray(z["labels"], dtype=np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise TarotInputError(
                f"digits: images: cannot read {path} (need arrays 'images', 'labels'): {exc}"
            ) from None
        if raw.ndim != 3 or raw.shape[1:] != (8, 8) or labels.shape != (raw.shape[0],):
            raise TarotInputError(f"digits: images: {path} holds images {raw.shape} and labels {labels.shape}")
        if labels.min() < 0 or labels.max() >= N_CLASSES or raw.min() < 0 or raw.max() > 16:
            raise TarotInputError(f"digits: images: {path} needs labels in 0..9 and pixel values in 0..16")
    images = (raw / 16.0).astype(np.float32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(20.0, 40.0, size=len(x)) * rng.choice([-1.0, 1.0], size=len(x))
    out = [
        ndimage.rotate(img, angle, reshape=False, order=1, mode="constant", cval=0.0) for img, angle in zip(x, angles)
    ]
    return np.clip(np.stack(out) if out else x.copy(), 0.0, 1.0)


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    offsets = rng.choice([-2, -1, 1, 2], size=(len(x), 2))
    out = [ndimage.shift(img, off, order=0, mode="constant", cval=0.0) for img, off in zip(x, offsets)]
    return np.stack(out) if out else x.copy()


def _noisy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + 0.3 * rng.standard_normal(x.shape), 0.0, 1.0)


def _blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(0.0, 0.8, 0.8))


_IMAGE_TRANSFORMS: Final[dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "clean": lambda x, rng: x.copy(),
    "rotated": _rotate,
    "inverted": lambda x, rng: 1.0 - x,
    "noisy": _noisy,
    "blurred": _blur,
    "shifted": _shift,
    "label_noise": lambda x, rng: x.copy(),
}


def transform_images(
    style: str, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply source ``style`` to a stack of images and their labels.

    Parameters
    ----------
    style : str
        One of :data:`ALL_SOURCES`.
    images : np.ndarray, shape (n, 8, 8)
        Values in ``[0, 1]``.
    labels : np.ndarray, shape (n,)
        Digit labels ``0..9``.
    rng : np.random.Generator
        Source of the transform's random parameters.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``float32`` images in ``[0, 1]`` of shape ``(n, 8, 8)`` and ``int64`` labels; only
        ``label_noise`` changes labels (each to a uniformly drawn different digit).
    """
    if style not in _IMAGE_TRANSFORMS:
        raise TarotInputError(f"unknown digits source {style!r}; choose from {', '.join(ALL_SOURCES)}")
    x = _IMAGE_TRANSFORMS[style](np.asarray(images, dtype=np.float64), rng).astype(np.float32)
    y = np.asarray(labels, dtype=np.int64).copy()
    if style == "label_noise":
        y = (y + rng.integers(1, N_CLASSES, size=len(y))) % N_CLASSES
    return x, y


class StyledTensorDataset(torch.utils.data.TensorDataset):
    """A :class:`~torch.utils.data.TensorDataset` of ``(x, y)`` that also knows each item's style.

    The styles are an attribute, not a tensor of the items, so that every item stays
    ``(x, y)`` for the loss and for gradient dumping.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, styles: np.ndarray) -> None:
        super().__init__(x, y)
        if len(styles) != len(x):
            raise TarotInputError(f"{len(styles)} styles for {len(x)} samples")
        self.styles = np.asarray(styles)


# --------------------------------------------------------------------------- model


class DigitsCNN(nn.Module):
    """Small CNN for 8×8 digits: two 3×3 convolutions, 2×2 max-pool, two linear layers.

    No batch norm or dropout, so it behaves the same in train and eval mode and is
    traceable by :func:`torch.func.vmap`.

    Parameters
    ----------
    width : int
        Channels of the first convolution (the second has ``2 * width``).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(2 * width * 4 * 4, 64)
        self.fc2 = nn.Linear(64, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, 10)`` for images of shape ``(B, 1, 8, 8)``."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


# --------------------------------------------------------------------------- config checks


_merge = functools.partial(merge_settings, DEFAULTS, nested=_NESTED)
_positive_int = functools.partial(check_int, task="digits")


def _name_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise TarotInputError(f"digits: {name} must be a non-empty list of names, got {value!r}")
    names = list(value)
    unknown = [v for v in names if v not in ALL_SOURCES]
    if unknown:
        raise TarotInputError(f"digits: unknown {name} {unknown}; choose from {', '.join(ALL_SOURCES)}")
    if len(set(names)) != len(names):
        raise TarotInputError(f"digits: {name} has duplicates: {names}")
    return names


def _check_training(block: Any, name: str, keys: Sequence[str]) -> None:
    check_block(block, name, DEFAULTS[name], task="digits")
    for key in keys:
        if key == "lr":
            check_real(block[key], f"{name}.lr", 0.0, low_open=True, task="digits")
        else:
            _positive_int(block[key], f"{name}.{key}")


# --------------------------------------------------------------------------- task


@register
class DigitsTask(ClassifierOutputsMixin, Task):
    """Domain-shifted sklearn digits (see the module docstring for sources and config).

    Parameters
    ----------
    config : mapping
        The task's config block; missing keys take :data:`DEFAULTS`.
    seed : int
        Seeds the splits, the transforms, the proxy's initialisation and shuffling.
    """

    name = "digits"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, config: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__(config, seed)
        self.settings = _merge(self.config)

    # ------------------------------------------------------------------ data
    def check(self) -> None:
        """Raise :class:`TarotInputError` for a setting the task cannot honour (cheap, no I/O)."""
        s = self.settings
        if self.seed < 0:
            raise TarotInputError(f"digits: seed must be >= 0, got {self.seed}")
        extra = sorted(set(s) - set(DEFAULTS) - {"kind"})
        if extra:
            logger.warning("digits: ignoring unknown config keys %s", extra)
        sources = _name_list(s["sources"], "sources")
        styles = _name_list(s["target_styles"], "target_styles")
        bad = [t for t in styles if t in NON_TARGET_STYLES]
        if bad:
            raise TarotInputError(f"digits: {bad} cannot be a target style (target labels are always correct)")
        missing = [t for t in styles if t not in sources]
        if missing:
            raise TarotInputError(f"digits: target styles {missing} are not among the sources {sources}")
        per_source = _positive_int(s["per_source"], "per_source")
        n_targets = _positive_int(s["n_targets"], "n_targets")
        n_eval = _positive_int(s["n_evaluation"], "n_evaluation")
        for n, what in ((n_targets, "n_targets"), (n_eval, "n_evaluation")):
            if n < len(styles):
                raise TarotInputError(f"digits: {what}={n} is fewer than the {len(styles)} target styles")
        path = s["images"]
        if path is not None and not Path(path).is_file():
            raise TarotInputError(f"digits: images: file not found: {path}")
        n_base = self._n_base()
        held = n_targets + n_eval
        if held + per_source > n_base:
            raise TarotInputError(
                f"digits: n_targets + n_evaluation = {held} held-out images leave {n_base - held} of "
                f"{n_base} for candidates, fewer than per_source={per_source}"
            )
        _check_training(s["proxy"], "proxy", ("epochs", "lr", "batch_size", "checkpoints", "width"))
        _check_training(s["downstream"], "downstream", ("epochs", "lr", "batch_size", "width"))
        if s["proxy"]["checkpoints"] > s["proxy"]["epochs"]:
            raise TarotInputError(
                f"digits: proxy.checkpoints={s['proxy']['checkpoints']} exceeds proxy.epochs={s['proxy']['epochs']}"
            )

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])

    def _n_base(self) -> int:
        """Number of base images (1,797 for scikit-learn's copy)."""
        path = self.settings["images"]
        return N_DIGITS if path is None else len(_digits(path)[0])

    def _split_base(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Base-image indices ``(candidate part, targets, evaluation)`` of a seeded permutation."""
        n_t, n_e = self.settings["n_targets"], self.settings["n_evaluation"]
        perm = self._rng(_STREAM_SPLIT).permutation(self._n_base())
        return np.sort(perm[n_t + n_e :]), perm[:n_t], perm[n_t : n_t + n_e]

    def _build_candidates(self, pool: np.ndarray) -> dict[str, np.ndarray]:
        images, labels = _digits(self.settings["images"])
        xs, ys, names, bases = [], [], [], []
        for source in self.settings["sources"]:
            sid = ALL_SOURCES.index(source)
            base = self._rng(_STREAM_CANDIDATES, sid, 0).choice(pool, size=self.settings["per_source"], replace=False)
            x, y = transform_images(source, images[base], labels[base], self._rng(_STREAM_CANDIDATES, sid, 1))
            xs.append(x)
            ys.append(y)
            names.append(np.full(len(base), source))
            bases.append(base)
        return self._arrays("candidates", xs, ys, names, bases)

    def _build_mixture(self, split: str, base: np.ndarray, stream: int) -> dict[str, np.ndarray]:
        """Held-out images ``base``, each given one target style (balanced) and transformed."""
        images, labels = _digits(self.settings["images"])
        styles = np.asarray(self.settings["target_styles"])
        assigned = styles[np.arange(len(base)) % len(styles)][self._rng(stream, 0).permutation(len(base))]
        x = np.empty((len(base), 8, 8), dtype=np.float32)
        y = np.empty(len(base), dtype=np.int64)
        for style in styles:
            rows = np.flatnonzero(assigned == style)
            rng = self._rng(stream, 1, ALL_SOURCES.index(str(style)))
            x[rows], y[rows] = transform_images(str(style), images[base[rows]], labels[base[rows]], rng)
        return self._arrays(split, [x], [y], [assigned], [base], style_key="style")

    @staticmethod
    def _arrays(
        split: str,
        xs: list[np.ndarray],
        ys: list[np.ndarray],
        names: list[np.ndarray],
        bases: list[np.ndarray],
        style_key: str = "source",
    ) -> dict[str, np.ndarray]:
        return {
            f"{split}_x": np.concatenate(xs)[:, None, :, :].astype(np.float32),
            f"{split}_y": np.concatenate(ys).astype(np.int64),
            f"{split}_{style_key}": np.concatenate(names).astype(str),
            f"{split}_base": np.concatenate(bases).astype(np.int64),
        }

    def prepare(self, out_dir: Path) -> None:
        """Write ``out_dir/data.npz`` (the three splits) and ``out_dir/data.json`` (a summary).

        ``data.npz`` holds ``{split}_x`` (float32, ``(n, 1, 8, 8)``), ``{split}_y`` (int64),
        ``candidates_source`` / ``targets_style`` / ``evaluation_style`` (str) and
        ``{split}_base`` (int64 index of the underlying base image).
        """
        self.check()
        out = Path(out_dir)
        pool, target_base, eval_base = self._split_base()
        arrays = {
            **self._build_candidates(pool),
            **self._build_mixture("targets", target_base, _STREAM_TARGETS),
            **self._build_mixture("evaluation", eval_base, _STREAM_EVALUATION),
        }
        with atomic_path(out / _DATA_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        write_json_atomic(out / _META_FILE, self._summary(arrays, len(pool)))
        logger.info(
            "digits: wrote %d candidates, %d targets, %d evaluation samples to %s",
            len(arrays["candidates_y"]),
            len(arrays["targets_y"]),
            len(arrays["evaluation_y"]),
            out,
        )

    def _summary(self, arrays: Mapping[str, np.ndarray], n_pool: int) -> dict[str, Any]:
        def counts(names: np.ndarray) -> dict[str, int]:
            keys, n = np.unique(names, return_counts=True)
            return {str(k): int(c) for k, c in zip(keys, n)}

        noisy = arrays["candidates_source"] == "label_noise"
        return {
            "task": self.name,
            "seed": self.seed,
            "config": self.settings,
            "n_base_images": self._n_base(),
            "base_images": self.settings["images"] or "sklearn.datasets.load_digits",
            "n_candidate_base_images": n_pool,
            "counts": {
                "candidates": len(arrays["candidates_y"]),
                "targets": len(arrays["targets_y"]),
                "evaluation": len(arrays["evaluation_y"]),
            },
            "candidates_per_source": counts(arrays["candidates_source"]),
            "targets_per_style": counts(arrays["targets_style"]),
            "evaluation_per_style": counts(arrays["evaluation_style"]),
            "n_wrong_labels": int(noisy.sum()),
            "versions": library_versions(),
        }

    def load(self, data_dir: Path) -> TaskData:
        """Read ``data.npz`` from ``data_dir`` into :class:`StyledTensorDataset` splits."""
        path = Path(data_dir) / _DATA_FILE
        if not path.is_file():
            raise TarotInputError(f"digits: {path} not found; run prepare first")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        needed = [f"{s}_{k}" for s in SPLITS for k in ("x", "y")] + [
            "candidates_source",
            "targets_style",
            "evaluation_style",
        ]
        missing = [k for k in needed if k not in arrays]
        if missing:
            raise TarotInputError(f"digits: {path} lacks arrays {missing}")

        def dataset(split: str, style_key: str) -> StyledTensorDataset:
            return StyledTensorDataset(
                torch.from_numpy(arrays[f"{split}_x"].astype(np.float32)),
                torch.from_numpy(arrays[f"{split}_y"].astype(np.int64)),
                arrays[f"{split}_{style_key}"],
            )

        return TaskData(
            candidates=dataset("candidates", "source"),
            targets=dataset("targets", "style"),
            evaluation=dataset("evaluation", "style"),
            sources=arrays["candidates_source"],
            target_groups=arrays["targets_style"],
        )

    # ----------------------------------------------------------------- proxy
    def proxy_model(self) -> nn.Module:
        """A fresh :class:`DigitsCNN` of width ``proxy.width``, initialised under ``manual_seed(seed)``."""
        self.check()
        return seeded(functools.partial(DigitsCNN, self.settings["proxy"]["width"]), self.seed)

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets with Adam and a per-epoch cosine lr decay.

        After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt``
        (``epoch`` 1-based: epochs completed) receives ``{"model": state_dict,
        "optimizer": adam_state_dict}``; its :attr:`ProxyCheckpoint.lr` is the learning
        rate used during that epoch. Nothing else is written.
        """
        cfg = self.settings["proxy"]
        model = self.proxy_model()
        x_c, y_c = tensors(data.candidates)
        x_t, y_t = tensors(data.targets)
        x, y = torch.cat([x_c, x_t]).float(), torch.cat([y_c, y_t]).long()
        optimizer = adam(model, cfg["lr"])
        generator = torch.Generator().manual_seed(self.seed)
        first_saved = cfg["epochs"] - cfg["checkpoints"]
        saved: list[ProxyCheckpoint] = []
        for epoch in tqdm(range(cfg["epochs"]), desc="digits proxy", unit="epoch", disable=not progress):
            lr = cosine_lr(cfg["lr"], epoch, cfg["epochs"])
            set_lr(optimizer, lr)
            loss = run_epoch(model, optimizer, x, y, torch.randperm(len(y), generator=generator), cfg["batch_size"])
            logger.debug("digits proxy epoch %d: lr %.3g, loss %.4f", epoch + 1, lr, loss)
            if epoch >= first_saved:
                saved.append(self._save_checkpoint(Path(out_dir), model, optimizer, epoch + 1, lr, loss))
        return saved

    @staticmethod
    def _save_checkpoint(
        out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, lr: float, loss: float
    ) -> ProxyCheckpoint:
        path = out_dir / f"ckpt_{epoch}.pt"
        with atomic_path(path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
        return ProxyCheckpoint(path=str(path), lr=lr, epoch=epoch, extra={"train_loss": loss})

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Cross-entropy of ``forward(x)`` against ``y`` for a sample ``(x, y)`` of batch size 1."""
        x, y = sample[0], sample[1]
        return F.cross_entropy(forward(x), y)

    # ------------------------------------------------------------ downstream
    def train_downstream(
        self,
        data: TaskData,
        split: str,
        indices: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train a fresh :class:`DigitsCNN` (width ``downstream.width``) on ``split[indices]``.

        Each of ``downstream.epochs`` epochs is a shuffled pass over a list of sample
        indices, in mini-batches of ``downstream.batch_size``, with Adam and a cosine lr
        decay over epochs. The list depends on ``weights``:

        * ``None``: every index once;
        * integer dtype (repeat counts): index ``i`` appears ``weights[i]`` times (0 drops
          it), so repeating data adds optimisation steps, like TAROT's repetition factor;
        * float dtype (masses): ``len(indices)`` draws with replacement, with probability
          proportional to the mass, redrawn each epoch (same number of steps as uniform).

        Everything is seeded by ``seed`` (initialisation, shuffles, draws): the same
        arguments give the same state dict.

        Returns
        -------
        dict
            The model's state dict (detached CPU tensors), input of :meth:`evaluate`.
        """
        self.check()
        if split not in SPLITS:
            raise TarotInputError(f"digits: unknown split {split!r}; one of {SPLITS}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise TarotInputError(f"digits: seed must be a non-negative integer, got {seed!r}")
        x_all, y_all = tensors(data.split(split))
        idx = check_indices(indices, len(y_all), split, "digits")
        w = check_weights(weights, len(idx), "digits")
        cfg = self.settings["downstream"]
        model = seeded(functools.partial(DigitsCNN, cfg["width"]), int(seed))
        optimizer = adam(model, cfg["lr"])
        rng = np.random.default_rng([int(seed), _STREAM_DOWNSTREAM])
        x_all, y_all = x_all.float(), y_all.long()
        for epoch in tqdm(range(cfg["epochs"]), desc="digits downstream", unit="epoch", disable=not progress):
            set_lr(optimizer, cosine_lr(cfg["lr"], epoch, cfg["epochs"]))
            order = torch.from_numpy(epoch_order(idx, w, rng))
            loss = run_epoch(model, optimizer, x_all, y_all, order, cfg["batch_size"])
            logger.debug("digits downstream epoch %d: loss %.4f", epoch + 1, loss)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def downstream_model(self) -> nn.Module:
        """A fresh :class:`DigitsCNN` of width ``downstream.width`` (default initialisation).

        With :class:`~tarot_select.tasks.base.ClassifierOutputsMixin` this gives the LDS
        hooks: ``output_fn`` (margin), ``outputs`` and ``train_weights`` (``1 - p_y``).
        """
        self.check()
        return DigitsCNN(self.settings["downstream"]["width"])

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """Accuracy on ``data.evaluation``, overall and per style (``accuracy_<style>``)."""
        model = self.downstream_model()
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise TarotInputError(f"digits: state does not fit the downstream model: {exc}") from None
        model.eval()
        x, y = tensors(data.evaluation)
        with torch.no_grad():
            pred = torch.cat([model(x[i : i + _EVAL_BATCH].float()).argmax(1) for i in range(0, len(y), _EVAL_BATCH)])
        correct = (pred == y.long()).numpy()
        metrics = {"accuracy": float(correct.mean())}
        styles = getattr(data.evaluation, "styles", None)
        if styles is not None:
            for style in np.unique(styles):
                metrics[f"accuracy_{style}"] = float(correct[styles == style].mean())
        return metrics
