"""Damaged files inside a finished workflow: the next run must notice where it reads them.

A full disk, a killed copy or a stray editor leaves a job's output truncated, empty or
changed after the job wrote it. Each case takes a finished tiny run, damages one file
(a whitening-statistics ``.npz``, the neighbour lists, a proxy checkpoint, a selection
CSV, a feature ``.npy``, a JSON sidecar, a downstream model, the prepared data, an LDS
member), and reruns Snakemake with the same config; a job that reads it runs again (the
file's mtime is newer than the job's outputs, or ``--forcerun`` names the job where that
mtime is not tracked: files inside directory outputs, sidecars).

The right behaviour: Snakemake exits non-zero and the failing job printed one line
``error: <file>: ...`` naming the damaged file (no Python traceback in Snakemake's output
or in any job log); or the workflow regenerates the file and finishes. Wrong: a
traceback, or exit 0 with the damaged file still in place (a job trained or selected on
what was left of it).

The tiny run is made once per process (about a minute) and copied for every case.
"""

from __future__ import annotations

import atexit
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from probe import ROOT, Case, Ran, Verdict, run_snakemake

GROUP = "workflow-damage"
#: The tiny config cut to what the cases read: one selection method and ratio, one
#: reference, two gradient shards, and a small LDS benchmark.
CHANGES = {
    "methods": ["tarot"],
    "ratios": [0.5],
    "report.tsne_ratio": 0.5,
    "otm.enabled": False,
    "weighting.enabled": False,
    "references": ["full"],
    "lds.subsets": 4,
    "lds.chunks": 1,
    "lds.ensembles": [1],
    "lds.bootstrap": 20,
}
TARGETS = ("digits/metrics/tarot.r0.5/seed0.json", "digits-lds/lds/lds.json")
TIMEOUT = 600

_base: dict[str, Path | str] = {}


