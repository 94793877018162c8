"""The workflow config, checked before any job runs: one line naming the key, or nothing.

The Snakefile (``workflow/rules/common.smk``) calls :func:`load_config`, which

1. re-reads the values given with ``snakemake --config`` that Snakemake left as strings
   (it parses nested values with YAML's base loader: ``ratios=[0.1,0.5]`` arrives as
   ``["0.1", "0.5"]``) with YAML's safe loader (:func:`typed_overrides`);
2. refuses NaN and infinities anywhere (:func:`check_finite`: JSON-schema ranges let NaN through);
3. validates against ``workflow/schemas/config.schema.yaml`` and fills its defaults
   (:func:`validate_schema`), reporting the one most relevant violation as one line that
   names the key path (``whitening.epz: unknown key (did you mean 'eps'?)``) instead of the
   schema;
4. runs :func:`check_config`: what the schema cannot express, each task block through its
   kind's settings dataclass, and sizes that the settings tell without reading data
   (``features.shards``, ``otm.folds``, ``lds.chunks``, ``lds.fraction``, ``features.params``);
5. in the main Snakemake process, :func:`check_environment`: the results folder can be
   written, and the feature files, whitening sums and covariances the config asks for fit
   the free disk and the machine's memory (:func:`estimate_footprint`).

Everything here is torch-free: it runs in the Snakemake process.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from ..errors import TarotInputError
from ..tasks.registry import get_spec
from ..tasks.settings import RESOURCE_KEYS, TaskSettings
from .naming import ratio_token
from .plan import resource, task_settings, units

__all__ = [
    "DEVICE",
    "RULES",
    "SCHEMA",
    "Footprint",
    "check_config",
    "check_environment",
    "check_finite",
    "estimate_footprint",
    "load_config",
    "typed_overrides",
    "validate_schema",
]

#: The workflow's config schema (in a source checkout, which the workflow needs anyway).
SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"

#: Device names a task block may give (the global ``device`` is checked by the schema).
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

#: Rules whose resources a config may set (``resources.<rule>``, also inside a task block).
RULES: tuple[str, ...] = (
    "default",
    "prepare_data",
    "train_proxy",
    "dump_gradients",
    "embed_candidates",
    "gather_features",
    "whiten",
    "select",
    "train_downstream",
    "evaluate",
    "table",
    "figures",
    "lds_masks",
    "lds_train_subsets",
    "lds_gather_outputs",
    "lds_member",
    "lds_evaluate",
)

GB = 1e9


def _gb(n: float) -> str:
    """Bytes in GB, readable at any size (``192.0 GB``, ``8e+09 GB``)."""
    return f"{n / GB:.1f} GB" if n < 1e5 * GB else f"{n / GB:.2g} GB"


def load_config(
    config: dict[str, Any],
    schema: str | os.PathLike[str] | Mapping[str, Any] = SCHEMA,
    *,
    overrides: Mapping[str, Any] | None = None,
    environment: bool = True,
) -> None:
    """Check the workflow config in place and fill its defaults (see the module docstring).

    Parameters
    ----------
    config : dict
        Snakemake's ``config`` (edited in place: typed ``--config`` values, schema defaults).
    schema : path or mapping, default :data:`SCHEMA`
        The JSON schema (YAML or JSON file, or the loaded mapping).
    overrides : mapping, optional
        The ``--config`` values as Snakemake parsed them (``workflow.config_settings.config``).
    environment : bool, default True
        Also run :func:`check_environment` (the main Snakemake process does; a job's own
        Snakemake process, on a cluster node, does not).

    Raises
    ------
    TarotInputError
        One line naming the key and what is wrong with it.
    """
    if not isinstance(config, dict):
        raise TarotInputError(f"config: must be a mapping of keys, got {_show(config)}")
    if overrides:
        _merge(config, typed_overrides(overrides))
    check_finite(config)
    validate_schema(config, schema)
    check_config(config)
    if environment:
        check_environment(config)


# ----------------------------------------------------------------------------- --config


def typed_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """``--config`` values with the strings nested in lists and mappings re-read as YAML scalars.

    Snakemake reads ``--config key=value`` as an int, a float or a boolean, else with YAML's
    base loader, which keeps every nested scalar a string (``[0.1, 0.5]`` -> ``["0.1", "0.5"]``).
    Nested strings that YAML's safe loader reads as a number, a boolean or null become that;
    top-level strings and everything else stay as they are.
    """
    return {key: _typed(value, nested=False) for key, value in values.items()}


def _typed(value: Any, nested: bool) -> Any:
    if isinstance(value, Mapping):
        return {k: _typed(v, nested=True) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_typed(v, nested=True) for v in value]
    if nested and isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if parsed is None or isinstance(parsed, (bool, int, float)):
            return parsed
    return value


def _merge(config: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Snakemake's merge of ``--config`` into the config: mappings key by key, the rest replaced."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


# ----------------------------------------------------------------------------- finite numbers


def check_finite(config: Any, where: str = "") -> None:
    """Refuse NaN and infinities anywhere in ``config``, naming the key path (``ratios[1]``)."""
    for path, value in _leaves(config, where):
        if isinstance(value, float) and not math.isfinite(value):
            raise TarotInputError(f"{path or 'config'}: must be a finite number, got {value!r}")


def _leaves(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{where}[{i}]")
    else:
        yield where, value


# ----------------------------------------------------------------------------- schema

_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "null": "null",
}


def validate_schema(config: dict[str, Any], schema: str | os.PathLike[str] | Mapping[str, Any] = SCHEMA) -> None:
    """Validate ``config`` against the JSON schema and fill its defaults (in place).

    Integers must be integers (``2.0`` is refused where the schema says integer, as the task
    settings do). Raises :class:`TarotInputError` with the most relevant violation
    (:func:`jsonschema.exceptions.best_match`) as one line naming the key path.
    """
    import jsonschema
    from jsonschema import Draft202012Validator, validators

    if not isinstance(schema, Mapping):
        with open(schema, encoding="utf-8") as fh:
            schema = yaml.safe_load(fh)
    properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator: Any, props: Mapping[str, Any], instance: Any, sub: Mapping[str, Any]) -> Iterator:
        if isinstance(instance, dict):
            for key, spec in props.items():
                if "default" in spec and key not in instance:
                    instance[key] = copy.deepcopy(spec["default"])
        yield from properties(validator, props, instance, sub)

    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    strict = validators.extend(Draft202012Validator, {"properties": fill_defaults}, type_checker=checker)
    error = jsonschema.exceptions.best_match(strict(schema).iter_errors(config))
    if error is not None:
        raise TarotInputError(_schema_message(error))


def _key_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any, limit: int = 80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown_key(where: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{_join(where, key)}: unknown key{hint}; known keys: {', '.join(known)}"


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _schema_message(error: Any) -> str:
    """One line for a :class:`jsonschema.ValidationError`: the key path, then what is wrong."""
    where = _key_path(error.absolute_path)
    kind, value, rule = error.validator, error.instance, error.validator_value
    if "propertyNames" in error.absolute_schema_path:
        # the instance is the offending key of the mapping at `where`
        if kind == "enum":
            return _unknown_key(where, str(value), [str(v) for v in rule])
        if kind == "pattern":
            return f"{_join(where, value)}: names may contain only letters, digits and '-'"
        return f"{_join(where, value)}: {error.message}"
    if kind == "additionalProperties" and isinstance(value, Mapping):
        known = list(error.schema.get("properties", {}))
        extra = [str(k) for k in value if k not in known]
        if extra:
            return _unknown_key(where, extra[0], known)
    where = where or "config"
    if kind == "type":
        types = [rule] if isinstance(rule, str) else list(rule)
        return f"{where}: must be {' or '.join(_TYPE_WORDS.get(t, t) for t in types)}, got {_show(value)}"
    if kind == "enum":
        return f"{where}: must be one of {', '.join(map(str, rule))}; got {_show(value)}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{where}: must be {bounds[kind]} {rule}, got {_show(value)}"
    if kind == "minItems":
        return f"{where}: must have at least {rule} item{'s' if rule != 1 else ''}, got {_show(value)}"
    if kind == "uniqueItems":
        return f"{where}: has duplicates: {_show(value)}"
    if kind == "required":
        missing = [k for k in rule if k not in value]
        return f"{where}: required key missing: {', '.join(missing)}"
    if kind == "pattern":
        return f"{where}: {_show(value)} does not match {rule}"
    return f"{where}: {' '.join(error.message.split())[:200]}"


# ----------------------------------------------------------------------------- checks


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`TarotInputError` naming the offending key if the config cannot run.

    Torch-free and cheap (no data is read): it runs in the Snakemake process before any job.
    Checks: no NaN or infinity anywhere; ratios that differ only past the file-name
    precision; the t-SNE ratio is one of ``ratios``; the results path is not a file; every
    task block (``tasks`` and, when enabled, ``lds.tasks``) reads into its kind's settings
    dataclass (unknown keys, types, bounds, dataset paths, cross-field checks) and its
    ``resources`` name known rules and keys; LDS tasks support model outputs; task, LDS-task
    and unit names do not collide; user LDS files exist; and the sizes the task settings
    tell (:meth:`~tarot_select.tasks.settings.TaskSettings.split_sizes`,
    :meth:`~tarot_select.tasks.settings.TaskSettings.proxy_parameters`) fit
    ``features.shards``, ``otm.folds``, ``infdist.landmarks``, ``features.params``, ``lds.chunks`` and
    ``lds.fraction``.
    Keys the config leaves out take the schema's defaults.
    """
    check_finite(config)
    ratios = [float(r) for r in config.get("ratios", [])]
    tokens: dict[str, float] = {}
    for r in ratios:
        if ratio_token(r) in tokens:
            raise TarotInputError(
                f"ratios: {tokens[ratio_token(r)]!r} and {r!r} name the same files (ratio {ratio_token(r)}); "
                "keep one of them"
            )
        tokens[ratio_token(r)] = r
    tsne = config.get("report", {}).get("tsne_ratio")
    if tsne is not None and ratios and float(tsne) not in ratios:
        raise TarotInputError(f"report.tsne_ratio: {tsne} is not one of ratios {ratios}")
    results = Path(config.get("results", "results"))
    if results.exists() and not results.is_dir():
        raise TarotInputError(f"results: {results} exists and is not a directory")
    lds = config.get("lds", {})
    lds_tasks = lds.get("tasks", {}) if lds.get("enabled", False) else {}
    tasks = config.get("tasks", {})
    if not tasks and not lds_tasks:
        raise TarotInputError("tasks: the config has no task; add a block under tasks (or lds.tasks with lds.enabled)")
    both = sorted(set(lds_tasks) & set(tasks))
    if both:
        raise TarotInputError(f"lds.tasks: {both} also named under tasks; task names share results/<task>/")
    settings: dict[str, TaskSettings] = {}
    for where, blocks in (("tasks", tasks), ("lds.tasks", lds_tasks)):
        for name in blocks:
            settings[name] = task_settings(config, name)
            _check_resources(settings[name].resources, f"{where}.{name}.resources")
            if settings[name].device is not None and not DEVICE.fullmatch(settings[name].device):
                raise TarotInputError(
                    f"{where}.{name}.device: {settings[name].device!r} is not a device (cpu, cuda, cuda:N, mps, auto)"
                )
            if where == "lds.tasks" and not get_spec(settings[name].kind).model_outputs:
                raise TarotInputError(
                    f"lds.tasks.{name}: task kind {settings[name].kind!r} does not support the LDS benchmark "
                    "(it has no model outputs)"
                )
    names = set(tasks) | set(lds_tasks)
    for unit in units(config).values():
        if unit.target is not None and unit.name in names:
            raise TarotInputError(
                f"tasks.{unit.task}: target set {unit.target!r} makes unit {unit.name!r}, "
                "which is also a task name; rename one"
            )
    _check_sizes(config, {name: settings[name] for name in tasks})
    _check_params(config, {name: settings[name] for name in tasks})
    if lds_tasks:
        _check_lds(lds, {name: settings[name] for name in lds_tasks})


