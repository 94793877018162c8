r"""Winner-takes-all training loss of the motion models (bivariate Gaussian NLL + mode classification).

For one sample with ground-truth positions :math:`y_t` (valid where :math:`m_t`), ``K`` predicted
modes with means :math:`\mu_{kt}`, standard deviations :math:`\sigma_{kt}`, correlations
:math:`\rho_{kt}` and logits :math:`\ell_k`, and :math:`n = \sum_t m_t` valid steps:

.. math::

    \mathrm{ADE}_k = \frac{1}{n}\sum_t m_t \lVert \mu_{kt} - y_t \rVert, \qquad
    k^\star = \arg\min_k \mathrm{ADE}_k

(the choice carries no gradient; ties go to the lowest index),

.. math::

    \mathrm{NLL}_t(k) = \log 2\pi + \log\sigma_x + \log\sigma_y + \tfrac12\log(1-\rho^2)
      + \frac{1}{2(1-\rho^2)}\Big(\frac{d_x^2}{\sigma_x^2} + \frac{d_y^2}{\sigma_y^2}
      - \frac{2\rho\, d_x d_y}{\sigma_x\sigma_y}\Big),
    \qquad d = y_t - \mu_{kt},

.. math::

    L = \frac{1}{n}\sum_t m_t\, \mathrm{NLL}_t(k^\star)
        \;-\; w_{\mathrm{cls}} \log \operatorname{softmax}(\ell)_{k^\star}
        \;+\; \frac{w_2}{2n}\sum_t m_t \lVert \mu_{k^\star t} - y_t\rVert^2 .

The regression terms are *means* over valid steps (not sums), so a sample's weight does not
depend on how many future steps it has, and they are on the scale of the classification term.
A sample with no valid future step has :math:`L = 0` (and zero gradient).

The first two terms are the winner-takes-all loss of MTR-style mixture heads, as UniTraj trains
Wayformer (NLL summed over steps plus cross-entropy). The third, the winner's mean squared
error (:data:`DEFAULT_L2_WEIGHT` = 1; ``l2_weight=0`` drops it), is the kind of auxiliary
displacement loss UniTraj adds to AutoBots and MTR to its dense future: with the NLL alone the
gradient on the means is weighted by :math:`1/\sigma^2` per step and sample, and in short
trainings on small data the models can stall at input-independent modes (seen here on toy
turning tracks: 2 of 8 seeds stalled near the constant-velocity error with the NLL alone, none
of 9 with this term, which also lowered minFDE in most of the others).
AutoBots' own objective (mixture likelihood with a KL term on the mode posterior) is replaced
by this loss for both models, so that proxy and downstream train on one loss.

Everything is out of place, uses ``gather`` for the winner and has no data-dependent Python
branch: :func:`torch.func.vmap` over :func:`torch.func.grad` of :func:`loss_fn` gives
per-sample gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import torch

from ...errors import TarotInputError
from .models import Prediction

__all__ = ["DEFAULT_L2_WEIGHT", "batch_loss", "best_mode", "gaussian_nll", "loss_fn", "wta_loss"]

_LOG_2PI = math.log(2.0 * math.pi)
#: Default weight of the winner's mean squared error (see the module docstring).
DEFAULT_L2_WEIGHT: Final[float] = 1.0


def gaussian_nll(mean: torch.Tensor, log_std: torch.Tensor, rho: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-density of ``target`` under a bivariate Gaussian (formula in the module docstring).

    Parameters
    ----------
    mean, log_std, target : torch.Tensor, shape (..., 2)
    rho : torch.Tensor, shape (...)
        In ``(-1, 1)``.

    Returns
    -------
    torch.Tensor, shape (...)
    """
    d = target - mean
    inv_std = torch.exp(-log_std)
    zx, zy = d[..., 0] * inv_std[..., 0], d[..., 1] * inv_std[..., 1]
    one_m_r2 = 1.0 - rho * rho
    quad = (zx * zx + zy * zy - 2.0 * rho * zx * zy) / (2.0 * one_m_r2)
    return _LOG_2PI + log_std[..., 0] + log_std[..., 1] + 0.5 * torch.log(one_m_r2) + quad


