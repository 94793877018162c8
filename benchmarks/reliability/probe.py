"""A standing probe: hostile inputs thrown at the CLI, the API, the config and the workflow.

Each *case* does one thing a careless or hostile user might do (a truncated file, a NaN
in the config, an output path that is an input, a job killed half way, ...) and returns a
:class:`Verdict`: either the project behaved (a clear one-line error, or the right
answer) or it did not (a traceback, a silent wrong or stale result, a crash, a file the
user owns overwritten).

Cases live in ``cases_<area>.py`` beside this file, each exposing ``CASES: list[Case]``.
Run them all::

    python benchmarks/reliability/probe.py            # every case, a table per class
    python benchmarks/reliability/probe.py --quick    # skip the slow (workflow) cases
    python benchmarks/reliability/probe.py -k cli     # cases whose class or name contains "cli"

The test suite runs the same cases (``tests/test_reliability.py``), one test per case.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: Verdict kinds. GOOD: the project behaving; BAD: defects; UPSTREAM: a defect in a tool we
#: call that happens before any of our code runs (the probe counts it apart and says so).
GOOD = ("clear error", "right answer")
BAD = ("traceback", "silent", "stale", "wasted", "overwritten", "crash", "late")
UPSTREAM = ("upstream",)


@dataclass(frozen=True)
class Verdict:
    """What a case saw: ``kind`` is one of :data:`GOOD` or :data:`BAD`."""

    kind: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind in GOOD


@dataclass(frozen=True)
class Case:
    """One hostile input. ``run(work_dir)`` gets a fresh empty directory."""

    group: str
    name: str
    run: Callable[[Path], Verdict]
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


@dataclass(frozen=True)
class Ran:
    """A finished command: exit status, captured output, and the traceback if it raised."""

    code: int
    stdout: str
    stderr: str
    raised: str | None = None


def run_cli(args: Sequence[str], cwd: Path | None = None) -> Ran:
    """Run ``tarot-select args`` in this process (fast); an escaping exception is recorded."""
    from tarot_select.cli import main

    out, err = io.StringIO(), io.StringIO()
    raised = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _chdir(cwd):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - a traceback is what the probe looks for
            raised = traceback.format_exc()
            code = 1
    return Ran(code, out.getvalue(), err.getvalue(), raised)


def run_cli_process(args: Sequence[str], cwd: Path | None = None, timeout: float = 300) -> Ran:
    """Run ``tarot-select args`` in a subprocess (for crashes: signals, out of memory)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tarot_select.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    raised = proc.stderr if "Traceback (most recent call last)" in proc.stderr else None
    return Ran(proc.returncode, proc.stdout, proc.stderr, raised)