def _check_resources(resources: Mapping[str, Any] | None, where: str) -> None:
    """A task block's ``resources``: known rules, known keys, positive integers."""
    for rule, block in (resources or {}).items():
        if rule not in RULES:
            raise TarotInputError(f"{where}.{rule}: unknown rule; one of {', '.join(RULES)}")
        if not isinstance(block, Mapping):
            raise TarotInputError(f"{where}.{rule}: must be a mapping of {', '.join(RESOURCE_KEYS)}")
        for key, value in block.items():
            if key not in RESOURCE_KEYS:
                raise TarotInputError(f"{where}.{rule}.{key}: unknown resource; one of {', '.join(RESOURCE_KEYS)}")
            low = 0 if key == "gpu" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TarotInputError(f"{where}.{rule}.{key}: must be an integer >= {low}, got {value!r}")


def _check_sizes(config: Mapping[str, Any], tasks: Mapping[str, TaskSettings]) -> None:
    """``features.shards``, ``otm.folds`` and ``infdist.landmarks`` against the split sizes of every selection task."""
    shards = int(config.get("features", {}).get("shards", 1))
    otm = config.get("otm", {})
    for name, settings in tasks.items():
        sizes = settings.split_sizes()
        if not sizes:
            continue
        for split in ("candidates", "targets"):
            n = sizes.get(split)
            if n is not None and shards > n:
                raise TarotInputError(
                    f"features.shards: {shards} shards for only {n} {split} of task {name} "
                    f"(each shard needs a row); at most {n}"
                )
        folds, n = int(otm.get("folds", 10)), sizes.get("targets")
        if otm.get("enabled", True) and n is not None and folds > n:
            raise TarotInputError(f"otm.folds: {folds} folds for only {n} targets of task {name}; at most {n}")
        landmarks, n = int(config.get("infdist", {}).get("landmarks", 4096)), sizes.get("candidates")
        if "infdist" in config.get("methods", []) and n is not None and landmarks > n:
            raise TarotInputError(
                f"infdist.landmarks: {landmarks} landmarks for only {n} candidates of task {name}; at most {n} "
                "(a few percent of the pool is the point of the method)"
            )
        if "infdist" in config.get("methods", []) and n is not None and shards > min(landmarks, n):
            raise TarotInputError(
                f"features.shards: {shards} shards for only {landmarks} infdist landmarks of task {name}; "
                f"at most {landmarks}"
            )


