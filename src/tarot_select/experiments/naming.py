"""Names of the workflow's files and selections, torch-free.

The Snakemake process imports this module to name files and to build the rules' inputs;
it must stay free of torch and of the tasks' heavy modules, so that planning a run
(``snakemake -n``) costs no deep-learning import.
"""

from __future__ import annotations

__all__ = [
    "FEATURE_KEYS",
    "INFDIST_KEYS",
    "OUTPUT_KEYS",
    "REFERENCES",
    "parse_selection",
    "ratio_label",
    "ratio_token",
    "selection_draw",
    "selection_name",
]

#: Feature files a selection reads (keys of the select rule's input).
FEATURE_KEYS: tuple[str, ...] = (
    "candidates",
    "targets",
    "candidates_adam",
    "wfd_candidates",
    "wfd_targets",
    "wfd_neighbors",
)

#: Files Influence Distillation reads besides the targets: the JVP embeddings of every
#: candidate and the gradient features of the landmarks only (their indices in its sidecar).
INFDIST_KEYS: tuple[str, ...] = ("embeddings", "landmarks")

#: Features DsDm reads when the task has model outputs (TRAK's margin gradients).
OUTPUT_KEYS: tuple[str, ...] = ("candidates_output", "targets_output")

#: Reference "selections" that are not chosen by a method.
REFERENCES: tuple[str, ...] = ("full", "target_only")


def ratio_token(ratio: float) -> str:
    """``0.05`` -> ``"0.05"`` (shortest exact decimal form), for file names."""
    return f"{float(ratio):g}"


def selection_name(method: str, ratio: float | None = None, draw: int | None = None) -> str:
    """File stem of a selection: ``tarot.r0.05``, ``otm``, ``full``, ``target_only``; a random
    selection drawn for downstream seed ``draw`` is ``random-s<draw>.r0.05``."""
    stem = method if draw is None else f"{method}-s{int(draw)}"
    return stem if ratio is None else f"{stem}.r{ratio_token(ratio)}"


def parse_selection(name: str) -> tuple[str, float | None]:
    """``(method, ratio)`` of a selection name (inverse of :func:`selection_name` but for the draw)."""
    stem, ratio = name, None
    if ".r" in name:
        stem, _, token = name.partition(".r")
        ratio = float(token)
    return stem.split("-s")[0], ratio


def selection_draw(name: str) -> int | None:
    """The downstream seed a selection was drawn for (``random-s2.r0.1`` -> 2), or None."""
    stem = name.partition(".r")[0]
    return int(stem.split("-s")[1]) if "-s" in stem else None


def ratio_label(method: str, ratio: float | None) -> str:
    """Column label in tables: ``5%``, ``OTM``, ``full``, ``target``."""
    if method in ("otm", "otm_weighted"):
        return "OTM"
    if method == "full":
        return "full"
    if method == "target_only":
        return "target"
    return f"{100 * float(ratio):g}%"
