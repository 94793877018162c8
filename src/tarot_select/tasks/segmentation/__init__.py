"""Semantic segmentation with DeepLabV3: GTA5 -> Cityscapes (TAROT §5.2, Figs. 5/6), and a
synthetic mini version that runs on a laptop CPU.

Data (key ``dataset``)
----------------------
``synthetic`` (default)
    Procedural street scenes (:mod:`.data`, numpy only, nothing to download), labelled with
    Cityscapes train ids of eight classes (road, sidewalk, building, pole, vegetation, sky,
    person, car). The candidate pool has ``per_source`` images of each style in ``sources``
    (``day``, ``dusk``, ``night``, ``fog``, ``desert`` without vegetation, and
    ``mislabelled``: day scenes whose labels swap road/sidewalk, building/sky and
    car/person, the source that hurts). Targets (``n_targets``) and evaluation
    (``n_evaluation``) are a balanced mixture of ``target_styles`` seen through a camera of
    their own (white balance, gamma, desaturation, blur, vignetting, sensor noise, the ego
    car's bonnet labelled ignore), so the target is none of the sources. Every image has its
    own generator seeded by ``[seed, split stream, style, index]``.
``gta5_cityscapes``
    Local copies in their own layouts (:mod:`.readers`; never downloaded): candidates from
    ``gta5_root`` (``images/*.png`` with ``labels/*.png`` of the same name, Cityscapes label
    ids), targets from Cityscapes train and evaluation from Cityscapes val under
    ``cityscapes_root`` (``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` with
    ``gtFine/{train,val}/<city>/*_gtFine_labelIds.png``). ``n_candidates``, ``n_targets``,
    ``n_evaluation`` take a seeded sample (null: all 24,966 / 2,975 / 500). Label ids map
    to the 19 train ids (others: 255, ignored) by the official table of
    ``cityscapesscripts.helpers.labels`` (:mod:`.labels`). The folders are listed when the
    config is checked: a missing folder or label file stops the run before any job.

Either way, images are ``image_size`` = ``[height, width]`` (generated at that size, or
resized: bilinear for images, nearest for labels). :meth:`~.task.SegmentationTask.prepare`
writes uint8 arrays ``{split}_images.npy`` ``(n, 3, H, W)`` and ``{split}_labels.npy``
``(n, H, W)`` (resized once, memory-mapped by every later job) and a manifest ``data.json``.

Model (``model``)
-----------------
``arch: small`` (default): a narrow backbone (four conv-BN-ReLU blocks of ``width`` ..
``4 width`` channels, output stride 4 or 8) under torchvision's ASPP head (``ASPP`` with
``atrous_rates`` and ``aspp_channels``, then DeepLabHead's 3×3 conv, BN, ReLU, 1×1
classifier). ``arch: deeplabv3_resnet50``: torchvision's
``deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=19)``, its backbone
optionally loaded from a local ResNet-50 file (``backbone_weights``). ``backend: mmseg``:
the ``EncoderDecoder`` of an mmsegmentation config file (``mmseg_config``, e.g. mmseg's
DeepLabV3 R50-D8 for Cityscapes), built through mmseg's registry, optionally with a local
checkpoint (``mmseg_checkpoint``); its auxiliary head is dropped and SyncBN becomes batch
norm (:mod:`.mmseg_model`; install with ``bash envs/mmseg.post-deploy.sh``). Proxy and downstream
use the same architecture; both output 19 classes.

Training, gradients, evaluation
-------------------------------
``proxy`` and ``downstream``: Adam (default) or SGD with momentum, polynomial learning-rate
decay per step (DeepLab's ``(1 - s/S)^0.9``), loss = cross-entropy over the valid pixels of
the batch. The proxy trains on candidates ∪ targets and saves its last ``checkpoints``
epochs with their Adam state. The per-sample loss for gradient features is the mean pixel
cross-entropy over the image's valid pixels (:func:`~.task.pixel_losses`), taken with
batch norm in eval mode; it works with every ``features.engine`` (``vmap``, ``loop``,
``factored``; use ``factored`` with ``proj_kind: countsketch`` for ResNet-50).
``downstream.eval_every: k`` evaluates every ``k`` epochs; :meth:`~.task.SegmentationTask.evaluate`
returns ``miou`` (final model), ``best_miou`` (best of those evaluations and the final one:
the paper's "best validation performance during training"), ``best_epoch``,
``pixel_accuracy``, ``iou_<class>`` and, for synthetic data, ``miou_<style>`` (when the last
epoch was evaluated during training, its confusion matrices are reused, so a GPU training
spares the evaluation job a second pass over the split). mIoU comes
from one confusion matrix over the whole evaluation split; classes absent from both ground
truth and prediction are left out, ignore pixels never count (:mod:`.metrics`).
``downstream.primary`` chooses the tables' metric: ``final`` (``miou``) or ``best``
(``best_miou``).

Settings (:class:`~.settings.SegmentationSettings`)
---------------------------------------------------
``dataset``          ``synthetic`` | ``gta5_cityscapes``
``image_size``       ``[48, 96]``
``sources``          synthetic: candidate styles (all six)
``per_source``       synthetic: candidates per style (60)
``target_styles``    synthetic: styles of the target mixture (``[day, dusk, fog]``)
``gta5_root``, ``cityscapes_root``, ``n_candidates``   gta5_cityscapes
``n_targets``, ``n_evaluation``                        60, 120 (null: all, gta5_cityscapes)
``model``            ``{backend: torchvision, arch: small, width: 16, output_stride: 8,
                     aspp_channels: 32, atrous_rates: [2, 4, 6], backbone_weights: null,
                     mmseg_config: null, mmseg_checkpoint: null}``
``proxy``            ``{epochs: 8, lr: 0.003, batch_size: 16, optimizer: adam, momentum: 0.9,
                     weight_decay: 0.0, poly_power: 0.9, checkpoints: 4}``
``downstream``       ``{epochs: 30, ... , eval_every: 0, primary: final}``
"""

from __future__ import annotations

from ..registry import TaskSpec
from .settings import SegmentationSettings

__all__ = ["SPEC"]

SPEC = TaskSpec(
    kind="segmentation",
    settings=SegmentationSettings,
    task="tarot_select.tasks.segmentation.task:SegmentationTask",
    model_outputs=False,
    summary="semantic segmentation with DeepLabV3: synthetic street scenes or GTA5 -> Cityscapes (TAROT Fig. 5)",
)
