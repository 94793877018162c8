import json
import logging
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from tarot_select import TarotInputError, load_features, save_features
from tarot_select import io as tio
from tarot_select.io import (
    atomic_path,
    current_umask,
    integrity_of,
    load_npz,
    open_feature_writer,
    open_row_writer,
    save_npz,
    sidecar_path,
    verify,
)
from tarot_select.result import Selection, read_selection


def test_save_load_roundtrip_with_sidecar(tmp_path, rng):
    x = rng.normal(size=(10, 4))
    save_features(tmp_path / "f.npy", x, {"projector": {"kind": "gaussian", "seed": 3}}, dtype="float16")
    fs = load_features(tmp_path / "f.npy")
    assert fs.array.dtype == np.float16 and isinstance(fs.array, np.memmap)
    assert np.allclose(fs.array, x, atol=1e-2)
    meta = json.loads((tmp_path / "f.json").read_text())
    assert meta["shape"] == [10, 4] and meta["dtype"] == "float16"
    assert meta["projector"]["seed"] == 3 and "numpy" in meta["versions"]


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.npy"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_streamed_writer(tmp_path, rng):
    x = rng.normal(size=(7, 3)).astype(np.float32)
    with open_feature_writer(tmp_path / "s.npy", x.shape, meta={"kind": "test"}) as mm:
        mm[:4] = x[:4]
        mm[4:] = x[4:]
    assert np.array_equal(np.load(tmp_path / "s.npy"), x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.npy"]
    with pytest.raises(ValueError), open_feature_writer(tmp_path / "t.npy", (2, 2)) as mm:
        raise ValueError("half way")
    assert not (tmp_path / "t.npy").exists() and not (tmp_path / "t.json").exists()


def test_sidecar_names(tmp_path):
    assert sidecar_path(tmp_path / "a.npy").name == "a.json"
    assert sidecar_path(tmp_path / "s.csv").name == "s.json"


def test_load_rejects_bad_files(tmp_path, rng):
    with pytest.raises(TarotInputError, match="not found"):
        load_features(tmp_path / "missing.npy")
    np.save(tmp_path / "v.npy", np.ones(3))
    with pytest.raises(TarotInputError, match="2-D"):
        load_features(tmp_path / "v.npy")
    np.save(tmp_path / "i.npy", np.ones((3, 2), dtype=np.int64))
    with pytest.raises(TarotInputError, match="floating"):
        load_features(tmp_path / "i.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(TarotInputError, match="cannot read"):
        load_features(tmp_path / "junk.npy")
    save_features(tmp_path / "m.npy", rng.normal(size=(4, 2)))
    np.save(tmp_path / "m.npy", rng.normal(size=(5, 2)))
    with pytest.raises(TarotInputError, match="sidecar"):
        load_features(tmp_path / "m.npy")


# --------------------------------------------------------------------------- written files: mode, stale temp files


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_umask_mode_not_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        save_features(tmp_path / "f.npy", np.ones((3, 2)))
        save_npz(tmp_path / "z.npz", {"a": np.arange(3)})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["f.npy", "f.json", "z.npz", "z.json"], mode)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path, caplog):
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        files = {
            "dead": tmp_path / f".f.npy.{host}.{_dead_pid()}.a1b2.tmp",
            "live": tmp_path / f".f.npy.{host}.{live.pid}.c3d4.tmp",
            "other-host": tmp_path / f".f.npy.elsewhere.{_dead_pid()}.e5f6.tmp",
            "other-file": tmp_path / f".g.npy.{host}.{_dead_pid()}.a7b8.tmp",
        }
        for p in files.values():
            p.write_text("partial")
        with caplog.at_level(logging.INFO, logger="tarot_select.io"):
            save_features(tmp_path / "f.npy", np.ones((2, 2)))
        left = {k for k, p in files.items() if p.exists()}
        assert left == {"live", "other-host", "other-file"}
        assert "removed" in caplog.text and files["dead"].name in caplog.text
    finally:
        live.kill()
        live.wait()


