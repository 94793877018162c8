"""The mmsegmentation backend: a segmentor built from an mmseg config file (``model.backend: mmseg``).

A user's existing mmseg config (e.g. ``deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py``,
with its ``_base_`` files) is read with ``mmengine.config.Config`` and its ``model`` is built
through mmseg's registry, so every backbone and head mmseg knows works. What changes, and
why:

- ``decode_head.num_classes`` is set to 19 (the Cityscapes train ids this task labels with).
- The auxiliary head is dropped: like the paper's torchvision DeepLabV3 (no ``aux_loss``),
  proxy and downstream train on the main head's pixel cross entropy, and every parameter
  then has a gradient (the featurizers need that). A checkpoint's ``auxiliary_head.*``
  weights are ignored.
- ``SyncBN`` becomes ordinary batch norm (``mmengine.model.revert_sync_batchnorm``): one
  process, CPU or one GPU.
- ``pretrained`` / ``init_cfg`` entries of type ``Pretrained`` are cleared (they would
  download ``open-mmlab://`` weights); the modules' own ``init_weights`` run instead. Use
  ``model.mmseg_checkpoint`` for local weights of the whole segmentor.
- mmseg's data pre-processor is not used. :class:`MMSegNet` takes raw RGB pixels (0..255,
  ``(B, 3, H, W)``), flips them to BGR when the config's pre-processor has
  ``bgr_to_rgb: False`` (a model that expects BGR input), normalises them with the
  config's ``mean`` and ``std`` and returns ``encode_decode``'s logits
  (``(B, 19, H, W)``, resized to the input as mmseg does), so it is a drop-in
  :class:`~tarot_select.tasks.segmentation.model.SegmentationNet` replacement.

Batch norm statistics are used in eval mode for gradients (the featurizers switch to eval),
as for the torchvision models.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import TarotInputError

__all__ = ["MMSegNet", "build_mmseg_model", "mmseg_available"]

_INSTALL = "run `bash envs/mmseg.post-deploy.sh` (builds mmcv 2.1.0 with its ops against this torch)"


def mmseg_available() -> str | None:
    """None when mmseg and mmcv's compiled ops can be imported, else why not (and the fix)."""
    for name in ("mmengine", "mmseg", "mmcv"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed; {_INSTALL}"
    if importlib.util.find_spec("mmcv._ext") is None:
        return f"mmcv has no compiled ops (mmcv._ext; mmcv-lite?); {_INSTALL}"
    return None


def _import_mmseg() -> tuple[Any, Any, Any, Any]:
    why = mmseg_available()
    if why is not None:
        raise TarotInputError(f"segmentation: model.backend mmseg: {why}")
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    return Config, revert_sync_batchnorm, MODELS, register_all_modules


def _drop_pretrained(cfg: Any) -> None:
    """Clear ``pretrained`` and ``init_cfg=dict(type='Pretrained', ...)`` in a model config, in place."""
    if isinstance(cfg, Mapping):
        if "pretrained" in cfg:
            cfg["pretrained"] = None
        init = cfg.get("init_cfg")
        if isinstance(init, Mapping) and init.get("type") == "Pretrained":
            cfg["init_cfg"] = None
        for value in cfg.values():
            _drop_pretrained(value)
    elif isinstance(cfg, list | tuple):
        for value in cfg:
            _drop_pretrained(value)


class MMSegNet(nn.Module):
    """An mmseg ``EncoderDecoder`` behind the task's model interface: pixels in, logits out.

    Parameters
    ----------
    segmentor : nn.Module
        mmseg's ``EncoderDecoder`` (no auxiliary head, no data pre-processor).
    mean, std : sequence of 3 floats
        Per-channel normalisation on the 0..255 scale, in the channel order the model expects.
    bgr : bool
        True when the model expects BGR input (the pixels are RGB and get flipped first).
    """

    def __init__(self, segmentor: nn.Module, mean: Any, std: Any, bgr: bool) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.bgr = bool(bgr)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 19, H, W)`` of RGB images ``(B, 3, H, W)`` with pixel values 0..255."""
        h = x.to(self.pixel_mean.dtype)
        if self.bgr:
            h = h.flip(1)
        h = (h - self.pixel_mean) / self.pixel_std
        shape = tuple(int(s) for s in x.shape[-2:])
        metas = [{"img_shape": shape, "ori_shape": shape, "pad_shape": shape}] * int(x.shape[0])
        return self.segmentor.encode_decode(h, metas)


def _load_checkpoint(segmentor: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - missing, truncated or foreign files alike
        detail = " ".join(str(exc).split())[:300]
        raise TarotInputError(
            f"segmentation: model.mmseg_checkpoint: cannot read {path} as tensors only ({detail}); a checkpoint "
            "with other objects can be reduced to its weights with "
            "torch.save(torch.load(p, weights_only=False)['state_dict'], q) where you trust the file"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise TarotInputError(f"segmentation: model.mmseg_checkpoint: {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("auxiliary_head.", "data_preprocessor."))}
    try:
        segmentor.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise TarotInputError(
            f"segmentation: model.mmseg_checkpoint: {path} does not fit the model of model.mmseg_config ({detail})"
        ) from None


def build_mmseg_model(config: str | Path, checkpoint: str | Path | None, n_classes: int) -> MMSegNet:
    """The segmentor of the mmseg config file ``config`` for ``n_classes`` classes.

    Parameters
    ----------
    config : path
        An mmseg config file (Python, YAML or JSON; ``_base_`` files are followed) whose
        ``model`` is an ``EncoderDecoder``.
    checkpoint : path or None
        Local weights of the whole segmentor (an mmseg checkpoint's ``state_dict`` or a bare
        state dict, tensors only); None: the modules' own initialisation.
    n_classes : int
        Classes of the decode head.
    """
    Config, revert_sync_batchnorm, MODELS, register_all_modules = _import_mmseg()
    path = Path(config)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # noqa: BLE001 - mmengine raises many kinds for a bad file
        detail = " ".join(str(exc).split())[:300]
        raise TarotInputError(f"segmentation: model.mmseg_config: cannot read {path}: {detail}") from None
    model_cfg = cfg.get("model")
    if not isinstance(model_cfg, Mapping) or model_cfg.get("type") != "EncoderDecoder":
        raise TarotInputError(
            f"segmentation: model.mmseg_config: {path} must define model = dict(type='EncoderDecoder', ...)"
        )
    model_cfg = model_cfg.copy()
    pre = model_cfg.pop("data_preprocessor", None) or cfg.get("data_preprocessor") or {}
    mean = pre.get("mean") or [123.675, 116.28, 103.53]
    std = pre.get("std") or [58.395, 57.12, 57.375]
    bgr = not bool(pre.get("bgr_to_rgb", True))
    model_cfg["auxiliary_head"] = None
    model_cfg["decode_head"] = {**model_cfg["decode_head"], "num_classes": int(n_classes)}
    _drop_pretrained(model_cfg)
    register_all_modules(init_default_scope=True)
    try:
        segmentor = MODELS.build(model_cfg)
    except Exception as exc:  # noqa: BLE001 - registry errors come in many kinds
        detail = " ".join(str(exc).split())[:300]
        raise TarotInputError(f"segmentation: model.mmseg_config: mmseg cannot build the model of {path}: {detail}")
    segmentor = revert_sync_batchnorm(segmentor)
    mm_logger = logging.getLogger("mmengine")  # init_weights logs every parameter at INFO
    level = mm_logger.level
    mm_logger.setLevel(max(level, logging.WARNING))
    try:
        segmentor.init_weights()
    finally:
        mm_logger.setLevel(level)
    if checkpoint is not None:
        _load_checkpoint(segmentor, Path(checkpoint))
    return MMSegNet(segmentor, mean, std, bgr)
