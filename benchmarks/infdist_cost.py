"""Selection cost of Influence Distillation against LESS and TAROT, from a finished pipeline run.

Every job of the workflow writes a Snakemake benchmark file (wall seconds, peak memory).
This script adds up, per method, the jobs that method needs beyond the shared proxy
training: its features (gradients of the whole pool, or of the landmarks only plus the
embeddings) and its selection job at one ratio, and puts the downstream metric beside it
(mean over the run's seeds, from the run records)::

    python benchmarks/infdist_cost.py RESULTS UNIT [--pool POOL] [--ratio 0.05] [--json out.json]

``UNIT`` is the table's unit (``digits``, ``instruct-bbh``); ``POOL`` the task block whose
candidate features it shares (default: the unit's name up to its first ``-`` when that
folder exists). What each method is charged:

=========  ==================================================================================
tarot      candidates' gradients (all checkpoints), targets' gradients, whitening, select
less       candidates' Adam-preconditioned gradients, targets' gradients, select
infdist    embeddings of every candidate (JVPs, no backward), landmarks' Adam-preconditioned
           gradients, targets' gradients, select (its select job also reads the WFD files,
           only to report the OT distance)
=========  ==================================================================================

Jobs that ran side by side on the same cores slowed each other down; the numbers are wall
times of one ``snakemake --cores N`` run, as it happened.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

#: Per method: (folder, benchmark file patterns) of the jobs it needs beyond the proxy.
FEATURE_JOBS: dict[str, list[tuple[str, str]]] = {
    "tarot": [
        ("pool", "dump_gradients_candidates.[0-9]*.tsv"),
        ("pool", "gather_features_candidates.tsv"),
        ("unit", "dump_gradients_targets.[0-9]*.tsv"),
        ("unit", "gather_features_targets.tsv"),
        ("unit", "whiten_wfd.tsv"),
    ],
    "less": [
        ("pool", "dump_gradients_candidates_adam.[0-9]*.tsv"),
        ("pool", "gather_features_candidates_adam.tsv"),
        ("unit", "dump_gradients_targets.[0-9]*.tsv"),
        ("unit", "gather_features_targets.tsv"),
    ],
    "infdist": [
        ("pool", "embed_candidates.tsv"),
        ("pool", "dump_gradients_landmarks_adam.[0-9]*.tsv"),
        ("pool", "gather_features_landmarks_adam.tsv"),
        ("unit", "dump_gradients_targets.[0-9]*.tsv"),
        ("unit", "gather_features_targets.tsv"),
    ],
}


def wall_seconds(path: Path) -> float:
    """The ``s`` column (wall seconds) of a Snakemake benchmark file (the mean if it repeats)."""
    with path.open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: empty benchmark file")
    return statistics.fmean(float(r["s"]) for r in rows)


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted((folder / "benchmarks").glob(pattern))


def method_cost(results: Path, unit: str, pool: str, method: str, ratio: float) -> dict[str, float]:
    """Seconds of the feature jobs and of the select job of ``method`` at ``ratio``."""
    folders = {"pool": results / pool, "unit": results / unit}
    features = 0.0
    for where, pattern in FEATURE_JOBS[method]:
        found = _files(folders[where], pattern)
        if not found and "[0-9]" in pattern:
            raise FileNotFoundError(f"no {pattern} under {folders[where]}/benchmarks: did the run include {method}?")
        features += sum(wall_seconds(p) for p in found)
    select = folders["unit"] / "benchmarks" / f"select_{method}.r{ratio:g}.tsv"
    if not select.exists():
        raise FileNotFoundError(f"{select} not found: is {ratio:g} one of the run's ratios, {method} one of its methods?")
    s = wall_seconds(select)
    return {"features_s": features, "select_s": s, "total_s": features + s}


def downstream(results: Path, unit: str, method: str, ratio: float) -> dict[str, float | str | int]:
    """Mean and spread of the primary metric over the seeds of ``method`` at ``ratio``."""
    folder = results / unit / "metrics" / f"{method}.r{ratio:g}"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
    if not records:
        raise FileNotFoundError(f"no run records under {folder}")
    metric = records[0]["metric"]
    spec = records[0].get("metric_spec", {})
    scale = float(spec.get("scale", 1.0))
    values = [float(r["metrics"][metric]) * scale for r in records]
    return {
        "metric": spec.get("label", metric),
        "unit": spec.get("unit", ""),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "seeds": len(values),
    }


def report(results: Path, unit: str, pool: str, ratio: float, methods: Iterable[str]) -> list[dict]:
    rows = []
    proxy = results / pool / "benchmarks" / "train_proxy.tsv"
    shared = wall_seconds(proxy) if proxy.exists() else float("nan")
    for method in methods:
        row = {"method": method, **method_cost(results, unit, pool, method, ratio)}
        row.update(downstream(results, unit, method, ratio))
        row["proxy_s"] = shared
        rows.append(row)
    return rows


def markdown(rows: list[dict], ratio: float) -> str:
    base = {r["method"]: r["total_s"] for r in rows}
    lines = [
        f"| method | features (s) | select at {100 * ratio:g} % (s) | total (s) | vs infdist | "
        f"{rows[0]['metric']} ({rows[0]['unit']}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = r["total_s"] / base["infdist"] if "infdist" in base else float("nan")
        lines.append(
            f"| {r['method']} | {r['features_s']:.1f} | {r['select_s']:.1f} | {r['total_s']:.1f} | "
            f"{speed:.2f}x | {r['mean']:.1f} ± {r['std']:.1f} (n={r['seeds']}) |"
        )
    lines.append(f"\nShared by all three: proxy training {rows[0]['proxy_s']:.1f} s (not counted above).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("unit")
    p.add_argument("--pool", help="task block whose candidate features the unit shares")
    p.add_argument("--ratio", type=float, default=0.05)
    p.add_argument("--methods", nargs="+", default=["infdist", "less", "tarot"])
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    pool = args.pool or args.unit
    if args.pool is None and not (args.results / pool / "benchmarks" / "train_proxy.tsv").exists():
        pool = args.unit.split("-")[0]
    try:
        rows = report(args.results, args.unit, pool, args.ratio, args.methods)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"infdist_cost: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows, args.ratio))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
