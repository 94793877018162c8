r"""Motion forecasting metrics over ``K`` modes, and a constant-velocity baseline.

For one sample with ground truth :math:`y_t` valid where :math:`m_t` (``n`` valid steps, the last
valid one :math:`t_\mathrm{f}`), predicted modes :math:`\hat y_{kt}` and mode probabilities
:math:`p = \operatorname{softmax}(\ell)`:

.. math::

    \mathrm{ADE}_k = \frac1n \sum_t m_t \lVert \hat y_{kt} - y_t\rVert, \qquad
    \mathrm{FDE}_k = \lVert \hat y_{k t_\mathrm{f}} - y_{t_\mathrm{f}}\rVert,

    \mathrm{minADE}_K = \min_k \mathrm{ADE}_k, \qquad \mathrm{minFDE}_K = \min_k \mathrm{FDE}_k, \qquad
    \mathrm{miss} = [\mathrm{minFDE}_K > 2\,\mathrm{m}],

    \text{Brier-minFDE}_K = \mathrm{minFDE}_K + (1 - p_{k_f})^2, \quad k_f = \arg\min_k \mathrm{FDE}_k

(Argoverse 2's definition of Brier-minFDE; minADE and minFDE each take their own best mode,
as UniTraj reports them). Lower is better for all four. A dataset's value is the mean over the
samples with at least one valid future step; samples without one are left out.

Functions take torch tensors or numpy arrays.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import torch

from ...errors import TarotInputError
from .models import Prediction
from .sample import AGENT_VX, AGENT_VY, AGENT_X, AGENT_Y

__all__ = [
    "METRIC_NAMES",
    "MISS_THRESHOLD",
    "MotionMetrics",
    "constant_velocity",
    "displacement_errors",
    "sample_metrics",
    "summarize",
]

#: Metric keys, in report order.
METRIC_NAMES: Final[tuple[str, ...]] = ("brier_min_fde", "min_ade", "min_fde", "miss_rate")
#: Final displacement (metres) above which a prediction is a miss.
MISS_THRESHOLD: Final[float] = 2.0

_Array = torch.Tensor | np.ndarray


def _tensor(x: _Array, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if dtype is None else t.to(dtype)


def displacement_errors(
    mean: _Array, future: _Array, future_mask: _Array
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ADE`` and ``FDE`` per mode, and which samples have a valid future step.

    Parameters
    ----------
    mean : array, shape (B, K, Tf, 2)
    future : array, shape (B, Tf, 2)
    future_mask : array, shape (B, Tf), bool

    Returns
    -------
    ade, fde : torch.Tensor, shape (B, K)
        0 for samples without a valid step.
    has_future : torch.Tensor, shape (B,), bool
    """
    mean = _tensor(mean).detach()
    dtype = mean.dtype if mean.is_floating_point() else torch.float64
    mean = mean.to(dtype)
    future = _tensor(future, dtype).detach()
    mask = _tensor(future_mask).bool()
    if mean.ndim != 4 or mean.shape[-1] != 2:
        raise TarotInputError(f"motion metrics: predictions must have shape (B, K, Tf, 2), got {tuple(mean.shape)}")
    b, _, tf, _ = mean.shape
    if tuple(future.shape) != (b, tf, 2) or tuple(mask.shape) != (b, tf):
        raise TarotInputError(
            f"motion metrics: future {tuple(future.shape)} / future_mask {tuple(mask.shape)} do not match "
            f"predictions {tuple(mean.shape)}"
        )
    zero = torch.zeros((), dtype=dtype)
    dist = torch.linalg.vector_norm(mean - torch.where(mask[..., None], future, zero)[:, None], dim=-1)  # (B,K,Tf)
    n_valid = mask.sum(-1)
    ade = torch.where(mask[:, None], dist, zero).sum(-1) / n_valid.clamp(min=1)[:, None].to(dtype)
    steps = torch.arange(tf)
    last = torch.where(mask, steps, -1).amax(-1).clamp(min=0)  # (B,)
    fde = dist.gather(2, last[:, None, None].expand(-1, dist.shape[1], 1))[..., 0]
    has_future = n_valid > 0
    fde = torch.where(has_future[:, None], fde, zero)
    return ade, fde, has_future


def sample_metrics(
    mean: _Array,
    logits: _Array,
    future: _Array,
    future_mask: _Array,
    miss_threshold: float = MISS_THRESHOLD,
) -> dict[str, torch.Tensor]:
    """Per-sample ``min_ade``, ``min_fde``, ``miss_rate`` (0/1), ``brier_min_fde`` and ``has_future``.

    Parameters
    ----------
    mean : array, shape (B, K, Tf, 2)
    logits : array, shape (B, K)
        Mode logits (softmax gives the probabilities).
    future : array, shape (B, Tf, 2)
    future_mask : array, shape (B, Tf), bool
    miss_threshold : float, default 2.0
        Metres.

    Returns
    -------
    dict of str to torch.Tensor
        Each of shape ``(B,)``; values of samples without a valid future step are 0 (use
        ``has_future`` to leave them out, as :func:`summarize` does).
    """
    ade, fde, has_future = displacement_errors(mean, future, future_mask)
    logits = _tensor(logits, ade.dtype).detach()
    if tuple(logits.shape) != tuple(ade.shape):
        raise TarotInputError(
            f"motion metrics: logits {tuple(logits.shape)} do not match predictions {tuple(ade.shape)}"
        )
    min_fde, k_f = fde.min(dim=-1)
    p_best = torch.softmax(logits, dim=-1).gather(1, k_f[:, None])[:, 0]
    return {
        "brier_min_fde": min_fde + (1.0 - p_best) ** 2 * has_future,
        "min_ade": ade.min(dim=-1).values,
        "min_fde": min_fde,
        "miss_rate": ((min_fde > miss_threshold) & has_future).to(ade.dtype),
        "has_future": has_future,
    }


