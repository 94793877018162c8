"""Per-sample loss gradients of a model, and LESS-style Adam preconditioning.

Loss protocol
-------------
``loss_fn(forward, sample) -> scalar tensor`` where ``sample`` is one sample as a batch of
size 1 (a tensor, or a tuple / list / dict of tensors, each with leading dimension 1) and
``forward(*args, **kwargs)`` calls the model with the parameters being differentiated, e.g.
``lambda fwd, s: F.cross_entropy(fwd(s[0]), s[1])``.

Two paths compute the same thing: ``vmap`` (``torch.func.vmap`` over ``torch.func.grad``
of a functional call, fast) and ``loop`` (one autograd backward per sample: the
reference, and the fallback for models that vmap cannot trace).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import torch
from torch import nn

from .errors import TarotInputError

__all__ = [
    "AdamPreconditioner",
    "LossFn",
    "flatten_gradients",
    "per_sample_gradients",
    "select_parameters",
]

logger = logging.getLogger(__name__)

#: ``loss_fn(forward, sample) -> scalar tensor`` (see the module docstring).
LossFn = Callable[[Callable[..., Any], Any], torch.Tensor]

GRADIENT_MODES: Final[tuple[str, ...]] = ("vmap", "loop")


# --------------------------------------------------------------------------- pytrees


def _flatten(tree: Any) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """Flatten a tensor / tuple / list / dict tree into leaves and a function that rebuilds it."""
    if isinstance(tree, Mapping):
        keys = list(tree.keys())
        subs = [_flatten(tree[k]) for k in keys]
        sizes = [len(s[0]) for s in subs]

        def rebuild_map(leaves: list[Any]) -> Any:
            out, pos = {}, 0
            for k, (_, rb), n in zip(keys, subs, sizes, strict=True):
                out[k] = rb(leaves[pos : pos + n])
                pos += n
            return out

        return [leaf for s in subs for leaf in s[0]], rebuild_map
    if isinstance(tree, (tuple, list)):
        subs = [_flatten(v) for v in tree]
        sizes = [len(s[0]) for s in subs]
        is_namedtuple = isinstance(tree, tuple) and hasattr(tree, "_fields")
        kind = type(tree)

        def rebuild_seq(leaves: list[Any]) -> Any:
            items, pos = [], 0
            for (_, rb), n in zip(subs, sizes, strict=True):
                items.append(rb(leaves[pos : pos + n]))
                pos += n
            if is_namedtuple:
                return kind(*items)
            return list(items) if isinstance(tree, list) else tuple(items)

        return [leaf for s in subs for leaf in s[0]], rebuild_seq
    return [tree], lambda leaves: leaves[0]


def _batch_size(leaves: list[Any]) -> int:
    """Leading dimension shared by all tensor leaves of a batch."""
    sizes = {leaf.shape[0] for leaf in leaves if isinstance(leaf, torch.Tensor) and leaf.ndim > 0}
    if any(isinstance(leaf, torch.Tensor) and leaf.ndim == 0 for leaf in leaves):
        raise TarotInputError("batch tensors need a leading batch dimension; got a 0-d tensor")
    if not sizes:
        raise TarotInputError("batch contains no tensors")
    if len(sizes) != 1:
        raise TarotInputError(f"batch tensors disagree on the leading (batch) dimension: {sorted(sizes)}")
    (size,) = sizes
    if size == 0:
        raise TarotInputError("empty batch (leading dimension 0)")
    return int(size)


def to_device(tree: Any, device: torch.device) -> Any:
    leaves, rebuild = _flatten(tree)
    return rebuild([x.to(device) if isinstance(x, torch.Tensor) else x for x in leaves])


# --------------------------------------------------------------------------- gradients


def select_parameters(model: nn.Module, include: Sequence[str] | str | None = None) -> list[str]:
    """Names of the trainable parameters that match any of the given patterns.

    Parameters
    ----------
    model : nn.Module
    include : sequence of str, optional
        :func:`fnmatch.fnmatchcase` patterns on parameter names (e.g. ``"fc.*"``,
        ``"*.lora_*"``). ``None`` selects every parameter with ``requires_grad``.

    Returns
    -------
    list of str
        Names in the order of ``model.named_parameters()``.

    Raises
    ------
    TarotInputError
        If nothing is selected.
    """
    if isinstance(include, str):
        include = [include]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if include is None:
        if not trainable:
            raise TarotInputError("model has no trainable parameters (requires_grad=True)")
        return trainable
    patterns = list(include)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TarotInputError(f"parameter patterns must be a non-empty list of strings, got {include!r}")
    chosen = [n for n in trainable if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not chosen:
        raise TarotInputError(f"no trainable parameter matches {patterns}; trainable names start with {trainable[:5]}")
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in chosen):
            logger.warning("parameter pattern %r matches no trainable parameter", pat)
    return chosen


def _selected(model: nn.Module, param_names: Sequence[str]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    missing = [n for n in param_names if n not in params]
    if missing:
        raise TarotInputError(f"model has no parameter(s) {missing[:5]}")
    if len(set(param_names)) != len(param_names):
        raise TarotInputError("param_names contains duplicates")
    if not param_names:
        raise TarotInputError("param_names is empty")
    return {n: params[n] for n in param_names}


def _scalar_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TarotInputError(f"loss_fn must return a tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise TarotInputError(f"loss_fn must return a scalar per sample, got shape {tuple(loss.shape)}")
    return loss.reshape(())


def per_sample_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    param_names: Sequence[str],
    mode: str = "vmap",
) -> dict[str, torch.Tensor]:
    """Gradient of each sample's loss with respect to the selected parameters.

    ``grads[name][i] = d loss_fn(forward, z_i) / d theta[name]`` where ``z_i`` is sample ``i``
    of ``batch`` as a batch of size 1; other parameters and buffers are held fixed.

    Parameters
    ----------
    model : nn.Module
        Should be in eval mode (dropout and batch-norm statistics would otherwise differ
        per sample, and ``vmap`` refuses random operations).
    loss_fn : callable
        ``loss_fn(forward, sample) -> scalar tensor``.
    batch : tensor, or tuple / list / dict of tensors
        Every tensor has the same leading dimension ``B``; non-tensor leaves are passed
        through unchanged to every sample.
    param_names : sequence of str
        Parameters to differentiate (see :func:`select_parameters`).
    mode : {"vmap", "loop"}
        ``"vmap"``: :func:`torch.func.vmap` over :func:`torch.func.grad` of a
        :func:`torch.func.functional_call`. ``"loop"``: one autograd backward per sample
        (reference path, and the fallback for models ``vmap`` cannot handle).

    Returns
    -------
    dict of str to torch.Tensor
        ``grads[name]`` has shape ``(B, *param.shape)``, detached, on the parameter's device.
    """
    if mode not in GRADIENT_MODES:
        raise TarotInputError(f"unknown gradient mode {mode!r}; allowed: {', '.join(GRADIENT_MODES)}")
    selected = _selected(model, param_names)
    leaves, rebuild = _flatten(batch)
    n = _batch_size(leaves)
    if model.training:
        logger.warning("model is in training mode; per-sample gradients are usually taken in eval mode")
    tensor_pos = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    def sample_from(tensors: Sequence[torch.Tensor]) -> Any:
        filled = list(leaves)
        for pos, t in zip(tensor_pos, tensors, strict=True):
            filled[pos] = t
        return rebuild(filled)

    if mode == "loop":
        return _loop_gradients(model, loss_fn, n, leaves, tensor_pos, sample_from, selected)
    return _vmap_gradients(model, loss_fn, leaves, tensor_pos, sample_from, selected)


def _loop_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    n: int,
    leaves: list[Any],
    tensor_pos: list[int],
    sample_from: Callable[[Sequence[torch.Tensor]], Any],
    selected: dict[str, nn.Parameter],
) -> dict[str, torch.Tensor]:
    names = list(selected)
    tensors = [selected[k] for k in names]
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in names}

    def forward(*args: Any, **kwargs: Any) -> Any:
        return model(*args, **kwargs)

    with torch.enable_grad():
        for i in range(n):
            sample = sample_from([leaves[p][i : i + 1] for p in tensor_pos])
            loss = _scalar_loss(loss_fn(forward, sample))
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for k, p, g in zip(names, tensors, grads, strict=True):
                rows[k].append(torch.zeros_like(p) if g is None else g.detach())
    return {k: torch.stack(v) for k, v in rows.items()}


def _vmap_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    leaves: list[Any],
    tensor_pos: list[int],
    sample_from: Callable[[Sequence[torch.Tensor]], Any],
    selected: dict[str, nn.Parameter],
) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    fixed: dict[str, torch.Tensor] = {name: p.detach() for name, p in model.named_parameters() if name not in selected}
    fixed.update({name: b.detach() for name, b in model.named_buffers()})
    theta = {name: p.detach() for name, p in selected.items()}

    def sample_loss(params: dict[str, torch.Tensor], tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        merged = {**fixed, **params}

        def forward(*args: Any, **kwargs: Any) -> Any:
            return functional_call(model, merged, args, kwargs)

        sample = sample_from([t.unsqueeze(0) for t in tensors])
        return _scalar_loss(loss_fn(forward, sample))

    batch_tensors = tuple(leaves[p] for p in tensor_pos)
    grads = vmap(grad(sample_loss), in_dims=(None, 0))(theta, batch_tensors)
    return {name: grads[name].detach() for name in selected}


def flatten_gradients(grads: Mapping[str, torch.Tensor], param_names: Sequence[str]) -> torch.Tensor:
    """Concatenate per-sample gradients into one row per sample.

    Parameters
    ----------
    grads : mapping of str to torch.Tensor
        ``grads[name]`` of shape ``(B, *param.shape)``.
    param_names : sequence of str
        Order of the blocks.

    Returns
    -------
    torch.Tensor, shape (B, P)
        ``P = sum(param.numel())`` over ``param_names``.
    """
    missing = [n for n in param_names if n not in grads]
    if missing:
        raise TarotInputError(f"gradients missing for parameter(s) {missing[:5]}")
    if not param_names:
        raise TarotInputError("param_names is empty")
    sizes = {grads[n].shape[0] for n in param_names}
    if len(sizes) != 1:
        raise TarotInputError(f"gradients disagree on the batch dimension: {sorted(sizes)}")
    (b,) = sizes
    return torch.cat([grads[n].reshape(b, -1) for n in param_names], dim=1)


# --------------------------------------------------------------------------- Adam


class AdamPreconditioner:
    """Adam-style transform of per-sample gradients, as in LESS.

    With the optimizer's first and second moments ``m``, ``v`` at a checkpoint, a
    per-sample gradient ``g`` becomes the Adam update direction it would produce::

        m' = beta1 * m + (1 - beta1) * g
        v' = beta2 * v + (1 - beta2) * g**2
        g_adam = m' / sqrt(v' + eps)

    as LESS defines it (its Eq. for the Adam update direction, and its released code:
    ``m / torch.sqrt(v + eps)``) -- not torch's optimizer step ``m' / (sqrt(v') + eps)``;
    the two differ only where ``v'`` is below about ``eps``. No bias correction is applied
    (as in LESS); it would only rescale ``m'`` and ``v'`` by per-step constants. ``amsgrad``'s ``max_exp_avg_sq``
    is not used.

    Parameters
    ----------
    exp_avg : mapping of str to torch.Tensor
        First moments ``m`` by parameter name.
    exp_avg_sq : mapping of str to torch.Tensor
        Second moments ``v`` by parameter name (same names and shapes).
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    """

    def __init__(
        self,
        exp_avg: Mapping[str, torch.Tensor],
        exp_avg_sq: Mapping[str, torch.Tensor],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if set(exp_avg) != set(exp_avg_sq):
            raise TarotInputError("exp_avg and exp_avg_sq must have the same parameter names")
        if not exp_avg:
            raise TarotInputError("Adam state is empty")
        for name in exp_avg:
            m, v = exp_avg[name], exp_avg_sq[name]
            if not isinstance(m, torch.Tensor) or not isinstance(v, torch.Tensor):
                raise TarotInputError(f"Adam moments for {name!r} must be tensors")
            if m.shape != v.shape:
                raise TarotInputError(
                    f"Adam moments for {name!r} differ in shape: {tuple(m.shape)} vs {tuple(v.shape)}"
                )
            if bool((v < 0).any()):
                raise TarotInputError(f"exp_avg_sq for {name!r} has negative entries")
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise TarotInputError(f"betas must be two numbers, got {betas!r}") from None
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise TarotInputError(f"betas must lie in [0, 1), got {betas!r}")
        if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps > 0):
            raise TarotInputError(f"eps must be a finite number > 0, got {eps!r}")
        self.betas = (b1, b2)
        self.eps = float(eps)
        self.exp_avg = {k: v.detach().to("cpu", torch.float32) for k, v in exp_avg.items()}
        self.exp_avg_sq = {k: v.detach().to("cpu", torch.float32) for k, v in exp_avg_sq.items()}
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_optimizer_state(
        cls,
        optimizer_state_dict: Mapping[str, Any],
        model: nn.Module,
        param_names: Sequence[str],
    ) -> AdamPreconditioner:
        """Build from a :class:`torch.optim.Adam` / ``AdamW`` ``state_dict()``.

        Parameter ids in the state dict are matched to names either through the
        ``param_names`` entries that recent PyTorch stores when the optimizer was built from
        ``model.named_parameters()``, or, failing that, by position: the ids of all param
        groups, in order, are taken to be ``[p for p in model.parameters() if p.requires_grad]``
        (or all of ``model.parameters()`` if the counts say so). Shapes are checked.

        Parameters
        ----------
        optimizer_state_dict : mapping
            ``{"state": {id: {"exp_avg", "exp_avg_sq", ...}}, "param_groups": [...]}``.
        model : nn.Module
            The model the optimizer was built for.
        param_names : sequence of str
            Parameters to keep (each must have Adam state).
        """
        if not isinstance(optimizer_state_dict, Mapping) or not {"state", "param_groups"} <= set(optimizer_state_dict):
            raise TarotInputError("optimizer state must be a torch.optim state_dict with 'state' and 'param_groups'")
        state = optimizer_state_dict["state"]
        groups = optimizer_state_dict["param_groups"]
        named = list(model.named_parameters())
        ids = [pid for g in groups for pid in g["params"]]
        group_of = {pid: g for g in groups for pid in g["params"]}
        if all("param_names" in g for g in groups):
            id_to_name = {pid: nm for g in groups for pid, nm in zip(g["params"], g["param_names"], strict=True)}
        else:
            trainable = [n for n, p in named if p.requires_grad]
            if len(ids) == len(trainable):
                order = trainable
            elif len(ids) == len(named):
                order = [n for n, _ in named]
            else:
                raise TarotInputError(
                    f"optimizer has {len(ids)} parameters but the model has "
                    f"{len(trainable)} trainable ({len(named)} total); build the optimizer over "
                    "model.parameters() or pass "
                    "exp_avg/exp_avg_sq to AdamPreconditioner directly"
                )
            id_to_name = dict(zip(ids, order, strict=True))
        name_to_id = {nm: pid for pid, nm in id_to_name.items()}
        shapes = {n: p.shape for n, p in named}
        exp_avg, exp_avg_sq = {}, {}
        betas: set[tuple[float, float]] = set()
        epss: set[float] = set()
        for name in param_names:
            if name not in name_to_id:
                raise TarotInputError(f"optimizer state has no entry for parameter {name!r}")
            pid = name_to_id[name]
            st = state.get(pid)
            if not st or "exp_avg" not in st or "exp_avg_sq" not in st:
                raise TarotInputError(f"optimizer state for {name!r} has no Adam moments (was step() called?)")
            if name in shapes and tuple(st["exp_avg"].shape) != tuple(shapes[name]):
                raise TarotInputError(
                    f"Adam state for {name!r} has shape {tuple(st['exp_avg'].shape)}, "
                    f"parameter has {tuple(shapes[name])}: optimizer and model parameter "
                    "orders differ"
                )
            exp_avg[name] = st["exp_avg"]
            exp_avg_sq[name] = st["exp_avg_sq"]
            group = group_of[pid]
            betas.add(tuple(float(b) for b in group.get("betas", (0.9, 0.999))))  # type: ignore[arg-type]
            epss.add(float(group.get("eps", 1e-8)))
        if len(betas) != 1 or len(epss) != 1:
            raise TarotInputError(f"selected parameters span param groups with different betas/eps: {betas}, {epss}")
        return cls(exp_avg, exp_avg_sq, betas=betas.pop(), eps=epss.pop())

    def _moments(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (name, device)
        if key not in self._on_device:
            self._on_device[key] = (self.exp_avg[name].to(device), self.exp_avg_sq[name].to(device))
        return self._on_device[key]

    def __call__(self, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Transform per-sample gradients ``grads[name]`` of shape ``(B, *param.shape)``.

        Returns float32 tensors of the same shapes.
        """
        b1, b2 = self.betas
        out: dict[str, torch.Tensor] = {}
        for name, g in grads.items():
            if name not in self.exp_avg:
                raise TarotInputError(f"Adam preconditioner has no state for parameter {name!r}")
            m, v = self._moments(name, g.device)
            if tuple(g.shape[1:]) != tuple(m.shape):
                raise TarotInputError(
                    f"gradient of {name!r} has per-sample shape {tuple(g.shape[1:])}, Adam state {tuple(m.shape)}"
                )
            g32 = g.to(torch.float32)
            m_new = b1 * m + (1.0 - b1) * g32
            v_new = b2 * v + (1.0 - b2) * g32.square()
            out[name] = m_new / (v_new + self.eps).sqrt()
        return out
