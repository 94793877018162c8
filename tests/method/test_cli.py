import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tarot_select import ot_distance, select
from tarot_select.cli import main
from tarot_select.io import load_features, save_features
from tarot_select.whiten import whiten


@pytest.fixture
def feats(tmp_path, rng):
    c, t = tmp_path / "C.npy", tmp_path / "T.npy"
    save_features(c, rng.normal(size=(200, 8)), {"projector": {"kind": "rademacher"}})
    np.save(t, rng.normal(size=(20, 8)).astype(np.float32))
    return c, t


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "method,options,kwargs",
    [
        ("tarot", [], {}),
        ("random", ["--seed", 3], {"seed": 3}),
        ("dsdm", [], {}),
        ("less", [], {}),
        # the whitening options reach the library (each changes this selection)
        (
            "tarot",
            ["--whiten", "zca", "--no-normalize", "--eps", 0.5],
            {"whiten": "zca", "normalize": False, "eps": 0.5},
        ),
        ("tarot", ["--whiten", "none"], {"whiten": "none"}),
    ],
)
def test_select_writes_csv_and_sidecar(feats, tmp_path, capsys, method, options, kwargs):
    c, t = feats
    out = tmp_path / "sel" / "S.csv"
    code, stdout, _ = run(
        ["select", "--candidates", c, "--targets", t, "--method", method, "--budget", 30, "--out", out, *options],
        capsys,
    )
    assert code == 0 and "selected 30 of 200" in stdout
    rows = out.read_text().splitlines()
    assert rows[0] == "index,weight" and len(rows) == 31
    idx = [int(r.split(",")[0]) for r in rows[1:]]
    # the library's selection, in its order, for the same files and options
    expected = select(method, load_features(c).array, load_features(t).array, budget=30, **kwargs)
    assert idx == expected.indices.tolist()
    if kwargs and method == "tarot":
        default = select(method, load_features(c).array, load_features(t).array, budget=30)
        assert set(idx) != set(default.indices.tolist())
    meta = json.loads((tmp_path / "sel" / "S.json").read_text())
    assert meta["method"] == method and meta["size"] == 30 and meta["candidates"] == str(c)


