"""TAROT: targeted data selection by optimal transport.

Pipeline: per-sample gradient features (:mod:`~tarot_select.gradients`,
:mod:`~tarot_select.featurize`, projected by
:mod:`~tarot_select.project`) → whitening and unit normalisation
(:mod:`~tarot_select.whiten`) → whitened feature distance and OT
(:mod:`~tarot_select.distance`) → selection (:mod:`~tarot_select.select`,
:mod:`~tarot_select.baselines`, :mod:`~tarot_select.infdist`, one entry point :func:`select`) → weights
(:mod:`~tarot_select.weight`).

The package imports lazily (PEP 562): ``import tarot_select`` costs no torch import, so
the Snakemake process can use :mod:`tarot_select.experiments.naming` without it; the
names below load their module on first use.

Layers: this package is the method library. :mod:`tarot_select.tasks` builds on it, and
:mod:`tarot_select.experiments` (the workflow's stages and reports) on both; the library
never imports either.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

#: Public name -> module of the library that defines it.
_EXPORTS: dict[str, str] = {
    "METHODS": "api",
    "select": "api",
    "OTResult": "distance",
    "ot_distance": "distance",
    "pairwise_wfd": "distance",
    "TarotInputError": "errors",
    "Checkpoint": "featurize",
    "GradientFeaturizer": "featurize",
    "AdamPreconditioner": "gradients",
    "per_sample_gradients": "gradients",
    "InfdistOptions": "infdist",
    "Propagation": "infdist",
    "choose_landmarks": "infdist",
    "influence_distillation": "infdist",
    "landmark_influence": "infdist",
    "median_bandwidth": "infdist",
    "propagate": "infdist",
    "rbf_kernel": "infdist",
    "round_robin": "infdist",
    "FeatureSet": "io",
    "load_features": "io",
    "save_features": "io",
    "Neighbors": "knn",
    "nearest_neighbors": "knn",
    "CountSketchProjector": "project",
    "DenseProjector": "project",
    "IdentityProjector": "project",
    "make_projector": "project",
    "Selection": "result",
    "select_fixed_size": "select",
    "select_otm": "select",
    "apportion": "weight",
    "optimal_weights": "weight",
    "potential_counts": "weight",
    "Whitener": "whiten",
    "WhiteningStats": "whiten",
    "whiten": "whiten",
}

__all__ = [
    "METHODS",
    "AdamPreconditioner",
    "Checkpoint",
    "CountSketchProjector",
    "DenseProjector",
    "FeatureSet",
    "GradientFeaturizer",
    "IdentityProjector",
    "InfdistOptions",
    "Neighbors",
    "OTResult",
    "Propagation",
    "Selection",
    "TarotInputError",
    "Whitener",
    "WhiteningStats",
    "__version__",
    "apportion",
    "choose_landmarks",
    "influence_distillation",
    "landmark_influence",
    "load_features",
    "make_projector",
    "median_bandwidth",
    "nearest_neighbors",
    "optimal_weights",
    "ot_distance",
    "pairwise_wfd",
    "per_sample_gradients",
    "potential_counts",
    "propagate",
    "rbf_kernel",
    "round_robin",
    "save_features",
    "select",
    "select_fixed_size",
    "select_otm",
    "whiten",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """This package's module type: importing the submodule ``select`` (or ``whiten``) sets
    the package attribute of that name to the module; keep the exported function instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
