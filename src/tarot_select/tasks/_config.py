"""Config handling shared by the tasks: defaults merged with the user's block, typed checks
that name the task and the key, and seeded model construction."""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import torch

from ..errors import TarotInputError

__all__ = ["check_block", "check_int", "check_real", "merge_settings", "seeded"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def merge_settings(defaults: Mapping[str, Any], user: Mapping[str, Any], nested: Collection[str]) -> dict[str, Any]:
    """User values over ``defaults``; the blocks named in ``nested`` are merged key by key."""
    out = copy.deepcopy(dict(defaults))
    for key, value in user.items():
        if key in nested and isinstance(value, Mapping):
            out[key] = {**out[key], **dict(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_int(value: Any, name: str, minimum: int = 1, *, task: str) -> int:
    """``value`` as an int ``>= minimum``, or :class:`TarotInputError` naming ``task`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise TarotInputError(f"{task}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_real(
    value: Any, name: str, low: float, high: float = math.inf, low_open: bool = False, *, task: str
) -> float:
    """A finite real in ``[low, high)`` (``(low, high)`` with ``low_open``), or TarotInputError."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value < high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high})"
        raise TarotInputError(f"{task}: {name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_block(block: Any, name: str, known: Collection[str], *, task: str) -> Mapping[str, Any]:
    """``block`` must be a mapping; keys outside ``known`` are reported and ignored."""
    if not isinstance(block, Mapping):
        raise TarotInputError(f"{task}: {name} must be a mapping, got {block!r}")
    extra = sorted(set(block) - set(known))
    if extra:
        log.warning("%s: ignoring unknown %s keys %s", task, name, extra)
    return block


def seeded(factory: Callable[[], T], seed: int) -> T:
    """``factory()`` run under ``torch.manual_seed(seed)``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
