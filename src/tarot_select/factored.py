r"""Per-layer Kronecker-factored projections of per-sample gradients (LoGra-style).

Why
---
A dense ``P x d`` projection of a flattened per-sample gradient costs ``2 P d`` flops per
sample -- for a 2.3 M-parameter CNN and ``d = 4096`` about 19 GFLOP, dozens of times the
gradient itself. For linear and convolutional layers the per-sample weight gradient has a
structure that lets one project it without ever forming it (LoGra, Choe et al. 2024).

Linear layers
    With input ``a`` (``n_in``) and output gradient ``g = dL/dy`` (``n_out``) the
    per-sample gradient of ``W`` (``n_out x n_in``) is ``g a^T``; for inputs with extra
    (sequence) dimensions it is ``sum_p g_p a_p^T = G A^T``, ``G`` (``n_out x L``),
    ``A`` (``n_in x L``).
Convolutions (``nn.Conv1d/2d/3d``, ``groups=1``)
    With the unfolded input patches ``A`` (``c_in k_1 k_2 .. x L``, one column per output
    position) the same formula holds: ``grad W = G A^T`` with ``G`` the output gradient
    (``c_out x L``).

A Kronecker block with factors ``U`` (``d_out x n_out``) and ``V`` (``d_in x n_in``) maps
the gradient to

.. math::

    (U G)(V A)^\top = \operatorname{mat}\big((U \otimes V)\operatorname{vec}(G A^\top)\big),

``d_out d_in`` numbers computed without forming ``G A^T``: ``V A`` is a convolution of the
layer input with ``V`` reshaped to ``(d_in, c_in, k_1, ..)`` (no unfolding), ``U G`` a
matrix product, and their product a batched ``(d_out x L)(L x d_in)`` matmul. With iid
zero-mean, unit-variance entries (``±1`` or ``N(0, 1)``) every output coordinate ``c``
satisfies ``E c c' = <grad, grad'>``, so rescaled outputs form a Johnson-Lindenstrauss
sketch of the true gradient. A bias is an extra input column that is constant 1 (``[W b]``
has gradient ``G [A; 1]^T``), so ``n_in`` counts it.

Layouts
-------
``"sum"`` (default)
    Every layer ``l`` gets ``r_l = ceil(d / (d_out d_in))`` independent blocks with
    ``d_out = min(f, n_out)``, ``d_in = min(f, n_in)`` (``f = factor_dim``); their first
    ``d`` output coordinates, times ``1/sqrt(d)``, are **summed** over layers (the small
    group below adds its own ``d``-dim dense sketch):

    .. math:: \phi(z) = \tfrac{1}{\sqrt d}\sum_l S_l \operatorname{vec}(\nabla_{W_l}) ,

    i.e. one ``d x P`` random map whose column block for layer ``l`` is a stack of
    Kronecker products. ``E <phi(z), phi(z')> = <g(z), g(z')>`` over all selected
    parameters, with no per-layer split of ``d`` (so no layer whose gradient dominates
    is starved of dimensions). ``f`` trades cost for accuracy: the projection costs about
    ``2 (d / f) L (n_in + n_out)`` flops per layer and sample, and the extra variance of
    a Kronecker sketch over a dense one grows like ``f / d`` (largest for gradients of
    low rank and inputs that are alike, e.g. post-ReLU activations).
``"concat"``
    LoGra's layout: one block per layer, ``d`` split over the layers by
    :func:`factor_dims`, features concatenated (block ``l`` is ``vec((U_l G)(V_l A)^T)``,
    ``U_l``, ``V_l`` scaled by ``1/sqrt(d_out)``, ``1/sqrt(d_in)``, identity where a side is
    kept whole). Cheaper, but a layer that carries most of the gradient gets only its
    share of ``d`` and single Kronecker blocks are noisy; the benchmark
    (``benchmarks/bench_featurize.py``) compares both.

``proj_kind="none"`` uses identity factors and the concat layout: the features are the
exact per-sample gradients (layer by layer, weight rows with the bias as last column).

``proj_kind="countsketch"`` (sum layout) forms each layer's exact per-sample gradient
``G [A; 1]^T`` with one batched matmul from the same hooks (``A`` unfolded for
convolutions; Linear, Conv1d and Conv2d), then count-sketches it into the ``d`` outputs
with a seeded per-layer hash (bucket and sign per gradient entry), i.e. a
:class:`~tarot_select.project.CountSketchProjector` of the whole gradient without the
per-sample ``vmap``. It costs about one more forward pass in flops plus memory traffic
(``B x`` the largest layer's parameters are held at once) and has the accuracy of a count
sketch, close to a dense projection for gradients; the Kronecker kinds are cheaper
in memory and time but noisier at the same ``d`` (see the benchmark).

Other parameters ("small group")
    Batch-norm affine parameters (``weight``, ``bias``) and biases whose layer weight is
    not selected have per-sample gradients that are cheap to form exactly from the same
    hooks (batch norm in eval mode: ``d gamma = sum_p g_p xhat_p``, ``d beta = sum_p g_p``
    with ``xhat`` normalised by the running statistics; bias: ``sum_p g_p``). They are
    concatenated and projected together by one cached
    :class:`~tarot_select.project.DenseProjector` (a
    :class:`~tarot_select.project.CountSketchProjector` for ``proj_kind="countsketch"``; or kept
    exactly where they fit), so
    every selected parameter is covered. Any other selected parameter raises
    :class:`~tarot_select.errors.TarotInputError`: exclude it with ``params=`` patterns.

Dimension rule of the concat layout (:func:`factor_dims`)
    The ``m`` units (Kronecker layers, plus the small group if any) share ``d``. They are
    visited from the smallest (fewest parameters) to the largest; a unit gets the budget
    ``b = floor(remaining / units_left)``:

    * a layer with ``n_out n_in <= b`` is kept exactly (identity factors);
    * otherwise ``d_in = floor(sqrt(b))`` and ``d_out = floor(b / d_in)``, except that a
      side smaller than that is kept whole (identity factor) and the other side gets
      ``floor(b / n)`` -- e.g. a 10-class head keeps ``d_out = 10``;
    * the small group gets ``min(n_small, b)``.

    Unused budget flows on to the larger units, so the total is at most, and usually
    within a few of, ``d``; :attr:`FactoredGradientFeaturizer.dim` is the actual total.
    (The sum layout always has exactly ``d``.)

Loss protocol and independence of samples
------------------------------------------
The same ``loss_fn(forward, sample)`` as :mod:`tarot_select.gradients`, with one more
requirement: ``loss_fn(forward, batch)`` must also run on a whole batch and call
``forward`` exactly once, with inputs whose leading dimension is the batch (true of
``F.cross_entropy(forward(x), y)`` and of the margin output). That call runs the model
once on the batch; the per-sample losses are then ``loss_fn`` of each sample with
``forward`` returning that sample's row of the batched output (:func:`torch.func.vmap`),
and one backward pass of their **sum** (down to the layer outputs only: no weight
gradient is computed) gives every sample's output gradient at every layer. This equals
per-sample gradients only if samples do not interact in the forward pass: batch norm must
use its running statistics (eval mode; a training-mode batch norm, or one without running
statistics, raises), and no layer may mix the batch. Layers must be called as modules
(a weight used through ``F.linear(x, layer.weight)`` is not seen by the hooks); a module
called several times in one forward pass contributes the sum over its calls, as its
gradient does.

Adam preconditioning (LESS) is elementwise and depends on the whole gradient
(``m' / sqrt(v' + eps)`` with ``v'`` quadratic in ``g``); it cannot be applied to a
Kronecker projection, and checkpoints with a preconditioner raise for the Kronecker kinds.
``proj_kind="countsketch"`` forms the exact layer gradients and applies it (as
:class:`~tarot_select.featurize.GradientFeaturizer` does) before hashing.

Threads: the library never changes ``torch.get_num_threads()``.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import TarotInputError
from .featurize import Checkpoint, GradientFeaturizer, check_model_and_loss
from .gradients import (
    AdamPreconditioner,
    LossFn,
    _batch_size,
    _flatten,
    _scalar_loss,
    select_parameters,
    to_device,
)
from .project import (
    CountSketchProjector,
    DenseProjector,
    Projector,
    _block_seed,
    _check_positive_int,
    _check_seed,
)

__all__ = [
    "FACTORED_KINDS",
    "FACTORED_LAYOUTS",
    "FactoredGradientFeaturizer",
    "FactoredLayer",
    "SmallGroup",
    "factor_dims",
]

logger = logging.getLogger(__name__)

#: Kronecker factors of random signs or Gaussian; exact per-layer gradients count-sketched; identity.
FACTORED_KINDS: Final[tuple[str, ...]] = ("rademacher", "gaussian", "countsketch", "none")
#: How layer sketches are combined (see the module docstring).
FACTORED_LAYOUTS: Final[tuple[str, ...]] = ("sum", "concat")
#: Default block side ``f`` of the sum layout.
DEFAULT_FACTOR_DIM: Final[int] = 16
_STREAM_FACTORED: Final[int] = 0x5EED_FAC7
_CONVS: Final[tuple[type[nn.Module], ...]] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SCHEME: Final[str] = "kronecker-blocks-splitmix64-v1"
_ADAM_MESSAGE: Final[str] = (
    "Adam preconditioning cannot be applied to factored (Kronecker) gradient projections: it is an elementwise, "
    "gradient-dependent transform of the full gradient; use proj_kind='countsketch' (exact layer gradients) or "
    "GradientFeaturizer for Adam-preconditioned checkpoints"
)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class FactoredLayer:
    """One Linear / Conv layer sketched by ``n_blocks`` Kronecker blocks ``(U_j G)(V_j A)^T``.

    Attributes
    ----------
    module : str
        Module name in ``model.named_modules()``.
    kind : {"linear", "conv"}
    param_names : tuple of str
        The selected parameters of the layer (``weight``, and ``bias`` if selected).
    n_out : int
        Output features / channels.
    n_in : int
        Input features, or ``c_in * prod(kernel_size)`` for a convolution, plus 1 if the
        bias is selected (last column).
    has_bias : bool
    d_out, d_in : int
        Block shape; ``U`` stacks the blocks' ``d_out``-row factors (``n_blocks d_out x n_out``),
        ``V`` their ``d_in``-row factors (``n_blocks d_in x n_in``).
    n_blocks : int
    offset, width : int
        The first ``width`` of the ``n_blocks d_out d_in`` block outputs (flattened block by
        block, row-major), times ``scale``, are added to feature columns
        ``offset : offset + width``.
    scale : float
    identity_out, identity_in : bool
        Whether ``U`` / ``V`` is the identity (concat layout, side kept whole).

    With ``proj_kind="countsketch"`` the single "block" is the exact gradient
    (``d_out = n_out``, ``d_in = n_in``, identity sides, ``scale = 1``), hashed into the
    ``width`` columns instead of being copied.
    """

    module: str
    kind: str
    param_names: tuple[str, ...]
    n_out: int
    n_in: int
    has_bias: bool
    d_out: int
    d_in: int
    n_blocks: int
    offset: int
    width: int
    scale: float
    identity_out: bool
    identity_in: bool

    @property
    def n_params(self) -> int:
        """Parameters covered, ``n_out * n_in``."""
        return self.n_out * self.n_in


@dataclass(frozen=True)
class SmallGroup:
    """Batch-norm affine parameters and lone biases, formed exactly, then sketched together.

    The sketch is a cached :class:`~tarot_select.project.DenseProjector` (a
    :class:`~tarot_select.project.CountSketchProjector` for ``proj_kind="countsketch"``), or
    none where the concat layout keeps them exactly.

    Attributes
    ----------
    entries : tuple of (str, str, tuple of str, int)
        ``(module, kind, param_names, channels)`` with kind ``"batchnorm"`` or ``"bias"``;
        each selected parameter contributes ``channels`` columns, in this order.
    n_params : int
    dim : int
        ``n_params`` (kept exactly) or the sketch's output dimension.
    offset : int
        Feature column where its ``dim`` columns are added.
    """

    entries: tuple[tuple[str, str, tuple[str, ...], int], ...]
    n_params: int
    dim: int
    offset: int

    @property
    def param_names(self) -> tuple[str, ...]:
        """All parameters of the group, in column order."""
        return tuple(n for _, _, names, _ in self.entries for n in names)


def factor_dims(sizes: Sequence[tuple[int, int]], n_small: int, dim: int) -> tuple[list[tuple[int, int]], int]:
    """Split a feature dimension over Kronecker layers and the small group (concat layout).

    See the module docstring for the rule. Deterministic; the total is ``<= dim``.

    Parameters
    ----------
    sizes : sequence of (int, int)
        ``(n_out, n_in)`` of each Kronecker layer.
    n_small : int
        Parameters in the small group (0: no group).
    dim : int
        Requested total dimension; at least the number of units.

    Returns
    -------
    dims : list of (int, int)
        ``(d_out, d_in)`` per layer, in the order of ``sizes``.
    d_small : int
        Dimension of the small group (0 if ``n_small == 0``).
    """
    dim = _check_positive_int("dim", dim)
    units = [(n_out * n_in, i) for i, (n_out, n_in) in enumerate(sizes)]
    if n_small:
        units.append((n_small, len(sizes)))
    if dim < len(units):
        raise TarotInputError(f"dim={dim} is smaller than the number of projected units ({len(units)})")
    dims: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    d_small = 0
    remaining = dim
    order = sorted(units)
    for k, (size, i) in enumerate(order):
        b = remaining // (len(order) - k)
        if i == len(sizes):
            d_small = min(n_small, b)
            remaining -= d_small
            continue
        n_out, n_in = sizes[i]
        if size <= b:
            d_out, d_in = n_out, n_in
        else:
            t = math.isqrt(b)
            if n_out <= t:
                d_out, d_in = n_out, min(n_in, b // n_out)
            elif n_in <= t:
                d_out, d_in = min(n_out, b // n_in), n_in
            else:
                d_in = t
                d_out = min(n_out, b // t)
        dims[i] = (d_out, d_in)
        remaining -= d_out * d_in
    return dims, d_small


def _random_factor(name: str, rows: int, cols: int, seed: int, kind: str) -> torch.Tensor:
    """Unscaled random factor ``(rows, cols)`` (float32, CPU) with ``±1`` or ``N(0, 1)`` entries.

    Drawn by a generator seeded from ``(seed, crc32(name))``, so a layer's factor does not
    depend on the other layers.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_block_seed(seed, _STREAM_FACTORED, zlib.crc32(name.encode())))
    if kind == "gaussian":
        return torch.randn((rows, cols), generator=gen, dtype=torch.float32)
    return torch.randint(0, 2, (rows, cols), generator=gen, dtype=torch.int8).to(torch.float32).mul_(2.0).sub_(1.0)


