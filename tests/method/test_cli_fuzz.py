"""Property-based test: whatever files and options are thrown at ``tarot-select select``,
it exits 0 with a valid selection or exits 2 with one line on stderr and nothing written.

Hypothesis draws the candidates' shape (0 rows, 1-D, 3-D included), dtype, NaN/Inf
pattern and scale, a truncation of the ``.npy`` file at a random byte, a sidecar (none,
the library's, broken JSON, a JSON list, a wrong shape, a wrong or missing integrity
record), the targets' dimension, the method and the budget. An oracle says which inputs
are valid: those must be answered (exit 0), every other one refused (exit 2). The run is
derandomised and database-free, so CI sees the same examples every time.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tarot_select.cli import main
from tarot_select.io import save_features, sidecar_path

FLOATS = ("float16", "float32", "float64")
DTYPES = FLOATS + ("int32", "int64", "uint8", "bool", "complex64")
SIDECARS = ("none", "library", "no-integrity", "broken", "list", "wrong-shape", "wrong-digest", "wrong-bytes")
VALID_SIDECARS = ("none", "library", "no-integrity")
PATTERNS = ("finite", "nan-one", "inf-row", "all-nan")


@dataclass(frozen=True)
class Scenario:
    fault: str  # what was made wrong ("none": nothing, "chaos": everything drawn at random)
    shape: tuple[int, ...]
    dtype: str
    pattern: str
    scale: float
    cut: float | None  # keep this fraction of the .npy bytes (None: whole file)
    sidecar: str
    target_rows: int
    target_extra_dims: int  # targets have cols + this many dims (0: they pair up)
    method: str
    budget: int
    seed: int

    def valid(self) -> bool:
        """Whether a careful user would expect an answer (exit 0) for these inputs."""
        ok_array = (
            len(self.shape) == 2
            and self.shape[0] >= 1
            and self.shape[1] >= 1
            and self.dtype in FLOATS
            and self.pattern == "finite"
        )
        whole = self.cut is None
        ok_budget = self.method == "otm" or 1 <= self.budget <= (self.shape[0] if self.shape else 0)
        return ok_array and whole and self.sidecar in VALID_SIDECARS and self.target_extra_dims == 0 and ok_budget


FAULTS = ("ndim", "rows0", "cols0", "dtype", "pattern", "cut", "sidecar", "dims", "budget", "chaos")


@st.composite
def scenarios(draw: st.DrawFn, faults: tuple[str, ...] = FAULTS + ("none",) * 5) -> Scenario:
    """Valid inputs with at most one fault (most examples), or everything drawn at random ("chaos")."""
    fault = draw(st.sampled_from(faults))
    chaos = fault == "chaos"
    rows = draw(st.integers(0 if chaos else 1, 40))
    cols = draw(st.integers(0 if chaos else 1, 6))
    shape: tuple[int, ...] = (rows, cols)
    if fault == "ndim" or (chaos and draw(st.booleans())):
        shape = draw(st.sampled_from(((rows,), (rows, cols, 2))))
    if fault == "rows0":
        shape = (0, cols)
    if fault == "cols0":
        shape = (rows, 0)
    method = draw(st.sampled_from(("random", "tarot", "dsdm", "less", "otm")))
    return Scenario(
        fault=fault,
        shape=shape,
        dtype=draw(st.sampled_from(DTYPES if fault in ("dtype", "chaos") else FLOATS)),
        pattern=draw(st.sampled_from(PATTERNS[1:] if fault == "pattern" else PATTERNS if chaos else ("finite",))),
        scale=draw(st.sampled_from((1e-3, 1.0, 1e3))),
        cut=draw(st.floats(0.0, 0.999)) if fault == "cut" or (chaos and draw(st.booleans())) else None,
        sidecar=draw(st.sampled_from(SIDECARS[3:] if fault == "sidecar" else SIDECARS if chaos else VALID_SIDECARS)),
        target_rows=draw(st.integers(2, 12)),
        target_extra_dims=1 if fault == "dims" else draw(st.sampled_from((0, 1))) if chaos else 0,
        method=draw(st.sampled_from(("random", "tarot", "dsdm", "less"))) if fault == "budget" else method,
        budget=draw(
            st.integers(-1, 45)
            if chaos
            else st.sampled_from((-1, 0, rows + 1, rows + 7))
            if fault == "budget"
            else st.integers(1, max(rows, 1))
        ),
        seed=draw(st.integers(0, 2**16)),
    )


def _candidates(sc: Scenario) -> np.ndarray:
    rng = np.random.default_rng(sc.seed)
    x = rng.normal(size=sc.shape) * sc.scale
    if x.size and sc.pattern != "finite":
        flat = x.reshape(-1)
        if sc.pattern == "nan-one":
            flat[rng.integers(flat.size)] = np.nan
        elif sc.pattern == "inf-row":
            x.reshape(sc.shape[0], -1)[rng.integers(sc.shape[0])] = np.inf
        else:
            x[...] = np.nan
    if sc.dtype == "bool":
        return x > 0
    if sc.dtype.startswith(("int", "uint")):
        return np.nan_to_num(x, posinf=0, neginf=0).astype(sc.dtype)
    return x.astype(sc.dtype)


def _write_inputs(sc: Scenario, d: Path) -> tuple[Path, Path]:
    c, t = d / "C.npy", d / "T.npy"
    x = _candidates(sc)
    if sc.sidecar in ("library", "no-integrity", "wrong-digest", "wrong-bytes"):
        save_features(c, x)
        side = sidecar_path(c)
        meta = json.loads(side.read_text())
        if sc.sidecar == "no-integrity":
            del meta["integrity"]
        elif sc.sidecar == "wrong-digest":
            meta["integrity"]["digest"] = "sha256:" + "0" * 64
        elif sc.sidecar == "wrong-bytes":
            meta["integrity"]["bytes"] += 1
        side.write_text(json.dumps(meta))
    else:
        np.save(c, x)
        side = sidecar_path(c)
        if sc.sidecar == "broken":
            side.write_text('{"shape": [1, ')
        elif sc.sidecar == "list":
            side.write_text("[1, 2]")
        elif sc.sidecar == "wrong-shape":
            side.write_text(json.dumps({"shape": [x.shape[0] + 1, *x.shape[1:]]}))
    if sc.cut is not None:
        data = c.read_bytes()
        c.write_bytes(data[: int(sc.cut * len(data))])
    cols = sc.shape[1] if len(sc.shape) >= 2 else 1
    y = np.random.default_rng(sc.seed + 1).normal(size=(sc.target_rows, max(cols, 1) + sc.target_extra_dims))
    np.save(t, y.astype(np.float32))
    return c, t


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _run(sc: Scenario) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = Path(tmp)
        c, t = _write_inputs(sc, root)
        out = root / "out" / "S.csv"
        argv = ["select", "--candidates", c, "--targets", t, "--method", sc.method, "--out", out, "--no-eval"]
        argv += ["--folds", "2"] if sc.method == "otm" else ["--budget", sc.budget]
        before = _snapshot(root)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])  # an escaping exception fails the test with its traceback
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        if code == 0:
            assert sc.valid(), f"answered invalid input {sc}"
            rows = out.read_text().splitlines()
            assert rows[0] == "index,weight"
            idx = [int(r.split(",")[0]) for r in rows[1:]]
            assert len(set(idx)) == len(idx) and all(0 <= i < sc.shape[0] for i in idx)
            if sc.method != "otm":
                assert len(idx) == sc.budget
            assert json.loads(sidecar_path(out).read_text())["size"] == len(idx)
        else:
            assert code == 2, f"exit {code}: {err.getvalue()[-500:]}"
            assert not sc.valid(), f"refused valid input {sc}: {lines}"
            assert len(lines) == 1 and lines[0].startswith("tarot-select: error: "), lines
            assert _snapshot(root) == before, "a refused run wrote or changed files"


FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)


@FUZZ
@given(sc=scenarios())
def test_cli_answers_or_refuses_in_one_line(sc: Scenario) -> None:
    _run(sc)


@FUZZ
@given(sc=scenarios(faults=("chaos",)))
def test_cli_answers_or_refuses_in_one_line_chaos(sc: Scenario) -> None:
    """Every field drawn at random, several faults at once."""
    _run(sc)


def test_the_fuzzer_sees_both_outcomes() -> None:
    """The scenarios are not all refused (or all answered): the oracle has both kinds to check."""
    seen = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(sc=scenarios())
    def collect(sc: Scenario) -> None:
        seen.add(sc.valid())

    collect()
    assert seen == {True, False}
