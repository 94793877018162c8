"""Settings of the digits task (torch-free): keys, defaults and checks in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import TarotInputError
from ..settings import Settings, TaskSettings, setting
from .data import N_CLASSES, N_DIGITS, NON_TARGET_STYLES, base_images

__all__ = ["DigitsDownstream", "DigitsProxy", "DigitsSettings"]

Source = Literal["clean", "rotated", "inverted", "noisy", "blurred", "shifted", "label_noise"]


@dataclass(frozen=True)
class DigitsProxy(Settings):
    """Proxy CNN training (Adam, per-epoch cosine decay)."""

    epochs: int = setting(8, minimum=1, doc="training epochs")
    lr: float = setting(0.003, minimum=0, exclusive_minimum=True, doc="peak Adam learning rate")
    batch_size: int = setting(64, minimum=1, doc="mini-batch size")
    checkpoints: int = setting(3, minimum=1, doc="last epochs whose checkpoints give gradients")
    width: int = setting(16, minimum=1, doc="channels of the first convolution")

    def check(self, where: str = "") -> None:
        if self.checkpoints > self.epochs:
            raise TarotInputError(f"{where}.checkpoints: {self.checkpoints} exceeds epochs={self.epochs}")


@dataclass(frozen=True)
class DigitsDownstream(Settings):
    """Downstream CNN training on a selection."""

    epochs: int = setting(30, minimum=1, doc="training epochs")
    lr: float = setting(0.003, minimum=0, exclusive_minimum=True, doc="peak Adam learning rate")
    batch_size: int = setting(32, minimum=1, doc="mini-batch size")
    width: int = setting(16, minimum=1, doc="channels of the first convolution")


@dataclass(frozen=True)
class DigitsSettings(TaskSettings):
    """Domain-shifted scikit-learn digits (see :mod:`tarot_select.tasks.digits`)."""

    kind: str = setting("digits", doc="task kind")
    sources: tuple[Source, ...] = setting(
        ("clean", "rotated", "inverted", "noisy", "blurred", "shifted", "label_noise"),
        non_empty=True,
        unique=True,
        doc="candidate sources (transformations of the images)",
    )
    per_source: int = setting(200, minimum=1, doc="candidates per source")
    target_styles: tuple[Source, ...] = setting(
        ("rotated", "noisy"), non_empty=True, unique=True, doc="styles mixed in equal shares in targets and evaluation"
    )
    n_targets: int = setting(100, minimum=1, doc="target samples that drive selection")
    n_evaluation: int = setting(400, minimum=1, doc="held-out evaluation samples")
    images: str | None = setting(None, doc="local .npz with images (N, 8, 8) in 0..16 and labels; null: scikit-learn's")
    proxy: DigitsProxy = setting(factory=DigitsProxy, doc="proxy training")
    downstream: DigitsDownstream = setting(factory=DigitsDownstream, doc="downstream training")

    def check(self, where: str = "") -> None:
        bad = [t for t in self.target_styles if t in NON_TARGET_STYLES]
        if bad:
            raise TarotInputError(f"{where}.target_styles: {bad} cannot be a target style (target labels are correct)")
        missing = [t for t in self.target_styles if t not in self.sources]
        if missing:
            raise TarotInputError(f"{where}.target_styles: {missing} are not among the sources {list(self.sources)}")
        for n, what in ((self.n_targets, "n_targets"), (self.n_evaluation, "n_evaluation")):
            if n < len(self.target_styles):
                raise TarotInputError(f"{where}.{what}: {n} is fewer than the {len(self.target_styles)} target styles")
        if self.images is not None and not Path(self.images).is_file():
            raise TarotInputError(f"{where}.images: file not found: {self.images}")
        n_base = self.n_base_images()
        held = self.n_targets + self.n_evaluation
        if held + self.per_source > n_base:
            raise TarotInputError(
                f"{where}.per_source: n_targets + n_evaluation = {held} held-out images leave {n_base - held} of "
                f"{n_base} for candidates, fewer than per_source={self.per_source}"
            )

    def n_base_images(self) -> int:
        """Number of base images (1,797 for scikit-learn's copy)."""
        return N_DIGITS if self.images is None else len(base_images(self.images)[0])

    def split_sizes(self) -> dict[str, int]:
        """Rows of each split: ``per_source`` candidates per source, ``n_targets``, ``n_evaluation``."""
        return {
            "candidates": len(self.sources) * self.per_source,
            "targets": self.n_targets,
            "evaluation": self.n_evaluation,
        }

    def proxy_parameters(self) -> dict[str, tuple[int, ...]]:
        """Parameter shapes of the proxy :class:`~.task.DigitsCNN` (width ``proxy.width``)."""
        w = self.proxy.width
        return {
            "conv1.weight": (w, 1, 3, 3),
            "conv1.bias": (w,),
            "conv2.weight": (2 * w, w, 3, 3),
            "conv2.bias": (2 * w,),
            "fc1.weight": (64, 2 * w * 4 * 4),
            "fc1.bias": (64,),
            "fc2.weight": (N_CLASSES, 64),
            "fc2.bias": (N_CLASSES,),
        }