def _check_params(config: Mapping[str, Any], tasks: Mapping[str, TaskSettings]) -> None:
    """``features.params``: every pattern matches a proxy parameter of some task, and every
    task keeps at least one parameter (tasks whose kind does not list its parameters are skipped)."""
    patterns = config.get("features", {}).get("params")
    if patterns is None:
        return
    known = {name: s.proxy_parameters() for name, s in tasks.items()}
    known = {name: list(p) for name, p in known.items() if p is not None}
    if not known:
        return
    every = [p for params in known.values() for p in params]
    for i, pattern in enumerate(patterns):
        if not any(fnmatchcase(p, pattern) for p in every):
            raise TarotInputError(
                f"features.params[{i}]: {pattern!r} matches no parameter of the proxy of "
                f"{', '.join(known)}; parameters: {_some(every)}"
            )
    for name, params in known.items():
        if not any(fnmatchcase(p, pat) for p in params for pat in patterns):
            raise TarotInputError(
                f"features.params: {list(patterns)} match no parameter of task {name}'s proxy; "
                f"its parameters: {_some(params)}"
            )


def _some(names: list[str], limit: int = 12) -> str:
    unique = list(dict.fromkeys(names))
    more = f", ... ({len(unique)} in all)" if len(unique) > limit else ""
    return ", ".join(unique[:limit]) + more