def run_snakemake(args: Sequence[str], cwd: Path = ROOT, timeout: float = 900) -> Ran:
    """Run Snakemake on the project's Snakefile in a subprocess (a temporary config in its own folder)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from smk_helpers import own_directory

    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *own_directory(list(args))],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout + proc.stderr  # Snakemake prints some tracebacks to stdout
    raised = out if "Traceback (most recent call last)" in out else None
    return Ran(proc.returncode, proc.stdout, proc.stderr, raised)


_TINY: tuple[Path, Path] | None = None


def tiny_run() -> tuple[Path, Path]:
    """The tiny test config (tests/data/tiny.yaml) run once per process: ``(directory, config)``.

    Cases that damage or edit a finished run copy it first (``shutil.copytree``) and never
    change this one. The directory lives until the process exits.
    """
    global _TINY
    if _TINY is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from smk_helpers import write_config

        tmp = Path(tempfile.mkdtemp(prefix="probe-tiny-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        cfg = write_config(tmp)
        ran = run_snakemake(["--cores", "2", "--configfile", str(cfg)])
        if ran.code != 0:
            raise RuntimeError(f"the tiny run failed: {ran.stderr[-2000:]}")
        _TINY = (tmp, cfg)
    return _TINY


def copy_run(dest: Path) -> tuple[Path, Path]:
    """A private copy of :func:`tiny_run` in ``dest``: ``(directory, config)`` with ``results`` repointed."""
    import yaml

    src, cfg = tiny_run()
    shutil.copytree(src / "results", dest / "results", symlinks=True)
    config = yaml.safe_load(cfg.read_text())
    config["results"] = str(dest / "results")
    path = dest / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return dest, path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``root`` (hidden ones too),
    except Snakemake's own run logs (``.snakemake/log/``): Snakemake writes one for every run
    started in its working folder, a refused one too."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[:2] != (".snakemake", "log")
    }


def expect_clear_error(ran: Ran, before: dict | None = None, after: dict | None = None, code: int = 2) -> Verdict:
    """A clear error: exit ``code``, no traceback, one line on stderr, and nothing written.

    ``before``/``after`` are :func:`snapshot` results of the directory the command could
    write to; any new or changed file makes the verdict ``overwritten``.
    """
    if ran.raised:
        return Verdict("traceback", ran.raised.strip().splitlines()[-1])
    if ran.code < 0:
        return Verdict("crash", f"killed by signal {-ran.code}")
    if ran.code == 0:
        return Verdict("silent", "exit 0 where an error was expected")
    if ran.code != code:
        return Verdict("crash", f"exit {ran.code}, expected {code}: {ran.stderr.strip()[-300:]}")
    lines = [ln for ln in ran.stderr.strip().splitlines() if ln.strip()]
    if len(lines) != 1:
        return Verdict("traceback", f"{len(lines)} lines on stderr: {ran.stderr.strip()[-300:]}")
    if before is not None and after is not None:
        changed = sorted(k for k in after if before.get(k) != after[k])
        if changed:
            return Verdict("overwritten", f"wrote {changed}")
    return Verdict("clear error", lines[0])


def expect_answer(ran: Ran, check: Callable[[], str | None] | None = None) -> Verdict:
    """Exit 0 and ``check()`` returns None (or a string saying what is wrong)."""
    if ran.raised:
        return Verdict("traceback", ran.raised.strip().splitlines()[-1])
    if ran.code != 0:
        return Verdict("crash", f"exit {ran.code}: {ran.stderr.strip()[-300:]}")
    problem = check() if check is not None else None
    return Verdict("silent", problem) if problem else Verdict("right answer")


@contextlib.contextmanager
def _chdir(path: Path | None):
    if path is None:
        yield
        return
    with contextlib.chdir(path):
        yield


def load_cases(modules: Iterable[str] | None = None) -> list[Case]:
    """Every case from the ``cases_*.py`` modules beside this file."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    names = modules or sorted(p.stem for p in HERE.glob("cases_*.py"))
    cases: list[Case] = []
    for name in names:
        cases.extend(importlib.import_module(name).CASES)
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate case ids: {dup}")
    return cases


def run_case(case: Case) -> Verdict:
    """Run one case in a fresh temporary directory; an exception in the case itself is a traceback."""
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        try:
            return case.run(Path(tmp))
        except BaseException:  # noqa: BLE001
            return Verdict("traceback", traceback.format_exc().strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip slow cases (the workflow runs)")
    parser.add_argument("-k", default="", help="only cases whose id contains this text")
    args = parser.parse_args(argv)
    cases = [c for c in load_cases() if args.k in c.id and not (args.quick and c.slow)]
    results: dict[str, list[tuple[Case, Verdict]]] = {}
    t0 = time.perf_counter()
    for case in cases:
        verdict = run_case(case)
        results.setdefault(case.group, []).append((case, verdict))
        mark = "ok " if verdict.ok else ("up " if verdict.kind in UPSTREAM else "BAD")
        sys.stdout.write(f"{mark} {case.id:60s} {verdict.kind:12s} {verdict.detail[:100]}\n")
        sys.stdout.flush()
    sys.stdout.write("\nclass                          cases  good  bad  upstream\n")
    n_bad = n_up = 0
    for group, rows in results.items():
        up = sum(v.kind in UPSTREAM for _, v in rows)
        bad = sum(not v.ok for _, v in rows) - up
        n_bad += bad
        n_up += up
        sys.stdout.write(f"{group:30s} {len(rows):6d} {len(rows) - bad - up:5d} {bad:4d} {up:9d}\n")
    total = sum(len(r) for r in results.values())
    sys.stdout.write(
        f"{'total':30s} {total:6d} {total - n_bad - n_up:5d} {n_bad:4d} {n_up:9d}   "
        f"({time.perf_counter() - t0:.0f} s)\n"
    )
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
