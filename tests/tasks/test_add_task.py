"""Adding a task takes exactly the steps of the README's "Adding a task" section: a package
under ``src/tarot_select/tasks/`` (settings, task, SPEC) and an example config, nothing
else. A throwaway task added that way to a copy of the project runs through the workflow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = """
from dataclasses import dataclass

from ...errors import TarotInputError
from ..settings import Settings, TaskSettings, setting


@dataclass(frozen=True)
class Training(Settings):
    epochs: int = setting(5, minimum=1, doc="full-batch gradient steps")
    lr: float = setting(0.5, minimum=0, exclusive_minimum=True, doc="learning rate")


@dataclass(frozen=True)
class BlobsSettings(TaskSettings):
    kind: str = setting("blobs")
    n_candidates: int = setting(60, minimum=2, doc="candidates (half of them shifted)")
    n_targets: int = setting(20, minimum=2, doc="targets")
    target_sets: tuple[str, ...] = setting((), unique=True, doc="several target sets (one pool serves them)")
    proxy: Training = setting(factory=Training)
    downstream: Training = setting(factory=Training)

    def check(self, where: str = "") -> None:
        if self.n_targets > self.n_candidates:
            raise TarotInputError(f"{where}.n_targets: more targets than candidates")

    def target_names(self):
        return self.target_sets
"""

TASK = """
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..base import Metric, ProxyCheckpoint, Task, TaskData
from .settings import BlobsSettings


