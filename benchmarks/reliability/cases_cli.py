"""Hostile input to ``tarot-select`` and to :func:`tarot_select.select`.

Classes:

* ``cli-input``: bad files, sidecars and options given to ``tarot-select select``/``distance``;
  each must end in exit 2 with one line on stderr and nothing written (or in a valid selection).
* ``api-input``: the same for :func:`tarot_select.select` called from Python; each must raise
  :class:`~tarot_select.errors.TarotInputError` (or return the right answer).
* ``overwrite``: nothing the user owns is overwritten: ``--out`` that is an input or an
  input's sidecar, an ``--out`` that cannot be written (refused before any work), the mode
  of the files written, and temporary files left by a killed job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
from probe import Case, Verdict, expect_answer, expect_clear_error, run_cli, snapshot

N_CAND, N_TARG, DIM, BUDGET = 60, 12, 4, 10


# --------------------------------------------------------------------------- helpers


def features(work: Path, name: str = "C.npy", n: int = N_CAND, d: int = DIM, sidecar: bool = True, seed: int = 0):
    """A small float32 feature file (with a library-written sidecar unless ``sidecar`` is False)."""
    from tarot_select.io import save_features

    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    path = work / name
    if sidecar:
        save_features(path, x, {"projector": {"kind": "rademacher"}})
    else:
        np.save(path, x)
    return path


def pair(work: Path) -> tuple[Path, Path]:
    """Candidates (with sidecar) and targets (plain ``.npy``) in ``work``."""
    return features(work, "C.npy"), features(work, "T.npy", n=N_TARG, sidecar=False, seed=1)


def select_args(c: Path, t: Path, out: Path, *extra: object, method: str = "random") -> list[object]:
    args: list[object] = ["select", "--candidates", c, "--targets", t, "--method", method, "--out", out]
    if method != "otm" and "--ratio" not in extra and "--budget" not in extra:
        args += ["--budget", BUDGET]
    return args + list(extra)


def cli_error(work: Path, args: list[object]) -> Verdict:
    """Run the CLI in ``work``; expect exit 2, one stderr line and no file changed under ``work``."""
    before = snapshot(work)
    ran = run_cli(args, cwd=work)
    return expect_clear_error(ran, before, snapshot(work))


def valid_selection(out: Path, n: int, size: int | None) -> str | None:
    """None if ``out`` is a selection CSV of unique in-range indices (of ``size`` rows, if given)."""
    if not out.is_file():
        return f"{out.name} was not written"
    rows = out.read_text().splitlines()
    if not rows or rows[0] != "index,weight":
        return f"{out.name}: bad header {rows[:1]}"
    idx = [int(r.split(",")[0]) for r in rows[1:]]
    if size is not None and len(idx) != size:
        return f"{len(idx)} rows, expected {size}"
    if len(set(idx)) != len(idx) or not all(0 <= i < n for i in idx):
        return "indices not unique or out of range"
    return None


def cli_answer(work: Path, args: list[object], out: Path, n: int = N_CAND, size: int | None = BUDGET) -> Verdict:
    ran = run_cli(args, cwd=work)
    return expect_answer(ran, lambda: valid_selection(out, n, size))


def api_error(fn: Callable[[], object]) -> Verdict:
    """Expect ``fn()`` to raise TarotInputError with a one-line message."""
    from tarot_select.errors import TarotInputError

    try:
        fn()
    except TarotInputError as exc:
        msg = str(exc)
        if "\n" in msg.strip():
            return Verdict("traceback", f"multi-line message: {msg[:200]}")
        return Verdict("clear error", msg)
    except Exception:  # noqa: BLE001 - any other exception is what the probe looks for
        return Verdict("traceback", traceback.format_exc().strip().splitlines()[-1])
    return Verdict("silent", "no error raised")


def _write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- cli-input


def _bad_candidates(make: Callable[[Path], Path], method: str = "random") -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        _, t = pair(work)
        c = make(work)
        return cli_error(work, select_args(c, t, work / "out" / "S.csv", method=method))

    return run


def _bad_sidecar(text: str | bytes, method: str = "random") -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        c, t = pair(work)
        _write(c.with_suffix(".json"), text)
        return cli_error(work, select_args(c, t, work / "out" / "S.csv", method=method))

    return run


def _bad_options(*extra: object, method: str = "random") -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        c, t = pair(work)
        return cli_error(work, select_args(c, t, work / "out" / "S.csv", *extra, method=method))

    return run


def _raw_args(*argv: object) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        c, t = pair(work)
        args = [str(a).format(c=c, t=t, out=work / "out" / "S.csv") for a in argv]
        return cli_error(work, args)

    return run


def _bad_groups(make: Callable[[Path], Path]) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        c, t = pair(work)
        g = make(work)
        return cli_error(work, select_args(c, t, work / "out" / "S.csv", "--target-groups", g, method="less"))

    return run


def _npy_bytes(x: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _truncated_npy(work: Path) -> Path:
    data = _npy_bytes(np.ones((N_CAND, DIM), np.float32))
    return _write(work / "cut.npy", data[: len(data) // 2])


def _header_only(work: Path) -> Path:
    data = _npy_bytes(np.ones((N_CAND, DIM), np.float32))
    return _write(work / "head.npy", data[:128])


def _corrupt_header(work: Path) -> Path:
    return _write(work / "corrupt.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<garbage\n" + b"\0" * 64)


def _bad_header_dict(work: Path) -> Path:
    head = "{'descr': '<f4', 'fortran_order': False, 'shape': (60, -4), }"
    head = head + " " * (118 - len(head)) + "\n"
    return _write(work / "neg.npy", b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head.encode())


def _pickled(work: Path) -> Path:
    p = work / "obj.npy"
    np.save(p, np.array([[1.0, "a"]], dtype=object), allow_pickle=True)
    return p


def _typed(dtype: str, shape: tuple[int, ...] = (N_CAND, DIM)) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        p = work / f"x_{dtype}.npy"
        np.save(p, np.ones(shape, dtype=dtype))
        return p

    return make


def _nan_rows(work: Path) -> Path:
    x = np.random.default_rng(0).normal(size=(N_CAND, DIM)).astype(np.float32)
    x[5, 1] = np.nan
    x[9, 0] = -np.inf
    p = work / "nan.npy"
    np.save(p, x)
    return p


def _groups(arr: object, pickle: bool = False) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        p = work / "G.npy"
        np.save(p, np.asarray(arr, dtype=object) if pickle else np.asarray(arr), allow_pickle=pickle)
        return p

    return make


def _symlink_loop(work: Path) -> Path:
    p = work / "loop.npy"
    p.symlink_to(p)
    return p


def _float16_answer(work: Path) -> Verdict:
    x = np.random.default_rng(0).normal(size=(N_CAND, DIM)).astype(np.float16)
    c = work / "C16.npy"
    np.save(c, x)
    _, t = pair(work)
    out = work / "S.csv"
    return cli_answer(work, select_args(c, t, out, method="tarot"), out)


def _fortran_answer(work: Path) -> Verdict:
    x = np.asfortranarray(np.random.default_rng(0).normal(size=(N_CAND, DIM)))
    c = work / "CF.npy"
    np.save(c, x)
    _, t = pair(work)
    out = work / "S.csv"
    return cli_answer(work, select_args(c, t, out, method="dsdm"), out)


def _out_dir_created(work: Path) -> Verdict:
    c, t = pair(work)
    out = work / "a" / "b" / "S.csv"
    return cli_answer(work, select_args(c, t, out, method="tarot"), out)


def _old_sidecar_without_integrity(work: Path) -> Verdict:
    c, t = pair(work)
    side = c.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta.pop("integrity", None)
    side.write_text(json.dumps(meta))
    out = work / "S.csv"
    return cli_answer(work, select_args(c, t, out), out)


def _groups_answer(work: Path) -> Verdict:
    c, t = pair(work)
    g = work / "G.npy"
    np.save(g, np.arange(N_TARG) % 3)
    out = work / "S.csv"
    return cli_answer(work, select_args(c, t, out, "--target-groups", g, method="less"), out)


def _distance_corrupt(work: Path) -> Verdict:
    c, _ = pair(work)
    bad = _corrupt_header(work)
    return cli_error(work, ["distance", "--source", c, "--target", bad])


def _distance_bad_reg(work: Path) -> Verdict:
    c, t = pair(work)
    return cli_error(work, ["distance", "--source", c, "--target", t, "--reg", "-1"])


def _features_directory(work: Path) -> Path:
    (work / "dir.npy").mkdir()
    return work / "dir.npy"


CLI_INPUT: list[tuple[str, Callable[[Path], Verdict]]] = [
    ("zero-byte-candidates", _bad_candidates(lambda w: _write(w / "zero.npy", b""))),
    ("text-as-candidates", _bad_candidates(lambda w: _write(w / "text.npy", "a,b\n1,2\n"))),
    ("corrupt-npy-header", _bad_candidates(_corrupt_header)),
    ("negative-shape-in-header", _bad_candidates(_bad_header_dict)),
    ("truncated-npy-no-sidecar", _bad_candidates(_truncated_npy)),
    ("npy-header-only", _bad_candidates(_header_only)),
    ("pickled-object-array", _bad_candidates(_pickled)),
    ("int-candidates", _bad_candidates(_typed("int64"))),
    ("bool-candidates", _bad_candidates(_typed("bool"))),
    ("complex-candidates", _bad_candidates(_typed("complex64"))),
    ("one-d-candidates", _bad_candidates(_typed("float32", (N_CAND,)))),
    ("three-d-candidates", _bad_candidates(_typed("float32", (N_CAND, 2, 2)))),
    ("zero-row-candidates", _bad_candidates(_typed("float32", (0, DIM)))),
    ("zero-column-candidates", _bad_candidates(_typed("float32", (N_CAND, 0)))),
    ("nan-inf-rows", _bad_candidates(_nan_rows, method="tarot")),
    ("candidates-is-a-directory", _bad_candidates(_features_directory)),
    ("candidates-symlink-loop", _bad_candidates(_symlink_loop)),
    ("candidates-name-too-long", _bad_candidates(lambda w: w / ("c" * 300 + ".npy"))),
    ("candidates-under-a-file", _bad_candidates(lambda w: _write(w / "f", "x") / "C.npy")),
    ("sidecar-not-json", _bad_sidecar("{not json")),
    ("sidecar-not-utf8", _bad_sidecar(b"\xff\xfe\x00garbage")),
    ("sidecar-zero-bytes", _bad_sidecar("")),
    ("sidecar-json-list", _bad_sidecar("[1, 2, 3]")),
    ("sidecar-json-string", _bad_sidecar('"C.npy"')),
    ("sidecar-shape-not-list", _bad_sidecar('{"shape": 5}')),
    ("sidecar-wrong-shape", _bad_sidecar('{"shape": [61, 4]}')),
    ("sidecar-checkpoints-not-list", _bad_sidecar('{"checkpoints": "abc"}', method="dsdm")),
    ("sidecar-checkpoint-dims-text", _bad_sidecar('{"checkpoints": [{"dim": "x"}]}', method="dsdm")),
    ("sidecar-checkpoint-dims-wrong-sum", _bad_sidecar('{"checkpoints": [{"dim": 3}, {"dim": 3}]}', method="dsdm")),
    ("sidecar-checkpoint-weight-text", _bad_sidecar('{"checkpoints": [{"dim": 4, "weight": "lr"}]}', method="less")),
    ("sidecar-integrity-not-object", _bad_sidecar('{"integrity": 7}')),
    ("groups-wrong-length", _bad_groups(_groups(np.arange(N_TARG + 3)))),
    ("groups-two-d", _bad_groups(_groups(np.zeros((N_TARG, 2), dtype=int)))),
    ("groups-pickled", _bad_groups(_groups([{"a": 1}] * N_TARG, pickle=True))),
    ("groups-zero-bytes", _bad_groups(lambda w: _write(w / "G.npy", b""))),
    ("groups-float-nan", _bad_groups(_groups(np.full(N_TARG, np.nan)))),
    ("groups-missing", _bad_groups(lambda w: w / "nope.npy")),
    ("seed-negative", _bad_options("--seed", "-1", method="tarot")),
    ("seed-negative-otm", _bad_options("--seed", "-3", method="otm")),
    ("seed-text", _bad_options("--seed", "one")),
    ("reg-zero", _bad_options("--reg", "0", method="tarot")),
    ("reg-negative", _bad_options("--reg", "-0.5", method="tarot")),
    ("reg-nan", _bad_options("--reg", "nan", method="tarot")),
    ("reg-inf", _bad_options("--reg", "inf", method="tarot")),
    ("eps-negative", _bad_options("--eps", "-1", method="tarot")),
    ("eps-nan", _bad_options("--eps", "nan", method="tarot")),
    ("repeat-nan", _bad_options("--weighting", "potential", "--repeat", "nan", method="tarot")),
    ("repeat-below-one", _bad_options("--weighting", "potential", "--repeat", "0.5", method="tarot")),
    ("folds-zero", _bad_options("--folds", "0", method="otm")),
    ("folds-negative", _bad_options("--folds", "-2", method="otm")),
    ("budget-zero", _bad_options("--budget", "0")),
    ("budget-text", _bad_options("--budget", "ten")),
    ("budget-float", _bad_options("--budget", "2.5")),
    ("ratio-nan", _bad_options("--ratio", "nan")),
    ("ratio-zero", _bad_options("--ratio", "0")),
    (
        "unknown-method",
        _raw_args(
            "select", "--candidates", "{c}", "--targets", "{t}", "--method", "best", "--budget", "5", "--out", "{out}"
        ),
    ),
    ("unknown-whiten", _bad_options("--whiten", "pca")),
    (
        "unknown-option",
        _raw_args(
            "select",
            "--candidates",
            "{c}",
            "--targets",
            "{t}",
            "--method",
            "random",
            "--budget",
            "5",
            "--out",
            "{out}",
            "--bogus",
        ),
    ),
    (
        "missing-out",
        _raw_args("select", "--candidates", "{c}", "--targets", "{t}", "--method", "random", "--budget", "5"),
    ),
    ("no-command", _raw_args()),
    ("budget-and-ratio", _bad_options("--budget", "3", "--ratio", "0.5")),
    ("otm-with-budget", _bad_options("--budget", "3", method="otm")),
    ("distance-corrupt-target", _distance_corrupt),
    ("distance-negative-reg", _distance_bad_reg),
]

CLI_ANSWERS: list[tuple[str, Callable[[Path], Verdict]]] = [
    ("float16-candidates-answer", _float16_answer),
    ("fortran-order-answer", _fortran_answer),
    ("out-dir-created-answer", _out_dir_created),
    ("old-sidecar-without-integrity-answer", _old_sidecar_without_integrity),
    ("target-groups-answer", _groups_answer),
]


# --------------------------------------------------------------------------- api-input


def _arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N_CAND, DIM)), rng.normal(size=(N_TARG, DIM))


def _api_call(
    method: str = "random", cand: object = None, targ: object = None, **kw: object
) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        from tarot_select import select

        c, t = _arrays()
        kw.setdefault("budget", None if method == "otm" else BUDGET)
        return api_error(lambda: select(method, c if cand is None else cand, t if targ is None else targ, **kw))

    return run


def _api_lists_answer(work: Path) -> Verdict:
    from tarot_select import select

    c, t = _arrays()
    try:
        sel = select("tarot", c.tolist(), t.tolist(), budget=BUDGET)
    except Exception:  # noqa: BLE001
        return Verdict("traceback", traceback.format_exc().strip().splitlines()[-1])
    idx = np.asarray(sel.indices)
    if idx.shape != (BUDGET,) or len(set(idx.tolist())) != BUDGET or idx.min() < 0 or idx.max() >= N_CAND:
        return Verdict("silent", f"bad indices {idx}")
    ref = select("tarot", c, t, budget=BUDGET)
    if not np.array_equal(np.sort(ref.indices), np.sort(idx)):
        return Verdict("silent", "lists and arrays give different selections")
    return Verdict("right answer")


API_INPUT: list[tuple[str, Callable[[Path], Verdict]]] = [
    ("ragged-list", _api_call(cand=[[1.0, 2.0], [3.0]])),
    ("string-list", _api_call(cand=[["a", "b"], ["c", "d"]])),
    ("nested-none", _api_call(cand=[[None, 1.0], [2.0, 3.0]])),
    ("scalar-candidates", _api_call(cand=3.0)),
    ("dict-candidates", _api_call(cand={"a": 1})),
    ("int-list-targets", _api_call(targ=[[1, 2, 3, 4]] * 3)),
    ("reg-text", _api_call("tarot", reg="small")),
    ("reg-none", _api_call("tarot", reg=None)),
    ("reg-negative", _api_call("tarot", reg=-1.0)),
    ("reg-list", _api_call("tarot", reg=[0.1])),
    ("eps-text", _api_call("tarot", eps="tiny")),
    ("eps-negative", _api_call("tarot", eps=-1e-3)),
    ("seed-negative", _api_call("random", seed=-1)),
    ("seed-float", _api_call("otm", seed=1.5)),
    ("seed-text", _api_call("random", seed="0")),
    ("folds-zero", _api_call("otm", n_folds=0)),
    ("patience-zero", _api_call("otm", patience=0)),
    ("repeat-text", _api_call("tarot", weighting="potential", repeat="2")),
    ("budget-float", _api_call("random", budget=2.5)),
    ("budget-numpy-array", _api_call("random", budget=np.array([3]))),
    ("ratio-text", _api_call("random", budget=None, ratio="0.5")),
    ("normalize-text", _api_call("tarot", normalize="no")),
    ("groups-wrong-length", _api_call("less", target_groups=[0, 1])),
    ("groups-two-d", _api_call("less", target_groups=np.zeros((N_TARG, 2)))),
    ("checkpoint-dims-text", _api_call("dsdm", checkpoint_dims=["a"])),
    ("checkpoint-dims-wrong-sum", _api_call("dsdm", checkpoint_dims=[1, 1])),
    ("checkpoint-weights-text", _api_call("less", checkpoint_dims=[2, 2], checkpoint_weights=["a", "b"])),
    ("train-weights-wrong-shape", _api_call("dsdm", train_weights=np.ones(3))),
    ("wfd-features-lists", _api_call("tarot", wfd_features=([[1.0]], [[1.0]]))),
    ("dsdm-ridge-negative", _api_call("dsdm", dsdm_ridge=-1.0)),
]

API_ANSWERS: list[tuple[str, Callable[[Path], Verdict]]] = [("python-lists-answer", _api_lists_answer)]


# --------------------------------------------------------------------------- overwrite


def _out_is(which: Callable[[Path, Path, Path], Path], method: str = "random", groups: bool = False):
    """``--out`` set to ``which(work, C, T)``: expect a clear error and nothing changed."""

    def run(work: Path) -> Verdict:
        c, t = pair(work)
        extra: list[object] = []
        if groups:
            np.save(work / "G.npy", np.arange(N_TARG) % 2)
            extra = ["--target-groups", work / "G.npy"]
        return cli_error(work, select_args(c, t, which(work, c, t), *extra, method=method))

    return run


def _symlink_to(target_of: Callable[[Path, Path], Path]) -> Callable[[Path, Path, Path], Path]:
    def which(work: Path, c: Path, t: Path) -> Path:
        link = work / "link.csv"
        link.symlink_to(target_of(c, t))
        return link

    return which


def _ckpt_sidecar(work: Path) -> Verdict:
    """``--out Cs_ckpt.csv`` beside ``Cs_ckpt.npy``: the output's sidecar is the input's."""
    from tarot_select.io import save_features

    c = work / "Cs_ckpt.npy"
    meta = {"checkpoints": [{"dim": 2, "weight": 1.0}, {"dim": 2, "weight": 0.5}]}
    save_features(c, np.random.default_rng(0).normal(size=(N_CAND, DIM)), meta)
    _, t = pair(work)
    return cli_error(work, select_args(c, t, work / "Cs_ckpt.csv"))


def _late_out(make_out: Callable[[Path], Path]) -> Callable[[Path], Verdict]:
    """A bad ``--out`` must be refused before any selection runs (``select`` is never called)."""

    def run(work: Path) -> Verdict:
        c, t = pair(work)
        out = make_out(work)
        with mock.patch("tarot_select.cli.select", side_effect=RuntimeError("selection ran before --out was checked")):
            before = snapshot(work)
            ran = run_cli(select_args(c, t, out, method="tarot"), cwd=work)
        if ran.raised and "selection ran before --out was checked" in ran.raised:
            return Verdict("late", "the selection ran before the bad --out was noticed")
        return expect_clear_error(ran, before, snapshot(work))

    return run


def _parent_is_file(work: Path) -> Path:
    (work / "afile").write_text("x")
    return work / "afile" / "S.csv"


def _grandparent_is_file(work: Path) -> Path:
    (work / "afile").write_text("x")
    return work / "afile" / "sub" / "S.csv"


def _fifo(work: Path) -> Path:
    os.mkfifo(work / "pipe.csv")
    return work / "pipe.csv"


def _long_name(work: Path) -> Path:
    return work / ("s" * 300 + ".csv")


def _out_is_dir(work: Path) -> Path:
    (work / "outdir").mkdir()
    return work / "outdir"


def _sidecar_is_dir(work: Path) -> Path:
    (work / "S.json").mkdir()
    return work / "S.csv"


def _umask_mode(work: Path) -> Verdict:
    """With umask 022 the selection and its sidecar must be readable by the group (0644), not 0600."""
    c, t = pair(work)
    out = work / "S.csv"
    old = os.umask(0o022)
    try:
        ran = run_cli(select_args(c, t, out), cwd=work)
    finally:
        os.umask(old)

    def check() -> str | None:
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (out, out.with_suffix(".json"))}
        return None if set(modes.values()) == {"0o644"} else f"modes {modes}, expected 0o644"

    return expect_answer(ran, check)


def _umask_mode_features(work: Path) -> Verdict:
    from tarot_select.io import save_features

    old = os.umask(0o002)
    try:
        save_features(work / "F.npy", np.ones((3, 2)))
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in work.iterdir()}
    return Verdict("right answer") if set(modes.values()) == {"0o664"} else Verdict("silent", f"modes {modes}")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_tmp(work: Path) -> Verdict:
    """A temp file left by a dead process of this host is removed by the next write; a live one's is kept."""
    c, t = pair(work)
    out = work / "S.csv"
    host = socket.gethostname()
    dead = work / f".S.csv.{host}.{_dead_pid()}.abc123.tmp"
    live = work / f".S.csv.{host}.{os.getpid()}.def456.tmp"
    other = work / f".S.csv.otherhost-x.{_dead_pid()}.ghi789.tmp"
    for p in (dead, live, other):
        p.write_text("partial")
    ran = run_cli(select_args(c, t, out), cwd=work)

    def check() -> str | None:
        if dead.exists():
            return f"stale {dead.name} (dead pid) left behind"
        if not live.exists() or not other.exists():
            return "removed a temp file of a live process or of another host"
        return valid_selection(out, N_CAND, BUDGET)

    return expect_answer(ran, check)


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from tarot_select.io import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _sigkill_tmp(work: Path) -> Verdict:
    """A job killed by SIGKILL inside a write leaves a hidden temp file; the next write of that file removes it."""
    target = work / "F.npy"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], capture_output=True, check=False)
    if proc.returncode != -signal.SIGKILL:
        return Verdict("crash", f"writer exited {proc.returncode}: {proc.stderr.decode()[-200:]}")
    left = [p.name for p in work.iterdir() if p.name.endswith(".tmp")]
    if not left:
        return Verdict("right answer")  # nothing to clean up
    from tarot_select.io import save_features

    save_features(target, np.ones((2, 2)))
    still = sorted(p.name for p in work.iterdir() if p.name.endswith(".tmp"))
    return Verdict("stale", f"left behind: {still}") if still else Verdict("right answer")