def _check_lds(lds: Mapping[str, Any], tasks: Mapping[str, TaskSettings]) -> None:
    """The LDS block: subset sizes and chunks; user files exist and belong to LDS tasks."""
    subsets, chunks = int(lds.get("subsets", 50)), int(lds.get("chunks", 2))
    if chunks > subsets:
        raise TarotInputError(
            f"lds.chunks: {chunks} chunks for only {subsets} subsets (lds.subsets); at most {subsets}"
        )
    fraction = float(lds.get("fraction", 0.5))
    for name, settings in tasks.items():
        n = (settings.split_sizes() or {}).get("candidates")
        if n is None:
            continue
        k = round(fraction * n)
        if not 1 <= k < n:
            raise TarotInputError(
                f"lds.fraction: {fraction} of the {n} training examples of lds task {name} gives subsets of {k}; "
                f"need 1 to {n - 1} (a fraction between {1 / n:.3g} and {(n - 1) / n:.3g})"
            )
    for name, files in lds.get("external", {}).items():
        if name not in tasks:
            raise TarotInputError(f"lds.external.{name}: not one of lds.tasks ({', '.join(tasks)})")
        if bool(files.get("masks")) != bool(files.get("outputs")):
            raise TarotInputError(f"lds.external.{name}: give both masks and outputs (outputs are per mask row)")
        for key in ("masks", "outputs"):
            if not Path(files[key]).is_file():
                raise TarotInputError(f"lds.external.{name}.{key}: file not found: {files[key]}")


