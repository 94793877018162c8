"""LDS workflow stages: user files are checked, chunks gather in order, and the evaluation
ranks a perfect attribution first on a case with a known answer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tarot_select import lds_pipeline, lds_report
from tarot_select.errors import TarotInputError
from tarot_select.lds import subset_masks


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