def _failed_run_keeps_old_output(work: Path) -> Verdict:
    """A rerun that fails (NaN in the targets) leaves the previous selection and its sidecar as they were."""
    c, t = pair(work)
    out = work / "S.csv"
    first = run_cli(select_args(c, t, out), cwd=work)
    if first.code != 0:
        return Verdict("crash", f"first run exit {first.code}: {first.stderr.strip()[-200:]}")
    x = np.load(t)
    x[0, 0] = np.nan
    np.save(work / "Tnan.npy", x)
    return cli_error(work, select_args(c, work / "Tnan.npy", out))


def _out_beside_ok(work: Path) -> Verdict:
    """``--out`` in the same folder as the inputs, with a different stem, is fine."""
    c, t = pair(work)
    out = work / "C_selection.csv"
    return cli_answer(work, select_args(c, t, out), out)


OVERWRITE: list[tuple[str, Callable[[Path], Verdict]]] = [
    ("out-is-candidates", _out_is(lambda w, c, t: c)),
    ("out-is-targets", _out_is(lambda w, c, t: t)),
    ("out-is-candidates-relative", _out_is(lambda w, c, t: Path("sub/../C.npy"))),
    ("out-is-candidates-sidecar", _out_is(lambda w, c, t: c.with_suffix(".json"))),
    ("out-sidecar-is-candidates-sidecar", _out_is(lambda w, c, t: w / "C.csv")),
    ("out-sidecar-is-targets-sidecar-path", _out_is(lambda w, c, t: w / "T.tsv")),
    ("out-symlink-to-candidates", _out_is(_symlink_to(lambda c, t: c))),
    ("out-symlink-to-targets-sidecar", _out_is(_symlink_to(lambda c, t: c.with_suffix(".json")))),
    ("out-is-target-groups", _out_is(lambda w, c, t: w / "G.npy", method="less", groups=True)),
    ("out-sidecar-is-groups-sidecar", _out_is(lambda w, c, t: w / "G.csv", method="less", groups=True)),
    ("ckpt-sidecar-replaced", _ckpt_sidecar),
    ("out-parent-is-file-late", _late_out(_parent_is_file)),
    ("out-grandparent-is-file-late", _late_out(_grandparent_is_file)),
    ("out-is-directory-late", _late_out(_out_is_dir)),
    ("out-is-a-fifo-late", _late_out(_fifo)),
    ("out-name-too-long-late", _late_out(_long_name)),
    ("out-sidecar-is-directory-late", _late_out(_sidecar_is_dir)),
    ("out-mode-respects-umask", _umask_mode),
    ("features-mode-respects-umask", _umask_mode_features),
    ("stale-tmp-of-dead-pid-removed", _stale_tmp),
    ("sigkill-tmp-cleaned-next-write", _sigkill_tmp),
    ("failed-rerun-keeps-old-output", _failed_run_keeps_old_output),
    ("out-beside-inputs-answer", _out_beside_ok),
]


CASES: list[Case] = (
    [Case("cli-input", name, fn) for name, fn in CLI_INPUT + CLI_ANSWERS]
    + [Case("api-input", name, fn) for name, fn in API_INPUT + API_ANSWERS]
    + [Case("overwrite", name, fn) for name, fn in OVERWRITE]
)
