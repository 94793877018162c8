"""Exceptions raised for bad input.

Every check on user input raises :class:`TarotInputError` (a ``ValueError``) with
one line that names the problem, so that the CLI and the workflow can report it
without a traceback and before any expensive work starts.
"""

from __future__ import annotations


class TarotInputError(ValueError):
    """Bad user input: wrong shapes, non-finite values, impossible budgets, unknown names."""