class BlobsTask(Task):
    name = "blobs"
    SETTINGS = BlobsSettings
    metrics = (Metric("accuracy", True, "%", 100.0),)

    def _blobs(self, n, shift, stream):
        rng = np.random.default_rng([self.seed, stream])
        y = rng.integers(0, 2, size=n)
        x = rng.normal(size=(n, 2)) + np.stack([2.0 * y - 1.0, np.full(n, shift)], 1)
        return x.astype(np.float32), y.astype(np.int64)

    def prepare(self, out_dir):
        s = self.options
        c1, y1 = self._blobs(s.n_candidates // 2, 0.0, 0)
        c2, y2 = self._blobs(s.n_candidates - s.n_candidates // 2, 4.0, 1)
        t, yt = self._blobs(s.n_targets, 0.0, 2)
        e, ye = self._blobs(50, 0.0, 3)
        np.savez(Path(out_dir) / "blobs.npz", c=np.concatenate([c1, c2]), yc=np.concatenate([y1, y2]),
                 t=t, yt=yt, e=e, ye=ye, src=np.array(["near"] * len(y1) + ["far"] * len(y2)))

    def load(self, data_dir, target=None):
        z = np.load(Path(data_dir) / "blobs.npz")
        ds = lambda x, y: torch.utils.data.TensorDataset(torch.from_numpy(z[x]), torch.from_numpy(z[y]))
        if target not in (None, *self.options.target_sets):
            raise ValueError(target)
        return TaskData(ds("c", "yc"), ds("t", "yt"), ds("e", "ye"), sources=z["src"])

    def proxy_model(self):
        torch.manual_seed(self.seed)
        return torch.nn.Linear(2, 2)

    def _fit(self, model, x, y, cfg):
        opt = torch.optim.Adam(list(model.named_parameters()), lr=cfg.lr)
        for _ in range(cfg.epochs):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return opt

    def train_proxy(self, data, out_dir, progress=False):
        model = self.proxy_model()
        x, y = data.candidates.tensors
        opt = self._fit(model, x, y, self.options.proxy)
        path = Path(out_dir) / "ckpt.pt"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
        return [ProxyCheckpoint(str(path), lr=self.options.proxy.lr, epoch=self.options.proxy.epochs)]

    def loss_fn(self, forward, sample):
        return F.cross_entropy(forward(sample[0]), sample[1])

    def train_downstream(self, data, split, indices, weights, seed, progress=False):
        torch.manual_seed(seed)
        model = torch.nn.Linear(2, 2)
        x, y = data.split(split).tensors
        self._fit(model, x[indices], y[indices], self.options.downstream)
        return model.state_dict()

    def evaluate(self, data, state):
        model = torch.nn.Linear(2, 2)
        model.load_state_dict(state)
        x, y = data.evaluation.tensors
        with torch.no_grad():
            return {"accuracy": float((model(x).argmax(1) == y).float().mean())}
"""

INIT = '''
"""Two Gaussian blobs, half of the pool shifted away from the target: a throwaway task."""

from ..registry import TaskSpec
from .settings import BlobsSettings

SPEC = TaskSpec("blobs", BlobsSettings, "tarot_select.tasks.blobs.task:BlobsTask", summary="toy blobs")
'''

CONFIG = """
tasks:
  blobs:
    kind: blobs
    n_candidates: 60
    n_targets: 20
    proxy: {epochs: 5, lr: 0.5}
    downstream: {epochs: 5, lr: 0.5}
methods: [random, tarot]
ratios: [0.5]
otm: {enabled: false}
weighting: {enabled: false}
references: [full]
seeds: [0]
features: {proj_dim: 4, batch_size: 32}
report: {tsne_ratio: 0.5, tsne_max_points: 80}
lds: {enabled: false}
resources:
  default: {mem_mb: 1000, runtime: 10, threads: 1}
"""


@pytest.fixture(scope="module")
def project_with_blobs(tmp_path_factory) -> Path:
    """A copy of the project plus the blobs task, added by the README's steps only."""
    root = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".snakemake", "results")
    for item in ("Snakefile", "workflow", "config", "envs", "src"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(
            src, root / item, **({"ignore": ignore} if src.is_dir() else {})
        )
    package = root / "src" / "tarot_select" / "tasks" / "blobs"  # step 1: the task's package
    package.mkdir()
    (package / "settings.py").write_text(textwrap.dedent(SETTINGS))
    (package / "task.py").write_text(textwrap.dedent(TASK))
    (package / "__init__.py").write_text(textwrap.dedent(INIT))
    (root / "config" / "tasks" / "blobs.yaml").write_text(CONFIG)  # step 2: its example config
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "--configfile", "config/tasks/blobs.yaml"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_new_task_is_discovered_and_planned(project_with_blobs):
    res = _run(project_with_blobs, "-n", "--quiet", "rules")
    assert res.returncode == 0, res.stderr[-3000:]
    for rule in ("prepare_data", "train_proxy", "dump_gradients", "whiten", "select", "train_downstream", "table"):
        assert rule in res.stdout + res.stderr


def test_the_new_task_settings_are_checked_before_any_job(project_with_blobs, tmp_path):
    bad = project_with_blobs / "config" / "tasks" / "blobs.yaml"
    text = bad.read_text()
    try:
        bad.write_text(text.replace("n_targets: 20", "n_targets: 200"))
        res = _run(project_with_blobs, "-n")
        assert res.returncode != 0 and "tasks.blobs.n_targets: more targets than candidates" in res.stdout + res.stderr
        bad.write_text(text.replace("n_targets: 20", "n_target: 20"))
        res = _run(project_with_blobs, "-n")
        assert "tasks.blobs.n_target: unknown key (did you mean 'n_targets'?)" in res.stdout + res.stderr
    finally:
        bad.write_text(text)


def test_several_target_sets_share_one_pool_and_its_candidate_gradients(project_with_blobs, tmp_path):
    config = tmp_path / "two_targets.yaml"
    config.write_text(CONFIG.replace("n_targets: 20", "n_targets: 20\n    target_sets: [near, far]"))
    env = {**os.environ, "PYTHONPATH": str(project_with_blobs / "src")}
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(config), "--config", f"results={tmp_path}/r"],
        cwd=project_with_blobs,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # one pool: data, proxy and candidate gradients once; targets, whitening, tables per target set
    for rule, n in {"prepare_data": 1, "train_proxy": 1, "dump_gradients": 4, "whiten": 2, "table": 2}.items():
        assert re.search(rf"^{rule}\s+{n}$", out, re.MULTILINE), (rule, out[-2000:])
    assert f"{tmp_path}/r/blobs/features/candidates.npy" in out or "r/blobs/features/candidates.npy" in out
    assert "blobs-near/features/targets.npy" in out and "blobs-far/selections/tarot.r0.5.csv" in out


@pytest.mark.slow
def test_the_new_task_runs_end_to_end(project_with_blobs):
    res = _run(project_with_blobs, "--cores", "2")
    assert res.returncode == 0, res.stderr[-4000:]
    table = (project_with_blobs / "results" / "tables" / "blobs.md").read_text()
    assert "tarot" in table and "random" in table and "accuracy" in table
