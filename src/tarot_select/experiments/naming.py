"""Names of the workflow's files and selections, torch-free.

The Snakemake process imports this module to name files and to build the rules' inputs;
it must stay free of torch and of the tasks' heavy modules, so that planning a run
(``snakemake -n``) costs no deep-learning import.
"""

from __future__ import annotations

__all__ = [
    "FEATURE_KEYS",
    "REFERENCES",
    "parse_selection",
    "ratio_label",
    "ratio_token",
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

#: Reference "selections" that are not chosen by a method.
REFERENCES: tuple[str, ...] = ("full", "target_only")


def ratio_token(ratio: float) -> str:
    """``0.05`` -> ``"0.05"`` (shortest exact decimal form), for file names."""
    return f"{float(ratio):g}"


def selection_name(method: str, ratio: float | None = None) -> str:
    """File stem of a selection: ``tarot.r0.05``, ``otm``, ``full``, ``target_only``."""
    return method if ratio is None else f"{method}.r{ratio_token(ratio)}"


def parse_selection(name: str) -> tuple[str, float | None]:
    """Inverse of :func:`selection_name`."""
    if ".r" in name:
        method, _, ratio = name.partition(".r")
        return method, float(ratio)
    return name, None


def ratio_label(method: str, ratio: float | None) -> str:
    """Column label in tables: ``5%``, ``OTM``, ``full``, ``target``."""
    if method == "otm":
        return "OTM"
    if method == "full":
        return "full"
    if method == "target_only":
        return "target"
    return f"{100 * float(ratio):g}%"