def test_temp_file_name_records_host_and_pid(tmp_path):
    with atomic_path(tmp_path / "x.csv") as tmp:
        name = tmp.name
        tmp.write_text("x")
    assert name.startswith(".x.csv.") and name.endswith(".tmp")
    assert f".{os.getpid()}." in name
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]


# --------------------------------------------------------------------------- integrity


def test_sidecars_record_integrity_and_loading_checks_it(tmp_path, rng):
    p = save_features(tmp_path / "f.npy", rng.normal(size=(80, 6)).astype(np.float32))
    rec = json.loads(sidecar_path(p).read_text())["integrity"]
    assert rec["bytes"] == p.stat().st_size and rec["rows"] == 80 and rec["digest"].startswith("sha256:")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40 * 6 * 4])  # 40 of 80 rows
    with pytest.raises(TarotInputError, match=r"f\.npy: truncated or changed .*sidecar: 80 rows, file: 40\).*rerun"):
        load_features(p)
    flipped = bytearray(data)
    flipped[-5] ^= 1
    p.write_bytes(bytes(flipped))
    with pytest.raises(TarotInputError, match="different checksum"):
        load_features(p)
    p.write_bytes(data)
    assert load_features(p).array.shape == (80, 6)


def test_files_without_an_integrity_record_still_load(tmp_path, rng):
    p = save_features(tmp_path / "f.npy", rng.normal(size=(5, 2)))
    meta = json.loads(sidecar_path(p).read_text())
    del meta["integrity"]
    sidecar_path(p).write_text(json.dumps(meta))
    assert load_features(p).array.shape == (5, 2)
    np.save(tmp_path / "bare.npy", np.ones((3, 2)))  # no sidecar at all
    assert load_features(tmp_path / "bare.npy").meta == {}


def test_streamed_writers_record_integrity(tmp_path, rng):
    x = rng.normal(size=(9, 3)).astype(np.float32)
    with open_feature_writer(tmp_path / "a.npy", x.shape) as mm:
        mm[:] = x
    with open_row_writer(tmp_path / "b.npy", x.shape) as out:
        out.write(x)
    for name in ("a.npy", "b.npy"):
        verify(tmp_path / name)
        assert json.loads((tmp_path / name).with_suffix(".json").read_text())["integrity"]["rows"] == 9
        assert np.array_equal(load_features(tmp_path / name).array, x)


def test_large_files_get_a_sampled_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(tio, "FULL_DIGEST_BYTES", 4096)
    monkeypatch.setattr(tio, "SAMPLE_BLOCK_BYTES", 256)
    p = tmp_path / "big.bin"
    p.write_bytes(bytes(range(256)) * 400)
    rec = integrity_of(p)
    assert rec["digest"].startswith("sha256-sampled-16x256:") and rec["bytes"] == 102400
    tio.write_json_atomic(sidecar_path(p), {"integrity": rec})
    verify(p)
    monkeypatch.setattr(tio, "SAMPLE_BLOCKS", 3)  # later settings do not matter: the recorded scheme is used
    monkeypatch.setattr(tio, "FULL_DIGEST_BYTES", 10**9)
    verify(p)
    data = bytearray(p.read_bytes())
    data[3] ^= 1  # inside the first block, always sampled
    p.write_bytes(bytes(data))
    with pytest.raises(TarotInputError, match="different checksum"):
        verify(p)
    p.write_bytes(bytes(data[:-1]))
    with pytest.raises(TarotInputError, match="sidecar: 102400 bytes, file: 102399"):
        verify(p)


