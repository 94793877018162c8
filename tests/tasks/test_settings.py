"""Typed task settings and the plan built from them: unknown keys, types, bounds, defaults,
the part of a block each stage depends on, units of a multi-target task, per-task resources."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from tarot_select.errors import TarotInputError
from tarot_select.experiments import plan
from tarot_select.tasks import registry
from tarot_select.tasks.registry import TaskSpec
from tarot_select.tasks.settings import Settings, TaskSettings, setting


@dataclass(frozen=True)
class Train(Settings):
    epochs: int = setting(3, minimum=1)
    lr: float = setting(0.1, minimum=0, exclusive_minimum=True)


@dataclass(frozen=True)
class Toy(TaskSettings):
    kind: str = setting("toy")
    size: int = setting(10, minimum=1)
    names: tuple[Literal["a", "b", "c"], ...] = setting(("a",), non_empty=True, unique=True)
    path: str | None = setting(None)
    proxy: Train = setting(factory=Train)
    downstream: Train = setting(factory=Train)
    targets: tuple[str, ...] = setting(())

    def check(self, where: str = "") -> None:
        if self.size < len(self.names):
            raise TarotInputError(f"{where}.size: fewer than the names")

    def target_names(self) -> tuple[str, ...]:
        return self.targets


def test_defaults_fill_nested_blocks_key_by_key():
    s = Toy.from_config({"proxy": {"epochs": 7}}, "tasks.t")
    assert s.proxy == Train(epochs=7, lr=0.1) and s.downstream == Train()
    assert s.to_dict()["names"] == ["a"]


@pytest.mark.parametrize(
    "block,message",
    [
        ({"sise": 3}, r"tasks\.t\.sise: unknown key \(did you mean 'size'\?\)"),
        ({"proxy": {"epoch": 3}}, r"tasks\.t\.proxy\.epoch: unknown key \(did you mean 'epochs'\?\)"),
        ({"size": 0}, r"tasks\.t\.size: must be >= 1"),
        ({"size": 2.5}, r"tasks\.t\.size: must be an integer"),
        ({"size": True}, r"tasks\.t\.size: must be an integer"),
        ({"proxy": {"lr": math.nan}}, r"tasks\.t\.proxy\.lr: must be a finite number"),
        ({"proxy": {"lr": 0.0}}, r"tasks\.t\.proxy\.lr: must be > 0"),
        ({"names": ["a", "z"]}, r"tasks\.t\.names\[1\]: must be one of"),
        ({"names": ["a", "a"]}, r"tasks\.t\.names: has duplicates"),
        ({"names": []}, r"tasks\.t\.names: must not be empty"),
        ({"names": "a"}, r"tasks\.t\.names: must be a list"),
        ({"path": 3}, r"tasks\.t\.path: must be a string"),
        ({"size": 1, "names": ["a", "b"]}, r"tasks\.t\.size: fewer than the names"),
        ("digits", r"tasks\.t: must be a mapping"),
    ],
)
def test_bad_values_name_their_key(block, message):
    with pytest.raises(TarotInputError, match=message):
        Toy.from_config(block, "tasks.t")


def test_cross_field_checks_can_be_skipped_by_stage_jobs():
    s = Toy.from_config({"size": 1, "names": ["a", "b"]}, "tasks.t", check=False)
    assert s.size == 1


def test_each_stage_gets_the_data_settings_and_its_own_block_only():
    s = Toy.from_config({"size": 4, "proxy": {"epochs": 5}, "device": "cuda", "resources": {"select": {"threads": 2}}})
    data = s.for_stage("data")
    assert "proxy" not in data and "downstream" not in data and data["size"] == 4
    assert "device" not in data and "resources" not in data  # how a job runs, not what it computes
    assert s.for_stage("proxy")["proxy"]["epochs"] == 5 and "downstream" not in s.for_stage("proxy")
    assert "proxy" not in s.for_stage("downstream")
    with pytest.raises(TarotInputError, match="unknown stage"):
        s.for_stage("evaluate")


def test_describe_lists_every_key_with_nested_ones_dotted():
    keys = [row[0] for row in Toy.describe()]
    assert "proxy.epochs" in keys and "downstream.lr" in keys and "size" in keys


@pytest.fixture
def toy_kind(monkeypatch):
    specs = {**registry._discover(), "toy": TaskSpec("toy", Toy, "tests:none")}
    monkeypatch.setattr(registry, "_discover", lambda: specs)


def _config(**tasks):
    return {
        "seed": 3,
        "device": "auto",
        "tasks": tasks,
        "resources": {"default": {"mem_mb": 1000}, "train_proxy": {"threads": 2}},
    }


def test_a_task_with_several_target_sets_is_one_pool_and_one_unit_per_target(toy_kind):
    config = _config(instr={"kind": "toy", "targets": ["mmlu", "bbh"]}, small={"kind": "toy"})
    units = plan.units(config)
    assert list(units) == ["instr-mmlu", "instr-bbh", "small"]
    assert units["instr-bbh"] == plan.Unit("instr-bbh", "instr", "bbh")
    assert units["small"].target is None


def test_stage_params_carry_the_seed_and_exactly_the_stage_settings(toy_kind):
    config = _config(t={"kind": "toy", "downstream": {"epochs": 9}})
    p = plan.stage_params(config, "t", "downstream")
    assert p["seed"] == 3 and p["task"]["kind"] == "toy" and p["task"]["downstream"]["epochs"] == 9
    assert "proxy" not in p["task"]
    edited = _config(t={"kind": "toy", "downstream": {"epochs": 10}})
    assert plan.stage_params(edited, "t", "proxy") == plan.stage_params(config, "t", "proxy")
    assert plan.stage_params(edited, "t", "downstream") != p


def test_resources_come_from_the_task_block_first(toy_kind):
    config = _config(
        gpu={"kind": "toy", "resources": {"train_proxy": {"gpu": 1, "mem_mb": 64000}}}, cpu={"kind": "toy"}
    )
    assert plan.resource(config, "train_proxy", "gpu", "gpu") == 1
    assert plan.resource(config, "train_proxy", "mem_mb", "gpu") == 64000
    assert plan.resource(config, "train_proxy", "threads", "gpu") == 2  # the config's table
    assert plan.resource(config, "train_proxy", "gpu", "cpu") == 0  # the toy task shares nothing
    assert plan.resource(config, "train_proxy", "mem_mb", "cpu") == 1000
    assert plan.resource(config, "select", "runtime", "cpu") == plan.RESOURCE_DEFAULTS["runtime"]


def test_a_task_device_overrides_the_global_one(toy_kind):
    config = _config(a={"kind": "toy", "device": "cuda:1"}, b={"kind": "toy"})
    assert plan.task_device(config, "a") == "cuda:1" and plan.task_device(config, "b") == "auto"


def _flat_keys(block, prefix=""):
    keys = set()
    for key, value in block.items():
        if isinstance(value, dict) and key not in ("resources",):
            keys |= _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


@pytest.mark.parametrize("kind", sorted(registry.task_kinds()))
def test_every_kind_has_an_example_config_with_every_key_and_its_default(kind):
    import yaml

    from tarot_select.experiments.config import check_config  # noqa: F401  (the example must load)

    path = Path(__file__).resolve().parents[2] / "config" / "tasks" / f"{kind}.yaml"
    assert path.is_file(), f"add {path.relative_to(path.parents[2])} for task kind {kind}"
    config = yaml.safe_load(path.read_text())
    [(name, block)] = {**config.get("tasks", {}), **config.get("lds", {}).get("tasks", {})}.items()
    spec = registry.get_spec(kind)
    documented = _flat_keys(block)
    described = {row[0] for row in spec.settings.describe()}
    assert documented == described, f"{path.name}: missing {described - documented}, unknown {documented - described}"
    settings = spec.settings.from_config(block, name, check=False)
    defaults = {row[0]: row[2] for row in spec.settings.describe()}
    flat = {k: v for k, v in _flat_items(settings.to_dict())}
    for key, default in defaults.items():
        if default != "(required)":
            assert flat[key] == default, f"{path.name}: {key} is {flat[key]!r}, the default is {default!r}"


def _flat_items(block, prefix=""):
    for key, value in block.items():
        if isinstance(value, dict) and key not in ("resources",):
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
