import json
import subprocess
import sys

import numpy as np
import pytest

from tarot_select.cli import main
from tarot_select.io import save_features


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


@pytest.mark.parametrize("method", ["tarot", "random", "dsdm", "less"])
def test_select_writes_csv_and_sidecar(feats, tmp_path, capsys, method):
    c, t = feats
    out = tmp_path / "sel" / "S.csv"
    code, stdout, _ = run(
        ["select", "--candidates", c, "--targets", t, "--method", method, "--budget", 30, "--out", out], capsys
    )
    assert code == 0 and "selected 30 of 200" in stdout
    rows = out.read_text().splitlines()
    assert rows[0] == "index,weight" and len(rows) == 31
    idx = [int(r.split(",")[0]) for r in rows[1:]]
    assert len(set(idx)) == 30
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
    w = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)[:, 1]
    assert w.min() >= 1 and w.sum() == 2 * len(w)
    assert json.loads(out.with_suffix(".json").read_text())["chosen_ratio"] == pytest.approx(len(w) / 200)


def test_distance_command(feats, capsys):
    c, t = feats
    code, stdout, _ = run(["distance", "--source", c, "--target", t], capsys)
    assert code == 0 and float(stdout) > 0


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
    code, stdout, err = run(argv, capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_console_script_is_installed():
    res = subprocess.run([sys.executable, "-m", "tarot_select.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "tarot-select" in res.stdout