def summarize(per_sample: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means of :data:`METRIC_NAMES` over the samples with ``has_future``, and their count ``n``.

    Raises
    ------
    TarotInputError
        If no sample has a valid future step.
    """
    keep = per_sample["has_future"].bool()
    n = int(keep.sum())
    if n == 0:
        raise TarotInputError("motion metrics: no sample has a valid future step")
    out = {name: float(per_sample[name][keep].double().mean()) for name in METRIC_NAMES}
    out["n"] = float(n)
    return out


class MotionMetrics:
    """Accumulate per-sample metrics over a dataset, batch by batch.

    ``update(pred, future, future_mask)`` with a :class:`~.models.Prediction` (or any object with
    ``mean`` and ``logits``); ``compute()`` returns :func:`summarize` of everything seen.
    """

    def __init__(self, miss_threshold: float = MISS_THRESHOLD) -> None:
        self.miss_threshold = float(miss_threshold)
        self._parts: list[dict[str, torch.Tensor]] = []

    def update(self, pred: Prediction, future: _Array, future_mask: _Array) -> dict[str, torch.Tensor]:
        """Add one batch; returns its per-sample metrics."""
        per = sample_metrics(pred.mean, pred.logits, future, future_mask, self.miss_threshold)
        self._parts.append({k: v.cpu() for k, v in per.items()})
        return per

    def per_sample(self) -> dict[str, torch.Tensor]:
        """Per-sample metrics of every batch so far, concatenated (shape ``(N,)`` each)."""
        if not self._parts:
            raise TarotInputError("motion metrics: no batch was added")
        return {k: torch.cat([p[k] for p in self._parts]) for k in self._parts[0]}

    def compute(self) -> dict[str, float]:
        """Dataset means (see :func:`summarize`)."""
        return summarize(self.per_sample())


def constant_velocity(agents: _Array, agents_mask: _Array, future_steps: int, dt: float = 0.1) -> Prediction:
    """Constant-velocity extrapolation of the focal agent (agent 0), as a one-mode :class:`Prediction`.

    With the focal agent's last two valid history steps :math:`t_1 < t_2` (positions
    :math:`p_1, p_2`), the velocity per step is :math:`v = (p_2 - p_1) / (t_2 - t_1)` and future
    step :math:`j = 1..T_f` (time :math:`T_h - 1 + j`) is predicted at
    :math:`p_2 + v\\,(T_h - 1 - t_2 + j)`. With a single valid step the recorded velocity
    ``(vx, vy)`` of that step times ``dt`` is used; with none, the prediction is the origin.

    Parameters
    ----------
    agents : array, shape (B, A, Th, 9)
    agents_mask : array, shape (B, A, Th), bool
    future_steps : int
        ``Tf``.
    dt : float, default 0.1
        Seconds per step (only for the single-step fallback).

    Returns
    -------
    Prediction
        ``mean`` ``(B, 1, Tf, 2)``, ``log_std`` zeros, ``rho`` zeros, ``logits`` zeros ``(B, 1)``.
    """
    agents = _tensor(agents).detach()
    dtype = agents.dtype if agents.is_floating_point() else torch.float64
    agents = agents.to(dtype)
    mask = _tensor(agents_mask).bool()
    if (
        agents.ndim != 4
        or agents.shape[-1] <= max(AGENT_X, AGENT_Y, AGENT_VX, AGENT_VY)
        or tuple(mask.shape) != tuple(agents.shape[:3])
    ):
        raise TarotInputError(
            f"constant velocity: agents {tuple(agents.shape)} / agents_mask {tuple(mask.shape)} must be "
            "(B, A, Th, 9) / (B, A, Th)"
        )
    if int(future_steps) < 1:
        raise TarotInputError(f"constant velocity: future_steps must be >= 1, got {future_steps}")
    focal, fmask = agents[:, 0], mask[:, 0]  # (B, Th, F), (B, Th)
    b, th = fmask.shape
    steps = torch.arange(th)
    t2 = torch.where(fmask, steps, -1).amax(-1)  # (B,)
    t1 = torch.where(fmask & (steps < t2[:, None]), steps, -1).amax(-1)

    def at(t: torch.Tensor, cols: list[int]) -> torch.Tensor:
        idx = t.clamp(min=0)[:, None, None].expand(-1, 1, len(cols))
        return focal[..., cols].gather(1, idx)[:, 0]

    xy, vxy = [AGENT_X, AGENT_Y], [AGENT_VX, AGENT_VY]
    p2, p1, v2 = at(t2, xy), at(t1, xy), at(t2, vxy)
    gap = (t2 - t1).clamp(min=1).to(dtype)[:, None]
    zero = torch.zeros((), dtype=dtype)
    velocity = torch.where((t1 >= 0)[:, None], (p2 - p1) / gap, torch.where((t2 >= 0)[:, None], v2 * dt, zero))
    p2 = torch.where((t2 >= 0)[:, None], p2, zero)
    ahead = (th - 1 - t2.clamp(min=0))[:, None] + torch.arange(1, int(future_steps) + 1)[None]  # (B, Tf)
    mean = p2[:, None] + velocity[:, None] * ahead[..., None].to(dtype)
    tf = int(future_steps)
    return Prediction(
        mean=mean[:, None],
        log_std=torch.zeros(b, 1, tf, 2, dtype=dtype),
        rho=torch.zeros(b, 1, tf, dtype=dtype),
        logits=torch.zeros(b, 1, dtype=dtype),
    )
