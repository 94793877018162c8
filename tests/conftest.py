"""Shared fixtures: seeded feature clouds, and one real run of the tiny workflow config."""

from __future__ import annotations

import numpy as np
import pytest


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def gaussian_modes(
    rng: np.random.Generator, counts: list[int], dim: int = 16, sep: float = 4.0, noise: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """Samples from well-separated Gaussian modes along orthogonal axes; returns (x, mode)."""
    xs, labels = [], []
    for k, c in enumerate(counts):
        centre = np.zeros(dim)
        centre[k] = sep
        xs.append(centre + noise * rng.normal(size=(c, dim)))
        labels.append(np.full(c, k))
    return np.concatenate(xs), np.concatenate(labels)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny config (tests/data/tiny.yaml) run locally once: ``(directory, config path)``.

    Tests using it must be in xdist group ``"tiny"`` so that they share one run.
    """
    from smk_helpers import smk, write_config

    tmp = tmp_path_factory.mktemp("tiny")
    cfg = write_config(tmp)
    res = smk("--cores", "2", "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-5000:]
    return tmp, cfg


def pytest_collection_modifyitems(config, items):
    """Tests that run the workflow (the tiny run, SLURM) are slow: ``-m "not slow"`` skips them."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()) or item.path.name == "test_slurm.py":
            item.add_marker(pytest.mark.slow)
