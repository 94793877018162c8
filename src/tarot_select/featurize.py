"""Per-sample gradient features of a model at one or more training checkpoints.

For a sample ``z`` and checkpoint ``t`` (weights ``theta_t``, weight ``w_t`` such as the
learning rate), the per-sample gradient ``g_t(z) = grad_theta loss(theta_t; z)`` over the
selected parameters is (optionally) Adam-preconditioned, flattened and randomly projected
to ``d`` numbers. The feature of ``z`` concatenates the checkpoint blocks::

    phi(z) = [sqrt(w_1) P g_1(z), ..., sqrt(w_T) P g_T(z)]        (d_total = T * d)

so that ``<phi(z), phi(z')> = sum_t w_t <P g_t(z), P g_t(z')>`` (the TracIn-style
trajectory inner product) and every per-checkpoint block can be read back: LESS and DsDm
score per checkpoint. Since one projection ``P`` serves every checkpoint,
:func:`combine_checkpoints` rebuilds from the stored blocks the feature TAROT whitens,
the paper's Eq. 4 (gradients summed over checkpoints, then projected)::

    sum:     phi(z) = sum_t P g_t(z)   = P sum_t g_t(z)
    lr_sum:  phi(z) = sum_t w_t P g_t(z)            (Eq. 2's learning-rate weighting)
    concat:  phi(z) = the stored blocks             (an ablation: after whitening, two thirds
                                                     of its dimensions are checkpoint-to-
                                                     checkpoint differences)

The loss protocol and the gradient computation live in :mod:`tarot_select.gradients`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .combine import COMBINE_MODES, combine_checkpoints
from .errors import TarotInputError
from .gradients import (
    GRADIENT_MODES,
    AdamPreconditioner,
    LossFn,
    flatten_gradients,
    per_sample_gradients,
    select_parameters,
    to_device,
)
from .io import FeatureSet, load_features, open_feature_writer
from .project import Projector, make_projector

__all__ = [
    "COMBINE_MODES",
    "AdamPreconditioner",
    "Checkpoint",
    "GradientFeaturizer",
    "LossFn",
    "combine_checkpoints",
    "load_partial_state",
]

logger = logging.getLogger(__name__)

_STORE_DTYPES: Final[tuple[str, ...]] = ("float32", "float16")
_COMBINE: Final[str] = "concat_sqrt_weight"


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """Model weights at one point of training, and how much that point counts.

    Attributes
    ----------
    state_dict : mapping of str to torch.Tensor, optional
        Weights to load with ``model.load_state_dict``.
    path : str, optional
        File holding such a state dict (``torch.load(weights_only=True)`` on CPU).
        Exactly one of ``state_dict`` and ``path`` is given.
    weight : float, default 1.0
        Finite, > 0; e.g. the learning rate at this checkpoint.
    name : str, default ""
        Label for logs and sidecars.
    preconditioner : AdamPreconditioner, optional
        Applied to per-sample gradients at this checkpoint.
    """

    state_dict: Mapping[str, torch.Tensor] | None = None
    path: str | os.PathLike[str] | None = None
    weight: float = 1.0
    name: str = ""
    preconditioner: AdamPreconditioner | None = None

    def __post_init__(self) -> None:
        if (self.state_dict is None) == (self.path is None):
            raise TarotInputError("a Checkpoint needs exactly one of state_dict and path")
        if self.state_dict is not None and not isinstance(self.state_dict, Mapping):
            raise TarotInputError(f"Checkpoint.state_dict must be a mapping, got {type(self.state_dict).__name__}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w <= 0:
            raise TarotInputError(f"Checkpoint weight must be a finite number > 0, got {w!r}")
        self.weight = float(w)
        if self.preconditioner is not None and not isinstance(self.preconditioner, AdamPreconditioner):
            raise TarotInputError("Checkpoint.preconditioner must be an AdamPreconditioner")

    @property
    def label(self) -> str:
        """``name``, else the file name, else ``""``."""
        if self.name:
            return self.name
        return Path(self.path).name if self.path is not None else ""

    def load(self) -> Mapping[str, torch.Tensor]:
        """The state dict (read from ``path`` on CPU if needed)."""
        if self.state_dict is not None:
            return self.state_dict
        p = Path(self.path)  # type: ignore[arg-type]
        if not p.is_file():
            raise TarotInputError(f"checkpoint file not found: {p}")
        if p.stat().st_size == 0:
            raise TarotInputError(f"{p}: checkpoint is empty (an interrupted write?); delete it and rerun")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
            detail = " ".join(str(exc).split()).split(". ")[0][:120]
            raise TarotInputError(
                f"{p}: checkpoint is truncated or damaged ({type(exc).__name__}: {detail}); delete it and rerun"
            ) from None
        if not isinstance(obj, Mapping):
            raise TarotInputError(f"checkpoint {p} holds a {type(obj).__name__}, expected a state dict")
        return obj


# --------------------------------------------------------------------------- featurizer


def _unalias(
    state: Mapping[str, Any], live: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor]
) -> Mapping[str, Any]:
    """Replace entries of ``state`` that share memory with the model by the saved originals.

    A checkpoint given as ``model.state_dict()`` aliases the model's own tensors, which
    loading an earlier checkpoint overwrites; its values are those at the start instead.
    """
    out = dict(state)
    for k, v in state.items():
        if (
            k in live
            and isinstance(v, torch.Tensor)
            and v.numel() > 0
            and v.device == live[k].device
            and v.untyped_storage().data_ptr() == live[k].untyped_storage().data_ptr()
        ):
            out[k] = original[k]
    return out


def _progress_total(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None


def load_partial_state(model: nn.Module, state: Mapping[str, torch.Tensor], label: str) -> None:
    """Load ``state`` into ``model``: the whole model, or part of it (e.g. LoRA adapters over the
    model's own weights; loaded with ``strict=False``) but only names the model has.

    Raises
    ------
    TarotInputError
        Naming ``label``, for a key the model does not have or a tensor that does not fit.
    """
    live = model.state_dict()
    unknown = [k for k in state if k not in live]
    if unknown:
        raise TarotInputError(f"cannot load {label} into the model: unexpected keys {unknown[:5]}")
    try:
        model.load_state_dict(state, strict=len(state) == len(live))
    except (RuntimeError, KeyError) as exc:
        raise TarotInputError(f"cannot load {label} into the model: {exc}") from None


def check_model_and_loss(model: Any, loss_fn: Any) -> None:
    """Raise :class:`TarotInputError` unless ``model`` is a module and ``loss_fn`` is callable."""
    if not isinstance(model, nn.Module):
        raise TarotInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TarotInputError("loss_fn must be callable: loss_fn(forward, sample) -> scalar tensor")


class GradientFeaturizer:
    """Projected per-sample gradient features over a training trajectory.

    ``phi(z) = [sqrt(w_1) P g_1(z), ..., sqrt(w_T) P g_T(z)]`` with ``g_t`` the (optionally
    Adam-preconditioned) gradient of ``loss_fn`` at checkpoint ``t`` over the selected
    parameters and ``P`` one projector shared by all checkpoints, so that
    ``<phi(z), phi(z')> = sum_t w_t <P g_t(z), P g_t(z')>``.

    Parameters
    ----------
    model : nn.Module
        Moved to ``device``. Its weights are replaced by each checkpoint in turn during
        :meth:`featurize` and restored afterwards (as is its train/eval mode).
    loss_fn : callable
        ``loss_fn(forward, sample) -> scalar tensor`` (see :mod:`tarot_select.gradients`).
    projector : Projector, optional
        Must have ``in_dim`` equal to the number of selected parameters. If omitted, one is
        built with :func:`~tarot_select.project.make_projector` from ``proj_kind``,
        ``proj_dim`` and ``seed``.
    proj_dim : int, optional
        Projection dimension ``d`` (not needed for ``proj_kind="none"``).
    proj_kind : str, default "rademacher"
    seed : int, default 0
    params : sequence of str, optional
        :func:`fnmatch` patterns of parameter names to differentiate (default: all trainable).
    mode : {"vmap", "loop"}, default "vmap"
    device : str or torch.device, default "cpu"
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        projector: Projector | None = None,
        *,
        proj_dim: int | None = None,
        proj_kind: str = "rademacher",
        seed: int = 0,
        params: Sequence[str] | None = None,
        mode: str = "vmap",
        device: str | torch.device = "cpu",
    ) -> None:
        check_model_and_loss(model, loss_fn)
        if mode not in GRADIENT_MODES:
            raise TarotInputError(f"unknown gradient mode {mode!r}; allowed: {', '.join(GRADIENT_MODES)}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise TarotInputError(f"bad device {device!r}: {exc}") from None
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.mode = mode
        self.patterns = None if params is None else ([params] if isinstance(params, str) else list(params))
        self.param_names = select_parameters(model, self.patterns)
        named = dict(model.named_parameters())
        self.n_params = int(sum(named[n].numel() for n in self.param_names))
        if projector is None:
            projector = make_projector(proj_kind, self.n_params, proj_dim, seed)
        else:
            if not isinstance(projector, Projector):
                raise TarotInputError(f"projector must be a Projector, got {type(projector).__name__}")
            if projector.in_dim != self.n_params:
                raise TarotInputError(
                    f"projector in_dim {projector.in_dim} != number of selected parameters {self.n_params}"
                )
            if proj_dim is not None and proj_dim != projector.dim:
                raise TarotInputError(f"proj_dim={proj_dim} disagrees with projector.dim={projector.dim}")
        self.projector = projector
        logger.info(
            "gradient features over %d tensors (%d parameters) -> %s dim %d",
            len(self.param_names),
            self.n_params,
            projector.kind,
            projector.dim,
        )

    @property
    def dim(self) -> int:
        """Feature dimension per checkpoint."""
        return self.projector.dim

    def output_dim(self, n_checkpoints: int) -> int:
        """Total feature dimension ``d * T``."""
        return self.dim * n_checkpoints

    # ---------------------------------------------------------------- core

    def _features(self, batch: Any, ckpt: Checkpoint) -> np.ndarray:
        """Features of one batch at the currently loaded checkpoint, shape (B, d)."""
        batch = to_device(batch, self.device)
        grads = per_sample_gradients(self.model, self.loss_fn, batch, self.param_names, self.mode)
        if ckpt.preconditioner is not None:
            grads = ckpt.preconditioner(grads)
        with torch.no_grad():
            flat = flatten_gradients(grads, self.param_names)
            del grads
            z = self.projector.project(flat)
            if ckpt.weight != 1.0:
                z = z * math.sqrt(ckpt.weight)
            out = z.cpu().numpy()
        if not np.isfinite(out).all():
            raise TarotInputError(
                f"non-finite gradient features at checkpoint {ckpt.label or '?'}: check the loss and data"
            )
        return out

    def _iterate(
        self,
        source: Callable[[], Iterable[Any]],
        checkpoints: Sequence[Checkpoint],
        n_expected: int | None,
        progress: bool,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(t, row_start, block)`` with block of shape (b, d) for checkpoint ``t``.

        Loads each checkpoint into the model, checks that every pass yields the same number
        of rows (and ``n_expected`` if given), and restores the model afterwards.
        """
        model = self.model
        was_training = model.training
        live = model.state_dict()
        # Only what the checkpoints overwrite is saved for the restore: a checkpoint that
        # holds a few adapter tensors of a 7 B model costs a copy of those, not of the model.
        original: dict[str, torch.Tensor] = {}
        n_rows = n_expected
        try:
            model.eval()
            for t, ckpt in enumerate(checkpoints):
                label = ckpt.label or f"checkpoint_{t}"
                state = ckpt.load()
                self._check_covers(state, live, label)
                for k in state:
                    if k not in original:
                        original[k] = live[k].detach().to("cpu", copy=True)
                state = _unalias(state, live, original)
                load_partial_state(model, state, label)
                del state
                batches = source()
                start = 0
                with tqdm(
                    batches,
                    total=_progress_total(batches),
                    desc=f"{label} ({t + 1}/{len(checkpoints)})",
                    unit="batch",
                    disable=not progress,
                ) as bar:
                    for batch in bar:
                        block = self._features(batch, ckpt)
                        if n_rows is not None and start + block.shape[0] > n_rows:
                            raise TarotInputError(f"{label}: batches yield more than the expected {n_rows} samples")
                        yield t, start, block
                        start += block.shape[0]
                if n_rows is None:
                    n_rows = start
                if start != n_rows:
                    raise TarotInputError(
                        f"{label}: batches yielded {start} samples, expected {n_rows} "
                        "(every checkpoint must see the same samples in the same order)"
                    )
                logger.debug("%s: %d samples", label, start)
        finally:
            model.load_state_dict(original, strict=False)
            model.train(was_training)

    def _check_covers(self, state: Mapping[str, Any], live: Mapping[str, torch.Tensor], label: str) -> None:
        """A checkpoint may hold part of the model (e.g. LoRA adapters, loaded over the
        model's own weights), but only names of the model and every differentiated parameter."""
        unknown = [k for k in state if k not in live]
        if unknown:
            raise TarotInputError(f"cannot load {label} into the model: unexpected keys {unknown[:5]}")
        missing = [n for n in self.param_names if n not in state]
        if missing:
            raise TarotInputError(
                f"{label} lacks differentiated parameters {missing[:5]}: a partial checkpoint must hold every "
                "parameter the features use (features.params)"
            )

    def _source(self, batches: Any, n_checkpoints: int) -> Callable[[], Iterable[Any]]:
        """A callable that returns a fresh iterable of batches for every checkpoint."""
        if callable(batches) and not isinstance(batches, Iterable):
            return batches
        if not isinstance(batches, Iterable):
            raise TarotInputError(f"batches must be an iterable of batches, got {type(batches).__name__}")
        if n_checkpoints > 1 and isinstance(batches, Iterator):
            raise TarotInputError(
                "batches is a one-shot iterator but there are several checkpoints; pass a list, a "
                "DataLoader or a callable that returns a fresh iterable"
            )
        sampler = getattr(batches, "sampler", None)
        if isinstance(sampler, torch.utils.data.RandomSampler):
            raise TarotInputError("the DataLoader shuffles (RandomSampler); rows would not match samples")
        return lambda: batches

    @staticmethod
    def _check_checkpoints(checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:
        if isinstance(checkpoints, Checkpoint):
            checkpoints = [checkpoints]
        ckpts = list(checkpoints)
        if not ckpts:
            raise TarotInputError("at least one checkpoint is needed")
        bad = [type(c).__name__ for c in ckpts if not isinstance(c, Checkpoint)]
        if bad:
            raise TarotInputError(f"checkpoints must be Checkpoint objects, got {bad[:3]}")
        return ckpts

    # ---------------------------------------------------------------- public

    def featurize(
        self,
        batches: Iterable[Any] | Callable[[], Iterable[Any]],
        checkpoints: Sequence[Checkpoint],
        *,
        n_samples: int | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Features of all samples, in memory.

        Parameters
        ----------
        batches : iterable of batches, or callable returning one
            Iterated once per checkpoint, so with several checkpoints it must be re-iterable
            (list, non-shuffling DataLoader) or a factory. Every pass must yield the same
            samples in the same order.
        checkpoints : sequence of Checkpoint
        n_samples : int, optional
            Expected number of samples (preallocates the output and is checked).
        progress : bool, default True
            Show a tqdm bar per checkpoint.

        Returns
        -------
        np.ndarray, shape (n, d * T), float32
            Block ``t`` (columns ``t*d : (t+1)*d``) is ``sqrt(w_t) P g_t(z)``.
        """
        ckpts = self._check_checkpoints(checkpoints)
        source = self._source(batches, len(ckpts))
        d = self.dim
        if n_samples is not None:
            if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples <= 0:
                raise TarotInputError(f"n_samples must be a positive integer, got {n_samples!r}")
            out = np.empty((n_samples, d * len(ckpts)), dtype=np.float32)
            with contextlib.closing(self._iterate(source, ckpts, n_samples, progress)) as blocks:
                for t, start, block in blocks:
                    out[start : start + block.shape[0], t * d : (t + 1) * d] = block
            return out
        parts: list[list[np.ndarray]] = [[] for _ in ckpts]
        with contextlib.closing(self._iterate(source, ckpts, None, progress)) as blocks:
            for t, _, block in blocks:
                parts[t].append(block)
        return np.concatenate([np.concatenate(p, axis=0) for p in parts], axis=1)

    def projector_metadata(self) -> dict[str, Any]:
        """Settings that fix the projection (JSON-serialisable), the ``projector`` entry of sidecars."""
        return self.projector.metadata()

    def metadata(self, checkpoints: Sequence[Checkpoint]) -> dict[str, Any]:
        """Sidecar description of features made with these checkpoints."""
        ckpts = self._check_checkpoints(checkpoints)
        return {
            "kind": "gradient",
            "projector": self.projector_metadata(),
            "param_patterns": self.patterns,
            "param_names": list(self.param_names),
            "n_params": self.n_params,
            "combine": _COMBINE,
            "checkpoints": [
                {
                    "name": c.label or f"checkpoint_{t}",
                    "weight": c.weight,
                    "dim": self.dim,
                    "path": None if c.path is None else str(c.path),
                    "preconditioner": None if c.preconditioner is None else "adam",
                }
                for t, c in enumerate(ckpts)
            ],
            "mode": self.mode,
        }

    def featurize_to_file(
        self,
        path: str | os.PathLike[str],
        batches_factory: Callable[[], Iterable[Any]],
        n_samples: int,
        checkpoints: Sequence[Checkpoint],
        dtype: str = "float32",
        extra_meta: Mapping[str, Any] | None = None,
        progress: bool = True,
    ) -> FeatureSet:
        """Stream features to ``path`` (``.npy``) with a JSON sidecar, atomically.

        Parameters
        ----------
        path : path-like
            Destination ``.npy``; its sidecar is ``path`` with suffix ``.json``.
        batches_factory : callable
            Returns a fresh iterable of batches; called once per checkpoint.
        n_samples : int
            Number of samples the batches yield (checked).
        checkpoints : sequence of Checkpoint
        dtype : {"float32", "float16"}, default "float32"
            Storage dtype; float16 overflow (|x| > 65504) raises.
        extra_meta : mapping, optional
            Extra sidecar entries (must not reuse the featurizer's keys).
        progress : bool, default True

        Returns
        -------
        FeatureSet
            The file memory-mapped read-only, shape (n_samples, d * T), and its sidecar.
        """
        if not callable(batches_factory):
            raise TarotInputError("batches_factory must be a callable that returns an iterable of batches")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples <= 0:
            raise TarotInputError(f"n_samples must be a positive integer, got {n_samples!r}")
        if dtype not in _STORE_DTYPES:
            raise TarotInputError(f"dtype must be one of {', '.join(_STORE_DTYPES)}, got {dtype!r}")
        ckpts = self._check_checkpoints(checkpoints)
        meta = self.metadata(ckpts)
        if extra_meta:
            clash = sorted(set(extra_meta) & (set(meta) | {"shape", "dtype", "versions"}))
            if clash:
                raise TarotInputError(f"extra_meta may not override {clash}")
            meta.update(extra_meta)
        try:
            json.dumps(meta, default=str)
        except (TypeError, ValueError) as exc:
            raise TarotInputError(f"extra_meta is not JSON-serialisable: {exc}") from None
        d = self.dim
        shape = (n_samples, d * len(ckpts))
        blocks = self._iterate(batches_factory, ckpts, n_samples, progress)
        with (
            contextlib.closing(blocks),
            open_feature_writer(path, shape, dtype=dtype, meta=meta) as mm,
        ):
            for t, start, block in blocks:
                stored = block.astype(dtype, copy=False)
                if dtype == "float16" and not np.isfinite(stored).all():
                    raise TarotInputError("features overflow float16 (|x| > 65504); use dtype='float32'")
                mm[start : start + block.shape[0], t * d : (t + 1) * d] = stored
        logger.info("wrote %s features of shape %s to %s", dtype, shape, path)
        return load_features(path, mmap=True)
