import json

import numpy as np
import pytest

from tarot_select import TarotInputError, load_features, save_features
from tarot_select.io import atomic_path, open_feature_writer, sidecar_path


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
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
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
    with pytest.raises(ValueError):
        with open_feature_writer(tmp_path / "t.npy", (2, 2)) as mm:
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
