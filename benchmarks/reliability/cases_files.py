"""Files cut short, changed or broken after they were written (class ``integrity``).

Every array, selection CSV and ``.npz`` the library writes has a JSON sidecar that records
its size, row count and a checksum. A stage that reads the file checks it and, if the file
was truncated or changed, stops with one line that names the file and how to regenerate
it. Broken files (zero bytes, bad zip, bad header, broken sidecar) give the same kind of
line, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cases_cli import api_error, cli_error, pair, select_args
from probe import Case, Verdict


def _selection(work: Path, rows: int = 80, weighted: bool = False) -> Path:
    from tarot_select.result import Selection

    rng = np.random.default_rng(0)
    idx = rng.choice(1000, size=rows, replace=False)
    weights = rng.integers(1, 4, size=rows) if weighted else None
    sel = Selection(idx, "tarot", 1000, budget=rows, weights=weights, weighting="potential" if weighted else None)
    return sel.to_csv(work / "S.csv")


def _read_selection(path: Path) -> Callable[[], object]:
    def call() -> object:
        from tarot_select.result import read_selection

        return read_selection(path)

    return call


def _edit_selection(edit: Callable[[list[str]], list[str]], weighted: bool = False) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        p = _selection(work, weighted=weighted)
        lines = p.read_text().splitlines()
        p.write_text("\n".join(edit(lines)) + "\n")
        return api_error(_read_selection(p))

    return run


def _change_row(lines: list[str]) -> list[str]:
    i, w = lines[7].split(",")
    lines[7] = f"{int(i) + 1},{w}"
    return lines


def _selection_sidecar(text: str) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        p = _selection(work)
        p.with_suffix(".json").write_text(text)
        return api_error(_read_selection(p))

    return run


def _selection_no_sidecar(work: Path) -> Verdict:
    p = _selection(work)
    p.with_suffix(".json").unlink()
    return api_error(_read_selection(p))


def _selection_bytes(data: bytes) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        p = _selection(work)
        p.write_bytes(data)
        return api_error(_read_selection(p))

    return run


def _selection_roundtrip(work: Path) -> Verdict:
    from tarot_select.result import read_selection

    p = _selection(work, weighted=True)
    idx, w, meta = read_selection(p)
    ok = len(idx) == 80 and w.dtype == np.int64 and meta.get("size") == 80
    return Verdict("right answer") if ok else Verdict("silent", f"read back {len(idx)} rows, {w.dtype}")


def _selection_old_sidecar(work: Path) -> Verdict:
    """A selection written before sidecars had ``integrity`` still reads."""
    from tarot_select.result import read_selection

    p = _selection(work)
    side = p.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta.pop("integrity", None)
    side.write_text(json.dumps(meta))
    idx, _, _ = read_selection(p)
    return Verdict("right answer") if len(idx) == 80 else Verdict("silent", f"{len(idx)} rows")


# -- features


def _features(work: Path, rows: int = 80) -> Path:
    from tarot_select.io import save_features

    return save_features(work / "F.npy", np.random.default_rng(0).normal(size=(rows, 6)).astype(np.float32))


def _load(path: Path) -> Callable[[], object]:
    def call() -> object:
        from tarot_select.io import load_features

        return load_features(path).array

    return call


def _edit_features(edit: Callable[[Path, bytearray], bytes]) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        p = _features(work)
        p.write_bytes(edit(p, bytearray(p.read_bytes())))
        return api_error(_load(p))

    return run


def _flip_byte(p: Path, data: bytearray) -> bytes:
    data[-7] ^= 0x40
    return bytes(data)


def _same_shape_other_values(work: Path) -> Verdict:
    p = _features(work)
    side = p.with_suffix(".json").read_text()
    np.save(p, np.zeros((80, 6), np.float32))  # same shape, new numbers; the sidecar is the old one
    p.with_suffix(".json").write_text(side)
    return api_error(_load(p))


def _features_sidecar(mutate: Callable[[dict], object]) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        p = _features(work)
        side = p.with_suffix(".json")
        meta = json.loads(side.read_text())
        side.write_text(json.dumps(mutate(meta)))
        return api_error(_load(p))

    return run


def _set(key: str, sub: str | None, value: object) -> Callable[[dict], dict]:
    def mutate(meta: dict) -> dict:
        if sub is None:
            meta[key] = value
        else:
            meta[key][sub] = value
        return meta

    return mutate


def _features_cli(work: Path) -> Verdict:
    """The CLI reports a candidates file changed since it was written, in one line."""
    c, t = pair(work)
    data = bytearray(c.read_bytes())
    data[-3] ^= 0x10
    c.write_bytes(bytes(data))
    return cli_error(work, select_args(c, t, work / "S.csv"))


def _features_truncated_cli(work: Path) -> Verdict:
    c, t = pair(work)
    data = c.read_bytes()
    c.write_bytes(data[: len(data) - 5 * 16])
    return cli_error(work, select_args(c, t, work / "S.csv", method="tarot"))


def _verify_large_sampled(work: Path) -> Verdict:
    """A change inside a file above the full-hash limit is still seen when it lands in a sampled block."""
    from tarot_select import io as tio

    p = work / "big.bin"
    limit = getattr(tio, "FULL_DIGEST_BYTES", None)
    if limit is None:
        return Verdict("silent", "no sampled digest for large files")
    size = limit + 3 * 1024 * 1024
    with open(p, "wb") as fh:
        fh.truncate(size)
    tio.write_json_atomic(tio.sidecar_path(p), {"integrity": tio.integrity_of(p)})
    with open(p, "r+b") as fh:  # the header block is always sampled
        fh.seek(10)
        fh.write(b"x")
    return api_error(lambda: tio.verify(p))


# -- npz: whitening statistics and neighbour lists


def _stats(work: Path) -> Path:
    from tarot_select.whiten import WhiteningStats

    s = WhiteningStats(4).update(np.random.default_rng(0).normal(size=(30, 4)))
    p = work / "c.0.stats.npz"
    s.save(p)
    return p


def _neighbors(work: Path) -> Path:
    from tarot_select.knn import nearest_neighbors

    rng = np.random.default_rng(0)
    nb = nearest_neighbors(rng.normal(size=(40, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32), 3)
    p = work / "wfd_neighbors.npz"
    nb.save(p)
    return p


def _load_stats(p: Path) -> Callable[[], object]:
    def call() -> object:
        from tarot_select.whiten import WhiteningStats

        return WhiteningStats.load(p)

    return call


def _load_neighbors(p: Path) -> Callable[[], object]:
    def call() -> object:
        from tarot_select.knn import Neighbors

        return Neighbors.load(p)

    return call


def _npz_case(
    make: Callable[[Path], Path], load: Callable[[Path], Callable[[], object]], edit: Callable[[Path], None]
) -> Callable[[Path], Verdict]:
    def run(work: Path) -> Verdict:
        p = make(work)
        edit(p)
        return api_error(load(p))

    return run


def _truncate_half(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _zero(p: Path) -> None:
    p.write_bytes(b"")


def _garbage(p: Path) -> None:
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 50)


def _replace_stats(p: Path) -> None:
    np.savez(p, n=3, sum=np.zeros(4), outer=np.eye(4))


def _missing_key(p: Path) -> None:
    np.savez(p, n=3, sum=np.zeros(4))


def _object_array(p: Path) -> None:
    np.savez(p, n=np.array([{"a": 1}], dtype=object), sum=np.zeros(4), outer=np.eye(4))


def _replace_neighbors(p: Path) -> None:
    np.savez(p, indices=np.zeros((5, 3), np.int64), distances=np.zeros((5, 3), np.float32), n_candidates=40)


def _npz_roundtrip(work: Path) -> Verdict:
    from tarot_select.knn import Neighbors
    from tarot_select.whiten import WhiteningStats

    s = WhiteningStats.load(_stats(work))
    nb = Neighbors.load(_neighbors(work))
    ok = s.n == 30 and s.dim == 4 and nb.indices.shape == (5, 3) and nb.n_candidates == 40
    return Verdict("right answer") if ok else Verdict("silent", "read back the wrong contents")


def _npz_without_sidecar(work: Path) -> Verdict:
    """Statistics written by ``np.savez`` alone (no sidecar, as older workflow versions did) still load."""
    from tarot_select.whiten import WhiteningStats

    p = work / "old.stats.npz"
    np.savez(p, n=3, sum=np.ones(4), outer=np.eye(4))
    s = WhiteningStats.load(p)
    return Verdict("right answer") if s.n == 3 else Verdict("silent", f"n = {s.n}")


INTEGRITY: list[tuple[str, Callable[[Path], Verdict]]] = [
    ("selection-cut-to-40-of-80", _edit_selection(lambda ls: ls[:41])),
    ("selection-cut-mid-line", _edit_selection(lambda ls: ls[:30] + [ls[30][:2]])),
    ("selection-row-changed", _edit_selection(_change_row)),
    ("selection-row-appended", _edit_selection(lambda ls: ls + ["999,1"])),
    ("selection-weights-changed", _edit_selection(lambda ls: ls[:1] + [r.replace(",1", ",3") for r in ls[1:]], True)),
    ("selection-header-only", _edit_selection(lambda ls: ls[:1])),
    ("selection-zero-bytes", _selection_bytes(b"")),
    ("selection-binary", _selection_bytes(b"\x00\xff\x10garbage\n1,2\n")),
    ("selection-text-cells", _selection_bytes(b"index,weight\na,b\n")),
    ("selection-sidecar-missing", _selection_no_sidecar),
    ("selection-sidecar-broken", _selection_sidecar("{oops")),
    ("selection-sidecar-list", _selection_sidecar("[]")),
    ("selection-sidecar-rows-lie", _selection_sidecar('{"integrity": {"bytes": 10, "rows": 2, "digest": "sha256:0"}}')),
    ("features-truncated-rows", _edit_features(lambda p, d: bytes(d[: len(d) - 40 * 6 * 4]))),
    ("features-truncated-odd", _edit_features(lambda p, d: bytes(d[:-3]))),
    ("features-one-byte-flipped", _edit_features(_flip_byte)),
    ("features-bytes-appended", _edit_features(lambda p, d: bytes(d) + b"\0" * 24)),
    ("features-zero-bytes", _edit_features(lambda p, d: b"")),
    ("features-same-shape-new-values", _same_shape_other_values),
    ("features-sidecar-bytes-lie", _features_sidecar(_set("integrity", "bytes", 12))),
    ("features-sidecar-digest-lie", _features_sidecar(_set("integrity", "digest", "sha256:" + "0" * 64))),
    ("features-sidecar-digest-unknown", _features_sidecar(_set("integrity", "digest", "md5:abc"))),
    ("features-sidecar-integrity-list", _features_sidecar(_set("integrity", None, [1, 2]))),
    ("features-sidecar-rows-text", _features_sidecar(_set("integrity", "rows", "eighty"))),
    ("features-changed-cli", _features_cli),
    ("features-truncated-cli", _features_truncated_cli),
    ("large-file-sampled-digest", _verify_large_sampled),
    ("stats-truncated", _npz_case(_stats, _load_stats, _truncate_half)),
    ("stats-zero-bytes", _npz_case(_stats, _load_stats, _zero)),
    ("stats-bad-zip", _npz_case(_stats, _load_stats, _garbage)),
    ("stats-replaced", _npz_case(_stats, _load_stats, _replace_stats)),
    ("stats-missing-key", _npz_case(lambda w: w / "x.stats.npz", _load_stats, _missing_key)),
    ("stats-pickled", _npz_case(lambda w: w / "x.stats.npz", _load_stats, _object_array)),
    ("stats-missing-file", _npz_case(lambda w: w / "none.stats.npz", _load_stats, lambda p: None)),
    ("neighbors-truncated", _npz_case(_neighbors, _load_neighbors, _truncate_half)),
    ("neighbors-zero-bytes", _npz_case(_neighbors, _load_neighbors, _zero)),
    ("neighbors-bad-zip", _npz_case(_neighbors, _load_neighbors, _garbage)),
    ("neighbors-replaced", _npz_case(_neighbors, _load_neighbors, _replace_neighbors)),
    ("selection-roundtrip-answer", _selection_roundtrip),
    ("selection-old-sidecar-answer", _selection_old_sidecar),
    ("npz-roundtrip-answer", _npz_roundtrip),
    ("npz-without-sidecar-answer", _npz_without_sidecar),
]

CASES: list[Case] = [Case("integrity", name, fn) for name, fn in INTEGRITY]
