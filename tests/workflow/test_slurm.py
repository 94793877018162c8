"""The workflow on a real SLURM cluster (profiles/slurm) gives the same results as a local run.

Needs a running SLURM cluster and snakemake-executor-plugin-slurm. CI starts a
single-node cluster with .ci/slurm-up.sh and sets TAROT_REQUIRE_SLURM=1, so there a
missing cluster fails the suite instead of skipping these tests.

The local reference is the session's tiny run (tests/conftest.py). The SLURM run uses
the same data, proxy and feature settings but fewer methods, so it stays short (each
SLURM job costs ~10-20 s of submission and polling here); every selection and metric
it makes must equal the local one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from smk_helpers import smk, write_config

# the SLURM run: LESS (Adam-preconditioned shards), TAROT (plain and weighted: the weighted
# comparison sets every method's repetition), OTM and the full-pool reference
# The neighbour search runs as 2 SLURM jobs (neighbors_shard) merged by a third: its lists
# must equal those of the local run's single whitening pass.
SLURM_CHANGES = {
    "methods": ["tarot", "less"],
    "ratios": [0.1],
    "references": ["full"],
    "lds.enabled": False,
    "whitening.neighbor_shards": 2,
}


def _slurm_ready() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo)"
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0 or not {"idle", "mixed", "allocated"} & set(res.stdout.split()):
        return f"no usable SLURM node ({res.stdout.strip() or res.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def slurm_ready():
    why = _slurm_ready()
    if why is not None:
        if os.environ.get("TAROT_REQUIRE_SLURM") == "1":
            pytest.fail(f"TAROT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)


def slurm_smk(*args: str, timeout: int, logdir: Path) -> subprocess.CompletedProcess:
    """Snakemake through the SLURM profile; on a timeout, cancel what it left queued.

    Each run keeps its SLURM logs in its own ``logdir``: under the shared default
    (``.snakemake/slurm_logs/<rule>/<wildcards>/``) a run that deletes a finished job's log
    folder can remove it under a concurrent run's job of the same wildcards, which SLURM
    then cannot start ("Could not open stdout file").
    """
    try:
        return smk("--profile", "profiles/slurm", "--slurm-logdir", str(logdir), *args, timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--user", str(os.getuid())], check=False)
        raise


def _metrics(results: Path, selection: str) -> dict[str, float]:
    return json.loads((results / "digits" / "metrics" / selection / "seed0.json").read_text())["metrics"]


@pytest.mark.xdist_group("tiny")
def test_slurm_run_equals_local_run(slurm_ready, tiny_run, tmp_path):
    local = tiny_run[0] / "results"
    cfg = write_config(tmp_path, **SLURM_CHANGES)
    res = slurm_smk("--configfile", str(cfg), timeout=1200, logdir=tmp_path / "slurm_logs")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "submitted with SLURM jobid" in out, out[-2000:]  # really went through SLURM
    remote = tmp_path / "results"
    names = ["tarot.r0.1", "less.r0.1", "tarot_weighted.r0.1", "otm", "full"]
    for name in names:
        a = (local / "digits" / "selections" / f"{name}.csv").read_bytes()
        assert a == (remote / "digits" / "selections" / f"{name}.csv").read_bytes(), name
        ma, mb = _metrics(local, name), _metrics(remote, name)
        assert ma.keys() == mb.keys() and ma
        for key in ma:
            assert np.isclose(ma[key], mb[key], rtol=0, atol=1e-12), (name, key, ma[key], mb[key])
    # the gathered shards and the whitened features are the same arrays
    for name in ("candidates", "targets", "candidates_adam", "wfd_candidates", "wfd_targets"):
        fa = np.load(local / "digits" / "features" / f"{name}.npy")
        fb = np.load(remote / "digits" / "features" / f"{name}.npy")
        np.testing.assert_array_equal(fa, fb, err_msg=name)
    # the sharded neighbour search merged into the single pass's lists
    assert (remote / "digits" / "features" / "neighbor_shards" / "wfd.1.npz").exists()
    for key in ("indices", "distances"):
        with (
            np.load(local / "digits" / "features" / "wfd_neighbors.npz") as a,
            np.load(remote / "digits" / "features" / "wfd_neighbors.npz") as b,
        ):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the table's rows for these selections match the local table's
    local_rows = set((local / "tables" / "digits.csv").read_text().splitlines()[1:])
    remote_rows = (remote / "tables" / "digits.csv").read_text().splitlines()[1:]
    assert len(remote_rows) == len(names) and set(remote_rows) <= local_rows


@pytest.mark.xdist_group("tiny")
def test_failed_slurm_job_fails_the_run_and_names_its_log(slurm_ready, tiny_run, tmp_path):
    # Reuse the tiny run's data and proxy, with the last proxy checkpoint cut short: the
    # config is valid, so only the dump job can see it; exactly one SLURM job runs and fails.
    local = tiny_run[0] / "results" / "digits"
    for name in ("data", "proxy"):
        shutil.copytree(local / name, tmp_path / "results" / "digits" / name)
    ckpt = tmp_path / "results" / "digits" / "proxy" / "ckpt_2.pt"
    os.truncate(ckpt, ckpt.stat().st_size // 2)
    cfg = write_config(tmp_path)
    target = tmp_path / "results" / "digits" / "features" / "shards" / "targets.0.npy"
    res = slurm_smk(str(target), "--configfile", str(cfg), timeout=600, logdir=tmp_path / "slurm_logs")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"{ckpt}: proxy checkpoint is truncated or damaged" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert str(tmp_path / "results" / "digits" / "logs" / "dump_gradients_targets.0.log") in out, out[-3000:]
    assert not target.exists()
