"""LDS workflow stages: user files are checked, chunks gather in order, the evaluation
ranks a perfect attribution first on a case with a known answer and writes paired
differences, the report marks the diagnostic rows, and the output-gradient features of a
task equal per-sample margin gradients."""

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
    methods = ["grad_dot", "wfd", "trak", "trak_no_q", "wfd_times_q"]
    records = lds_pipeline.lds_evaluate(mp, op, members, methods, [1, 2], tmp_path / "lds.json", n_bootstrap=20)
    by = {(r["method"], r["ensemble"]): r["lds"] for r in records}
    assert by["grad_dot", 1] == pytest.approx(1.0) and by["grad_dot", 2] == pytest.approx(1.0)
    assert by["wfd", 1] < 0.99
    saved = json.loads((tmp_path / "lds.json").read_text())
    assert len(records) == 10 and saved["records"] == records
    assert {r["method"] for r in records if r["diagnostic"]} == {"trak_no_q", "wfd_times_q"}
    # paired differences: every method against wfd, trak against trak_no_q, wfd_times_q against trak
    diffs = {(r["a"], r["b"], r["ensemble"]): r for r in saved["differences"]}
    assert len(diffs) == 6 * 2
    for e in (1, 2):
        r = diffs["wfd", "grad_dot", e]
        assert r["diff"] == pytest.approx(by["wfd", e] - by["grad_dot", e]) and r["ci_high"] < 0.0
        # the members' weights are all 1, so TRAK and TRAK w/o q coincide: exactly 0, zero width
        same = diffs["trak", "trak_no_q", e]
        assert (same["diff"], same["ci_low"], same["ci_high"], same["std"]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(TarotInputError, match="needs 1..2 members"):
        lds_pipeline.lds_evaluate(mp, op, members, ["wfd"], [3], tmp_path / "x.json")
    with pytest.raises(TarotInputError, match="two different methods"):
        lds_pipeline.lds_evaluate(mp, op, members, ["wfd", "trak"], [1], tmp_path / "x.json", pairs=[("wfd", "nope")])

    lds_report.write_lds_table(tmp_path / "lds.json", tmp_path / "t.csv", tmp_path / "t.md", "toy")
    md = (tmp_path / "t.md").read_text()
    assert "| Grad-Dot | paper | **1.000 ± 0.000** | **1.000 ± 0.000** |" in md
    assert "| TRAK w/o (1 − p_y) (diagnostic) | *diagnostic* |" in md
    assert "| whitened cosine × (1 − p_y) (diagnostic) | *diagnostic* |" in md
    assert "| TRAK − TRAK w/o q | +0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] |" in md
    wfd_vs_dot = next(line for line in md.splitlines() if line.startswith("| WFD − Grad-Dot |"))
    assert wfd_vs_dot.count("†") == 2 and "−" in wfd_vs_dot
    csv = (tmp_path / "t.csv").read_text().splitlines()
    assert csv[0].startswith("method,ensemble,lds,std") and csv[0].endswith(",diagnostic")
    assert [line.split(",")[0] for line in csv[1:]][-4:] == ["trak_no_q", "trak_no_q", "wfd_times_q", "wfd_times_q"]
    lds_report.plot_lds(tmp_path / "lds.json", tmp_path / "t.png", "toy")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_matches_ensemble_scores_with_weights(tmp_path):
    """lds_evaluate's running sums over members equal ensemble_scores of the first E members."""
    from tarot_select.lds import ATTRIBUTION_METHODS, ensemble_scores, lds

    rng = np.random.default_rng(3)
    n, m, d, n_sub = 50, 8, 4, 30
    masks = subset_masks(n, n_sub, 0.5, seed=2)
    outputs = rng.normal(size=(n_sub, m)) + masks.astype(float) @ rng.normal(size=(n, m))
    mp, op = _save(tmp_path / "masks.npy", masks), _save(tmp_path / "outputs.npy", outputs)
    feats = []
    paths = []
    for e in range(3):
        x, z, w = rng.normal(size=(n, d)), rng.normal(size=(m, d)), rng.uniform(0.05, 0.95, size=n)
        feats.append((x, z, w))
        paths.append(tmp_path / f"w{e}.npz")
        np.savez(paths[-1], train=x, targets=z, weights=w, meta=np.array("{}"))
    records = lds_pipeline.lds_evaluate(
        mp, op, paths, list(ATTRIBUTION_METHODS), [1, 3], tmp_path / "lds.json", n_bootstrap=50, seed=4
    )
    for r in records:
        want = lds(ensemble_scores(r["method"], feats[: r["ensemble"]]), masks, outputs, n_bootstrap=50, seed=4)
        assert r["lds"] == pytest.approx(want.value, abs=1e-12), r["method"]
        assert r["ci_low"] == pytest.approx(want.ci_low, abs=1e-12)


def _record(method, e, value):
    return {
        "method": method,
        "ensemble": e,
        "lds": value,
        "std": 0.01,
        "ci_low": value - 0.02,
        "ci_high": value + 0.02,
        "n_targets": 100,
        "n_excluded": 0,
        "n_subsets": 50,
    }


def test_report_marks_diagnostics_and_never_bolds_them(tmp_path, monkeypatch):
    # an lds.json as older versions wrote it: no "diagnostic" field, no differences
    data = {
        "records": [
            _record("trak_no_q", 1, 0.30),  # best of the column, but a diagnostic
            _record("wfd", 1, 0.20),
            _record("trak", 1, 0.25),
            _record("wfd_times_q", 1, 0.28),
        ]
    }
    frame = lds_report.lds_frame(data)
    assert frame["method"].tolist() == ["wfd", "trak", "trak_no_q", "wfd_times_q"]
    assert frame["diagnostic"].tolist() == [False, False, True, True]
    lds_report.write_lds_table(data, tmp_path / "t.csv", tmp_path / "t.md", "toy")
    md = (tmp_path / "t.md").read_text()
    assert "| TRAK | paper | **0.250 ± 0.010** |" in md
    assert "| TRAK w/o (1 − p_y) (diagnostic) | *diagnostic* | 0.300 ± 0.010 |" in md
    assert "Paired differences" not in md
    assert lds_report.format_difference(-0.0912, -0.11, -0.071) == "−0.091 [−0.110, −0.071] †"
    assert lds_report.format_difference(0.01, -0.02, 0.04) == "+0.010 [−0.020, +0.040]"

    # the figure draws the diagnostics dotted, the paper's methods solid or dashed
    figures = []
    monkeypatch.setattr(lds_report.plt, "close", figures.append)
    lds_report.plot_lds(data, tmp_path / "f.png", "toy")
    styles = {line.get_label(): line.get_linestyle() for line in figures[0].axes[0].get_lines()}
    assert styles == {
        "WFD (TAROT)": "-",
        "TRAK": "-",
        "TRAK w/o (1 − p_y) (diagnostic)": ":",
        "whitened cosine × (1 − p_y) (diagnostic)": ":",
    }


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