def _write_config(work: Path) -> Path:
    """The tiny config with :data:`CHANGES`, its results under ``work`` (tests/smk_helpers.py)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from smk_helpers import write_config

    return write_config(work, **CHANGES)


def _snakemake(work: Path, forcerun: tuple[str, ...] = ()) -> Ran:
    results = work / "results"
    force = ["--forcerun", *forcerun] if forcerun else []
    return run_snakemake(
        ["--configfile", str(work / "config.yaml"), "--cores", "2", *force, *(str(results / t) for t in TARGETS)],
        timeout=TIMEOUT,
    )


def _finished_run() -> Path | str:
    """The results folder of one finished tiny run (made on first use), or why it failed."""
    if "results" not in _base:
        work = Path(tempfile.mkdtemp(prefix="probe-workflow-base-"))
        atexit.register(shutil.rmtree, work, True)
        _write_config(work)
        ran = _snakemake(work)
        if ran.code != 0:
            _base["results"] = f"the undamaged tiny run failed (exit {ran.code}): {ran.stderr.strip()[-300:]}"
        else:
            _base["results"] = work / "results"
    return _base["results"]


# --------------------------------------------------------------------------- damage


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def half_the_rows(path: Path) -> None:
    """A CSV cut after half of its data rows (at a line end: it still parses)."""
    lines = path.read_text().splitlines(keepends=True)
    keep = 1 + (len(lines) - 1) // 2
    path.write_text("".join(lines[:keep]))


def _exception_line(text: str) -> str:
    """The last ``SomeError: message`` line of a traceback in ``text``."""
    found = re.findall(r"^\s*([A-Za-z_.]*(?:Error|Exception|Exit)\b.*)$", text, flags=re.MULTILINE)
    return found[-1].strip()[:200] if found else text.strip()[-200:]


def _verdict(work: Path, ran: Ran, damaged: Path, damaged_bytes: bytes) -> Verdict:
    if ran.raised:
        return Verdict("traceback", "Snakemake's output holds a Python traceback: " + _exception_line(ran.raised))
    for log in sorted((work / "results").rglob("logs/*.log")):
        text = log.read_text(errors="replace")
        if "Traceback (most recent call last)" in text:
            return Verdict("traceback", f"{log.name}: {_exception_line(text)}")
    if ran.code == 0:
        if damaged.is_file() and damaged.read_bytes() == damaged_bytes:
            return Verdict("silent", f"exit 0 with {damaged.name} still damaged (read as it was)")
        if not damaged.is_file() or damaged.stat().st_size == 0:
            return Verdict("silent", f"exit 0 without {damaged.name}")
        return Verdict("right answer", f"{damaged.name} regenerated")
    lines = [ln for ln in ran.stderr.splitlines() if ln.startswith("error: ")]
    if not lines:
        return Verdict("crash", f"exit {ran.code} without a one-line error: {ran.stderr.strip()[-300:]}")
    naming = [ln for ln in lines if damaged.name in ln]
    if not naming:
        return Verdict("silent", f"the error does not name {damaged.name}: {lines[0][:200]}")
    if "\n" in naming[0]:
        return Verdict("traceback", "multi-line error")
    return Verdict("clear error", naming[0][:300])


def _case(name: str, relpath: str, damage: Callable[[Path], None], forcerun: tuple[str, ...] = ()) -> Case:
    """Damage ``results/relpath`` and rerun, forcing the rules ``forcerun`` (those that read it,
    where its new mtime does not make them rerun: a file inside a directory output, a sidecar)."""

    def run(work: Path) -> Verdict:
        base = _finished_run()
        if isinstance(base, str):
            return Verdict("crash", base)
        _write_config(work)
        shutil.copytree(base, work / "results", symlinks=True)
        results = work / "results"
        damaged = results / relpath
        damage(damaged)
        damaged_bytes = damaged.read_bytes()
        return _verdict(work, _snakemake(work, forcerun), damaged, damaged_bytes)

    return Case(GROUP, name, run, slow=True)


D = "digits"

CASES: list[Case] = [
    _case("stats-npz-truncated", f"{D}/features/shards/candidates.0.stats.npz", truncate_half),
    _case("stats-npz-empty", f"{D}/features/shards/targets.1.stats.npz", empty),
    _case("wfd-neighbors-npz-truncated", f"{D}/features/wfd_neighbors.npz", truncate_half),
    _case("proxy-checkpoint-truncated", f"{D}/proxy/ckpt_1.pt", truncate_half, forcerun=("dump_gradients",)),
    _case("proxy-checkpoint-empty", f"{D}/proxy/ckpt_2.pt", empty, forcerun=("dump_gradients",)),
    _case("proxy-checkpoint-list-empty", f"{D}/proxy/checkpoints.json", empty, forcerun=("dump_gradients",)),
    _case("selection-csv-half-its-rows", f"{D}/selections/tarot.r0.5.csv", half_the_rows),
    _case(
        "selection-sidecar-empty",
        f"{D}/selections/tarot.r0.5.json",
        empty,
        forcerun=("train_downstream",),
    ),
    _case("gathered-features-npy-truncated", f"{D}/features/candidates.npy", truncate_half),
    _case("shard-features-npy-truncated", f"{D}/features/shards/candidates.1.npy", truncate_half),
    _case(
        "features-sidecar-empty",
        f"{D}/features/targets.json",
        empty,
        forcerun=("whiten",),
    ),
    _case("wfd-candidates-npy-truncated", f"{D}/features/wfd_candidates.npy", truncate_half),
    _case("downstream-model-truncated", f"{D}/models/tarot.r0.5/seed0.pt", truncate_half),
    _case(
        "prepared-data-npz-truncated",
        f"{D}/data/data.npz",
        truncate_half,
        forcerun=("evaluate",),
    ),
    _case("lds-member-npz-truncated", "digits-lds/lds/members/member0.npz", truncate_half),
    _case("lds-masks-npy-truncated", "digits-lds/lds/masks.npy", truncate_half),
]
