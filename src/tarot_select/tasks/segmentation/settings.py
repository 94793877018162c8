"""Settings of the segmentation task (torch-free): keys, defaults and checks in one place.

The checks run in the Snakemake process before any job: for ``dataset: gta5_cityscapes``
they list the GTA5 and Cityscapes folders (names only, :mod:`.readers`), so a missing or
malformed folder, or an image without its label file, stops the run naming the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import TarotInputError
from ..settings import Settings, TaskSettings, setting
from .data import NON_TARGET_STYLES
from .labels import N_CLASSES
from .readers import list_cityscapes, list_gta5

__all__ = [
    "SegmentationDownstream",
    "SegmentationModel",
    "SegmentationProxy",
    "SegmentationSettings",
    "SegmentationTraining",
]

Style = Literal["day", "dusk", "night", "fog", "desert", "mislabelled"]


@dataclass(frozen=True)
class SegmentationModel(Settings):
    """The DeepLabV3 of proxy and downstream (see :mod:`tarot_select.tasks.segmentation.model`)."""

    backend: Literal["torchvision", "mmseg"] = setting(
        "torchvision", doc="torchvision (arch below) | mmseg (the model of an mmsegmentation config file)"
    )
    arch: Literal["small", "deeplabv3_resnet50"] = setting(
        "small", doc="torchvision: small (narrow backbone + torchvision's ASPP head) | deeplabv3_resnet50"
    )
    width: int = setting(16, minimum=1, doc="small: channels of the first backbone block (then 2x, 4x, 4x)")
    output_stride: Literal[4, 8] = setting(8, doc="small: input size / feature size (strides, then dilation)")
    aspp_channels: int = setting(32, minimum=1, doc="small: channels of the ASPP head (torchvision's DeepLabHead: 256)")
    atrous_rates: tuple[int, ...] = setting(
        (2, 4, 6), minimum=1, non_empty=True, doc="small: dilations of the ASPP 3x3 branches (DeepLabHead: 12, 24, 36)"
    )
    backbone_weights: str | None = setting(
        None, doc="deeplabv3_resnet50: local torchvision ResNet-50 state dict for the backbone (null: random init)"
    )
    mmseg_config: str | None = setting(
        None, doc="mmseg: an mmseg config file whose model is an EncoderDecoder (e.g. DeepLabV3 R50-D8 Cityscapes)"
    )
    mmseg_checkpoint: str | None = setting(
        None, doc="mmseg: local weights of the whole segmentor (tensors only; null: the modules' own init)"
    )

    def check(self, where: str = "") -> None:
        if self.backend == "mmseg":
            from .mmseg_model import mmseg_available

            if self.mmseg_config is None:
                raise TarotInputError(f"{where}.mmseg_config: backend mmseg needs an mmseg config file")
            for key in ("mmseg_config", "mmseg_checkpoint"):
                value = getattr(self, key)
                if value is not None and not Path(value).is_file():
                    raise TarotInputError(f"{where}.{key}: file not found: {value}")
            if self.backbone_weights is not None:
                raise TarotInputError(f"{where}.backbone_weights: only for backend torchvision (mmseg: mmseg_checkpoint)")
            why = mmseg_available()
            if why is not None:
                raise TarotInputError(f"{where}.backend: mmseg: {why}")
            return
        for key in ("mmseg_config", "mmseg_checkpoint"):
            if getattr(self, key) is not None:
                raise TarotInputError(f"{where}.{key}: only for backend mmseg, not {self.backend}")
        if self.backbone_weights is not None:
            if self.arch != "deeplabv3_resnet50":
                raise TarotInputError(f"{where}.backbone_weights: only for arch deeplabv3_resnet50, not {self.arch}")
            if not Path(self.backbone_weights).is_file():
                raise TarotInputError(f"{where}.backbone_weights: file not found: {self.backbone_weights}")


@dataclass(frozen=True)
class SegmentationTraining(Settings):
    """Keys of both trainings: mini-batches, a polynomial learning-rate decay per step."""

    epochs: int = setting(30, minimum=1, doc="training epochs")
    lr: float = setting(0.003, minimum=0, exclusive_minimum=True, doc="initial learning rate")
    batch_size: int = setting(16, minimum=1, doc="mini-batch size")
    optimizer: Literal["adam", "sgd"] = setting("adam", doc="adam | sgd (with momentum)")
    momentum: float = setting(0.9, minimum=0, doc="SGD momentum, below 1")
    weight_decay: float = setting(0.0, minimum=0, doc="weight decay on every parameter")
    poly_power: float = setting(0.9, minimum=0, doc="lr after step s of S: lr * (1 - s / S) ** poly_power")
    amp: bool = setting(False, doc="bfloat16 autocast of the training forward passes on CUDA (no effect on CPU)")

    def check(self, where: str = "") -> None:
        if self.momentum >= 1.0:
            raise TarotInputError(f"{where}.momentum: must be < 1, got {self.momentum!r}")


@dataclass(frozen=True)
class SegmentationProxy(SegmentationTraining):
    """Proxy training (Adam by default: its checkpoints carry Adam moments for LESS)."""

    epochs: int = setting(8, minimum=1, doc="training epochs")
    checkpoints: int = setting(4, minimum=1, doc="last epochs whose checkpoints give gradients")

    def check(self, where: str = "") -> None:
        super().check(where)
        if self.checkpoints > self.epochs:
            raise TarotInputError(f"{where}.checkpoints: {self.checkpoints} exceeds epochs={self.epochs}")


@dataclass(frozen=True)
class SegmentationDownstream(SegmentationTraining):
    """Downstream training on a selection, and what evaluation reports first."""

    eval_every: int = setting(0, minimum=0, doc="evaluate (mIoU on the evaluation split) every k epochs (0: never)")
    primary: Literal["final", "best"] = setting(
        "final", doc="primary metric: final mIoU (miou) or best mIoU over the evaluations (best_miou, the paper's)"
    )


@dataclass(frozen=True)
class SegmentationSettings(TaskSettings):
    """Semantic segmentation, synthetic street scenes or GTA5 -> Cityscapes (see :mod:`tarot_select.tasks.segmentation`)."""

    kind: str = setting("segmentation", doc="task kind")
    dataset: Literal["synthetic", "gta5_cityscapes"] = setting(
        "synthetic", doc="synthetic (procedural scenes, no files) | gta5_cityscapes (local copies)"
    )
    image_size: tuple[int, ...] = setting(
        (48, 96), minimum=8, doc="[height, width] of the images (generated, or resized to)"
    )
    sources: tuple[Style, ...] = setting(
        ("day", "dusk", "night", "fog", "desert", "mislabelled"),
        non_empty=True,
        unique=True,
        doc="synthetic: candidate styles",
    )
    per_source: int = setting(60, minimum=1, doc="synthetic: candidates per style")
    target_styles: tuple[Style, ...] = setting(
        ("day", "dusk", "fog"), non_empty=True, unique=True, doc="synthetic: styles mixed in the target (own camera)"
    )
    gta5_root: str | None = setting(None, doc="gta5_cityscapes: folder with images/ and labels/")
    cityscapes_root: str | None = setting(None, doc="gta5_cityscapes: folder with leftImg8bit/ and gtFine/")
    n_candidates: int | None = setting(None, minimum=1, doc="gta5_cityscapes: seeded sample of GTA5 images (null: all)")
    n_targets: int | None = setting(
        60, minimum=1, doc="target images (gta5_cityscapes: seeded sample of Cityscapes train, null: all)"
    )
    n_evaluation: int | None = setting(
        120, minimum=1, doc="evaluation images (gta5_cityscapes: seeded sample of Cityscapes val, null: all)"
    )
    model: SegmentationModel = setting(factory=SegmentationModel, doc="the DeepLabV3 of proxy and downstream")
    proxy: SegmentationProxy = setting(factory=SegmentationProxy, doc="proxy training")
    downstream: SegmentationDownstream = setting(factory=SegmentationDownstream, doc="downstream training")

    def check(self, where: str = "") -> None:
        if len(self.image_size) != 2:
            raise TarotInputError(f"{where}.image_size: must be [height, width], got {list(self.image_size)}")
        if self.dataset == "synthetic":
            self._check_synthetic(where)
        else:
            self._check_real(where)

    def _check_synthetic(self, where: str) -> None:
        bad = [t for t in self.target_styles if t in NON_TARGET_STYLES]
        if bad:
            raise TarotInputError(f"{where}.target_styles: {bad} cannot be a target style (target labels are correct)")
        for key in ("n_targets", "n_evaluation"):
            n = getattr(self, key)
            if n is None:
                raise TarotInputError(f"{where}.{key}: needs a number for dataset synthetic")
            if n < len(self.target_styles):
                raise TarotInputError(f"{where}.{key}: {n} is fewer than the {len(self.target_styles)} target styles")
        if self.gta5_root is not None or self.cityscapes_root is not None or self.n_candidates is not None:
            raise TarotInputError(
                f"{where}.dataset: synthetic ignores gta5_root, cityscapes_root and n_candidates; "
                "set dataset: gta5_cityscapes or remove them"
            )

    def _check_real(self, where: str) -> None:
        counts = {}
        for key, lister in (
            ("gta5_root", lambda r: {"candidates": list_gta5(r)}),
            ("cityscapes_root", lambda r: {s: list_cityscapes(r, s) for s in ("train", "val")}),
        ):
            root = getattr(self, key)
            if root is None:
                raise TarotInputError(f"{where}.{key}: required for dataset gta5_cityscapes")
            try:
                counts.update({k: len(v) for k, v in lister(root).items()})
            except TarotInputError as exc:
                raise TarotInputError(f"{where}.{key}: {exc}") from None
        for key, have, what in (
            ("n_candidates", counts["candidates"], "GTA5 images"),
            ("n_targets", counts["train"], "Cityscapes train images"),
            ("n_evaluation", counts["val"], "Cityscapes val images"),
        ):
            n = getattr(self, key)
            if n is not None and n > have:
                raise TarotInputError(f"{where}.{key}: {n} exceeds the {have} {what}")

    def split_sizes(self) -> dict[str, int]:
        """Rows of each split (for GTA5 / Cityscapes: from the file listings, names only)."""
        if self.dataset == "synthetic":
            return {
                "candidates": len(self.sources) * self.per_source,
                "targets": int(self.n_targets or 0),
                "evaluation": int(self.n_evaluation or 0),
            }
        have = {
            "candidates": len(list_gta5(str(self.gta5_root))),
            "targets": len(list_cityscapes(str(self.cityscapes_root), "train")),
            "evaluation": len(list_cityscapes(str(self.cityscapes_root), "val")),
        }
        chosen = {"candidates": self.n_candidates, "targets": self.n_targets, "evaluation": self.n_evaluation}
        return {split: have[split] if n is None else min(n, have[split]) for split, n in chosen.items()}

    def conda_env(self) -> str:
        """``mmseg`` (torch plus mmcv built by its post-deploy script) for ``model.backend: mmseg``."""
        return "mmseg" if self.model.backend == "mmseg" else "torch"

    def proxy_parameters(self) -> dict[str, tuple[int, ...]] | None:
        """Parameter shapes of the ``small`` proxy (None for ``deeplabv3_resnet50``)."""
        m = self.model
        if m.backend != "torchvision" or m.arch != "small":
            return None
        out: dict[str, tuple[int, ...]] = {}

        def conv_bn(prefix: str, conv: str, bn: str, c_in: int, c_out: int, k: int) -> None:
            out[f"{prefix}.{conv}.weight"] = (c_out, c_in, k, k)
            out[f"{prefix}.{bn}.weight"] = (c_out,)
            out[f"{prefix}.{bn}.bias"] = (c_out,)

        c_in = 3
        for i, c_out in enumerate((m.width, 2 * m.width, 4 * m.width, 4 * m.width)):
            conv_bn(f"backbone.{i}", "0", "1", c_in, c_out, 3)
            c_in = c_out
        c, r = m.aspp_channels, len(m.atrous_rates)
        conv_bn("classifier.0.convs.0", "0", "1", c_in, c, 1)
        for j in range(1, r + 1):
            conv_bn(f"classifier.0.convs.{j}", "0", "1", c_in, c, 3)
        conv_bn(f"classifier.0.convs.{r + 1}", "1", "2", c_in, c, 1)  # image pooling: 0 is the pool
        conv_bn("classifier.0.project", "0", "1", (r + 2) * c, c, 1)
        conv_bn("classifier", "1", "2", c, c, 3)
        out["classifier.4.weight"] = (N_CLASSES, c, 1, 1)
        out["classifier.4.bias"] = (N_CLASSES,)
        return out
