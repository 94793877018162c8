"""Running Snakemake from the tests: the project root, a runner, and tiny-config variants."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def own_directory(args: list[str] | tuple[str, ...]) -> list[str]:
    """``args`` with ``--directory`` set to the folder that holds the run's ``results`` folder.

    Only for a config outside the project (the tests' temporary ones). Two Snakemake runs
    sharing one working folder share ``.snakemake/locks``, and Snakemake's lock check can
    crash with ``FileNotFoundError: .snakemake/locks/0.input.lock`` when the other run
    removes its lock between listing and reading it (seen in CI, Snakemake 9.27). The
    tests run concurrently on xdist workers, so each temporary run gets its own folder. It
    is the results' parent, not the config's, so that an edited config next to another
    run's results finds that run's metadata (params, code) in the same ``.snakemake``.
    """
    args = [str(a) for a in args]
    if "--configfile" not in args or {"-d", "--directory"} & set(args):
        return args
    cfg = Path(args[args.index("--configfile") + 1])
    if not cfg.is_absolute() or cfg.resolve().is_relative_to(ROOT):
        return args
    workdir = cfg.parent
    try:
        results = yaml.safe_load(cfg.read_text()).get("results")
        if isinstance(results, str) and Path(results).is_absolute():
            workdir = Path(results).parent
    except Exception:  # a missing or broken config: Snakemake reports it, from the config's folder
        pass
    return ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]


def smk(*args: str, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, *own_directory(args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def write_config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    cfg["results"] = str(tmp_path / "results")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def save_config(cfg: dict, tmp_path: Path) -> Path:
    """``cfg`` with its results under ``tmp_path``, written as ``tmp_path/config.yaml``."""
    cfg["results"] = str(tmp_path / "results")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dry_run(*args: str) -> str:
    """Output (stdout and stderr) of ``snakemake -n *args``, which must succeed."""
    res = smk("-n", *args, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout + res.stderr


def planned_jobs(out: str) -> dict[str, int]:
    """Jobs per rule in the summary table of a dry run's output (the total left out)."""
    return {rule: int(n) for rule, n in re.findall(r"^([a-z_]+)\s+(\d+)$", out, re.MULTILINE) if rule != "total"}


def assert_gpus_for_training(out: str) -> None:
    """In a dry run's job listing, every ``train_proxy``, ``dump_gradients`` and
    ``train_downstream`` job asks for ``gpu=1`` and no ``evaluate`` job does."""
    blocks = re.split(r"\n(?=rule )", out)
    for rule in ("train_proxy", "dump_gradients", "train_downstream"):
        mine = [b for b in blocks if b.startswith(f"rule {rule}:")]
        assert mine and all(re.search(r"resources: .*\bgpu=1\b", b) for b in mine), rule
    evaluate = [b for b in blocks if b.startswith("rule evaluate:")]
    assert evaluate and not any(re.search(r"\bgpu=1\b", b) for b in evaluate)
