"""``tarot-select select --method infdist``: landmark files, options, and one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tarot_select import InfdistOptions, choose_landmarks, influence_distillation
from tarot_select.cli import main
from tarot_select.io import save_features

CKPTS = [{"dim": 4, "weight": 3e-5}, {"dim": 6, "weight": 1e-5}]


@pytest.fixture
def files(tmp_path, rng):
    """Embeddings (150 x 5), landmark features (30 x 10, two checkpoint blocks), targets (8 x 10), indices."""
    emb = rng.normal(size=(150, 5)).astype(np.float32)
    idx = choose_landmarks(150, 30, seed=1)
    land = rng.normal(size=(30, 10)).astype(np.float32)
    targ = rng.normal(size=(8, 10)).astype(np.float32)
    paths = {k: tmp_path / f"{k}.npy" for k in ("emb", "land", "targ", "idx")}
    save_features(paths["emb"], emb, {"kind": "jvp-embeddings"})
    save_features(paths["land"], land, {"checkpoints": CKPTS})
    save_features(paths["targ"], targ, {"checkpoints": CKPTS})
    np.save(paths["idx"], idx)
    return paths, (emb, idx, land, targ)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _argv(paths, out, **extra):
    argv = ["select", "--method", "infdist", "--candidates", paths["emb"], "--targets", paths["targ"]]
    argv += ["--landmark-indices", paths["idx"], "--landmark-features", paths["land"], "--out", out]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return argv


@pytest.mark.parametrize("strategy,kernel", [("round_robin", "rbf"), ("top_k", "linear")])
def test_infdist_writes_the_library_selection(files, tmp_path, capsys, strategy, kernel):
    paths, (emb, idx, land, targ) = files
    out = tmp_path / "sel" / "S.csv"
    code, stdout, err = run(
        _argv(paths, out, budget=20, strategy=strategy, kernel=kernel, damping=0.05, seed=3), capsys
    )
    assert code == 0, err
    assert "infdist: selected 20 of 150" in stdout and "OT distance" not in stdout
    got = np.loadtxt(out, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)[:, 0]
    opts = InfdistOptions(kernel=kernel, damping=0.05, strategy=strategy, seed=3)
    want = influence_distillation(
        emb, idx, land, targ, 20, opts, checkpoint_dims=[4, 6], checkpoint_weights=[3e-5, 1e-5]
    )
    assert got.tolist() == want.indices.tolist()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["method"] == "infdist" and meta["size"] == 20 and meta["ot_distance"] is None
    assert meta["landmark_indices"] == str(paths["idx"]) and meta["landmark_features"] == str(paths["land"])
    assert meta["info"]["strategy"] == strategy and meta["info"]["kernel"] == kernel
    assert meta["info"]["n_landmarks"] == 30 and meta["info"]["embedding_dim"] == 5


def test_infdist_bandwidth_option(files, tmp_path, capsys):
    paths, _ = files
    out = tmp_path / "S.csv"
    code, _, err = run(_argv(paths, out, ratio=0.1, bandwidth=0.75), capsys)
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["info"]["bandwidth"] == 0.75 and meta["size"] == 15


def _save(tmp_path, name, array, meta=None):
    p = tmp_path / name
    save_features(p, array, meta)
    return p


@pytest.mark.parametrize(
    "case,message",
    [
        ("no_landmarks", "method infdist needs --landmark-indices and --landmark-features"),
        ("float_indices", "expected a 1-D integer array"),
        ("dup_indices", "landmark indices hold duplicates"),
        ("rows", "landmark features have 29 rows but there are 30 landmark indices"),
        ("dims", "landmark features have 10 dims, targets have 9"),
        ("ckpt_mismatch", "checkpoint dims differ"),
        ("nan_embeddings", "embeddings: row 2 holds NaN or Inf"),
        ("bandwidth_zero", "bandwidth must be a finite number > 0"),
        ("damping_negative", "damping must be a finite number >= 0"),
        ("linear_bandwidth", "the linear kernel has no bandwidth"),
        ("kernel", "argument --kernel: invalid choice: 'laplace'"),
        ("budget", "budget 151 is larger than the candidate pool (150 samples)"),
        ("missing_indices", "landmark indices file not found"),
        ("out_is_input", "choose another output name"),
    ],
)
def test_infdist_bad_input_one_line_nothing_written(files, tmp_path, rng, capsys, case, message):
    paths, (emb, idx, land, targ) = files
    out = tmp_path / "out" / "S.csv"
    extra = {"budget": 10}
    p = dict(paths)
    if case == "float_indices":
        p["idx"] = tmp_path / "fidx.npy"
        np.save(p["idx"], idx.astype(np.float64))
    elif case == "dup_indices":
        p["idx"] = tmp_path / "didx.npy"
        np.save(p["idx"], np.r_[idx[:-1], idx[0]])
    elif case == "rows":
        p["land"] = _save(tmp_path, "l29.npy", land[:29], {"checkpoints": CKPTS})
    elif case == "dims":
        p["targ"] = _save(tmp_path, "t9.npy", targ[:, :9])
    elif case == "ckpt_mismatch":
        p["targ"] = _save(tmp_path, "tc.npy", targ, {"checkpoints": [{"dim": 5}, {"dim": 5}]})
    elif case == "nan_embeddings":
        bad = emb.copy()
        bad[2, 1] = np.nan
        p["emb"] = _save(tmp_path, "en.npy", bad)
    elif case == "bandwidth_zero":
        extra["bandwidth"] = 0
    elif case == "damping_negative":
        extra["damping"] = -1
    elif case == "linear_bandwidth":
        extra.update(kernel="linear", bandwidth=1.0)
    elif case == "kernel":
        extra["kernel"] = "laplace"
    elif case == "budget":
        extra["budget"] = 151
    elif case == "missing_indices":
        p["idx"] = tmp_path / "nope.npy"
    elif case == "out_is_input":
        out = p["land"].with_suffix(".csv")  # its sidecar would replace the landmark features' sidecar
    argv = _argv(p, out, **extra)
    if case == "no_landmarks":
        argv = argv[: argv.index("--landmark-indices")] + argv[argv.index("--out") :]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err, err
    assert not out.exists() and not (tmp_path / "out").exists()
    assert json.loads(paths["land"].with_suffix(".json").read_text())["checkpoints"] == CKPTS