def _check(pred: Prediction, future: torch.Tensor, future_mask: torch.Tensor) -> None:
    b, _, tf, two = pred.mean.shape
    if two != 2 or tuple(future.shape) != (b, tf, 2) or tuple(future_mask.shape) != (b, tf):
        raise TarotInputError(
            f"motion loss: future {tuple(future.shape)} / future_mask {tuple(future_mask.shape)} do not match the "
            f"prediction {tuple(pred.mean.shape)}; expected ({b}, {tf}, 2) / ({b}, {tf})"
        )


def best_mode(mean: torch.Tensor, future: torch.Tensor, future_mask: torch.Tensor) -> torch.Tensor:
    """Index ``(B,)`` of the mode with the lowest ADE over the valid future steps (no gradient).

    Parameters
    ----------
    mean : torch.Tensor, shape (B, K, Tf, 2)
    future : torch.Tensor, shape (B, Tf, 2)
    future_mask : torch.Tensor, shape (B, Tf), bool
    """
    mean = mean.detach()
    mask = future_mask.bool()[:, None]
    dist = torch.linalg.vector_norm(mean - future.to(mean.dtype)[:, None], dim=-1)  # (B, K, Tf)
    total = torch.where(mask, dist, torch.zeros((), dtype=dist.dtype)).sum(-1)  # n is the same for every mode
    return total.argmin(dim=-1)


def wta_loss(
    pred: Prediction,
    future: torch.Tensor,
    future_mask: torch.Tensor,
    cls_weight: float = 1.0,
    l2_weight: float = DEFAULT_L2_WEIGHT,
) -> torch.Tensor:
    r"""Per-sample winner-takes-all loss ``L`` of shape ``(B,)`` (see the module docstring).

    Parameters
    ----------
    pred : Prediction
        ``mean``/``log_std`` ``(B, K, Tf, 2)``, ``rho`` ``(B, K, Tf)``, ``logits`` ``(B, K)``.
    future : torch.Tensor, shape (B, Tf, 2)
        Ground-truth positions (values at invalid steps are ignored).
    future_mask : torch.Tensor, shape (B, Tf), bool
    cls_weight : float, default 1.0
        Weight :math:`w_{\mathrm{cls}}` of the mode classification term.
    l2_weight : float, default :data:`DEFAULT_L2_WEIGHT`
        Weight :math:`w_{2}` of the winner's mean squared error (0: NLL and classification only).
    """
    _check(pred, future, future_mask)
    dtype = pred.mean.dtype
    zero = torch.zeros((), dtype=dtype)
    mask = future_mask.bool()
    future = torch.where(mask[..., None], future.to(dtype), zero)
    k_star = best_mode(pred.mean, future, mask)  # (B,)
    tf = pred.mean.shape[2]
    idx2 = k_star[:, None, None, None].expand(-1, 1, tf, 2)
    mean = pred.mean.gather(1, idx2)[:, 0]
    log_std = pred.log_std.gather(1, idx2)[:, 0]
    rho = pred.rho.gather(1, k_star[:, None, None].expand(-1, 1, tf))[:, 0]
    n_valid = mask.sum(-1)
    denom = n_valid.clamp(min=1).to(dtype)
    nll = gaussian_nll(mean, log_std, rho, future)  # (B, Tf)
    loss = torch.where(mask, nll, zero).sum(-1) / denom
    log_p = torch.log_softmax(pred.logits, dim=-1).gather(1, k_star[:, None])[:, 0]
    loss = loss + cls_weight * torch.where(n_valid > 0, -log_p, zero)
    if l2_weight:
        sq = ((mean - future) ** 2).sum(-1)
        loss = loss + l2_weight * 0.5 * torch.where(mask, sq, zero).sum(-1) / denom
    return loss


def batch_loss(pred: Prediction, future: torch.Tensor, future_mask: torch.Tensor) -> torch.Tensor:
    """Mean of :func:`wta_loss` (default weights) over the batch: the training loss (samples
    without a valid future step count as 0)."""
    return wta_loss(pred, future, future_mask).mean()


def loss_fn(forward: Callable[..., Any], sample: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The per-sample loss in :mod:`tarot_select.gradients`' protocol: ``L`` of a batch of size 1.

    ``forward(sample)`` must return a :class:`~.models.Prediction`; ``sample`` holds the model's
    inputs and ``future``, ``future_mask``. Returns a scalar (the batch mean for larger batches).
    """
    for key in ("future", "future_mask"):
        if key not in sample:
            raise TarotInputError(f"motion batch: missing key {key!r}")
    return batch_loss(forward(sample), sample["future"], sample["future_mask"])