# ----------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Footprint:
    """A lower bound on what one part of a run needs, and the key that sets it.

    Attributes
    ----------
    key : str
        The config key to change (``features.proj_dim``).
    what : str
        What needs the space (``feature files of task digits``).
    disk : int
        Bytes written under ``results``.
    memory : int
        Bytes one job holds in memory at once.
    rule : str
        The rule of that job (its ``resources.<rule>.mem_mb`` may allow more than this machine has).
    task : str or None
        The task block (for its own ``resources``).
    """

    key: str
    what: str
    disk: int
    memory: int
    rule: str
    task: str | None = None


def estimate_footprint(config: Mapping[str, Any]) -> list[Footprint]:
    """Lower bounds on the disk and memory the config's gradient features need, per task.

    For a selection task with ``n`` candidates and ``m`` targets (per target set), ``c``
    proxy checkpoints and ``d`` columns per checkpoint (``features.proj_dim``, or the number
    of selected proxy parameters for ``proj_kind: none``), the gathered feature files hold
    ``(n + m)`` rows of ``c * d`` values for each of the loss, Adam (candidates) and, for
    DsDm on a task with model outputs, output gradients, and the shards hold them again;
    every shard writes whitening sums with a ``w x w`` float64 matrix (``w = d``, or ``c * d``
    for ``combine: concat``), which the dumping and the whitening jobs hold in memory (as
    does the ``tarot_concat`` ablation for ``c * d``). For an LDS task, every ensemble member
    writes ``(n + m)`` rows of ``lds.features.proj_dim`` float32 values, and scoring holds one
    member's features and a ``proj_dim x proj_dim`` float64 matrix. Tasks whose kind cannot
    tell its sizes are left out.
    """
    features = config.get("features", {})
    shards = int(features.get("shards", 1))
    itemsize = 2 if features.get("dtype", "float32") == "float16" else 4
    methods = config.get("methods", [])
    out: list[Footprint] = []
    for name in config.get("tasks", {}):
        settings = task_settings(config, name, check=False)
        sizes = settings.split_sizes()
        if not sizes:
            continue
        dim, key = _feature_dim(features, settings)
        if dim is None:
            continue
        n, m = sizes["candidates"], sizes["targets"]
        n_targets = max(1, len(settings.target_names()))
        checkpoints = int(getattr(getattr(settings, "proxy", None), "checkpoints", 1))
        cols = dim * checkpoints
        white = cols if features.get("combine", "sum") == "concat" else dim
        outputs = "dsdm" in methods and get_spec(settings.kind).model_outputs
        rows = (2 * n + m * n_targets) + (n + m * n_targets if outputs else 0)  # loss + Adam (+ output)
        splits = (2 + n_targets) + (1 + n_targets if outputs else 0)
        disk = 2 * rows * cols * itemsize + splits * shards * white * white * 8  # shards and gathered; sums
        disk += (n + m) * n_targets * white * 4  # whitened candidates and targets
        batch = int(features.get("batch_size", 128))
        memory = max(white * white * 8, min(batch, n) * cols * 4)  # the sums' matrix; a projected batch
        if "tarot_concat" in methods:
            memory = max(memory, cols * cols * 8)
        shape = f"{cols} columns ({checkpoints} checkpoints x {dim})"
        out.append(Footprint(key, f"gradient features of task {name}: {shape}", disk, memory, "whiten", name))
    lds = config.get("lds", {})
    if lds.get("enabled", False):
        lds_dim = int(lds.get("features", {}).get("proj_dim", 512))
        members = max([int(e) for e in lds.get("ensembles", [1])] or [1])
        for name in lds.get("tasks", {}):
            sizes = task_settings(config, name, check=False).split_sizes()
            if not sizes:
                continue
            rows = sizes["candidates"] + sizes["targets"]
            disk = members * rows * lds_dim * 4
            memory = lds_dim * lds_dim * 8 + rows * lds_dim * 4  # whitening or TRAK's matrix; one member
            what = f"LDS member features of task {name}: {members} x {rows} rows x {lds_dim}"
            out.append(Footprint("lds.features.proj_dim", what, disk, memory, "lds_evaluate", name))
    return out


