r"""Cheap sample embeddings by Jacobian-vector products (Influence Distillation's embeddings).

For a model whose first blocks are :math:`b_1, \dots, b_L` (module names in forward order) and
a sample :math:`z`, let :math:`h(\theta; z)` be the output of block :math:`b_n` (``n =
n_blocks``) and :math:`\theta_{\le n}` the trainable parameters inside :math:`b_1 \dots b_n`.
With ``T`` seeded tangent directions :math:`v_t \sim \mathcal N(0, I)` over
:math:`\theta_{\le n}` (zero on every other parameter), the embedding of :math:`z` is::

    e_t(z) = r( J_theta h(theta; z) v_t )                 (B, k) per batch: the JVP, reduced
    e(z)   = P [e_1(z), ..., e_T(z)]                      (T k) -> dim numbers

with ``r`` a per-sample *linear* reduction of the block output (default: flatten; a task can
select a token or pool a feature map) and ``P`` a random projection
(:func:`~tarot_select.project.make_projector`), or the identity when ``T k <= dim``.

Why it is cheap: the JVP is computed by forward-mode automatic differentiation
(:mod:`torch.autograd.forward_ad`): one forward pass per tangent, with dual numbers, through
the first ``n`` blocks only (a forward hook on block :math:`b_n` stops the pass there). No
gradient is ever computed: about ``T`` forward passes through ``n`` blocks per batch, against
a per-sample backward pass through the whole model for gradient features. Forward AD with
one parameter tangent shared by the batch is naturally per sample (in eval mode a sample's
output depends on that sample only), so a batch of ``B`` samples costs ``T`` batched
forwards.

The reduction is applied to the *tangent* of the block output: that equals the JVP of the
reduced output only because ``r`` is linear (token selection, masking by data, pooling by
averaging and flattening are; a max-pool or a norm is not).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from .errors import TarotInputError
from .featurize import check_model_and_loss
from .gradients import LossFn, _batch_size, _flatten, to_device
from .project import PROJECTOR_KINDS, Projector, make_projector

__all__ = ["JVPEmbedder", "pool_feature_maps"]

logger = logging.getLogger(__name__)

#: Reduction of a block output's tangent ``(B, ...)`` to ``(B, k)`` rows; must be linear.
Reduce = Callable[[torch.Tensor, Any], torch.Tensor]

# Stream tag that keeps the tangent generators apart from any other use of the seed.
_STREAM_TANGENT: Final[int] = 0x4A5650


class _StopForward(BaseException):
    """Raised by the hook on the last used block to end the forward pass there.

    A ``BaseException`` so that ``except Exception`` handlers in model or loss code do not
    swallow it."""


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TarotInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _first_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor of a block output: itself, or the first of a tuple / list / mapping
    (e.g. a ``transformers`` ``ModelOutput``), depth first."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def flatten_rows(output: torch.Tensor, batch: Any = None) -> torch.Tensor:
    """The default reduction: ``output.flatten(start_dim=1)``, shape ``(B, prod(output.shape[1:]))``."""
    return output.flatten(start_dim=1)


def pool_feature_maps(output: torch.Tensor, max_side: int = 8) -> torch.Tensor:
    """Average-pool feature maps ``(B, C, H, W)`` to at most ``max_side`` x ``max_side``, then flatten.

    ``F.adaptive_avg_pool2d`` to ``(min(H, max_side), min(W, max_side))``: every output cell
    is a mean of input cells, so the map is linear (a valid :class:`JVPEmbedder` reduction).
    Other shapes are flattened unchanged.

    Returns
    -------
    torch.Tensor, shape (B, C * min(H, max_side) * min(W, max_side))
    """
    if output.ndim == 4:
        h, w = int(output.shape[-2]), int(output.shape[-1])
        if h > max_side or w > max_side:
            output = F.adaptive_avg_pool2d(output, (min(h, max_side), min(w, max_side)))
    return output.flatten(start_dim=1)


def _progress_total(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None


class JVPEmbedder:
    r"""Jacobian-vector-product embeddings of samples at the output of a model's first blocks.

    ``e(z) = P [r(J h(z) v_1), ..., r(J h(z) v_T)]`` (see the module docstring): ``h`` the
    output of block ``blocks[n_blocks - 1]``, ``v_t`` seeded standard-normal tangents over the
    trainable parameters inside ``blocks[:n_blocks]``, ``r`` the linear per-sample reduction
    ``reduce`` and ``P`` a ``proj_kind`` projection to ``dim``, or none (the identity, and
    ``out_dim = T k``) when ``T k <= dim`` or ``proj_kind="none"``. Computed by forward-mode
    AD, about ``n_tangents`` forward passes through ``n_blocks`` blocks per batch and no
    backward pass.

    Parameters
    ----------
    model : nn.Module
        Moved to ``device``; put in eval mode during :meth:`embed` and returned to its mode
        afterwards. Its weights are never changed (the tangents enter through
        :func:`torch.func.functional_call`).
    loss_fn : callable
        ``loss_fn(forward, batch)`` of :mod:`tarot_select.gradients`; only used to run the
        model on a batch the task's way (its value is never reached: the pass stops at the
        last used block).
    blocks : sequence of str
        Module names (``model.get_submodule(name)``) of the model's blocks in forward order
        (a task's :meth:`~tarot_select.tasks.base.Task.embedding_blocks`).
    n_blocks : int, default 4
        How many of ``blocks`` the embedding uses (<= ``len(blocks)``).
    n_tangents : int, default 2
        Number ``T`` of random tangent directions.
    dim : int, default 4096
        Projection dimension (when ``T k`` exceeds it).
    seed : int, default 0
        Seeds the tangents and the projection.
    reduce : callable, optional
        ``reduce(output_tangent, batch) -> (B, k)`` tensor, linear in ``output_tangent`` (the
        tangent of the block output's first tensor, shape ``(B, ...)``); ``batch`` is the
        batch on ``device``. Default: flatten.
    proj_kind : str, default "rademacher"
        One of :data:`~tarot_select.project.PROJECTOR_KINDS`.
    device : str or torch.device, default "cpu"

    Raises
    ------
    TarotInputError
        On a bad argument, an unknown block name, a used block with no trainable
        parameter, or ``n_blocks > len(blocks)``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        blocks: Sequence[str],
        *,
        n_blocks: int = 4,
        n_tangents: int = 2,
        dim: int = 4096,
        seed: int = 0,
        reduce: Reduce | None = None,
        proj_kind: str = "rademacher",
        device: str | torch.device = "cpu",
    ) -> None:
        check_model_and_loss(model, loss_fn)
        self.n_blocks = _check_positive_int("n_blocks", n_blocks)
        self.n_tangents = _check_positive_int("n_tangents", n_tangents)
        self.dim = _check_positive_int("dim", dim)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise TarotInputError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        if reduce is not None and not callable(reduce):
            raise TarotInputError("reduce must be callable: reduce(output_tangent, batch) -> (B, k) tensor")
        if proj_kind not in PROJECTOR_KINDS:
            raise TarotInputError(f"unknown projector kind {proj_kind!r}; allowed: {', '.join(PROJECTOR_KINDS)}")
        self.proj_kind = proj_kind
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise TarotInputError(f"bad device {device!r}: {exc}") from None
        if isinstance(blocks, str) or not isinstance(blocks, Sequence):
            raise TarotInputError(f"blocks must be a list of module names, got {type(blocks).__name__}")
        names = list(blocks)
        if not names or not all(isinstance(b, str) and b for b in names):
            raise TarotInputError(f"blocks must be a non-empty list of non-empty module names, got {blocks!r}")
        if len(set(names)) != len(names):
            raise TarotInputError(f"blocks contains duplicates: {names}")
        if self.n_blocks > len(names):
            raise TarotInputError(
                f"n_blocks={self.n_blocks} exceeds the model's {len(names)} blocks {names}; use n_blocks <= {len(names)}"
            )
        self.all_blocks = names
        self.blocks = names[: self.n_blocks]
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.reduce: Reduce = flatten_rows if reduce is None else reduce
        self.reduce_name = "flatten" if reduce is None else getattr(reduce, "__qualname__", type(reduce).__name__)
        modules = dict(model.named_modules())
        for name in self.blocks:
            if name not in modules:
                examples = [n for n in modules if n][:6]
                raise TarotInputError(
                    f"the model has no block (submodule) {name!r}; block names are names of model.named_modules(), "
                    f"e.g. {examples}"
                )
        self.last_block = modules[self.blocks[-1]]
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        for name in self.blocks:
            if not any(n.startswith(name + ".") for n, _ in trainable):
                raise TarotInputError(
                    f"block {name!r} has no trainable parameter (requires_grad=True); name blocks that hold weights"
                )
        prefixes = tuple(b + "." for b in self.blocks)
        self.param_names = [n for n, _ in trainable if n.startswith(prefixes)]
        self.n_params = int(sum(p.numel() for n, p in trainable if n.startswith(prefixes)))
        self._tangents: list[dict[str, torch.Tensor]] | None = None
        self._width: int | None = None
        self.projector: Projector | None = None
        logger.info(
            "JVP embeddings at %s (%d blocks): %d tangents over %d parameters in %d tensors",
            self.blocks[-1],
            self.n_blocks,
            self.n_tangents,
            self.n_params,
            len(self.param_names),
        )

    # ---------------------------------------------------------------- tangents

    def _tangent_seed(self, t: int) -> int:
        words = np.random.SeedSequence([_STREAM_TANGENT, self.seed, t]).generate_state(2, dtype=np.uint32)
        return (int(words[0]) << 32 | int(words[1])) & ((1 << 63) - 1)

    def tangents(self) -> list[dict[str, torch.Tensor]]:
        """The ``n_tangents`` tangent directions: ``{parameter name: tensor}`` per tangent.

        Tangent ``t`` draws ``N(0, 1)`` entries for the perturbed parameters in the order of
        ``model.named_parameters()`` from a CPU generator seeded by ``(seed, t)``, so it is the
        same on every device; tensors have the parameter's shape, dtype and device. They are
        drawn once and kept on the device (``n_tangents`` copies of the perturbed parameters'
        size). The dicts are new, the tensors shared with the embedder (do not modify them).
        """
        if self._tangents is None:
            params = dict(self.model.named_parameters())
            out = []
            for t in range(self.n_tangents):
                gen = torch.Generator(device="cpu").manual_seed(self._tangent_seed(t))
                out.append(
                    {
                        n: torch.randn(params[n].shape, generator=gen, dtype=torch.float32).to(
                            self.device, params[n].dtype
                        )
                        for n in self.param_names
                    }
                )
            self._tangents = out
        return [dict(v) for v in self._tangents]

    # ---------------------------------------------------------------- core

    @property
    def out_dim(self) -> int:
        """Embedding width: ``dim``, or ``n_tangents * k`` (no projection) when that is not larger
        or ``proj_kind="none"``.

        ``k``, the width of one reduced block output, is known once a batch has been embedded.
        """
        if self._width is None:
            raise TarotInputError("the embedding width is known after the first batch: call embed() first")
        return self.projector.dim if self.projector is not None else self.n_tangents * self._width

    def _block_tangent(self, batch: Any, tangent: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``J h v`` for one tangent ``v``: the tangent of the last used block's output, ``(B, ...)``."""
        captured: list[Any] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output)
            raise _StopForward

        params = dict(self.model.named_parameters())
        handle = self.last_block.register_forward_hook(hook)
        try:
            with torch.no_grad(), fwAD.dual_level():
                duals = {n: fwAD.make_dual(params[n].detach(), v) for n, v in tangent.items()}

                def forward(*args: Any, **kwargs: Any) -> Any:
                    return functional_call(self.model, duals, args, kwargs)

                try:
                    self.loss_fn(forward, batch)
                except _StopForward:
                    pass
                if not captured:
                    raise TarotInputError(
                        f"block {self.blocks[-1]!r} was never called by loss_fn(forward, batch): check the block "
                        "names (the task's embedding_blocks) and that loss_fn calls forward"
                    )
                out = _first_tensor(captured[0])
                if out is None:
                    raise TarotInputError(f"the output of block {self.blocks[-1]!r} holds no tensor")
                tan = fwAD.unpack_dual(out).tangent
                if tan is None:
                    logger.warning(
                        "the output of block %r does not depend on the perturbed parameters; its JVP is 0",
                        self.blocks[-1],
                    )
                    tan = torch.zeros_like(out)
                return tan.detach()
        finally:
            handle.remove()

    def _rows(self, batch: Any) -> torch.Tensor:
        """Embeddings of one batch (on the device), ``(B, out_dim)`` float32."""
        leaves, _ = _flatten(batch)
        b = _batch_size(leaves)
        parts = []
        for tangent in self.tangents():
            tan = self._block_tangent(batch, tangent)
            rows = self.reduce(tan, batch)
            if not isinstance(rows, torch.Tensor) or rows.ndim != 2 or rows.shape[0] != b:
                shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
                raise TarotInputError(
                    f"reduce ({self.reduce_name}) must return a (B, k) tensor with B={b} rows, got {shape}"
                )
            parts.append(rows.detach().to(torch.float32))
        z = torch.cat(parts, dim=1)
        width = int(parts[0].shape[1])
        if self._width is None:
            if width < 1:
                raise TarotInputError(f"reduce ({self.reduce_name}) returned rows of width 0")
            self._width = width
            in_dim = self.n_tangents * width
            if self.proj_kind == "none" or in_dim <= self.dim:
                self.projector = None
            else:
                self.projector = make_projector(self.proj_kind, in_dim, self.dim, self.seed)
            logger.info(
                "JVP embeddings: %d numbers per tangent, %d in all -> %s",
                width,
                in_dim,
                "no projection" if self.projector is None else f"{self.proj_kind} projection to {self.dim}",
            )
        elif any(int(p.shape[1]) != self._width for p in parts):
            raise TarotInputError(
                f"the reduced block output has {width} numbers per sample, earlier batches had {self._width}: "
                "reduce must give a fixed width (pool or select a fixed part of variable-size outputs)"
            )
        return z if self.projector is None else self.projector.project(z)

    def embed(
        self,
        batches: Iterable[Any] | Callable[[], Iterable[Any]],
        *,
        n_samples: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeddings of every sample of ``batches``, in order.

        Parameters
        ----------
        batches : iterable of batches, or callable returning one
            Each batch as ``loss_fn`` takes it (tensors with a leading batch dimension);
            moved to ``device`` (:func:`~tarot_select.gradients.to_device`).
        n_samples : int, optional
            Expected number of samples (checked).
        progress : bool, default False
            Show a tqdm bar.

        Returns
        -------
        np.ndarray, shape (n, out_dim), float32
        """
        if callable(batches) and not isinstance(batches, Iterable):
            batches = batches()
        if not isinstance(batches, Iterable):
            raise TarotInputError(f"batches must be an iterable of batches, got {type(batches).__name__}")
        if isinstance(getattr(batches, "sampler", None), torch.utils.data.RandomSampler):
            raise TarotInputError("the DataLoader shuffles (RandomSampler); rows would not match samples")
        if n_samples is not None and (
            isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1
        ):
            raise TarotInputError(f"n_samples must be a positive integer, got {n_samples!r}")
        model = self.model
        was_training = model.training
        parts: list[np.ndarray] = []
        n = 0
        try:
            model.eval()
            with tqdm(
                batches, total=_progress_total(batches), desc="JVP embeddings", unit="batch", disable=not progress
            ) as bar:
                for batch in bar:
                    rows = self._rows(to_device(batch, self.device)).cpu().numpy()
                    if not np.isfinite(rows).all():
                        raise TarotInputError(
                            f"non-finite JVP embeddings in the batch of samples {n}..{n + len(rows) - 1}: "
                            "check the model weights and data"
                        )
                    n += len(rows)
                    if n_samples is not None and n > n_samples:
                        raise TarotInputError(f"batches yield more than the expected {n_samples} samples")
                    parts.append(rows)
        finally:
            model.train(was_training)
        if not parts:
            raise TarotInputError("batches yielded no batch to embed")
        if n_samples is not None and n != n_samples:
            raise TarotInputError(f"batches yielded {n} samples, expected {n_samples}")
        return np.concatenate(parts, axis=0).astype(np.float32, copy=False)

    def metadata(self) -> dict[str, Any]:
        """Settings that fix the embeddings (JSON-serialisable); widths and projector are None
        before the first batch."""
        in_dim = None if self._width is None else self.n_tangents * self._width
        return {
            "kind": "jvp",
            "blocks": list(self.blocks),
            "last_block": self.blocks[-1],
            "n_blocks": self.n_blocks,
            "n_tangents": self.n_tangents,
            "tangents": "standard normal over the trainable parameters of the used blocks",
            "dim": self.dim,
            "width_per_tangent": self._width,
            "in_dim": in_dim,
            "out_dim": None if self._width is None else self.out_dim,
            "projected": None if self._width is None else self.projector is not None,
            "seed": self.seed,
            "proj_kind": self.proj_kind,
            "projector": None if self.projector is None else self.projector.metadata(),
            "n_params": self.n_params,
            "n_param_tensors": len(self.param_names),
            "reduce": self.reduce_name,
        }
