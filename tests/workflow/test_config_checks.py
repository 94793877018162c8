"""The workflow config fails before the first job, in one line naming the key.

Most tests call :func:`~tarot_select.experiments.config.load_config` (what the Snakefile
calls) on variants of the tiny config; a handful run ``snakemake -n`` and count the lines
it prints. The hostile-input probe (``benchmarks/reliability/cases_config.py``) holds many
more single cases; these tests pin each class and the size estimates behind them.
"""

from __future__ import annotations

import copy
import math
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import yaml
from smk_helpers import ROOT, TINY, smk, write_config
from snakemake.utils import update_config

from tarot_select.errors import TarotInputError
from tarot_select.experiments import config as config_module
from tarot_select.experiments.config import (
    check_config,
    check_finite,
    estimate_footprint,
    load_config,
    typed_overrides,
    validate_schema,
)
from tarot_select.tasks import registry

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
BASE = yaml.safe_load(TINY.read_text())


def tiny(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """The tiny config with dotted-key changes (``__`` for ``.``), results under ``tmp_path``."""
    cfg = copy.deepcopy(BASE)
    cfg["results"] = str(tmp_path / "results")
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return cfg


def refusal(cfg: Any, **kw: Any) -> str:
    with pytest.raises(TarotInputError) as info:
        load_config(cfg, SCHEMA, **kw)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    return message


# ----------------------------------------------------------------------------- one line from the schema


@pytest.mark.parametrize(
    "changes,start,detail",
    [
        ({"ratioz": [0.1]}, "ratioz: unknown key", "did you mean 'ratios'"),
        ({"whitening__epz": 1e-5}, "whitening.epz: unknown key", "did you mean 'eps'"),
        ({"lds__features__proj_dims": 8}, "lds.features.proj_dims: unknown key", "'proj_dim'"),
        ({"resources__train_proxi": {"threads": 2}}, "resources.train_proxi: unknown key", "'train_proxy'"),
        ({"ratios": [0.1, "0.5"]}, "ratios[1]: must be a number", "'0.5'"),
        ({"ratios": [0.1, 1.5]}, "ratios[1]: must be <= 1", "1.5"),
        ({"methods": ["tarot", "best"]}, "methods[1]: must be one of", "'best'"),
        ({"features__shards": 2.0}, "features.shards: must be an integer", "2.0"),
        ({"features__params": []}, "features.params: must have at least 1 item", "[]"),
        ({"seeds": [1, 1]}, "seeds: has duplicates", "[1, 1]"),
        ({"tasks__bad name": {"kind": "digits"}}, "tasks.bad name: names may contain only", "'-'"),
        ({"lds__external": {"digits-lds": {"masks": "m.npy"}}}, "lds.external.digits-lds: required", "outputs"),
    ],
)
def test_a_schema_violation_is_one_line_naming_the_key_path(tmp_path, changes, start, detail):
    message = refusal(tiny(tmp_path, **changes))
    assert message.startswith(start) and detail in message, message
    assert not (tmp_path / "results").exists()


def test_the_schema_fills_defaults_and_keeps_given_values(tmp_path):
    cfg = tiny(tmp_path)
    validate_schema(cfg, SCHEMA)
    assert cfg["whitening"] == {
        "method": "cholesky",
        "normalize": True,
        "eps": 1e-5,
        "neighbors": 16,
        "neighbor_shards": 1,
    }
    assert cfg["features"]["shards"] == 2 and cfg["features"]["proj_kind"] == "rademacher"
    assert cfg["lds"]["features"]["proj_dim"] == 32 and cfg["lds"]["features"]["batch_size"] == 256


# ----------------------------------------------------------------------------- NaN anywhere


def _numeric_leaves(value: Any, where: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _numeric_leaves(v, f"{where}.{k}" if where else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _numeric_leaves(v, f"{where}[{i}]")]
    return [where] if isinstance(value, float) else []


def _set(cfg: dict, path: str, value: Any) -> None:
    node: Any = cfg
    parts = [p for chunk in path.split(".") for p in chunk.replace("]", "").split("[")]
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    node[int(last) if isinstance(node, list) else last] = value


FLOATS = _numeric_leaves(BASE)


@pytest.mark.parametrize("path", FLOATS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_infinity_at_any_number_is_refused_naming_its_path(tmp_path, path, bad):
    cfg = tiny(tmp_path)
    _set(cfg, path, bad)
    message = refusal(cfg)
    assert message.startswith(f"{path}: must be a finite number"), message


def test_the_tiny_config_has_numbers_at_several_depths():
    # the NaN test above covers them all; it must see top-level, nested and task-block floats
    assert {"ratios[0]", "weighting.repeat", "tasks.digits.proxy.lr"} <= set(FLOATS)


def test_nan_in_a_schema_default_is_refused_too(tmp_path):
    cfg = tiny(tmp_path, whitening={"eps": math.nan})
    assert refusal(cfg).startswith("whitening.eps: must be a finite number")
    check_finite({"a": [1.0, {"b": 2}]})  # finite: nothing raised


# ----------------------------------------------------------------------------- --config values


def test_command_line_values_are_read_as_yaml():
    given = {"ratios": ["0.1", "0.5"], "features": {"proj_dim": "64", "params": "null"}, "otm": {"enabled": "false"}}
    assert typed_overrides(given) == {
        "ratios": [0.1, 0.5],
        "features": {"proj_dim": 64, "params": None},
        "otm": {"enabled": False},
    }
    # top-level strings were already typed by Snakemake; a folder named like a date stays a string
    assert typed_overrides({"results": "2024-01-01", "device": "cpu"}) == {"results": "2024-01-01", "device": "cpu"}
    assert typed_overrides({"methods": ["tarot", "2024-01-01"]}) == {"methods": ["tarot", "2024-01-01"]}


def test_command_line_values_override_the_file_as_snakemake_merges_them(tmp_path):
    cfg = tiny(tmp_path)
    cli = {"ratios": ["0.2"], "features": {"proj_dim": "16"}, "report": {"tsne_ratio": "0.2"}}
    update_config(cfg, copy.deepcopy(cli))  # what Snakemake already did, with strings
    load_config(cfg, SCHEMA, overrides=cli)
    assert cfg["ratios"] == [0.2] and cfg["features"]["proj_dim"] == 16 and cfg["features"]["shards"] == 2


# ----------------------------------------------------------------------------- sizes from the settings


@pytest.mark.parametrize(
    "changes,start",
    [
        ({"features__shards": 25}, "features.shards: 25 shards for only 24 targets of task digits"),
        ({"otm__folds": 25}, "otm.folds: 25 folds for only 24 targets of task digits"),
        ({"lds__chunks": 9}, "lds.chunks: 9 chunks for only 8 subsets"),
        ({"lds__fraction": 0.005}, "lds.fraction: 0.005 of the 80 training examples of lds task digits-lds"),
        ({"lds__fraction": 0.995}, "lds.fraction: 0.995 of the 80"),
        ({"features__params": ["fc1.*", "fc3.*"]}, "features.params[1]: 'fc3.*' matches no parameter"),
    ],
)
def test_sizes_the_settings_tell_are_checked_before_any_job(tmp_path, changes, start):
    assert refusal(tiny(tmp_path, **changes)).startswith(start)


def test_sizes_at_the_limit_are_accepted(tmp_path):
    load_config(tiny(tmp_path, features__shards=24, otm__folds=24, lds__chunks=8, lds__fraction=0.99), SCHEMA)
    load_config(tiny(tmp_path, features__params=["fc*", "conv1.*"]), SCHEMA)


def test_check_config_alone_takes_the_schema_defaults_for_missing_keys(tmp_path):
    cfg = tiny(tmp_path)
    del cfg["features"]  # default shards = 1, params = null
    check_config(cfg)
    with pytest.raises(TarotInputError, match=r"^otm\.folds: 30 folds for only 24 targets"):
        check_config({**cfg, "otm": {"folds": 30}})


def test_params_patterns_for_two_kinds_need_each_task_to_keep_a_parameter(tmp_path):
    cfg = tiny(tmp_path, features__params=["fc*", "net.0.*"])
    cfg["tasks"]["mnist"] = {"kind": "mnist_mlp", "n_train": 60, "n_targets": 30}
    load_config(cfg, SCHEMA, environment=False)  # each pattern serves one of the two proxies
    cfg = tiny(tmp_path, features__params=["fc*"])
    cfg["tasks"]["mnist"] = {"kind": "mnist_mlp", "n_train": 60, "n_targets": 30}
    assert refusal(cfg, environment=False).startswith("features.params: ['fc*'] match no parameter of task mnist")


def _shapes(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize(
    "kind,block",
    [
        ("digits", {"proxy": {"width": 8}}),
        ("digits", {"proxy": {"width": 16}}),
        ("mnist_mlp", {}),
        ("mnist_mlp", {"hidden": []}),
        ("mnist_mlp", {"hidden": [32, 16, 8]}),
        ("cifar10_resnet9", {"arch": "trak", "width": 4}),
        ("cifar10_resnet9", {"arch": "myrtle", "width": 4}),
    ],
)
def test_the_settings_list_the_proxy_parameters_the_model_has(kind, block):
    spec = registry.get_spec(kind)
    root = {"root": "/nowhere"} if kind == "cifar10_resnet9" else {}
    settings = spec.settings.from_config({"kind": kind, **root, **block}, "t", check=False)
    task = registry.get_task(kind, settings, check=False)
    assert list(settings.proxy_parameters().items()) == _shapes(task.proxy_model())


def test_the_settings_tell_the_split_sizes_prepare_writes(tmp_path):
    for kind, block in (
        ("digits", BASE["tasks"]["digits"]),
        ("mnist_mlp", {"kind": "mnist_mlp", "n_train": 50, "n_targets": 20, "n_evaluation": 10}),
        ("mnist_mlp", {"kind": "mnist_mlp", "n_train": 50, "n_targets": 20}),
    ):
        task = registry.get_task(kind, block)
        out = tmp_path / f"{kind}-{len(block)}"
        out.mkdir()
        task.prepare(out)
        data = task.load(out)
        assert _settings(kind, block) == {s: len(getattr(data, s)) for s in ("candidates", "targets", "evaluation")}, (
            kind
        )


def _settings(kind: str, block: dict) -> dict[str, int]:
    return registry.get_spec(kind).settings.from_config(block, "t").split_sizes()


def test_cifar_sizes_follow_the_task_split_of_the_standard_images():
    from tarot_select.tasks.cifar10.settings import STANDARD_IMAGES

    for block in ({}, {"n_train": 1000, "n_targets": 200}, {"n_evaluation": 2000}):
        full = {"kind": "cifar10_resnet9", "root": "/nowhere", **block}
        settings = registry.get_spec("cifar10_resnet9").settings.from_config(full, "t", check=False)
        task = registry.get_task("cifar10_resnet9", settings, check=False)
        split = task._split_indices(STANDARD_IMAGES["train"], STANDARD_IMAGES["test"])
        assert settings.split_sizes() == {name: len(idx) for name, (_, idx) in split.items()}, block


# ----------------------------------------------------------------------------- folder, disk, memory

Usage = namedtuple("Usage", "total used free")


def test_a_results_folder_that_cannot_be_written_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    assert refusal(tiny(tmp_path, results=str(tmp_path / "afile" / "out"))).startswith("results: ")
    if Path("/sys").is_dir():  # sysfs refuses new files, even to root
        assert refusal(tiny(tmp_path, results="/sys/tarot-results")).startswith("results: cannot write in /sys")
    load_config(tiny(tmp_path), SCHEMA)
    assert not (tmp_path / "results").exists() and list(tmp_path.iterdir()) == [tmp_path / "afile"]


def test_the_footprint_grows_with_the_projection_and_counts_every_parameter_for_proj_kind_none(tmp_path):
    def footprint(**changes):
        cfg = tiny(tmp_path, **changes)
        validate_schema(cfg, SCHEMA)
        return {fp.key: fp for fp in estimate_footprint(cfg)}

    small, large = footprint(), footprint(features__proj_dim=64)
    assert large["features.proj_dim"].disk > 2 * small["features.proj_dim"].disk
    assert large["features.proj_dim"].memory > small["features.proj_dim"].memory
    settings = registry.get_spec("digits").settings.from_config(BASE["tasks"]["digits"], "t")
    n_params = sum(math.prod(s) for s in settings.proxy_parameters().values())
    none = footprint(features__proj_kind="none")["features.proj_kind"]
    assert f"{2 * n_params} columns (2 checkpoints x {n_params})" in none.what
    assert none.memory >= n_params * n_params * 8  # the whitening sums of a shard


def test_features_larger_than_the_free_disk_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module.shutil, "disk_usage", lambda path: Usage(10**12, 0, 10**4))
    message = refusal(tiny(tmp_path))
    assert message.startswith("features.proj_dim: the run needs at least") and "GB free" in message
    # features already there are overwritten by a rerun: their space counts as free
    feats = tmp_path / "results" / "digits" / "features"
    feats.mkdir(parents=True)
    with open(feats / "candidates.npy", "wb") as fh:
        fh.truncate(10**8)
    load_config(tiny(tmp_path), SCHEMA)


def test_memory_beyond_the_machine_is_refused_unless_the_rule_asks_for_it(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "_physical_memory", lambda: 10**9)
    monkeypatch.setattr(config_module.shutil, "disk_usage", lambda path: Usage(10**15, 0, 10**15))
    message = refusal(tiny(tmp_path, features__proj_dim=20_000))
    assert message.startswith("features.proj_dim: needs at least 3.2 GB of memory in one whiten job"), message
    load_config(tiny(tmp_path, features__proj_dim=20_000, resources__whiten={"mem_mb": 8000}), SCHEMA)


def test_a_billion_projection_columns_are_refused_in_gb(tmp_path):
    message = refusal(tiny(tmp_path, features__proj_dim=1_000_000_000))
    assert message.startswith("features.proj_dim: needs at least") and " GB " in message
    assert refusal(tiny(tmp_path, lds__features={"proj_dim": 10**9})).startswith("lds.features.proj_dim:")


def test_a_job_process_skips_the_environment_checks(tmp_path):
    # a cluster job's Snakemake re-reads the config; disk and folder were checked by the main process
    load_config(tiny(tmp_path, results="/sys/tarot-results"), SCHEMA, environment=False)


# ----------------------------------------------------------------------------- the real workflow


def _stderr_lines(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


@pytest.mark.parametrize(
    "changes,start",
    [
        ({"ratioz": [0.1]}, "config error: ratioz: unknown key (did you mean 'ratios'?)"),
        ({"whitening.epz": 1e-5}, "config error: whitening.epz: unknown key (did you mean 'eps'?)"),
        ({"weighting.repeat": math.nan}, "config error: weighting.repeat: must be a finite number"),
        ({"features.proj_dim": 1_000_000_000}, "config error: features.proj_dim: needs at least"),
        ({"results": "/sys/tarot-results"}, "config error: results: cannot write in /sys"),
    ],
)
def test_snakemake_prints_one_line_and_exits_2(tmp_path, changes, start):
    cfg = write_config(tmp_path, **changes)
    if "results" in changes:  # write_config sets results under tmp_path; put the change back
        data = yaml.safe_load(cfg.read_text())
        data["results"] = changes["results"]
        cfg.write_text(yaml.safe_dump(data))
    res = smk("-n", "--configfile", str(cfg))
    lines = _stderr_lines(res)
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith(start), res.stderr[-2000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "results").exists()


def test_snakemake_takes_a_list_from_the_command_line(tmp_path):
    cfg = write_config(tmp_path, ratios=[0.2], **{"report.tsne_ratio": 0.2})
    res = smk("-n", "--configfile", str(cfg), "--config", "ratios=[0.1,0.5]", "report={tsne_ratio: 0.5}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "tarot.r0.5.csv" in res.stdout and "tarot.r0.1.csv" in res.stdout and "tarot.r0.2" not in res.stdout


def test_a_missing_configfile_is_refused_by_snakemake_without_falling_back(tmp_path):
    # Snakemake reads --configfile before the Snakefile runs: its traceback is its own, but it
    # must not run the default config instead, and nothing may be written
    res = smk("-n", "--configfile", str(tmp_path / "nowhere.yaml"), "--config", f"results={tmp_path / 'r'}")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and str(tmp_path / "nowhere.yaml") in out.strip().splitlines()[-1]
    assert "Job stats" not in out and not (tmp_path / "r").exists()
