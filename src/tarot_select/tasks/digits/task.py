"""The digits task: data preparation, the CNN, proxy and downstream training, evaluation."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import TarotInputError
from ...io import library_versions, save_npz
from .._config import seeded
from .._training import (
    EpochLog,
    adam,
    check_indices,
    check_seed,
    check_weights,
    cosine_lr,
    cpu_state,
    epoch_order,
    logits,
    run_epoch,
    set_lr,
    tensors,
    train_adam_proxy,
)
from ..base import SPLITS, ClassifierOutputsMixin, Metric, ProxyCheckpoint, Task, TaskData, load_prepared_arrays
from .data import ALL_SOURCES, N_CLASSES, base_images, transform_images
from .settings import DigitsSettings

__all__ = ["DigitsCNN", "DigitsTask", "StyledTensorDataset"]

logger = logging.getLogger(__name__)

_DATA_FILE: Final[str] = "data.npz"  # its sidecar data.json (io.save_npz) is the summary
_EVAL_BATCH: Final[int] = 512

# Stream identifiers of the seeded generators (second and later entries of the seed).
_STREAM_SPLIT, _STREAM_CANDIDATES, _STREAM_TARGETS, _STREAM_EVALUATION = 0, 1, 2, 3
_STREAM_DOWNSTREAM = 4


# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- task


class DigitsTask(ClassifierOutputsMixin, Task):
    """Domain-shifted sklearn digits (see the module docstring for sources and config).

    Parameters
    ----------
    config : mapping
        The task's settings (:class:`~.settings.DigitsSettings`) or config block.
    seed : int
        Seeds the splits, the transforms, the proxy's initialisation and shuffling.
    """

    name = "digits"
    SETTINGS = DigitsSettings
    metrics = (Metric("accuracy", higher_is_better=True, unit="%", scale=100.0),)

    # ------------------------------------------------------------------ data
    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])

    def _n_base(self) -> int:
        """Number of base images (1,797 for scikit-learn's copy)."""
        return self.options.n_base_images()

    def _split_base(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Base-image indices ``(candidate part, targets, evaluation)`` of a seeded permutation."""
        n_t, n_e = self.settings["n_targets"], self.settings["n_evaluation"]
        perm = self._rng(_STREAM_SPLIT).permutation(self._n_base())
        return np.sort(perm[n_t + n_e :]), perm[:n_t], perm[n_t : n_t + n_e]

    def _build_candidates(self, pool: np.ndarray) -> dict[str, np.ndarray]:
        images, labels = base_images(self.settings["images"])
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
        images, labels = base_images(self.settings["images"])
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
        out = Path(out_dir)
        pool, target_base, eval_base = self._split_base()
        arrays = {
            **self._build_candidates(pool),
            **self._build_mixture("targets", target_base, _STREAM_TARGETS),
            **self._build_mixture("evaluation", eval_base, _STREAM_EVALUATION),
        }
        # the summary is the sidecar of the arrays (data.json), with their checked size and checksum
        save_npz(out / _DATA_FILE, arrays, self._summary(arrays, len(pool)))
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

    def load(self, data_dir: Path, target: str | None = None) -> TaskData:
        """Read ``data.npz`` from ``data_dir`` into :class:`StyledTensorDataset` splits."""
        path = Path(data_dir) / _DATA_FILE
        if not path.is_file():
            raise TarotInputError(f"digits: {path} not found; run prepare first")
        arrays = load_prepared_arrays(path)  # checked against data.json: a damaged file is refused
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
        return seeded(functools.partial(DigitsCNN, self.settings["proxy"]["width"]), self.seed)

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets with Adam and a per-epoch cosine lr decay.

        After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt``
        (``epoch`` 1-based: epochs completed) receives ``{"model": state_dict,
        "optimizer": adam_state_dict}``; its :attr:`ProxyCheckpoint.lr` is the learning
        rate used during that epoch. Nothing else is written. Trains on :attr:`context.device
        <tarot_select.tasks.base.RunContext.device>` and logs one line per epoch
        (``progress`` is ignored: the context decides on a progress bar).
        """
        return train_adam_proxy(
            self.proxy_model(), data, self.settings["proxy"], self.seed, Path(out_dir), self.context, self.name, logger
        )

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Cross-entropy of ``forward(x)`` against ``y`` for a sample ``(x, y)`` of batch size 1."""
        x, y = sample[0], sample[1]
        return F.cross_entropy(forward(x), y)

    def embedding_blocks(self, model: nn.Module) -> list[str]:
        """The :class:`DigitsCNN` layers in forward order: ``conv1``, ``conv2`` (outputs
        ``(B, C, 8, 8)`` before the ReLU), ``fc1``, ``fc2`` (the logits). The default
        flattening reduces them (at most ``2 * width * 64`` numbers)."""
        return ["conv1", "conv2", "fc1", "fc2"]

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
        arguments give the same state dict. Trains on :attr:`context.device
        <tarot_select.tasks.base.RunContext.device>`; every epoch logs its loss, learning
        rate and the accuracy on ``data.evaluation`` (``progress`` is ignored: the context
        decides on a progress bar).

        Returns
        -------
        dict
            The model's state dict (detached CPU tensors), input of :meth:`evaluate`.
        """
        if split not in SPLITS:
            raise TarotInputError(f"digits: unknown split {split!r}; one of {SPLITS}")
        seed = check_seed(seed, "digits")
        x_all, y_all = tensors(data.split(split))
        idx = check_indices(indices, len(y_all), split, "digits")
        w = check_weights(weights, len(idx), "digits")
        cfg = self.settings["downstream"]
        device = self.context.torch_device
        model = seeded(functools.partial(DigitsCNN, cfg["width"]), seed).to(device)
        optimizer = adam(model, cfg["lr"])
        rng = np.random.default_rng([seed, _STREAM_DOWNSTREAM])
        x_all, y_all = x_all.float().to(device), y_all.long().to(device)
        log = EpochLog(logger, f"{self.name} downstream", cfg["epochs"], self.context.progress)
        for epoch in log:
            lr = cosine_lr(cfg["lr"], epoch, cfg["epochs"])
            set_lr(optimizer, lr)
            order = torch.from_numpy(epoch_order(idx, w, rng))
            loss = run_epoch(model, optimizer, x_all, y_all, order, cfg["batch_size"])
            log.end(loss, lr, {self.primary_metric: float(self._correct(model, data).mean())} if log.wanted else None)
        return cpu_state(model)

    def _correct(self, model: nn.Module, data: TaskData) -> np.ndarray:
        """Whether ``model`` (on the context's device) classifies each evaluation image right, ``bool (n,)``."""
        x, y = tensors(data.evaluation)
        pred = logits(model, x.float(), _EVAL_BATCH, self.context.torch_device).argmax(1)
        return (pred == y.long()).numpy()

    def downstream_model(self) -> nn.Module:
        """A fresh :class:`DigitsCNN` of width ``downstream.width`` (default initialisation).

        With :class:`~tarot_select.tasks.base.ClassifierOutputsMixin` this gives the LDS
        hooks: ``output_fn`` (margin), ``outputs`` and ``train_weights`` (``1 - p_y``).
        """
        return DigitsCNN(self.settings["downstream"]["width"])

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """Accuracy on ``data.evaluation``, overall and per style (``accuracy_<style>``)."""
        model = self.downstream_model()
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise TarotInputError(f"digits: state does not fit the downstream model: {exc}") from None
        correct = self._correct(model.to(self.context.torch_device), data)
        metrics = {"accuracy": float(correct.mean())}
        styles = getattr(data.evaluation, "styles", None)
        if styles is not None:
            for style in np.unique(styles):
                metrics[f"accuracy_{style}"] = float(correct[styles == style].mean())
        return metrics