def _feature_dim(features: Mapping[str, Any], settings: TaskSettings) -> tuple[int | None, str]:
    """Columns per checkpoint and the key that sets them (``proj_kind: none`` keeps every selected parameter)."""
    if features.get("proj_kind", "rademacher") != "none":
        return int(features.get("proj_dim", 256)), "features.proj_dim"
    params = settings.proxy_parameters()
    if params is None:
        return None, "features.proj_kind"
    patterns = features.get("params")
    chosen = [s for p, s in params.items() if patterns is None or any(fnmatchcase(p, pat) for pat in patterns)]
    return sum(math.prod(s) for s in chosen), "features.proj_kind"


def check_environment(config: Mapping[str, Any]) -> None:
    """The results folder can be written, and the run's features fit the disk and the memory.

    Writes and removes one probe file in the results folder (or, when it does not exist yet,
    its nearest existing parent; the folder itself is not created). The footprint
    (:func:`estimate_footprint`) is a lower bound; a run it refuses cannot finish. Memory is
    compared with the larger of this machine's memory and the rule's ``mem_mb`` (a cluster
    job may have more than the machine that plans it).
    """
    results = Path(config.get("results", "results"))
    base = _existing_parent(results)
    if not base.is_dir():
        raise TarotInputError(f"results: {base} is a file, so {results} cannot be a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".tarot-write-probe-"):
            pass
    except OSError as exc:
        raise TarotInputError(f"results: cannot write in {base}: {exc.strerror or exc}") from None
    footprints = estimate_footprint(config)
    if not footprints:
        return
    physical = _physical_memory()
    for fp in footprints:
        allowed = max(physical or 0, resource(config, fp.rule, "mem_mb", fp.task) * 10**6)
        if physical is not None and fp.memory > allowed:
            raise TarotInputError(
                f"{fp.key}: needs at least {_gb(fp.memory)} of memory in one {fp.rule} job "
                f"({fp.what}), more than the {_gb(allowed)} available; lower it"
            )
    need = sum(fp.disk for fp in footprints)
    have = shutil.disk_usage(base).free + _bytes_under(results)
    if need > have:
        worst = max(footprints, key=lambda fp: fp.disk)
        raise TarotInputError(
            f"{worst.key}: the run needs at least {_gb(need)} under {results} ({worst.what}: "
            f"{_gb(worst.disk)}), more than the {_gb(have)} free; lower it or free space"
        )


def _existing_parent(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _bytes_under(folder: Path) -> int:
    """Bytes of the feature files already under ``folder`` (a rerun overwrites them)."""
    if not folder.is_dir():
        return 0
    total = 0
    for path in folder.glob("*/features/**/*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total
