"""Segmentation metrics: a confusion matrix accumulated over a whole split, mIoU and pixel accuracy.

With ``C[g, p]`` the number of evaluated pixels of ground truth ``g`` predicted as ``p``
(pixels labelled :data:`~.labels.IGNORE` are not counted, whatever is predicted there), class
``c`` has :math:`TP_c = C[c, c]`, :math:`FP_c = \\sum_g C[g, c] - TP_c`,
:math:`FN_c = \\sum_p C[c, p] - TP_c` and

.. math::

    \\mathrm{IoU}_c = \\frac{TP_c}{TP_c + FP_c + FN_c}, \\qquad
    \\mathrm{mIoU} = \\frac{1}{|K|} \\sum_{c \\in K} \\mathrm{IoU}_c, \\qquad
    \\mathrm{pixel\\ accuracy} = \\frac{\\sum_c TP_c}{\\sum_{g, p} C[g, p]},

where :math:`K` holds the classes present in the ground truth *or* the prediction
(:math:`TP_c + FP_c + FN_c > 0`): a class absent from both is left out, one that is only
predicted counts with IoU 0. The matrix is summed over every image of the split before the
ratios are taken (the Cityscapes protocol), not averaged per image.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import TarotInputError
from .labels import IGNORE, N_CLASSES

__all__ = ["confusion_matrix", "scores_from_confusion"]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, n_classes: int = N_CLASSES, ignore: int = IGNORE
) -> torch.Tensor:
    """Confusion counts ``C`` of shape ``(n_classes, n_classes)``, int64, rows = ground truth.

    Parameters
    ----------
    pred : torch.Tensor, shape (...,), integer
        Predicted classes in ``0..n_classes-1``.
    target : torch.Tensor, same shape, integer
        Ground truth in ``0..n_classes-1`` or ``ignore`` (not counted).
    """
    if pred.shape != target.shape:
        raise TarotInputError(f"prediction {tuple(pred.shape)} and labels {tuple(target.shape)} differ in shape")
    target = target.long()
    valid = target != ignore
    if bool(((target < 0) | (target >= n_classes))[valid].any()):
        raise TarotInputError(f"labels outside 0..{n_classes - 1} and {ignore}")
    idx = target[valid] * n_classes + pred.long()[valid]
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores_from_confusion(conf: np.ndarray | torch.Tensor) -> dict[str, object]:
    """``miou``, ``pixel_accuracy`` (floats in [0, 1]) and ``iou`` (per class, NaN where left out).

    Parameters
    ----------
    conf : array, shape (C, C)
        Confusion counts (rows: ground truth, columns: prediction).

    Raises
    ------
    TarotInputError
        If the matrix is empty (no evaluated pixel).
    """
    c = np.asarray(conf.cpu() if isinstance(conf, torch.Tensor) else conf, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise TarotInputError("no evaluated pixel (every label is ignore)")
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp
    present = union > 0
    iou = np.full(len(tp), np.nan)
    iou[present] = tp[present] / union[present]
    return {"miou": float(iou[present].mean()), "pixel_accuracy": float(tp.sum() / total), "iou": iou}