def test_otm_and_weights(feats, tmp_path, capsys):
    c, t = feats
    out = tmp_path / "otm.csv"
    code, _, _ = run(
        [
            "select",
            "--candidates",
            c,
            "--targets",
            t,
            "--method",
            "otm",
            "--folds",
            4,
            "--weighting",
            "potential",
            "--repeat",
            2,
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0
    rows = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)
    w = rows[:, 1]
    assert w.min() >= 1 and w.sum() == 2 * len(w)
    assert json.loads(out.with_suffix(".json").read_text())["chosen_ratio"] == pytest.approx(len(w) / 200)
    ref = select("otm", load_features(c).array, load_features(t).array, n_folds=4, weighting="potential", repeat=2)
    np.testing.assert_array_equal(rows[:, 0].astype(int), ref.indices)
    np.testing.assert_array_equal(w, ref.weights)


def test_distance_command(feats, capsys):
    c, t = feats
    code, stdout, _ = run(["distance", "--source", c, "--target", t], capsys)
    wc, wt = whiten(load_features(c).array, load_features(t).array, "cholesky")
    assert code == 0 and float(stdout) == pytest.approx(ot_distance(wc, wt).value, rel=1e-8)
    code, stdout, _ = run(["distance", "--source", t, "--target", t], capsys)
    assert code == 0 and float(stdout) == pytest.approx(0.0, abs=1e-6)


def _bad(tmp_path, rng, name, array):
    p = tmp_path / name
    np.save(p, array)
    return p


@pytest.mark.parametrize(
    "case,message",
    [
        ("dims", "dimension mismatch: candidates have 8 dims, targets have 5"),
        ("nan", "candidates: row 3 holds NaN or Inf"),
        ("inf", "targets: row 0 holds NaN or Inf"),
        ("empty", "targets: is empty"),
        ("budget", "budget 201 is larger than the candidate pool (200 samples)"),
        ("method", "unknown method 'best'"),
        ("missing", "feature file not found"),
        ("ratio", "ratio must be in (0, 1]"),
        ("nosize", "method tarot needs --budget or --ratio"),
    ],
)
def test_bad_input_one_clear_line_and_nothing_written(feats, tmp_path, rng, capsys, case, message):
    c, t = feats
    args = {"--candidates": c, "--targets": t, "--method": "tarot", "--budget": 10}
    if case == "dims":
        args["--targets"] = _bad(tmp_path, rng, "t5.npy", rng.normal(size=(20, 5)))
    elif case == "nan":
        x = rng.normal(size=(200, 8))
        x[3, 2] = np.nan
        args["--candidates"] = _bad(tmp_path, rng, "cn.npy", x)
    elif case == "inf":
        x = rng.normal(size=(20, 8))
        x[0, 0] = np.inf
        args["--targets"] = _bad(tmp_path, rng, "ti.npy", x)
    elif case == "empty":
        args["--targets"] = _bad(tmp_path, rng, "te.npy", np.zeros((0, 8)))
    elif case == "budget":
        args["--budget"] = 201
    elif case == "method":
        args["--method"] = "best"
    elif case == "missing":
        args["--candidates"] = tmp_path / "nope.npy"
    elif case == "ratio":
        del args["--budget"]
        args["--ratio"] = 1.5
    elif case == "nosize":
        del args["--budget"]
    out = tmp_path / "out" / "S.csv"
    argv = ["select", "--out", out] + [x for kv in args.items() for x in kv]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_console_script_is_installed():
    res = subprocess.run(
        [sys.executable, "-m", "tarot_select.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0 and "tarot-select" in res.stdout


# --------------------------------------------------------------------------- nothing the user owns is overwritten


def _files(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "out_of",
    [
        lambda tmp, c, t: c,  # the candidates themselves
        lambda tmp, c, t: t,
        lambda tmp, c, t: c.with_suffix(".json"),  # an input's sidecar
        lambda tmp, c, t: tmp / "C.csv",  # its sidecar C.json is the candidates' sidecar
        lambda tmp, c, t: tmp / "T.tsv",  # its sidecar T.json would become the targets' sidecar
        lambda tmp, c, t: tmp / "sub" / ".." / "C.npy",
        "symlink",
    ],
)
def test_out_that_is_an_input_or_its_sidecar_is_refused(feats, tmp_path, capsys, out_of):
    c, t = feats
    if out_of == "symlink":
        out = tmp_path / "link.csv"
        out.symlink_to(c)
    else:
        out = out_of(tmp_path, c, t)
    before = _files(tmp_path)
    code, _, err = run(
        ["select", "--candidates", c, "--targets", t, "--method", "random", "--budget", 5, "--out", out], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "choose another output name" in err, err
    assert _files(tmp_path) == before


def test_bad_out_is_refused_before_any_work(feats, tmp_path, capsys, monkeypatch):
    c, t = feats
    (tmp_path / "afile").write_text("x")
    ran = []
    monkeypatch.setattr("tarot_select.cli.select", lambda *a, **k: ran.append(1))
    monkeypatch.setattr("tarot_select.cli.load_features", lambda *a, **k: ran.append(1))
    for out, message in [
        (tmp_path / "afile" / "S.csv", "afile is not a directory"),
        (tmp_path / "afile" / "deeper" / "S.csv", "afile is not a directory"),
        (tmp_path, "is a directory"),
        (tmp_path / ("x" * 300 + ".csv"), "longer than"),
    ]:
        code, _, err = run(
            ["select", "--candidates", c, "--targets", t, "--method", "tarot", "--budget", 5, "--out", out], capsys
        )
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert ran == []


def test_outputs_are_readable_by_the_group(feats, tmp_path, capsys):
    c, t = feats
    out = tmp_path / "S.csv"
    old = os.umask(0o022)
    try:
        code, _, _ = run(
            ["select", "--candidates", c, "--targets", t, "--method", "random", "--budget", 5, "--out", out], capsys
        )
    finally:
        os.umask(old)
    assert code == 0
    assert {p.stat().st_mode & 0o777 for p in (out, out.with_suffix(".json"))} == {0o644}


# --------------------------------------------------------------------------- one line, never a traceback


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
        (["--seed", "x"], "argument --seed: expected an integer >= 0"),
        (["--budget", "2.5"], "argument --budget: expected an integer >= 1"),
        (["--budget", "0"], "argument --budget: expected an integer >= 1"),
        (["--reg", "0"], "argument --reg: expected a finite number > 0"),
        (["--reg", "nan"], "argument --reg: expected a finite number > 0"),
        (["--eps", "-1"], "argument --eps: expected a finite number >= 0"),
        (["--eps", "inf"], "argument --eps: expected a finite number >= 0"),
        (["--repeat", "0.5"], "argument --repeat: expected a finite number >= 1"),
        (["--folds", "1"], "argument --folds: expected an integer >= 2"),
        (["--whiten", "pca"], "argument --whiten: invalid choice: 'pca'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--ratio", "0.5"], "argument --ratio: not allowed with argument --budget"),
    ],
)
def test_bad_options_are_one_line_at_parse_time(feats, tmp_path, capsys, extra, message):
    c, t = feats
    out = tmp_path / "o" / "S.csv"
    code, _, err = run(
        ["select", "--candidates", c, "--targets", t, "--method", "tarot", "--budget", 5, "--out", out, *extra], capsys
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith("tarot-select: error: ") and message in err, err
    assert not out.parent.exists()


@pytest.mark.parametrize("argv", [[], ["select"], ["select", "--candidates", "c.npy"], ["nope"]])
def test_usage_errors_are_one_line(capsys, argv):
    code, _, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("tarot-select: error: "), err


@pytest.mark.parametrize(
    "labels,message",
    [
        (np.arange(25), "one label per target (20), got shape (25,)"),
        (np.zeros((20, 2), dtype=int), "got shape (20, 2)"),
        (np.full(20, np.nan), "NaN or Inf labels"),
        (np.array([{"a": 1}] * 20, dtype=object), "holds Python objects"),
        (b"", "cannot read"),
    ],
)
def test_bad_target_groups_are_one_line(feats, tmp_path, capsys, labels, message):
    c, t = feats
    g = tmp_path / "G.npy"
    if isinstance(labels, bytes):
        g.write_bytes(labels)
    else:
        np.save(g, labels, allow_pickle=True)
    out = tmp_path / "o" / "S.csv"
    argv = ["select", "--candidates", c, "--targets", t, "--method", "less", "--budget", 5, "--target-groups", g]
    code, _, err = run([*argv, "--out", out], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and "G.npy" in err, err
    assert not out.parent.exists()


def test_damaged_candidates_are_one_line(feats, tmp_path, capsys):
    c, t = feats
    data = c.read_bytes()
    c.write_bytes(data[: len(data) // 2])
    code, _, err = run(
        ["select", "--candidates", c, "--targets", t, "--method", "random", "--budget", 5, "--out", tmp_path / "S.csv"],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "truncated or changed since it was written" in err and "C.npy" in err


def test_api_takes_python_lists_and_refuses_non_numbers(rng):
    from tarot_select import TarotInputError, select

    x, y = rng.normal(size=(40, 4)), rng.normal(size=(8, 4))
    from_lists = select("tarot", x.tolist(), y.tolist(), budget=6, evaluate=False)
    from_arrays = select("tarot", x, y, budget=6, evaluate=False)
    assert np.array_equal(from_lists.indices, from_arrays.indices)
    for kwargs, message in [
        ({"reg": "small"}, "reg must be a number"),
        ({"reg": -1.0}, "reg must be finite and > 0"),
        ({"eps": None}, "eps must be a number"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": 1.5}, "seed must be an integer >= 0"),
        ({"normalize": "no"}, "normalize must be True or False"),
        ({"checkpoint_dims": ["a"]}, "checkpoint_dims entry must be an integer"),
    ]:
        with pytest.raises(TarotInputError, match=re.escape(message)):
            select("tarot", x, y, budget=6, **kwargs)
    with pytest.raises(TarotInputError, match="candidates: cannot be read as an array"):
        select("random", [[1.0, 2.0], [3.0]], y, budget=1)
