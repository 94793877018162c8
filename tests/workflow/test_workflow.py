"""The Snakemake workflow: dry run, lint, config errors before any job, envs, and a tiny real run."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from smk_helpers import ROOT, smk, write_config


def test_dry_run_of_the_default_config(tmp_path):
    res = smk("-n", "--quiet", "rules", "--config", f"results={tmp_path}/results")
    assert res.returncode == 0, res.stderr[-3000:]
    for rule in ("prepare_data", "train_proxy", "dump_gradients", "whiten", "select", "train_downstream", "evaluate"):
        assert re.search(rf"^{rule}\s+\d+", res.stdout + res.stderr, re.MULTILINE), rule


def test_dry_run_of_an_example_task_config(tmp_path):
    res = smk(
        "-n", "--quiet", "rules", "--configfile", "config/tasks/mnist_mlp.yaml", "--config", f"results={tmp_path}"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"^lds_member\s+10$", res.stdout + res.stderr, re.MULTILINE), res.stdout


def test_lint():
    res = smk("--lint")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_snakefmt_formatted():
    snakefmt = shutil.which("snakefmt")
    if snakefmt is None:
        pytest.skip("snakefmt not installed")
    res = subprocess.run([snakefmt, "--check", "Snakefile", "workflow/"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"ratioz": [0.1]}, "ratioz"),
        ({"tasks": {}, "lds.enabled": False}, "the config has no task"),
        ({"ratios": [0.1, 0.1000001]}, "name the same files"),
        ({"tasks.digits.device": "warp-drive"}, "tasks.digits.device"),
        ({"tasks.digits.resources": {"train_proxi": {"threads": 2}}}, "tasks.digits.resources.train_proxi"),
        ({"tasks.digits.proxy.lr": float("nan")}, "tasks.digits.proxy.lr: must be a finite number"),
        ({"tasks.digits.per_sauce": 3}, "per_sauce"),
        ({"ratios": [0.0, 0.1]}, "ratios"),
        ({"ratios": [1.5]}, "ratios"),
        ({"methods": ["tarot", "best"]}, "methods"),
        ({"infdist.landmarks": 161}, "infdist.landmarks: 161 landmarks for only 160 candidates"),
        ({"infdist.strategy": "greedy"}, "infdist.strategy"),
        ({"tasks.digits.kind": "cifar100"}, "kind"),
        ({"tasks.digits.target_styles": ["sepia"]}, "target_styles"),
        ({"report.tsne_ratio": 0.3}, "report.tsne_ratio"),
        ({"tasks.digits.n_targets": 5000}, "tasks.digits"),
        ({"lds.subsets": 2}, "subsets"),
        ({"lds.methods": ["wfd", "influence"]}, "influence"),
        ({"lds.external": {"digits-lds": {"masks": "/no/masks.npy", "outputs": "/no/outputs.npy"}}}, "lds.external"),
        ({"lds.tasks.digits": {"kind": "digits"}}, "lds.tasks"),
        ({"lds.tasks.cifar": {"kind": "cifar10_resnet9", "root": "/no/cifar"}}, "/no/cifar"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, changes, message):
    cfg = write_config(tmp_path, **changes)
    res = smk("--cores", "1", "--configfile", str(cfg))
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert message in out, out[-2000:]
    assert not (tmp_path / "results").exists()  # nothing ran


# ------------------------------------------------------------------ envs
THIRD_PARTY_TO_CONDA = {"sklearn": "scikit-learn", "ot": "pot", "yaml": "pyyaml"}
#: What a rule's ``conda:`` input function (common.smk) can return.
ENV_FUNCTIONS = {"torch_env": ("torch.yaml", "mmseg.yaml")}
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts[: -node.level])
            mod = f"{base}.{node.module}" if node.module else base
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


def _third_party_of(script: Path) -> set[str]:
    """Top-level third-party modules a script imports, directly or through tarot_select."""
    seen, todo, found = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "tarot_select":
                rel = Path("src", *name.split("."))
                for cand in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
                    if cand.exists():
                        todo.append(cand)
                # importing a submodule runs its package's __init__ too
                parts = name.split(".")
                for i in range(1, len(parts)):
                    init = ROOT / Path("src", *parts[:i]) / "__init__.py"
                    if init.exists():
                        todo.append(init)
            elif top not in STDLIB and top != "snakemake" and top != "__future__":
                found.add(top)
    return found


def _rules():
    for smk_file in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk_file.read_text()
        for block in re.split(r"^rule ", text, flags=re.MULTILINE)[1:]:
            name = block.split(":")[0]
            conda = re.search(r'conda:\s*\n\s*(?:"([^"]+)"|([a-z_]+)\n)', block)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            yield name, smk_file, conda, script


def test_every_rule_declares_its_env_and_the_env_names_what_its_script_imports():
    rules = list(_rules())
    assert len(rules) >= 9
    for name, smk_file, conda, script in rules:
        assert conda and script, f"rule {name} lacks conda: or script:"
        if conda.group(1) is not None:
            env_paths = [(smk_file.parent / conda.group(1)).resolve()]
        else:  # an input function: every env it can choose
            env_paths = [ROOT / "envs" / f for f in ENV_FUNCTIONS[conda.group(2)]]
        needed = _third_party_of((smk_file.parent / script.group(1)).resolve())
        assert "numpy" in needed  # the walk really reaches the library
        for env_path in env_paths:
            env = yaml.safe_load(env_path.read_text())
            deps = {re.split(r"[=<> ]", d)[0] for d in env["dependencies"] if isinstance(d, str)}
            pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict)), [])
            deps |= {re.split(r"[=<> \[]", d)[0] for d in pip if not d.startswith("-")}
            assert "python" in deps and "pip" in deps
            missing = {THIRD_PARTY_TO_CONDA.get(m, m) for m in needed} - deps
            assert not missing, f"{env_path.name} (rule {name}) lacks {sorted(missing)}"


# ------------------------------------------------------------------ a real run
# `tiny_run` (tests/conftest.py) runs the tiny config once per session; every test that
# uses it is in xdist group "tiny", so one worker runs it and the others do not wait.


@pytest.mark.xdist_group("tiny")
def test_tiny_pipeline_tables_and_figures(tiny_run):
    tmp, _ = tiny_run
    results = tmp / "results"
    table = (results / "tables" / "digits.csv").read_text().splitlines()
    header = table[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in table[1:]]
    methods = {r["method"] for r in rows}
    assert {"random", "dsdm", "less", "tarot", "tarot_weighted", "otm", "full", "target_only"} <= methods
    for r in rows:
        assert math.isfinite(float(r["mean"])) and 0.0 <= float(r["mean"]) <= 1.0
    md = (results / "tables" / "digits.md").read_text()
    assert "**" in md and "OTM" in md
    for fig in ("digits_metric_vs_ratio.png", "digits_tsne.png"):
        assert (results / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every selection has exactly the budgeted size, and the sidecar says how it was made
    for ratio in (0.1, 0.5):
        sel = results / "digits" / "selections" / f"tarot.r{ratio:g}.csv"
        idx = np.loadtxt(sel, delimiter=",", skiprows=1, ndmin=2)[:, 0]
        assert len(np.unique(idx)) == len(idx) == round(ratio * 160)
        meta = json.loads(sel.with_suffix(".json").read_text())
        assert meta["method"] == "tarot" and meta["ot_distance"] > 0
    # the LDS benchmark: every method at every ensemble size, a finite correlation
    lds_rows = (results / "tables" / "digits-lds_lds.csv").read_text().splitlines()
    assert len(lds_rows) == 1 + 8 * 2  # six methods of the paper and two diagnostics, at E = 1 and 2
    for line in lds_rows[1:]:
        value = float(line.split(",")[2])
        assert -1.0 <= value <= 1.0, line
    assert (results / "figures" / "digits-lds_lds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TRAK" in (results / "tables" / "digits-lds_lds.md").read_text()
    feats = json.loads((results / "digits" / "features" / "candidates.json").read_text())
    assert feats["shape"] == [160, 64] and len(feats["checkpoints"]) == 2
    # Influence Distillation: one more method of the table, its gradients for the landmarks only
    assert "infdist" in methods
    land = json.loads((results / "digits" / "features" / "landmarks_adam.json").read_text())
    assert land["shape"] == [40, 64] and land["landmarks"]["n_candidates"] == 160
    assert len(set(land["landmarks"]["indices"])) == 40 and land["adam_preconditioned"]
    emb = json.loads((results / "digits" / "features" / "embeddings.json").read_text())
    assert emb["shape"][0] == 160 and emb["embedding"]["n_blocks"] == 2
    sel = results / "digits" / "selections" / "infdist.r0.1.csv"
    idx = np.loadtxt(sel, delimiter=",", skiprows=1, ndmin=2)[:, 0]
    assert len(np.unique(idx)) == len(idx) == 16
    assert json.loads(sel.with_suffix(".json").read_text())["ot_distance"] > 0


@pytest.mark.xdist_group("tiny")
def test_the_infdist_cost_benchmark_reads_the_runs_job_times(tiny_run, tmp_path):
    tmp, _ = tiny_run
    out = tmp_path / "cost.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "infdist_cost.py"), str(tmp / "results"), "digits"]
        + ["--ratio", "0.1", "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"infdist", "less", "tarot"} and "| infdist |" in res.stdout
    bench = tmp / "results" / "digits" / "benchmarks"
    embed = float((bench / "embed_candidates.tsv").read_text().splitlines()[1].split("\t")[0])
    for r in rows.values():
        assert r["features_s"] > 0 and r["total_s"] == pytest.approx(r["features_s"] + r["select_s"])
        assert r["seeds"] == 1 and 0 <= r["mean"] <= 100
    assert rows["infdist"]["features_s"] >= embed
    # a ratio the run did not select at is one line, exit 2
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "infdist_cost.py"), str(tmp / "results"), "digits", "--ratio", "0.3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.xdist_group("tiny")
def test_rerun_redoes_only_what_is_missing(tiny_run):
    tmp, cfg = tiny_run
    res = smk("-n", "--configfile", str(cfg))
    assert "Nothing to be done" in res.stdout + res.stderr
    # a run interrupted before its end: one evaluation and the reports never written
    results = tmp / "results"
    (results / "digits" / "metrics" / "tarot.r0.1" / "seed0.json").unlink()
    for path in [*(results / "tables").iterdir(), *(results / "figures").iterdir()]:
        path.unlink()
    res = smk("-n", "--quiet", "rules", "--configfile", str(cfg))
    out = res.stdout + res.stderr
    assert re.search(r"^evaluate\s+1$", out, re.MULTILINE), out
    assert re.search(r"^table\s+1$", out, re.MULTILINE), out
    for rule in ("train_downstream", "select", "dump_gradients", "train_proxy"):
        assert not re.search(rf"^{rule}\s", out, re.MULTILINE), out
    res = smk("--cores", "2", "--configfile", str(cfg))
    assert res.returncode == 0 and (results / "tables" / "digits.csv").exists()


# Editing each kind of setting (task block, seed, LDS block, whitening, ...) and the exact
# jobs a dry run then plans: benchmarks/reliability/cases_stale.py (run by
# tests/test_reliability.py on this suite's tiny run).


@pytest.mark.xdist_group("tiny")
def test_same_config_gives_byte_identical_selections(tiny_run, tmp_path):
    tmp, _ = tiny_run
    cfg = write_config(tmp_path)
    names = ["tarot.r0.1", "dsdm.r0.5", "less.r0.1", "otm", "random-s0.r0.5", "tarot_weighted.r0.1"]
    targets = [str(tmp_path / "results" / "digits" / "selections" / f"{n}.csv") for n in names]
    res = smk(*targets, "--cores", "2", "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    for n in names:
        a = (tmp / "results" / "digits" / "selections" / f"{n}.csv").read_bytes()
        b = (tmp_path / "results" / "digits" / "selections" / f"{n}.csv").read_bytes()
        assert a == b, n


@pytest.mark.xdist_group("tiny")
def test_html_report_bundles_the_figures(tiny_run):
    tmp, cfg = tiny_run
    report = tmp / "report.html"
    res = smk("--report", str(report), "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    html = report.read_text(errors="replace")
    assert "digits_metric_vs_ratio.png" in html and "digits_tsne.png" in html


def test_stage_caps_torch_and_blas_threads_at_the_jobs_threads(tmp_path):
    # a job given 1 thread must not let numpy's BLAS or torch use both cores
    code = (
        "import torch, threadpoolctl\n"
        "from tarot_select.experiments.stages import setup_stage\n"
        "setup_stage(None, 1)\n"
        "blas = [i['num_threads'] for i in threadpoolctl.threadpool_info()]\n"
        "print(torch.get_num_threads(), max(blas) if blas else 1)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "1"], res.stdout
