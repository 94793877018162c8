"""End-to-end benchmark: the default pipeline, fresh, with ``snakemake --cores N``.

Runs the workflow into an empty results directory (``benchmarks/out/pipeline`` unless
``--results``), then reads every rule's ``benchmark:`` file and prints the wall time per rule
(sum and count of its jobs, largest single job) and the total wall time of the run.

    python benchmarks/bench_pipeline.py [--cores 2] [--configfile config/config.yaml]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def rule_of(tsv: Path) -> str:
    """Rule name of a benchmark file: its stem up to the wildcard suffix."""
    stem = tsv.stem
    for rule in RULES:
        if stem == rule or stem.startswith(rule + "_"):
            return rule
    return stem


RULES = sorted(
    {
        m.group(1)
        for smk in (ROOT / "workflow" / "rules").glob("*.smk")
        for m in re.finditer(r"^rule (\w+):", smk.read_text(), re.MULTILINE)
    },
    key=len,
    reverse=True,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--configfile", default=None)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "out" / "pipeline"))
    p.add_argument("--quick", action="store_true", help="the test suite's tiny config instead of the default")
    args = p.parse_args()
    if args.quick and args.configfile is None:
        args.configfile = str(ROOT / "tests" / "data" / "tiny.yaml")
    results = Path(args.results)
    if results.exists():
        shutil.rmtree(results)
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--config", f"results={results}"]
    if args.configfile:
        cmd[3:3] = ["--configfile", args.configfile]
    print("machine:", machine())
    print("command:", " ".join(cmd))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    total = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stderr[-3000:])
        return res.returncode
    jobs = int(re.findall(r"(\d+) of \1 steps", res.stderr + res.stdout)[-1])
    per_rule: dict[str, list[float]] = defaultdict(list)
    for tsv in results.rglob("benchmarks/*.tsv"):
        with open(tsv) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        per_rule[rule_of(tsv)].append(float(row["s"]))
    print(f"\n{'rule':<24}{'jobs':>6}{'sum s':>10}{'max s':>9}")
    for rule, secs in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:<24}{len(secs):>6}{sum(secs):>10.1f}{max(secs):>9.1f}")
    busy = sum(sum(v) for v in per_rule.values())
    print(
        f"\n{jobs} jobs, wall time {total:.0f} s ({total / 60:.1f} min) with --cores {args.cores}; "
        f"job time summed over jobs {busy:.0f} s (local rules without benchmark files excluded)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
