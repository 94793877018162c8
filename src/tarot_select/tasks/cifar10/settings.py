"""Settings of the cifar10_resnet9 task (torch-free): keys, defaults and checks in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from ...errors import TarotInputError
from ..settings import Settings, TaskSettings, setting
from .data import BATCH_FOLDER, N_CLASSES, TRAIN_FILES, batch_dir, missing_files

__all__ = [
    "ARCHS",
    "STANDARD_IMAGES",
    "Arch",
    "Cifar10Downstream",
    "Cifar10Proxy",
    "Cifar10Settings",
    "Cifar10Training",
]

#: Model variants of :class:`~.task.ResNet9` (see :mod:`tarot_select.tasks.cifar10`).
Arch = Literal["trak", "myrtle"]
ARCHS: Final[tuple[str, ...]] = get_args(Arch)
#: Images of the standard CIFAR-10 training and test sets (the sizes the config checks assume).
STANDARD_IMAGES: Final[dict[str, int]] = {"train": 50_000, "test": 10_000}


@dataclass(frozen=True)
class Cifar10Training(Settings):
    """Keys of both trainings: mini-batches, a triangular learning rate per step, SGD's terms."""

    epochs: int = setting(24, minimum=1, doc="training epochs")
    lr: float = setting(0.4, minimum=0, exclusive_minimum=True, doc="peak learning rate")
    batch_size: int = setting(512, minimum=1, doc="mini-batch size")
    weight_decay: float = setting(5e-4, minimum=0, doc="weight decay on every parameter")
    momentum: float = setting(0.9, minimum=0, doc="SGD momentum, below 1")
    lr_peak_epoch: float = setting(5.0, minimum=0, doc="epoch (may be fractional) of the lr peak, below epochs")

    def check(self, where: str = "") -> None:
        if self.momentum >= 1.0:
            raise TarotInputError(f"{where}.momentum: must be < 1, got {self.momentum!r}")
        if self.lr_peak_epoch >= self.epochs:
            raise TarotInputError(f"{where}.lr_peak_epoch: {self.lr_peak_epoch} must be below epochs={self.epochs}")


@dataclass(frozen=True)
class Cifar10Proxy(Cifar10Training):
    """Proxy ResNet-9 training (Adam by default: its checkpoints carry Adam moments for LESS)."""

    lr: float = setting(0.001, minimum=0, exclusive_minimum=True, doc="peak learning rate")
    weight_decay: float = setting(0.0, minimum=0, doc="weight decay on every parameter")
    optimizer: Literal["adam", "sgd"] = setting("adam", doc="adam, or sgd (TRAK's recipe; no Adam moments)")
    checkpoints: int = setting(3, minimum=1, doc="last epochs whose checkpoints give gradients")

    def check(self, where: str = "") -> None:
        super().check(where)
        if self.checkpoints > self.epochs:
            raise TarotInputError(f"{where}.checkpoints: {self.checkpoints} exceeds epochs={self.epochs}")


@dataclass(frozen=True)
class Cifar10Downstream(Cifar10Training):
    """Downstream ResNet-9 training on a selection (TRAK's SGD recipe)."""

    eval_every: int = setting(0, minimum=0, doc="log the evaluation accuracy every this many epochs (0: never)")


@dataclass(frozen=True, kw_only=True)
class Cifar10Settings(TaskSettings):
    """CIFAR-10 with ResNet-9 (see :mod:`tarot_select.tasks.cifar10`)."""

    kind: str = setting("cifar10_resnet9", doc="task kind")
    root: str = setting(doc=f"folder that contains {BATCH_FOLDER}/ (torchvision's CIFAR10 root)")
    n_train: int | None = setting(None, minimum=1, doc="candidates: the first n_train training images (null: all)")
    n_targets: int | None = setting(
        None, minimum=1, doc="targets: the first n_targets test images (null: all not used for evaluation)"
    )
    n_evaluation: int = setting(0, minimum=0, doc="separate evaluation images after the targets (0: = targets)")
    arch: Arch = setting("trak", doc="ResNet-9 variant: TRAK's or cifar10-fast's")
    width: int = setting(64, minimum=1, doc="channels of the first block (the others scale with it)")
    augment: bool = setting(False, doc="random crops and flips in training")
    proxy: Cifar10Proxy = setting(factory=Cifar10Proxy, doc="proxy training")
    downstream: Cifar10Downstream = setting(factory=Cifar10Downstream, doc="downstream training")

    def check(self, where: str = "") -> None:
        root = Path(self.root)
        if not self.root or not root.is_dir():
            raise TarotInputError(f"{where}.root: folder not found: {self.root}")
        missing = missing_files(root)
        if missing:
            hint = ""
            if root.name == BATCH_FOLDER or (root / TRAIN_FILES[0]).is_file():
                hint = f"; root must be the folder that contains {BATCH_FOLDER}/, not that folder itself"
            raise TarotInputError(
                f"{where}.root: {batch_dir(root)} lacks the CIFAR-10 batch file(s) {', '.join(missing)}{hint}"
            )

    def split_sizes(self) -> dict[str, int]:
        """Rows of each split, for the standard 50,000 training and 10,000 test images."""
        n_targets = STANDARD_IMAGES["test"] - self.n_evaluation if self.n_targets is None else self.n_targets
        return {
            "candidates": STANDARD_IMAGES["train"] if self.n_train is None else self.n_train,
            "targets": n_targets,
            "evaluation": self.n_evaluation or n_targets,
        }

    def proxy_parameters(self) -> dict[str, tuple[int, ...]]:
        """Parameter shapes of the proxy :class:`~.task.ResNet9` (``arch``, ``width``)."""
        w = self.width
        out: dict[str, tuple[int, ...]] = {}

        def conv_bn(prefix: str, c_in: int, c_out: int, k: int = 3) -> None:
            out[f"{prefix}.0.weight"] = (c_out, c_in, k, k)  # convolution without bias
            out[f"{prefix}.1.weight"] = (c_out,)  # batch norm
            out[f"{prefix}.1.bias"] = (c_out,)

        def residual(prefix: str, c: int) -> None:
            conv_bn(f"{prefix}.body.0", c, c)
            conv_bn(f"{prefix}.body.1", c, c)

        if self.arch == "trak":
            conv_bn("features.0", 3, w)
            conv_bn("features.1", w, 2 * w, 5)
            residual("features.2", 2 * w)
            conv_bn("features.3", 2 * w, 4 * w)
            residual("features.5", 4 * w)  # 4: max pooling
            conv_bn("features.6", 4 * w, 2 * w)
            out_channels = 2 * w
        else:
            conv_bn("features.0", 3, w)
            conv_bn("features.1", w, 2 * w)
            residual("features.3", 2 * w)  # 2, 5, 7: max pooling
            conv_bn("features.4", 2 * w, 4 * w)
            conv_bn("features.6", 4 * w, 8 * w)
            residual("features.8", 8 * w)
            out_channels = 8 * w
        out["head.weight"] = (N_CLASSES, out_channels)
        return out
