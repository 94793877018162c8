"""TAROT: targeted data selection by optimal transport.

Pipeline: per-sample gradient features (:mod:`~tarot_select.gradients`,
:mod:`~tarot_select.featurize`, projected by
:mod:`~tarot_select.project`) → whitening and unit normalisation
(:mod:`~tarot_select.whiten`) → whitened feature distance and OT
(:mod:`~tarot_select.distance`) → selection (:mod:`~tarot_select.select`,
:mod:`~tarot_select.baselines`, one entry point :func:`select`) → weights
(:mod:`~tarot_select.weight`).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import METHODS, select
from .distance import OTResult, ot_distance, pairwise_wfd
from .errors import TarotInputError
from .featurize import Checkpoint, GradientFeaturizer
from .gradients import AdamPreconditioner, per_sample_gradients
from .io import FeatureSet, load_features, save_features
from .knn import Neighbors, nearest_neighbors
from .project import CountSketchProjector, DenseProjector, IdentityProjector, make_projector
from .result import Selection
from .select import select_fixed_size, select_otm
from .weight import apportion, optimal_weights, potential_counts
from .whiten import Whitener, WhiteningStats, whiten

__all__ = [
    "AdamPreconditioner",
    "Checkpoint",
    "CountSketchProjector",
    "DenseProjector",
    "GradientFeaturizer",
    "IdentityProjector",
    "make_projector",
    "per_sample_gradients",
    "METHODS",
    "FeatureSet",
    "Neighbors",
    "OTResult",
    "Selection",
    "TarotInputError",
    "Whitener",
    "WhiteningStats",
    "__version__",
    "apportion",
    "load_features",
    "nearest_neighbors",
    "optimal_weights",
    "ot_distance",
    "pairwise_wfd",
    "potential_counts",
    "save_features",
    "select",
    "select_fixed_size",
    "select_otm",
    "whiten",
]
