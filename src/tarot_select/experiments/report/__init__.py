"""Reporting: tables and figures of downstream results (the paper's tables, Figs. 5-7).

The input is a *tidy* table of downstream runs, one row per (method, ratio label, seed):

============  =============================================================
column        meaning
============  =============================================================
method        ``"random"``, ``"dsdm"``, ``"less"``, ``"infdist"``, ``"tarot"``, ``"tarot_weighted"``,
              ``"otm"``, ``"full"``, ``"target_only"`` (or any other name)
ratio         selected fraction of the pool in (0, 1]; OTM's chosen ratio for ``otm``,
              ``1.0`` for ``full``, NaN for ``target_only``
ratio_label   column key of the tables (``"5%"``, ``"10%"``, ``"OTM"``, ``"full"``, ...)
seed          integer seed of the run
metric        primary metric value (finite, as stored)
metric_<x>    optional extra metrics
============  =============================================================

and ``attrs["metric_spec"]``, the primary metric's spec ``{"name", "label", "unit",
"scale", "higher_is_better"}``: shown value = stored value × ``scale``, ``unit`` appended
to labels, ``higher_is_better`` choosing the best entry of a column.

Parts
-----
:mod:`~.runs`     :func:`collect_runs` builds the table (and its spec) from the per-run
                  JSON records of the evaluate rule, and checks it
:mod:`~.summary`  :func:`summary_long`, :func:`summary_table`: mean, sample standard
                  deviation (``ddof=1``; NaN for a single seed) and number of seeds per
                  cell, best flags, row and column order
:mod:`~.tables`   :func:`write_tables`: long CSV and Markdown table
:mod:`~.figures`  :func:`plot_metric_vs_ratio` and the shared figure helpers
:mod:`~.tsne`     :func:`plot_tsne`: t-SNE panels of the selections
:mod:`~.lds`      table and figure of the LDS benchmark

Every file is written atomically through :func:`tarot_select.io.atomic_path`.
"""

from __future__ import annotations

from .figures import plot_metric_vs_ratio, plot_task_metric_vs_ratio
from .runs import collect_runs
from .summary import DDOF, METHOD_ORDER, REFERENCE_METHODS, ordered_labels, ordered_methods, summary_long, summary_table
from .tables import format_markdown, write_pool_table, write_tables, write_task_tables
from .tsne import plot_tsne, plot_tsne_files

__all__ = [
    "DDOF",
    "METHOD_ORDER",
    "REFERENCE_METHODS",
    "collect_runs",
    "format_markdown",
    "ordered_labels",
    "ordered_methods",
    "plot_metric_vs_ratio",
    "plot_task_metric_vs_ratio",
    "plot_tsne",
    "plot_tsne_files",
    "summary_long",
    "summary_table",
    "write_tables",
    "write_pool_table",
    "write_task_tables",
]