# --------------------------------------------------------------------------- capture


class _Capture(torch.autograd.Function):
    """Identity on a layer output whose backward stores the output gradient.

    The extra ``anchor`` input (a scalar that requires grad) puts every capture node on a
    path from the loss to the anchor, so ``autograd.grad(loss, anchor)`` visits them all
    while skipping every weight gradient. The output is a copy so that later in-place
    operations (``ReLU(inplace=True)``) stay legal.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, anchor: torch.Tensor, sink: list[Any], slot: int) -> torch.Tensor:
        ctx.sink, ctx.slot = sink, slot
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        ctx.sink[ctx.slot] = grad
        return grad, None, None, None


@dataclass
class _Call:
    """One call of a hooked module: its input and, after the backward pass, output gradient."""

    x: torch.Tensor
    slot: int
    grad: torch.Tensor | None = None


# --------------------------------------------------------------------------- featurizer


class FactoredGradientFeaturizer(GradientFeaturizer):
    r"""Per-sample gradient features with per-layer Kronecker-factored projections.

    For a checkpoint ``t`` with weight ``w_t`` the feature block of sample ``z`` is
    ``sqrt(w_t) phi_t(z)`` with ``phi_t`` the factored sketch of the per-sample gradient
    at ``t`` (module docstring), so that ``E <phi(z), phi(z')> = sum_t w_t <g_t(z), g_t(z')>``
    over the selected parameters. Checkpoint handling, :meth:`featurize` and
    :meth:`featurize_to_file` are those of
    :class:`~tarot_select.featurize.GradientFeaturizer` (same ``Checkpoint`` list, same
    outputs and sidecars), so the two are interchangeable -- except that checkpoints with
    an Adam preconditioner need ``proj_kind="countsketch"`` (the Kronecker kinds raise
    :class:`~tarot_select.errors.TarotInputError` for them).

    Parameters
    ----------
    model : nn.Module
        Moved to ``device``; put in eval mode while featurizing (batch norm must use
        running statistics so that samples do not interact).
    loss_fn : callable
        ``loss_fn(forward, sample) -> scalar``; must also accept a whole batch and call
        ``forward`` once on it (see the module docstring).
    proj_dim : int, optional
        Output dimension ``d`` per checkpoint (exact for the sum layout; an upper bound for
        the concat layout, see :attr:`dim`). Not used with ``proj_kind="none"``.
    proj_kind : {"rademacher", "gaussian", "countsketch", "none"}, default "rademacher"
        Entries of the random Kronecker factors; ``"countsketch"``: exact per-layer
        gradients, count-sketched (sum layout only); ``"none"``: identity factors, i.e.
        the exact per-sample gradients (``dim`` = number of selected parameters; for
        tests and small models).
    layout : {"sum", "concat"}, optional
        Default ``"sum"``, and ``"concat"`` for ``proj_kind="none"`` (the only layout it
        allows; ``"countsketch"`` allows only ``"sum"``).
    factor_dim : int or (int, int), default 16
        Block shape ``(f_out, f_in)`` (an int: square) of the Kronecker sum layout; ignored
        by the concat layout and by ``"countsketch"``.
    seed : int, default 0
        Fixes every factor (a layer's factors depend only on ``seed``, its module name and
        its dimensions), so candidates and targets featurized separately share them.
    params : sequence of str, optional
        :func:`fnmatch` patterns of parameter names (default: all trainable). Every
        selected parameter must be a Linear / Conv weight or bias, or a batch-norm
        weight or bias.
    device : str or torch.device, default "cpu"

    Attributes
    ----------
    layers : list of FactoredLayer
        In module order.
    small : SmallGroup or None
    param_names : list of str
    n_params : int
    """

    mode = "factored"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        proj_dim: int | None = None,
        proj_kind: str = "rademacher",
        layout: str | None = None,
        factor_dim: int | tuple[int, int] = DEFAULT_FACTOR_DIM,
        seed: int = 0,
        params: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        check_model_and_loss(model, loss_fn)
        if proj_kind not in FACTORED_KINDS:
            raise TarotInputError(
                f"unknown factored projection kind {proj_kind!r}; allowed: {', '.join(FACTORED_KINDS)}"
            )
        if layout is None:
            layout = "concat" if proj_kind == "none" else "sum"
        if layout not in FACTORED_LAYOUTS:
            raise TarotInputError(f"unknown factored layout {layout!r}; allowed: {', '.join(FACTORED_LAYOUTS)}")
        if proj_kind == "none" and layout != "concat":
            raise TarotInputError("proj_kind 'none' (exact gradients) needs layout 'concat'")
        if proj_kind == "countsketch" and layout != "sum":
            raise TarotInputError("proj_kind 'countsketch' needs layout 'sum'")
        if isinstance(factor_dim, tuple | list):
            if len(factor_dim) != 2:
                raise TarotInputError(f"factor_dim must be an int or a pair (d_out, d_in), got {factor_dim!r}")
            self.factor_dim = (
                _check_positive_int("factor_dim", factor_dim[0]),
                _check_positive_int("factor_dim", factor_dim[1]),
            )
        else:
            f = _check_positive_int("factor_dim", factor_dim)
            self.factor_dim = (f, f)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise TarotInputError(f"bad device {device!r}: {exc}") from None
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.kind = proj_kind
        self.layout = layout
        self.seed = _check_seed(seed)
        self.patterns = None if params is None else ([params] if isinstance(params, str) else list(params))
        self.param_names = select_parameters(model, self.patterns)
        named = dict(model.named_parameters())
        self.n_params = int(sum(named[n].numel() for n in self.param_names))
        kron, small_entries = self._layout(model, self.param_names)
        if proj_kind == "countsketch":
            bad = [name for name, _, _, _, _, _ in kron if isinstance(model.get_submodule(name), nn.Conv3d)]
            if bad:
                raise TarotInputError(
                    f"proj_kind 'countsketch' supports Linear, Conv1d and Conv2d layers, not {bad[:3]}"
                )
        n_small = sum(len(names) * ch for _, _, names, ch in small_entries)
        if proj_kind == "none":
            if proj_dim is not None and proj_dim != self.n_params:
                raise TarotInputError(
                    f"proj_kind 'none' keeps all {self.n_params} dimensions; got proj_dim={proj_dim!r} (pass None)"
                )
        elif proj_dim is None:
            raise TarotInputError(f"proj_kind {proj_kind!r} needs proj_dim")
        else:
            proj_dim = _check_positive_int("proj_dim", proj_dim)
        self.layers, self.small = self._plan(kron, small_entries, n_small, proj_dim)
        self._dim = (
            proj_dim
            if layout == "sum"
            else sum(layer.width for layer in self.layers) + (self.small.dim if self.small else 0)
        )
        self._module_of = dict(model.named_modules())
        self._factors: dict[tuple[str, torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}
        self._hashes: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._small_projector: Projector | None = None
        if self.small is not None and (layout == "sum" or self.small.dim < self.small.n_params):
            small_seed = _block_seed(self.seed, _STREAM_FACTORED, zlib.crc32(b"<small>"))
            if proj_kind == "countsketch":
                self._small_projector = CountSketchProjector(self.small.n_params, self.small.dim, seed=small_seed)
            else:
                self._small_projector = DenseProjector(
                    self.small.n_params, self.small.dim, seed=small_seed, kind=proj_kind
                )
        logger.info(
            "factored gradient features (%s, %s): %d layers + %d small parameters (%d parameters) -> dim %d",
            layout,
            proj_kind,
            len(self.layers),
            n_small,
            self.n_params,
            self.dim,
        )

    # ---------------------------------------------------------------- layout

    @staticmethod
    def _layout(
        model: nn.Module, param_names: Sequence[str]
    ) -> tuple[list[tuple[str, str, tuple[str, ...], int, int, bool]], list[tuple[str, str, tuple[str, ...], int]]]:
        """Assign every selected parameter to a Kronecker layer or the small group."""
        selected = set(param_names)
        owner: dict[int, str] = {}
        kron: list[tuple[str, str, tuple[str, ...], int, int, bool]] = []
        small: list[tuple[str, str, tuple[str, ...], int]] = []
        covered: set[str] = set()

        def claim(module: nn.Module, mod_name: str, attr: str) -> str | None:
            p = getattr(module, attr, None)
            if not isinstance(p, nn.Parameter):
                return None
            full = f"{mod_name}.{attr}" if mod_name else attr
            if id(p) in owner:
                if full in selected or owner[id(p)] in selected:
                    raise TarotInputError(
                        f"parameter {owner[id(p)]!r} is shared with {full!r}; shared weights are not supported "
                        "by factored featurization"
                    )
                return None
            owner[id(p)] = full
            return full if full in selected else None

        for name, m in model.named_modules(remove_duplicate=False):
            if isinstance(m, (nn.Linear, *_CONVS)):
                w, b = claim(m, name, "weight"), claim(m, name, "bias")
                if w is None and b is None:
                    continue
                n_out = int(m.weight.shape[0])
                if w is not None:
                    if isinstance(m, _CONVS) and m.groups != 1:
                        raise TarotInputError(
                            f"convolution {name!r} has groups={m.groups}; factored featurization supports groups=1 "
                            "(exclude its weight with params= patterns)"
                        )
                    n_in = int(m.weight[0].numel()) + (b is not None)
                    kind = "linear" if isinstance(m, nn.Linear) else "conv"
                    kron.append((name, kind, (w,) if b is None else (w, b), n_out, n_in, b is not None))
                else:
                    small.append((name, "bias", (b,), n_out))  # type: ignore[arg-type]
                covered.update(n for n in (w, b) if n is not None)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                w, b = claim(m, name, "weight"), claim(m, name, "bias")
                names = tuple(n for n in (w, b) if n is not None)
                if not names:
                    continue
                if m.running_mean is None or m.running_var is None:
                    raise TarotInputError(
                        f"batch norm {name!r} has no running statistics (track_running_stats=False): samples "
                        "would interact; exclude its parameters with params= patterns"
                    )
                small.append((name, "batchnorm", names, int(m.num_features)))
                covered.update(names)
        rest = [n for n in param_names if n not in covered]
        if rest:
            raise TarotInputError(
                f"factored featurization supports weights/biases of nn.Linear, nn.Conv1d/2d/3d (groups=1) and "
                f"batch-norm weights/biases; unsupported selected parameter(s): {rest[:5]}"
                f"{' ...' if len(rest) > 5 else ''} (exclude them with params= patterns)"
            )
        return kron, small

    def _plan(
        self,
        kron: list[tuple[str, str, tuple[str, ...], int, int, bool]],
        small_entries: list[tuple[str, str, tuple[str, ...], int]],
        n_small: int,
        proj_dim: int | None,
    ) -> tuple[list[FactoredLayer], SmallGroup | None]:
        """Block shapes, offsets and scales of every layer (see the module docstring)."""
        layers: list[FactoredLayer] = []
        if self.layout == "sum":
            if proj_dim is None:
                raise TarotInputError(
                    "layout 'sum' projects: it needs a proj_dim (use layout 'concat' for identity factors)"
                )
            f_out, f_in = self.factor_dim
            if self.kind == "countsketch":  # exact gradient blocks, hashed: "blocks" are the whole layer
                f_out = f_in = 1 << 62
            for name, kind, names, n_out, n_in, bias in kron:
                d_out, d_in = min(f_out, n_out), min(f_in, n_in)
                layers.append(
                    FactoredLayer(
                        module=name,
                        kind=kind,
                        param_names=names,
                        n_out=n_out,
                        n_in=n_in,
                        has_bias=bias,
                        d_out=d_out,
                        d_in=d_in,
                        n_blocks=-(-proj_dim // (d_out * d_in)),
                        offset=0,
                        width=proj_dim,
                        scale=1.0 if self.kind == "countsketch" else 1.0 / math.sqrt(proj_dim),
                        identity_out=self.kind == "countsketch",
                        identity_in=self.kind == "countsketch",
                    )
                )
            small = SmallGroup(tuple(small_entries), n_small, proj_dim, 0) if n_small else None
            return layers, small
        sizes = [(n_out, n_in) for _, _, _, n_out, n_in, _ in kron]
        if proj_dim is None:  # identity factors
            dims, d_small = sizes, n_small
        else:
            dims, d_small = factor_dims(sizes, n_small, proj_dim)
        offset = 0
        for (name, kind, names, n_out, n_in, bias), (d_out, d_in) in zip(kron, dims, strict=True):
            id_out, id_in = d_out == n_out, d_in == n_in
            scale = (1.0 if id_out else 1.0 / math.sqrt(d_out)) * (1.0 if id_in else 1.0 / math.sqrt(d_in))
            layers.append(
                FactoredLayer(
                    module=name,
                    kind=kind,
                    param_names=names,
                    n_out=n_out,
                    n_in=n_in,
                    has_bias=bias,
                    d_out=d_out,
                    d_in=d_in,
                    n_blocks=1,
                    offset=offset,
                    width=d_out * d_in,
                    scale=scale,
                    identity_out=id_out,
                    identity_in=id_in,
                )
            )
            offset += d_out * d_in
        small = SmallGroup(tuple(small_entries), n_small, d_small, offset) if n_small else None
        return layers, small

    # ---------------------------------------------------------------- properties

    @property
    def dim(self) -> int:
        """Feature dimension per checkpoint."""
        return self._dim

    def factors(self, layer: FactoredLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled stacked factors ``U`` (n_blocks d_out, n_out) and ``V`` (n_blocks d_in, n_in), float32 CPU.

        Entries are ``±1`` or ``N(0, 1)``, or an identity matrix where the layer keeps a side
        whole; the bias column of ``V``, if any, is the last one.
        """
        if layer.identity_out:
            u = torch.eye(layer.n_out)
        else:
            u = _random_factor(
                f"{layer.module}/out/{layer.n_out}", layer.n_blocks * layer.d_out, layer.n_out, self.seed, self.kind
            )
        if layer.identity_in:
            v = torch.eye(layer.n_in)
        else:
            v = _random_factor(
                f"{layer.module}/in/{layer.n_in}", layer.n_blocks * layer.d_in, layer.n_in, self.seed, self.kind
            )
        return u, v

    def _factors_on(self, layer: FactoredLayer, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """``(U, V_weight, V_bias or None)`` on ``device`` in ``dtype``, cached; ``V_weight`` shaped as a kernel."""
        key = (layer.module, device, dtype)
        if key not in self._factors:
            u, v = self.factors(layer)
            v_b = v[:, -1].contiguous() if layer.has_bias else None
            v_w = (v[:, :-1] if layer.has_bias else v).contiguous()
            if layer.kind == "conv":
                v_w = v_w.reshape(v.shape[0], *self._module_of[layer.module].weight.shape[1:])
            self._factors[key] = tuple(t if t is None else t.to(device, dtype) for t in (u, v_w, v_b))
        return self._factors[key]

    # ---------------------------------------------------------------- core

    def _check_mode(self) -> None:
        bad = [
            n for n, m in self.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
        ]
        if bad:
            raise TarotInputError(
                f"batch norm {bad[:3]} is in training mode: samples would interact through batch statistics; "
                "call model.eval() (featurize() does)"
            )
        if self.model.training:
            logger.warning("model is in training mode; per-sample gradients are usually taken in eval mode")

    def _capture(self, batch: Any) -> tuple[int, dict[str, list[_Call]]]:
        """One batched forward and backward pass: inputs and output gradients of every hooked module.

        Returns ``(B, calls)`` with ``calls[module]`` one :class:`_Call` per call of the
        module (``grad`` None where the output did not reach the loss).
        """
        self._check_mode()
        leaves, rebuild = _flatten(batch)
        n = _batch_size(leaves)
        tensor_pos = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        hooked = [layer.module for layer in self.layers] + (
            [e[0] for e in self.small.entries] if self.small is not None else []
        )
        calls: dict[str, list[_Call]] = {name: [] for name in hooked}
        sink: list[torch.Tensor | None] = []
        anchor = torch.zeros((), device=self.device, requires_grad=True)

        def make_hook(name: str) -> Callable[..., torch.Tensor]:
            def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
                x = inputs[0] if inputs else None
                if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                    raise TarotInputError(f"module {name!r} must take and return a tensor for factored featurization")
                if x.ndim < 2 or x.shape[0] != n or output.shape[0] != n:
                    raise TarotInputError(
                        f"module {name!r} got input of shape {tuple(x.shape)}; factored featurization needs "
                        f"batch-first inputs with leading dimension {n} (the batch size)"
                    )
                sink.append(None)
                calls[name].append(_Call(x.detach(), len(sink) - 1))
                return _Capture.apply(output, anchor, sink, len(sink) - 1)

            return hook

        outputs: list[Any] = []

        def forward(*args: Any, **kwargs: Any) -> Any:
            out = self.model(*args, **kwargs)
            outputs.append(out)
            return out

        handles = [self._module_of[name].register_forward_hook(make_hook(name)) for name in hooked]
        try:
            with torch.enable_grad():
                self.loss_fn(forward, batch)
        finally:
            for h in handles:
                h.remove()
        if len(outputs) != 1:
            raise TarotInputError(
                f"loss_fn(forward, batch) must call forward exactly once, it called it {len(outputs)}"
            )
        out = outputs.pop()
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != n:
            raise TarotInputError(
                "factored featurization needs forward(batch) to return a tensor with the batch as leading dimension"
            )
        with torch.enable_grad():
            losses = self._per_sample_losses(out, leaves, tensor_pos, rebuild)
            if losses.requires_grad:
                torch.autograd.grad(losses.sum(), anchor, allow_unused=True)
        del losses, out
        for name in hooked:
            for c in calls[name]:
                c.grad = sink[c.slot]
        return n, calls

    def _per_sample_losses(
        self,
        out: torch.Tensor,
        leaves: list[Any],
        tensor_pos: list[int],
        rebuild: Callable[[list[Any]], Any],
    ) -> torch.Tensor:
        """``losses[i] = loss_fn(forward_i, sample_i)`` with ``forward_i`` returning ``out[i:i+1]``."""
        from torch.func import vmap

        n_calls = [0]

        def sample_loss(o: torch.Tensor, ts: tuple[torch.Tensor, ...]) -> torch.Tensor:
            filled = list(leaves)
            for pos, t in zip(tensor_pos, ts, strict=True):
                filled[pos] = t.unsqueeze(0)

            def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
                n_calls[0] += 1
                return o.unsqueeze(0)

            loss = _scalar_loss(self.loss_fn(forward, rebuild(filled)))
            if n_calls[0] != 1:
                raise TarotInputError(
                    f"loss_fn(forward, sample) must call forward exactly once, it called it {n_calls[0]}"
                )
            return loss

        return vmap(sample_loss, in_dims=(0, 0))(out, tuple(leaves[p] for p in tensor_pos))

    def _layer_features(self, layer: FactoredLayer, calls: list[_Call], n: int) -> torch.Tensor | None:
        """``sum_calls`` of the layer's block outputs, shape (B, width), unscaled; None if no gradient reached it."""
        module = self._module_of[layer.module]
        r, d_out, d_in = layer.n_blocks, layer.d_out, layer.d_in
        acc: torch.Tensor | None = None
        for c in calls:
            if c.grad is None:
                continue
            g = c.grad
            x = c.x.to(g.dtype)
            u, v_w, v_b = self._factors_on(layer, x.device, g.dtype)
            if layer.kind == "linear":
                a = x.reshape(n, -1, x.shape[-1])  # (B, L, n_in)
                at = torch.matmul(a, v_w.T).transpose(1, 2)  # (B, r d_in, L)
                gt = torch.matmul(g.reshape(n, -1, g.shape[-1]), u.T).transpose(1, 2)  # (B, r d_out, L)
            else:
                at = module._conv_forward(x, v_w, None).reshape(n, r * d_in, -1)  # (B, r d_in, L)
                gt = torch.matmul(u, g.reshape(n, layer.n_out, -1))  # (B, r d_out, L)
            if v_b is not None:
                at = at + v_b.reshape(1, -1, 1)
            length = at.shape[-1]
            f = torch.bmm(gt.reshape(n * r, d_out, length), at.reshape(n * r, d_in, length).transpose(1, 2))
            f = f.reshape(n, -1)[:, : layer.width]
            acc = f if acc is None else acc + f
        return acc

    @staticmethod
    def _unfold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Input patches of a Conv1d / Conv2d, shape (B, c_in * prod(kernel), L), in the weight's column order."""
        if isinstance(module, nn.Conv1d):
            x = x.unsqueeze(2)
            kernel, stride, dilation = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
        else:
            kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        # the module's own F.pad argument: numeric, "same" and "valid" padding alike
        pads = list(module._reversed_padding_repeated_twice)
        if any(pads):
            x = F.pad(x, pads, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
        return F.unfold(x, kernel, dilation=dilation, stride=stride)

    def _hash(self, layer: FactoredLayer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Count-sketch buckets (int64) and signs (float32 ±1) of the layer's ``n_out * n_in`` gradient entries."""
        key = (layer.module, device)
        if key not in self._hashes:
            gen = torch.Generator(device="cpu")
            name = f"{layer.module}/countsketch/{layer.n_out}x{layer.n_in}"
            gen.manual_seed(_block_seed(self.seed, _STREAM_FACTORED, zlib.crc32(name.encode())))
            size = layer.n_out * layer.n_in
            buckets = torch.randint(0, layer.width, (size,), generator=gen, dtype=torch.int64)
            signs = torch.randint(0, 2, (size,), generator=gen, dtype=torch.int8).to(torch.float32).mul_(2.0).sub_(1.0)
            self._hashes[key] = (buckets.to(device), signs.to(device))
        return self._hashes[key]

    def _layer_countsketch(
        self, layer: FactoredLayer, calls: list[_Call], n: int, pre: AdamPreconditioner | None = None
    ) -> torch.Tensor | None:
        """Exact per-sample gradient ``G [A; 1]^T`` of the layer (one bmm), optionally
        Adam-preconditioned, count-sketched to (B, width)."""
        module = self._module_of[layer.module]
        grad: torch.Tensor | None = None
        for c in calls:
            if c.grad is None:
                continue
            g = c.grad
            x = c.x.to(g.dtype)
            if layer.kind == "linear":
                gt = g.reshape(n, -1, layer.n_out).transpose(1, 2)  # (B, n_out, L)
                a = x.reshape(n, -1, x.shape[-1])  # (B, L, n_in)
            else:
                gt = g.reshape(n, layer.n_out, -1)
                a = self._unfold(module, x).transpose(1, 2)  # (B, L, K)
            w = torch.bmm(gt, a)  # (B, n_out, K)
            if layer.has_bias:
                w = torch.cat([w, gt.sum(2, keepdim=True)], dim=2)
            grad = w if grad is None else grad + w
        if pre is not None:
            if grad is None:  # Adam maps a zero gradient to a non-zero update
                dtype = next((c.x.dtype for c in calls), module.weight.dtype)
                grad = torch.zeros((n, layer.n_out, layer.n_in), dtype=dtype, device=self.device)
            grad = self._precondition_layer(layer, grad, pre)
        if grad is None:
            return None
        buckets, signs = self._hash(layer, grad.device)
        out = torch.zeros((n, layer.width), dtype=grad.dtype, device=grad.device)
        return out.index_add_(1, buckets, grad.reshape(n, -1).mul_(signs.to(grad.dtype)))

    def _precondition_layer(self, layer: FactoredLayer, grad: torch.Tensor, pre: AdamPreconditioner) -> torch.Tensor:
        """Apply ``pre`` to a layer's exact per-sample gradient (B, n_out, n_in), bias as last column."""
        n = grad.shape[0]
        shape = self._module_of[layer.module].weight.shape
        w_name = layer.param_names[0]
        parts = {w_name: grad[:, :, : layer.n_in - layer.has_bias].reshape(n, *shape)}
        if layer.has_bias:
            parts[layer.param_names[1]] = grad[:, :, -1]
        out = pre(parts)
        w = out[w_name].reshape(n, layer.n_out, -1)
        if layer.has_bias:
            w = torch.cat([w, out[layer.param_names[1]].unsqueeze(2)], dim=2)
        return w.to(grad.dtype)

    def _small_features(
        self, calls: Mapping[str, list[_Call]], n: int, dtype: torch.dtype, pre: AdamPreconditioner | None = None
    ) -> torch.Tensor:
        """Exact (optionally Adam-preconditioned) per-sample gradients of the small group, (B, n_small)."""
        assert self.small is not None
        cols: dict[str, torch.Tensor] = {}
        for name, kind, names, ch in self.small.entries:
            module = self._module_of[name]
            gw = torch.zeros((n, ch), dtype=dtype, device=self.device)
            gb = torch.zeros((n, ch), dtype=dtype, device=self.device)
            for c in calls[name]:
                if c.grad is None:
                    continue
                if isinstance(module, nn.Linear):
                    gb += c.grad.reshape(n, -1, ch).to(dtype).sum(1)
                    continue
                g = c.grad.reshape(n, ch, -1).to(dtype)
                g_sum = g.sum(2)
                gb += g_sum
                if kind == "batchnorm":
                    # sum_p g_p (x_p - mean) / sqrt(var + eps), without forming xhat
                    gx = torch.linalg.vecdot(g, c.x.reshape(n, ch, -1).to(dtype))
                    inv = torch.rsqrt(module.running_var.to(dtype) + module.eps)
                    gw += (gx - g_sum * module.running_mean.to(dtype)) * inv
            for pname in names:
                cols[pname] = gb if pname.rsplit(".", 1)[-1] == "bias" else gw
        if pre is not None:
            cols = {k: v.to(dtype) for k, v in pre(cols).items()}
        return torch.cat(list(cols.values()), dim=1)

    def _project(
        self, n: int, calls: Mapping[str, list[_Call]], preconditioner: AdamPreconditioner | None = None
    ) -> torch.Tensor:
        """Features of a captured batch, shape (B, dim), in the gradients' dtype."""
        if preconditioner is not None and self.kind != "countsketch":
            raise TarotInputError(_ADAM_MESSAGE)
        dtype = next((c.grad.dtype for cs in calls.values() for c in cs if c.grad is not None), torch.float32)
        out = torch.zeros((n, self.dim), dtype=dtype, device=self.device)
        with torch.no_grad():
            for layer in self.layers:
                if self.kind == "countsketch":
                    f = self._layer_countsketch(layer, calls[layer.module], n, preconditioner)
                else:
                    f = self._layer_features(layer, calls[layer.module], n)
                if f is not None:
                    out[:, layer.offset : layer.offset + layer.width].add_(f, alpha=layer.scale)
            if self.small is not None:
                s = self._small_features(calls, n, dtype, preconditioner)
                if self._small_projector is not None:
                    s = self._small_projector.project(s).to(dtype)
                out[:, self.small.offset : self.small.offset + self.small.dim].add_(s)
        return out

    def project_batch(self, batch: Any, preconditioner: AdamPreconditioner | None = None) -> torch.Tensor:
        """Factored features of one batch at the model's current weights (no checkpoint weight).

        Parameters
        ----------
        batch : tensor, or tuple / list / dict of tensors
            Leading dimension ``B``; moved to the featurizer's device.
        preconditioner : AdamPreconditioner, optional
            Only with ``proj_kind="countsketch"`` (which forms exact layer gradients);
            applied to them before hashing.

        Returns
        -------
        torch.Tensor, shape (B, dim)
            In the dtype of the layer gradients (the model's, e.g. float32 or float64), on
            ``device``.
        """
        batch = to_device(batch, self.device)
        n, calls = self._capture(batch)
        return self._project(n, calls, preconditioner)

    def _features(self, batch: Any, ckpt: Checkpoint) -> np.ndarray:
        """Features of one batch at the currently loaded checkpoint, shape (B, dim), float32."""
        z = self.project_batch(batch, ckpt.preconditioner)
        if ckpt.weight != 1.0:
            z = z * math.sqrt(ckpt.weight)
        out = z.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(out).all():
            raise TarotInputError(
                f"non-finite gradient features at checkpoint {ckpt.label or '?'}: check the loss and data"
            )
        return out

    def _check_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:  # type: ignore[override]
        ckpts = GradientFeaturizer._check_checkpoints(checkpoints)
        if self.kind != "countsketch" and any(c.preconditioner is not None for c in ckpts):
            raise TarotInputError(_ADAM_MESSAGE)
        return ckpts

    def projector_metadata(self) -> dict[str, Any]:
        """Settings that fix the map (JSON-serialisable), the ``projector`` entry of sidecars."""
        return {
            "kind": f"factored-{self.kind}",
            "layout": self.layout,
            "factor_dim": list(self.factor_dim) if self.layout == "sum" and self.kind != "countsketch" else None,
            "in_dim": self.n_params,
            "dim": self.dim,
            "seed": self.seed,
            "scheme": _SCHEME,
            "layers": [
                {
                    "module": layer.module,
                    "params": list(layer.param_names),
                    "n_out": layer.n_out,
                    "n_in": layer.n_in,
                    "d_out": layer.d_out,
                    "d_in": layer.d_in,
                    "n_blocks": layer.n_blocks,
                    "offset": layer.offset,
                    "width": layer.width,
                }
                for layer in self.layers
            ],
            "small": None
            if self.small is None
            else {
                "params": list(self.small.param_names),
                "n": self.small.n_params,
                "dim": self.small.dim,
                "offset": self.small.offset,
            },
        }
