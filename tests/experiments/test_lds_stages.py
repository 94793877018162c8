"""LDS workflow stages: user files are checked, chunks gather in order, the evaluation
ranks a perfect attribution first on a case with a known answer, and the output-gradient
features of a task equal per-sample margin gradients."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad

from tarot_select.errors import TarotInputError
from tarot_select.experiments import lds_stages as lds_pipeline
from tarot_select.experiments.lds_stages import output_gradient_features
from tarot_select.experiments.report import lds as lds_report
from tarot_select.lds import subset_masks
from tarot_select.outputs import margin
from tarot_select.tasks import TaskData, get_task


def _save(path, arr):
    np.save(path, arr)
    return path


def test_gather_outputs_joins_chunks_in_order_and_checks_rows(tmp_path):
    masks = _save(tmp_path / "masks.npy", subset_masks(20, 6, 0.5, seed=0))
    a = _save(tmp_path / "c0.npy", np.arange(12.0).reshape(3, 4))
    b = _save(tmp_path / "c1.npy", np.arange(12.0, 24.0).reshape(3, 4))
    lds_pipeline.lds_gather_outputs([a, b], masks, tmp_path / "out.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.arange(24.0).reshape(6, 4))
    assert json.loads((tmp_path / "out.json").read_text())["shape"] == [6, 4]
    with pytest.raises(TarotInputError, match="5 rows but there are 6"):
        lds_pipeline.lds_gather_outputs(
            [], masks, tmp_path / "bad.npy", external=_save(tmp_path / "e.npy", np.zeros((5, 4)))
        )
    with pytest.raises(TarotInputError, match="not found"):
        lds_pipeline.lds_gather_outputs([], masks, tmp_path / "bad.npy", external=tmp_path / "missing.npy")


def _members(tmp_path, x_parts, z_parts):
    paths = []
    for e, (x, z) in enumerate(zip(x_parts, z_parts)):
        path = tmp_path / f"member{e}.npz"
        np.savez(path, train=x, targets=z, weights=np.ones(len(x)), meta=np.array("{}"))
        paths.append(path)
    return paths


def test_evaluate_ranks_the_true_attribution_first(tmp_path):
    # Outputs are exactly linear in the mask with attribution A = X Zᵀ (grad-dot's score),
    # so grad_dot must reach LDS 1 while the distance-based scores cannot.
    rng = np.random.default_rng(0)
    n, m, d, n_sub = 60, 10, 5, 40
    x, z = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    masks = subset_masks(n, n_sub, 0.5, seed=1)
    outputs = masks.astype(float) @ (x @ z.T)
    mp, op = _save(tmp_path / "masks.npy", masks), _save(tmp_path / "outputs.npy", outputs)
    # member 1 carries the same scores in a rotated basis: grad-dot is rotation invariant
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    members = _members(tmp_path, [x, x @ q], [z, z @ q])
    records = lds_pipeline.lds_evaluate(
        mp, op, members, ["grad_dot", "wfd", "trak"], [1, 2], tmp_path / "lds.json", n_bootstrap=20
    )
    by = {(r["method"], r["ensemble"]): r["lds"] for r in records}
    assert by["grad_dot", 1] == pytest.approx(1.0) and by["grad_dot", 2] == pytest.approx(1.0)
    assert by["wfd", 1] < 0.99
    assert len(records) == 6 and json.loads((tmp_path / "lds.json").read_text())["records"] == records
    with pytest.raises(TarotInputError, match="needs 1..2 members"):
        lds_pipeline.lds_evaluate(mp, op, members, ["wfd"], [3], tmp_path / "x.json")

    lds_report.write_lds_table(tmp_path / "lds.json", tmp_path / "t.csv", tmp_path / "t.md", "toy")
    md = (tmp_path / "t.md").read_text()
    assert "| Grad-Dot | **1.000 ± 0.000** | **1.000 ± 0.000** |" in md
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("method,ensemble,lds,std")
    lds_report.plot_lds(tmp_path / "lds.json", tmp_path / "t.png", "toy")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_a_task_without_model_outputs_is_refused_with_the_missing_methods():
    from tarot_select.tasks import Task, get_task, require_model_outputs

    bare = type("Bare", (Task,), {"name": "bare"})
    bare.__abstractmethods__ = frozenset()  # only the protocol matters here
    with pytest.raises(TarotInputError, match="lacks downstream_model, output_fn, outputs, train_weights"):
        require_model_outputs(bare({}))
    digits = get_task("digits", {"kind": "digits"})
    assert require_model_outputs(digits) is digits


# --------------------------------------------------------------------------- output-gradient features


def _tiny_mnist(rng: np.random.Generator, n: int = 12):
    task = get_task("mnist_mlp", {"hidden": [5]}, seed=0)
    x = torch.from_numpy(rng.uniform(size=(n, 784)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, size=n))
    ds = torch.utils.data.TensorDataset(x, y)
    data = TaskData(candidates=ds, targets=ds, evaluation=ds, sources=np.full(n, "mnist"))
    torch.manual_seed(1)
    state = {k: v.detach().clone() for k, v in task.downstream_model().state_dict().items()}
    return task, data, state, x, y


def test_output_gradient_features_equal_per_sample_margin_gradients(rng):
    task, data, state, x, y = _tiny_mnist(rng)
    feats = output_gradient_features(task, data, state, "candidates", proj_kind="none", batch_size=5)
    model = task.downstream_model()
    model.load_state_dict(state)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def sample_margin(p, xi, label: int):
        logits = functional_call(model, p, (xi.unsqueeze(0),))[0]
        others = torch.cat([logits[:label], logits[label + 1 :]])
        return logits[label] - torch.logsumexp(others, 0)

    rows = []
    for xi, yi in zip(x, y.tolist()):
        g = grad(sample_margin)(params, xi, yi)  # torch.func, one sample at a time
        rows.append(torch.cat([g[k].reshape(-1) for k, _ in model.named_parameters()]))
    want = torch.stack(rows).numpy()
    assert feats.shape == (12, 784 * 5 + 5 + 5 * 10 + 10) == want.shape
    np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-6)
    projected = output_gradient_features(task, data, state, "targets", proj_dim=16, seed=3)
    assert projected.shape == (12, 16) and projected.dtype == np.float32
    np.testing.assert_array_equal(projected, output_gradient_features(task, data, state, "targets", 16, 3))


def test_classifier_hooks_on_the_digits_task(tmp_path):
    task = get_task("digits", {"per_source": 20, "n_targets": 20, "n_evaluation": 40, "downstream": {"epochs": 1}})
    task.prepare(tmp_path)
    data = task.load(tmp_path)
    state = task.train_downstream(data, "candidates", np.arange(40), None, seed=0)
    out = task.outputs(data, state, "targets")
    q = task.train_weights(data, state, "targets")
    model = task.downstream_model()
    model.load_state_dict(state)
    x, y = data.targets.tensors
    with torch.no_grad():
        logits = model(x).double()
    np.testing.assert_allclose(out, margin(logits, y).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(q, 1.0 - logits.softmax(1)[torch.arange(len(y)), y].numpy(), rtol=1e-4, atol=1e-6)
    feats = output_gradient_features(task, data, state, "targets", proj_dim=8)
    assert feats.shape == (20, 8) and np.isfinite(feats).all()
