r"""AutoBots and Wayformer: compact multi-modal trajectory predictors for the motion task.

Both models read one batch of agent-centric samples (everything in the focal agent's frame at
the current step, focal agent at agent index 0) and return a :class:`Prediction`: a mixture
of ``K`` trajectories, each a bivariate Gaussian per future step, with mode logits.

Inputs (a mapping of tensors; other keys, e.g. ``future``, are ignored)

=============== ================= =========================================================
key             shape             content
=============== ================= =========================================================
``agents``      ``(B, A, Th, 9)`` x, y, vx, vy, cos h, sin h, is_vehicle, is_pedestrian,
                                  is_cyclist
``agents_mask`` ``(B, A, Th)``    bool, valid steps
``map``         ``(B, M, P, 8)``  x, y, dx, dy, is_lane, is_road_line, is_road_edge,
                                  is_crosswalk
``map_mask``    ``(B, M, P)``     bool, valid points
=============== ================= =========================================================

Positions are divided by ``pos_scale`` and velocities by ``vel_scale`` inside the model, and
padded entries are zeroed (whatever the input holds there). Predicted means are multiplied
back by ``pos_scale`` (metres). Per step the Gaussian is

.. math::

    \mu = \mathrm{pos\_scale}\, o_{0:2}, \qquad
    \log\sigma = \log\sigma_{\min} + \operatorname{softplus}(o_{2:4} - \log\sigma_{\min}),
    \qquad \rho = \rho_{\max}\tanh o_4

for the raw outputs :math:`o`, with :math:`\sigma_{\min}` = :data:`MIN_STD` (metres) and
:math:`\rho_{\max}` = :data:`RHO_MAX`: the likelihood stays finite however well a mode fits, and
an output near 0 (at initialisation) means :math:`\sigma \approx 1` m. (A wide initial
:math:`\sigma` would scale the gradient on the means by :math:`1/\sigma^2` and slow learning.)

Masking and torch.func
----------------------
Attention masks fill the scores of invalid keys with the finite :data:`MASK_FILL` (never
``-inf``): a query whose keys are all invalid (a fully padded agent, an empty map) gets a
uniform average instead of NaN, and such outputs are never read by valid tokens, because every
attention masks its invalid keys. A valid key's weight is therefore unchanged, to the last bit,
by adding fully padded agents or polylines. Neither model has an agent or polyline index
embedding: they are set functions of the non-focal agents and of the polylines (the focal
agent is told apart by its index-0 read-out in AutoBots and by a modality embedding in
Wayformer). There are no in-place operations, no data-dependent Python branches and no
random operations unless ``dropout > 0`` in training mode, so :func:`torch.func.vmap` over
:func:`torch.func.grad` of a :func:`torch.func.functional_call` (per-sample gradients of
samples given as batches of size 1) works for both.

Sizes and presets
-----------------
:func:`build_model` takes a ``kind`` (``autobots`` | ``wayformer``), a preset name
(:data:`PRESETS`, kept in the torch-free :mod:`.presets` that the settings read too: ``mini``
runs on a CPU, ``paper`` follows the papers' widths) and overrides.
The ``mini`` Wayformer has about ten times the parameters of the ``mini`` AutoBots, as the
TAROT paper's Wayformer has of its AutoBots proxy (:func:`count_parameters`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import TarotInputError
from .presets import MODEL_KINDS, PRESETS
from .sample import AGENT_FEATURES, AGENT_VX, AGENT_VY, AGENT_X, AGENT_Y, MAP_FEATURES, MAP_X, MAP_Y

__all__ = [
    "MASK_FILL",
    "MIN_STD",
    "MODEL_KINDS",
    "N_AGENT_FEATURES",
    "N_MAP_FEATURES",
    "PRESETS",
    "RHO_MAX",
    "AutoBots",
    "MotionModel",
    "Prediction",
    "Wayformer",
    "build_model",
    "count_parameters",
]

#: Feature widths of ``agents`` and ``map`` (columns in :mod:`.sample`).
N_AGENT_FEATURES: Final[int] = len(AGENT_FEATURES)
N_MAP_FEATURES: Final[int] = len(MAP_FEATURES)
#: Score given to masked keys before the softmax: finite, so that all-masked rows stay finite.
MASK_FILL: Final[float] = -1e9
#: Smallest predicted standard deviation (metres) and largest predicted |correlation|.
MIN_STD: Final[float] = 0.05
RHO_MAX: Final[float] = 0.9

_DATA_SIZES: Final[dict[str, int]] = {
    "history_steps": 21,
    "future_steps": 60,
    "num_agents": 8,
    "num_polylines": 32,
    "points_per_polyline": 10,
}


class Prediction(NamedTuple):
    """A mixture of ``K`` trajectories with a bivariate Gaussian per future step.

    Attributes
    ----------
    mean : torch.Tensor, shape (B, K, Tf, 2)
        Mean positions (metres, focal agent's frame).
    log_std : torch.Tensor, shape (B, K, Tf, 2)
        Log standard deviations of x and y (metres).
    rho : torch.Tensor, shape (B, K, Tf)
        Correlation of x and y, in ``(-RHO_MAX, RHO_MAX)``.
    logits : torch.Tensor, shape (B, K)
        Unnormalised mode log-probabilities (softmax gives the mode distribution).
    """

    mean: torch.Tensor
    log_std: torch.Tensor
    rho: torch.Tensor
    logits: torch.Tensor


# --------------------------------------------------------------------------- building blocks


class Attention(nn.Module):
    """Multi-head scaled dot-product attention with a key-padding mask (``torch.func`` friendly).

    ``softmax(Q K^T / sqrt(d_h)) V`` per head, with invalid keys' scores set to
    :data:`MASK_FILL`; leading dimensions of queries, keys and mask broadcast.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise TarotInputError(f"motion model: width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.dropout = float(dropout)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, key_mask: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        """Attend from ``x`` ``(..., Nq, D)`` to ``ctx`` ``(..., Nk, D)``; ``key_mask`` ``(..., Nk)`` bool.

        ``causal`` forbids query ``i`` to see keys ``j > i`` (needs ``Nq == Nk``).
        """
        q = self.q(x).unflatten(-1, (self.heads, self.head_dim)) / math.sqrt(self.head_dim)
        k, v = self.kv(ctx).unflatten(-1, (2, self.heads, self.head_dim)).unbind(-3)
        scores = torch.einsum("...qhd,...khd->...hqk", q, k)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[..., None, None, :], MASK_FILL)
        if causal:
            n_q, n_k = scores.shape[-2], scores.shape[-1]
            future = torch.ones(n_q, n_k, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, MASK_FILL)
        weights = torch.softmax(scores, dim=-1)
        if self.dropout > 0:
            weights = F.dropout(weights, self.dropout, self.training)
        return self.out(torch.einsum("...hqk,...khd->...qhd", weights, v).flatten(-2))


class AttentionBlock(nn.Module):
    """Pre-norm residual attention: ``x + Attn(LN(x), LN(ctx))`` (``ctx = x`` for self-attention)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, cross: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.norm_ctx = nn.LayerNorm(width) if cross else None
        self.attn = Attention(width, heads, dropout)
        self.dropout = float(dropout)

    def forward(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        h = self.norm(x)
        c = h if self.norm_ctx is None or ctx is None else self.norm_ctx(ctx)
        out = self.attn(h, c, key_mask, causal)
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return x + out


class FeedForward(nn.Module):
    """Pre-norm residual MLP: ``x + W2 GELU(W1 LN(x))`` with hidden width ``mult * width``."""

    def __init__(self, width: int, mult: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, mult * width), nn.GELU(), nn.Linear(mult * width, width)
        )
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return x + out


def _mlp(d_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width))


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over dimension ``-2`` of ``x`` ``(..., N, D)`` among valid rows (``mask`` ``(..., N)``); 0 if none."""
    pooled = x.masked_fill(~mask[..., None], MASK_FILL).amax(dim=-2)
    return torch.where(mask.any(dim=-1)[..., None], pooled, torch.zeros_like(pooled))


def sinusoid(length: int, width: int) -> torch.Tensor:
    """Fixed sinusoidal position encoding ``(length, width)`` (Vaswani et al., 2017)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    enc = torch.zeros(length, width)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
    return enc


# --------------------------------------------------------------------------- common model base


class MotionModel(nn.Module):
    """Input checks, feature scaling and the Gaussian output transform shared by both models.

    Parameters
    ----------
    history_steps, future_steps : int
        ``Th`` (including the current step) and ``Tf``.
    num_agents, num_polylines, points_per_polyline : int
        ``A``, ``M``, ``P`` of the data the model is built for. The encoders are set
        functions and accept any count (the padding invariance tests add slots); these are
        recorded in :attr:`sizes` for the task's bookkeeping.
    num_modes : int
        ``K``.
    pos_scale, vel_scale : float
        Metres and metres per second that map to one unit inside the model.
    """

    def __init__(
        self,
        *,
        history_steps: int,
        future_steps: int,
        num_agents: int,
        num_polylines: int,
        points_per_polyline: int,
        num_modes: int,
        pos_scale: float = 10.0,
        vel_scale: float = 10.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("history_steps", history_steps),
            ("future_steps", future_steps),
            ("num_agents", num_agents),
            ("num_polylines", num_polylines),
            ("points_per_polyline", points_per_polyline),
            ("num_modes", num_modes),
        ):
            if int(value) < 1:
                raise TarotInputError(f"motion model: {name} must be >= 1, got {value}")
        if not (pos_scale > 0 and vel_scale > 0):
            raise TarotInputError(f"motion model: pos_scale and vel_scale must be > 0, got {pos_scale}, {vel_scale}")
        self.history_steps = int(history_steps)
        self.future_steps = int(future_steps)
        self.num_modes = int(num_modes)
        self.pos_scale = float(pos_scale)
        self.sizes = {
            "history_steps": self.history_steps,
            "future_steps": self.future_steps,
            "num_agents": int(num_agents),
            "num_polylines": int(num_polylines),
            "points_per_polyline": int(points_per_polyline),
            "num_modes": self.num_modes,
        }
        agent_scale = torch.ones(N_AGENT_FEATURES)
        agent_scale[[AGENT_X, AGENT_Y]] = 1.0 / pos_scale
        agent_scale[[AGENT_VX, AGENT_VY]] = 1.0 / vel_scale
        map_scale = torch.ones(N_MAP_FEATURES)
        map_scale[[MAP_X, MAP_Y]] = 1.0 / pos_scale
        self.register_buffer("agent_scale", agent_scale, persistent=False)
        self.register_buffer("map_scale", map_scale, persistent=False)

    def _inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Checked, scaled and zero-padded ``agents, agents_mask, map, map_mask``."""
        missing = [k for k in ("agents", "agents_mask", "map", "map_mask") if k not in batch]
        if missing:
            raise TarotInputError(f"motion batch: missing key(s) {missing}")
        agents, amask, roads, rmask = batch["agents"], batch["agents_mask"], batch["map"], batch["map_mask"]
        if agents.ndim != 4 or agents.shape[-1] != N_AGENT_FEATURES or agents.shape[2] != self.history_steps:
            raise TarotInputError(
                f"motion batch: agents must have shape (B, A, {self.history_steps}, {N_AGENT_FEATURES}), "
                f"got {tuple(agents.shape)}"
            )
        if roads.ndim != 4 or roads.shape[-1] != N_MAP_FEATURES:
            raise TarotInputError(
                f"motion batch: map must have shape (B, M, P, {N_MAP_FEATURES}), got {tuple(roads.shape)}"
            )
        if tuple(amask.shape) != tuple(agents.shape[:3]) or tuple(rmask.shape) != tuple(roads.shape[:3]):
            raise TarotInputError(
                f"motion batch: agents_mask {tuple(amask.shape)} / map_mask {tuple(rmask.shape)} do not match "
                f"agents {tuple(agents.shape)} / map {tuple(roads.shape)}"
            )
        if roads.shape[0] != agents.shape[0] or roads.shape[1] < 1 or roads.shape[2] < 1:
            raise TarotInputError(
                f"motion batch: map {tuple(roads.shape)} needs the batch size of agents {tuple(agents.shape)} "
                "and at least one (possibly padded) polyline and point"
            )
        amask, rmask = amask.bool(), rmask.bool()
        dtype = self.agent_scale.dtype
        agents = torch.where(amask[..., None], agents.to(dtype) * self.agent_scale, torch.zeros((), dtype=dtype))
        roads = torch.where(rmask[..., None], roads.to(dtype) * self.map_scale, torch.zeros((), dtype=dtype))
        return agents, amask, roads, rmask

    def _gaussian(self, raw: torch.Tensor, logits: torch.Tensor) -> Prediction:
        """Turn raw outputs ``(B, K, Tf, 5)`` and ``logits`` ``(B, K)`` into a :class:`Prediction`."""
        log_min = math.log(MIN_STD)
        log_std = log_min + F.softplus(raw[..., 2:4] - log_min)
        return Prediction(
            mean=raw[..., 0:2] * self.pos_scale,
            log_std=log_std,
            rho=RHO_MAX * torch.tanh(raw[..., 4]),
            logits=logits,
        )


# --------------------------------------------------------------------------- AutoBots


class _AutoBotsEncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.temporal = AttentionBlock(width, heads, dropout)
        self.temporal_ffn = FeedForward(width, ffn_mult, dropout)
        self.social = AttentionBlock(width, heads, dropout)
        self.social_ffn = FeedForward(width, ffn_mult, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, A, Th, D)``, ``mask`` ``(B, A, Th)``: attention over time, then over agents."""
        x = self.temporal_ffn(self.temporal(x, key_mask=mask))
        xs = x.transpose(1, 2)  # (B, Th, A, D): agents at one step
        xs = self.social_ffn(self.social(xs, key_mask=mask.transpose(1, 2)))
        return xs.transpose(1, 2)


class _AutoBotsDecoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.map_attn = AttentionBlock(width, heads, dropout, cross=True)
        self.temporal = AttentionBlock(width, heads, dropout)
        self.context_attn = AttentionBlock(width, heads, dropout, cross=True)
        self.ffn = FeedForward(width, ffn_mult, dropout)

    def forward(
        self,
        q: torch.Tensor,
        roads: torch.Tensor,
        road_mask: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``q`` ``(B, K, Tf, D)``; ``roads`` ``(B, 1, M, D)``; ``context`` ``(B, 1, Th, D)``."""
        q = self.map_attn(q, roads, road_mask)
        q = self.temporal(q, causal=True)
        q = self.context_attn(q, context, context_mask)
        return self.ffn(q)


class AutoBots(MotionModel):
    r"""AutoBots-Ego: a latent-variable sequential set transformer for one focal agent.

    Girgis, Golemo, Codevilla, Weiss, D'Souza, Kahou, Heide, Pal, "Latent Variable Sequential
    Set Transformers for Joint Multi-Agent Motion Prediction", ICLR 2022 (the ego/marginal
    variant, as used by UniTraj and by the TAROT paper as its proxy).

    Encoder
        Each agent step is embedded linearly, a sinusoidal time encoding is added, then
        ``enc_layers`` times: temporal self-attention over one agent's valid steps, then social
        self-attention over the valid agents at one step (each followed by a feed-forward).
        The focal agent's ``Th`` encoded steps are the context.
    Map
        Each polyline: a per-point MLP and a masked max-pool (PointNet), then a linear layer;
        a polyline with no valid point is masked.
    Decoder
        ``K`` learned mode seeds per future step ``(K, Tf, D)`` plus a time encoding; per layer:
        cross-attention to the polylines, causal self-attention over the future steps of the
        mode, cross-attention to the focal context, feed-forward; an MLP gives the 5 Gaussian
        parameters per step.
    Mode distribution
        ``K`` learned seeds attend to the focal context, then to the polylines; a linear layer
        gives one logit each.

    Parameters
    ----------
    width, heads, enc_layers, dec_layers, ffn_mult : int
        Model width ``D``, attention heads (dividing ``D``), encoder and decoder layers, and
        feed-forward width over ``D`` (per size preset: :data:`PRESETS`).
    dropout : float, default 0.0
        Dropout of the attention weights and of the residual branches (training mode only).
    **sizes
        The keyword arguments of :class:`MotionModel`: data sizes, ``num_modes``, scales.
    """

    def __init__(
        self,
        *,
        width: int,
        heads: int,
        enc_layers: int,
        dec_layers: int,
        ffn_mult: int,
        dropout: float = 0.0,
        **sizes: Any,
    ) -> None:
        super().__init__(**sizes)
        d = int(width)
        self.agent_embed = nn.Linear(N_AGENT_FEATURES, d)
        self.register_buffer("history_time", sinusoid(self.history_steps, d), persistent=False)
        self.register_buffer("future_time", sinusoid(self.future_steps, d), persistent=False)
        self.encoder = nn.ModuleList(_AutoBotsEncoderLayer(d, heads, ffn_mult, dropout) for _ in range(enc_layers))
        self.context_norm = nn.LayerNorm(d)
        self.point_mlp = _mlp(N_MAP_FEATURES, d)
        self.polyline_out = nn.Linear(d, d)
        self.seeds = nn.Parameter(torch.randn(self.num_modes, self.future_steps, d) * 0.1)
        self.decoder = nn.ModuleList(_AutoBotsDecoderLayer(d, heads, ffn_mult, dropout) for _ in range(dec_layers))
        self.out_norm = nn.LayerNorm(d)
        self.out_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 5))
        self.mode_seeds = nn.Parameter(torch.randn(self.num_modes, d) * 0.1)
        self.mode_context = AttentionBlock(d, heads, dropout, cross=True)
        self.mode_map = AttentionBlock(d, heads, dropout, cross=True)
        self.mode_ffn = FeedForward(d, ffn_mult, dropout)
        self.mode_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Prediction:
        """Predict ``K`` modes for the focal agent (agent 0) of every sample of ``batch``."""
        agents, amask, roads, rmask = self._inputs(batch)
        b = agents.shape[0]
        x = self.agent_embed(agents) + self.history_time
        for layer in self.encoder:
            x = layer(x, amask)
        context = self.context_norm(x[:, 0])[:, None]  # (B, 1, Th, D)
        context_mask = amask[:, 0][:, None]  # (B, 1, Th)

        polylines = self.polyline_out(masked_max(self.point_mlp(roads), rmask))[:, None]  # (B, 1, M, D)
        road_mask = rmask.any(dim=-1)[:, None]  # (B, 1, M)

        q = (self.seeds + self.future_time).expand(b, -1, -1, -1)  # (B, K, Tf, D)
        for layer in self.decoder:
            q = layer(q, polylines, road_mask, context, context_mask)
        raw = self.out_head(self.out_norm(q))  # (B, K, Tf, 5)

        m = self.mode_seeds.expand(b, -1, -1)  # (B, K, D)
        m = self.mode_context(m, context[:, 0], context_mask[:, 0])
        m = self.mode_map(m, polylines[:, 0], road_mask[:, 0])
        logits = self.mode_head(self.mode_ffn(m)).squeeze(-1)
        return self._gaussian(raw, logits)


# --------------------------------------------------------------------------- Wayformer


class Wayformer(MotionModel):
    r"""Wayformer with early fusion and a latent-query (Perceiver-style) encoder.

    Nayakanti, Al-Rfou, Zhou, Goel, Refaat, Sapp, "Wayformer: Motion Forecasting via Simple &
    Efficient Attention Networks", ICRA 2023.

    Tokens
        Every valid agent step ``(a, t)`` and every valid map point (a road segment: position and
        direction to the next point) is one token. Each modality has its own two-layer
        projection to ``width``; a learned modality embedding (focal agent, other agents, map) and,
        for agent tokens, a learned history-time embedding are added. All tokens are
        concatenated (early fusion, ``A Th + M P`` tokens).
    Encoder
        ``num_latents`` learned latent queries cross-attend to the tokens (padding masked), then
        ``enc_layers`` self-attention layers over the latents (each with a feed-forward).
    Decoder
        ``K`` learned mode queries; per layer: self-attention among the modes, cross-attention to
        the latents, feed-forward. An MLP maps each mode query to its ``Tf`` x 5 Gaussian
        parameters and a linear layer to its logit.

    Parameters
    ----------
    width, heads, num_latents, enc_layers, dec_layers, ffn_mult : int
        Model width ``D``, attention heads (dividing ``D``), latent queries, latent
        self-attention and decoder layers, and feed-forward width over ``D`` (per size
        preset: :data:`PRESETS`).
    dropout : float, default 0.0
        Dropout of the attention weights and of the residual branches (training mode only).
    **sizes
        The keyword arguments of :class:`MotionModel`: data sizes, ``num_modes``, scales.
    """

    def __init__(
        self,
        *,
        width: int,
        heads: int,
        num_latents: int,
        enc_layers: int,
        dec_layers: int,
        ffn_mult: int,
        dropout: float = 0.0,
        **sizes: Any,
    ) -> None:
        super().__init__(**sizes)
        if int(num_latents) < 1:
            raise TarotInputError(f"motion model: num_latents must be >= 1, got {num_latents}")
        d = int(width)
        self.agent_proj = _mlp(N_AGENT_FEATURES, d)
        self.map_proj = _mlp(N_MAP_FEATURES, d)
        self.time_embed = nn.Parameter(torch.randn(self.history_steps, d) * 0.02)
        self.modality_embed = nn.Parameter(torch.randn(3, d) * 0.02)  # focal, other agents, map
        self.latents = nn.Parameter(torch.randn(int(num_latents), d) * 0.1)
        self.latent_cross = AttentionBlock(d, heads, dropout, cross=True)
        self.latent_cross_ffn = FeedForward(d, ffn_mult, dropout)
        self.latent_self = nn.ModuleList(AttentionBlock(d, heads, dropout) for _ in range(enc_layers))
        self.latent_ffn = nn.ModuleList(FeedForward(d, ffn_mult, dropout) for _ in range(enc_layers))
        self.mode_queries = nn.Parameter(torch.randn(self.num_modes, d) * 0.1)
        self.dec_self = nn.ModuleList(AttentionBlock(d, heads, dropout) for _ in range(dec_layers))
        self.dec_cross = nn.ModuleList(AttentionBlock(d, heads, dropout, cross=True) for _ in range(dec_layers))
        self.dec_ffn = nn.ModuleList(FeedForward(d, ffn_mult, dropout) for _ in range(dec_layers))
        self.out_norm = nn.LayerNorm(d)
        self.traj_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, self.future_steps * 5))
        self.mode_head = nn.Linear(d, 1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Prediction:
        """Predict ``K`` modes for the focal agent (agent 0) of every sample of ``batch``."""
        agents, amask, roads, rmask = self._inputs(batch)
        b, a = agents.shape[:2]
        d = self.time_embed.shape[-1]
        is_focal = (torch.arange(a, device=agents.device) == 0)[:, None]  # (A, 1)
        agent_modality = torch.where(is_focal, self.modality_embed[0], self.modality_embed[1])  # (A, D)
        agent_tokens = self.agent_proj(agents) + self.time_embed + agent_modality[:, None]  # (B, A, Th, D)
        map_tokens = self.map_proj(roads) + self.modality_embed[2]  # (B, M, P, D)
        tokens = torch.cat([agent_tokens.reshape(b, -1, d), map_tokens.reshape(b, -1, d)], dim=1)
        token_mask = torch.cat([amask.reshape(b, -1), rmask.reshape(b, -1)], dim=1)

        z = self.latents.expand(b, -1, -1)
        z = self.latent_cross_ffn(self.latent_cross(z, tokens, token_mask))
        for attn, ffn in zip(self.latent_self, self.latent_ffn, strict=True):
            z = ffn(attn(z))

        q = self.mode_queries.expand(b, -1, -1)
        for attn, cross, ffn in zip(self.dec_self, self.dec_cross, self.dec_ffn, strict=True):
            q = ffn(cross(attn(q), z))
        q = self.out_norm(q)
        raw = self.traj_head(q).unflatten(-1, (self.future_steps, 5))  # (B, K, Tf, 5)
        return self._gaussian(raw, self.mode_head(q).squeeze(-1))


# --------------------------------------------------------------------------- factory


def build_model(kind: str, preset: str = "mini", **sizes: Any) -> MotionModel:
    """A freshly initialised ``kind`` model (``autobots`` | ``wayformer``) of a size preset.

    Parameters
    ----------
    kind : str
        ``autobots`` or ``wayformer``.
    preset : str, default "mini"
        A key of ``PRESETS[kind]`` (``mini`` | ``paper``).
    **sizes
        Overrides of the preset and the data sizes: ``width``, ``heads``, ``enc_layers``,
        ``dec_layers``, ``ffn_mult``, ``num_modes``, ``num_latents`` (Wayformer),
        ``history_steps``, ``future_steps``, ``num_agents``, ``num_polylines``,
        ``points_per_polyline``, ``dropout``, ``pos_scale``, ``vel_scale``.

    Raises
    ------
    TarotInputError
        On an unknown kind, preset or size key.
    """
    if kind not in MODEL_KINDS:
        raise TarotInputError(f"motion model: unknown kind {kind!r}; one of {', '.join(MODEL_KINDS)}")
    if preset not in PRESETS[kind]:
        raise TarotInputError(f"motion model: unknown preset {preset!r} for {kind}; one of {', '.join(PRESETS[kind])}")
    cls = AutoBots if kind == "autobots" else Wayformer
    allowed = set(PRESETS[kind][preset]) | set(_DATA_SIZES) | {"dropout", "pos_scale", "vel_scale"}
    if kind == "wayformer":
        allowed.add("num_latents")
    unknown = sorted(set(sizes) - allowed)
    if unknown:
        raise TarotInputError(f"motion model: unknown size key(s) {unknown} for {kind}; allowed: {sorted(allowed)}")
    return cls(**{**_DATA_SIZES, **PRESETS[kind][preset], **sizes})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
