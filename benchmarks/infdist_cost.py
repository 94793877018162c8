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

Two times per job: its wall time (the benchmark file: Python and torch start-up included, about
5-10 s a job here, which dominates small runs) and the time inside the job's stage (its log's
``stage done in`` line: reading inputs, computing, writing outputs). Jobs that ran side by side
on the same cores slowed each other down; both are times of one ``snakemake --cores N`` run, as
it happened.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
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


_STAGE_DONE = re.compile(r"stage done in ([0-9.]+) s")


def stage_seconds(benchmark: Path) -> float:
    """Seconds inside the job's stage, from the ``stage done in`` line of the job's log (the
    log beside the benchmark file: ``logs/<same name>.log``)."""
    log = benchmark.parent.parent / "logs" / f"{benchmark.stem}.log"
    found = _STAGE_DONE.findall(log.read_text()) if log.exists() else []
    if not found:
        raise ValueError(f"{log}: no 'stage done in' line (the job's log is missing or the job did not finish)")
    return float(found[-1])


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted((folder / "benchmarks").glob(pattern))


def method_cost(results: Path, unit: str, pool: str, method: str, ratio: float) -> dict[str, float]:
    """Seconds (wall, and inside the stage) of the feature jobs and of the select job of ``method`` at ``ratio``."""
    folders = {"pool": results / pool, "unit": results / unit}
    jobs: list[Path] = []
    for where, pattern in FEATURE_JOBS[method]:
        found = _files(folders[where], pattern)
        if not found:
            raise FileNotFoundError(f"no {pattern} under {folders[where]}/benchmarks: did the run include {method}?")
        jobs += found
    select = folders["unit"] / "benchmarks" / f"select_{method}.r{ratio:g}.tsv"
    if not select.exists():
        raise FileNotFoundError(
            f"{select} not found: is {ratio:g} one of the run's ratios, {method} one of its methods?"
        )
    out = {
        "features_s": sum(wall_seconds(p) for p in jobs),
        "features_stage_s": sum(stage_seconds(p) for p in jobs),
        "select_s": wall_seconds(select),
        "select_stage_s": stage_seconds(select),
        "jobs": len(jobs) + 1,
    }
    out["total_s"] = out["features_s"] + out["select_s"]
    out["total_stage_s"] = out["features_stage_s"] + out["select_stage_s"]
    return out


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
    """The rows as a Markdown table: seconds as ``wall (in stage)``, and each total over infdist's."""
    base = {r["method"]: r for r in rows}
    lines = [
        (
            f"| method | jobs | features (s) | select at {100 * ratio:g} % (s) | total (s) | total / infdist's | "
            f"{rows[0]['metric']} ({rows[0]['unit']}) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio_wall = ratio_stage = float("nan")
        if "infdist" in base:
            ratio_wall = r["total_s"] / base["infdist"]["total_s"]
            ratio_stage = r["total_stage_s"] / base["infdist"]["total_stage_s"]
        lines.append(
            f"| {r['method']} | {r['jobs']} | {r['features_s']:.1f} ({r['features_stage_s']:.1f}) | "
            f"{r['select_s']:.1f} ({r['select_stage_s']:.1f}) | {r['total_s']:.1f} ({r['total_stage_s']:.1f}) | "
            f"{ratio_wall:.2f}x ({ratio_stage:.2f}x) | {r['mean']:.1f} ± {r['std']:.1f} (n={r['seeds']}) |"
        )
    lines.append(
        "\nSeconds: wall time of the jobs (in parentheses: inside their stages, without start-up). "
        f"Shared by all three and not counted: proxy training, {rows[0]['proxy_s']:.1f} s."
    )
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