@pytest.mark.parametrize(
    "record", [7, [1], {"bytes": "9", "rows": None, "digest": "sha256:0"}, {"bytes": 9, "rows": 1, "digest": "md5:0"}]
)
def test_malformed_integrity_records_are_refused(tmp_path, record):
    p = save_features(tmp_path / "f.npy", np.ones((2, 2)))
    meta = json.loads(sidecar_path(p).read_text())
    meta["integrity"] = record
    sidecar_path(p).write_text(json.dumps(meta))
    with pytest.raises(TarotInputError, match=r"f\.json: malformed 'integrity' record"):
        load_features(p)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"{not json", "not readable JSON"),
        (b"", "not readable JSON"),
        (b"\xff\xfe", "not readable JSON"),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b'"x"', "holds a JSON str, not an object"),
        (b'{"shape": 5}', "says shape 5"),
        (b'{"dtype": "int8"}', "says dtype 'int8'"),
        (b'{"checkpoints": "abc"}', "must be a list of objects"),
        (b'{"checkpoints": [{"dim": "x"}]}', "not a positive integer"),
        (b'{"checkpoints": [{"dim": 1}, {"dim": 3}]}', "add up to 4, the file has 2 columns"),
        (b'{"checkpoints": [{"dim": 2, "weight": "lr"}]}', "not a finite number"),
    ],
)
def test_broken_sidecars_are_one_clear_error(tmp_path, content, message):
    p = tmp_path / "f.npy"
    np.save(p, np.ones((3, 2)))
    sidecar_path(p).write_bytes(content)
    with pytest.raises(TarotInputError, match=re.escape(message)) as info:
        load_features(p)
    assert "f.json" in str(info.value) or "f.npy" in str(info.value)


def _npy_header(shape: str) -> bytes:
    head = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    head += " " * (118 - len(head)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head.encode()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x93NUMPY",
        b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<\n" + b"\0" * 32,
        _npy_header("(3, -2)"),
        _npy_header("(3, 2)") + b"\0" * 5,  # header says 24 bytes of data
        _npy_header("(3, 2)") + b"\0" * 30,  # 6 bytes too many
        b"\x93NUMPY\x09\x00" + b"\0" * 120,  # unknown format version
    ],
)
def test_damaged_npy_files_are_one_clear_error(tmp_path, content):
    p = tmp_path / "d.npy"
    p.write_bytes(content)
    with pytest.raises(TarotInputError) as info:
        load_features(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_npz_roundtrip_and_damage(tmp_path):
    p = save_npz(tmp_path / "s.npz", {"n": np.int64(3), "sum": np.arange(4.0)}, meta={"kind": "test"})
    meta = json.loads(sidecar_path(p).read_text())
    assert meta["kind"] == "test" and meta["arrays"]["sum"] == {"shape": [4], "dtype": "float64"}
    z = load_npz(p, keys=("n", "sum"))
    assert int(z["n"]) == 3 and np.array_equal(z["sum"], np.arange(4.0))
    with pytest.raises(TarotInputError, match=r"lacks the arrays \['outer'\]"):
        load_npz(p, keys=("outer",))
    data = p.read_bytes()
    for damaged in (data[: len(data) // 2], b"", b"PK\x03\x04" + b"\0" * 40):
        p.write_bytes(damaged)
        with pytest.raises(TarotInputError, match=r"s\.npz: truncated or changed"):
            load_npz(p)
        sidecar_path(p).rename(tmp_path / "aside.json")  # without a sidecar: the zip reader's error, in one line
        with pytest.raises(TarotInputError, match=r"s\.npz: not a readable \.npz archive"):
            load_npz(p)
        (tmp_path / "aside.json").rename(sidecar_path(p))
    with pytest.raises(TarotInputError, match="not found"):
        load_npz(tmp_path / "missing.npz")


def test_read_selection_refuses_a_cut_or_edited_csv(tmp_path):
    sel = Selection(np.arange(80)[::-1].copy(), "tarot", 100, budget=80)
    p = sel.to_csv(tmp_path / "S.csv")
    idx, w, meta = read_selection(p)
    assert np.array_equal(idx, sel.indices) and (w == 1).all() and meta["integrity"]["rows"] == 80
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:41]) + "\n")
    with pytest.raises(TarotInputError, match=r"S\.csv: truncated or changed .*\(sidecar: 80 rows, file: 40\); delete"):
        read_selection(p)
    # an old sidecar without the record: the row count it recorded still catches the cut
    meta.pop("integrity")
    sidecar_path(p).write_text(json.dumps(meta))
    with pytest.raises(TarotInputError, match="sidecar: 80 rows, file: 40"):
        read_selection(p)
    sidecar_path(p).unlink()
    with pytest.raises(TarotInputError, match="sidecar S.json is missing"):
        read_selection(p)
