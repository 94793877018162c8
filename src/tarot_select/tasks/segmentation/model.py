"""DeepLabV3 models of the segmentation task: torchvision's ASPP head on a narrow backbone, or
torchvision's DeepLabV3-ResNet-50.

Both are a :class:`SegmentationNet`: raw pixels in (uint8 or float, 0..255, shape
``(B, 3, H, W)``), ImageNet normalisation inside, logits out (``(B, 19, H, W)``, bilinearly
upsampled to the input size as torchvision's ``DeepLabV3.forward`` does), a *tensor* rather
than torchvision's ``{"out": ...}`` dict, so that the gradient featurizers (``vmap``,
``loop`` and ``factored``) can call it. Its submodules keep torchvision's names
(``backbone``, ``classifier``), so a state dict of torchvision's ``deeplabv3_resnet50``
(without the auxiliary head) loads into the ``deeplabv3_resnet50`` arch unchanged.

``small``
    A backbone of four conv(no bias)-BatchNorm-ReLU blocks of ``width``, ``2 width``,
    ``4 width``, ``4 width`` channels with stride 2 until the output stride
    (``output_stride`` 4 or 8) and dilation after it (as DeepLabV3 replaces strides with
    dilation), then the head of torchvision's ``DeepLabHead`` with ``aspp_channels``
    instead of its fixed 256: ``ASPP(4 width, atrous_rates, aspp_channels)`` (a 1×1 branch,
    one dilated 3×3 branch per rate, image pooling; concatenation, 1×1 projection,
    dropout 0.5), 3×3 conv, BatchNorm, ReLU, 1×1 classifier. With ``aspp_channels=256`` it
    is ``DeepLabHead`` module for module (same parameter names).
``deeplabv3_resnet50``
    ``torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
    num_classes=19)`` (output stride 8, ``DeepLabHead(2048, 19)``, 39.6 M parameters; no
    auxiliary head); ``backbone_weights`` optionally names a local ResNet-50 state dict
    (torchvision's ``resnet50`` keys; ``fc.*`` is dropped) loaded into the backbone.
    Nothing is downloaded.

Batch norm: gradients are taken in eval mode (running statistics; the featurizers switch
the model to eval), so every sample's gradient is independent of its batch. ReLUs are not
in place (``torch.func`` friendly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import TarotInputError
from .labels import N_CLASSES

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SegmentationNet", "build_model", "count_parameters", "small_backbone"]

#: ImageNet statistics of torchvision's ResNet-50 (pixels scaled to [0, 1]).
IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)


def _torchvision_deeplabv3() -> Any:
    """``torchvision.models.segmentation.deeplabv3``, or ImportError with the fix."""
    try:
        from torchvision.models.segmentation import deeplabv3
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the segmentation task builds torchvision's DeepLabV3 ({exc}); install torchvision matching torch "
            "(e.g. torch==2.14.1 with torchvision==0.29.1)"
        ) from exc
    return deeplabv3


class SegmentationNet(nn.Module):
    """``classifier(backbone(normalise(x)))`` upsampled to the input size: per-pixel logits.

    Parameters
    ----------
    backbone : nn.Module
        Maps normalised images ``(B, 3, H, W)`` to features ``(B, C, H / s, W / s)``, or to a
        dict whose ``"out"`` holds them (torchvision's ``IntermediateLayerGetter``).
    classifier : nn.Module
        Maps the features to logits ``(B, n_classes, H / s, W / s)``.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        # Not in the state dict: constants of the input scaling.
        self.register_buffer("pixel_mean", 255.0 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", 255.0 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes, H, W)`` of images ``(B, 3, H, W)`` with pixel values 0..255."""
        size = x.shape[-2:]
        h = (x.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        feats = self.backbone(h)
        if isinstance(feats, Mapping):
            feats = feats["out"]
        return F.interpolate(self.classifier(feats), size=size, mode="bilinear", align_corners=False)


def _conv_bn(c_in: int, c_out: int, stride: int, dilation: int) -> nn.Sequential:
    """3×3 convolution (no bias, padding = dilation), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def small_backbone(width: int, output_stride: int) -> tuple[nn.Sequential, int]:
    """The narrow backbone and its output channels (see the module docstring).

    Block ``i`` (0..3) has stride 2 while ``i < log2(output_stride)``, then stride 1 and
    dilation ``2 ** (i - log2(output_stride) + 1)``.
    """
    if output_stride not in (4, 8):
        raise TarotInputError(f"segmentation: model.output_stride must be 4 or 8, got {output_stride}")
    n_down = int(math.log2(output_stride))
    channels = [width, 2 * width, 4 * width, 4 * width]
    blocks, c_in = [], 3
    for i, c_out in enumerate(channels):
        stride, dilation = (2, 1) if i < n_down else (1, 2 ** (i - n_down + 1))
        blocks.append(_conv_bn(c_in, c_out, stride, dilation))
        c_in = c_out
    return nn.Sequential(*blocks), c_in


def deeplab_head(in_channels: int, n_classes: int, rates: Sequence[int], channels: int) -> nn.Sequential:
    """torchvision's ``DeepLabHead`` with ``channels`` ASPP channels (256 in torchvision)."""
    deeplabv3 = _torchvision_deeplabv3()
    return nn.Sequential(
        deeplabv3.ASPP(in_channels, tuple(rates), channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, n_classes, 1),
    )


def _resnet50(backbone_weights: str | None) -> SegmentationNet:
    deeplabv3 = _torchvision_deeplabv3()
    net = deeplabv3.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=N_CLASSES, aux_loss=False)
    if backbone_weights is not None:
        path = Path(backbone_weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - missing, truncated or foreign files alike
            raise TarotInputError(f"segmentation: model.backbone_weights: cannot read {path}: {exc}") from None
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise TarotInputError(f"segmentation: model.backbone_weights: {path} holds no state dict")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            net.backbone.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise TarotInputError(
                f"segmentation: model.backbone_weights: {path} is not a torchvision ResNet-50 state dict ({detail})"
            ) from None
    return SegmentationNet(net.backbone, net.classifier)


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model for the ``model`` settings block ``cfg`` (default torch init).

    Parameters
    ----------
    cfg : mapping
        ``backend`` (``torchvision`` | ``mmseg``); torchvision: ``arch`` (``small`` |
        ``deeplabv3_resnet50``), ``width``, ``output_stride``, ``aspp_channels``,
        ``atrous_rates`` (small) and ``backbone_weights`` (ResNet-50); mmseg:
        ``mmseg_config`` and ``mmseg_checkpoint`` (:mod:`.mmseg_model`).
    """
    if cfg.get("backend", "torchvision") == "mmseg":
        from .mmseg_model import build_mmseg_model

        return build_mmseg_model(cfg["mmseg_config"], cfg.get("mmseg_checkpoint"), N_CLASSES)
    if cfg["arch"] == "deeplabv3_resnet50":
        return _resnet50(cfg.get("backbone_weights"))
    if cfg["arch"] != "small":
        raise TarotInputError(f"segmentation: unknown model.arch {cfg['arch']!r}; small or deeplabv3_resnet50")
    backbone, c_out = small_backbone(int(cfg["width"]), int(cfg["output_stride"]))
    head = deeplab_head(c_out, N_CLASSES, cfg["atrous_rates"], int(cfg["aspp_channels"]))
    return SegmentationNet(backbone, head)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (batch-norm running statistics not included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
