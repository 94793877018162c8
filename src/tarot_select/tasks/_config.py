"""Seeded model construction shared by the tasks (their settings live in :mod:`~.settings`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["seeded"]

T = TypeVar("T")


def seeded(factory: Callable[[], T], seed: int) -> T:
    """``factory()`` run under ``torch.manual_seed(seed)``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
