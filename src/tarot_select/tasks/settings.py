"""Typed task settings: one dataclass per task kind is the single source of truth.

A task's config block (``tasks.<name>`` in the workflow config) is read into its
:class:`TaskSettings` subclass by :meth:`Settings.from_config`, which

* refuses unknown keys, naming the key and the closest known one;
* checks every value against the field's type (``int``, ``float``, ``bool``, ``str``,
  ``Literal[...]``, ``tuple[...]`` of those, ``X | None``, a nested :class:`Settings`) and
  the bounds declared with :func:`setting` (NaN and infinities are refused);
* fills defaults (nested blocks key by key);
* runs the class's cross-field :meth:`Settings.check`.

This module imports neither torch nor a task's model code, so the Snakemake process can
check a config and name its jobs' parameters without loading a deep-learning library.

Stages
------
:meth:`TaskSettings.for_stage` gives the part of the settings a pipeline stage depends on;
the workflow passes exactly that part to the stage's jobs as Snakemake ``params``, so
editing a setting reruns exactly the jobs whose outputs depend on it:

``data``        every field except the ``proxy`` and ``downstream`` blocks, ``device`` and ``resources``
``proxy``       ``data`` plus the ``proxy`` block (proxy training, gradient dumping)
``downstream``  ``data`` plus the ``downstream`` block (downstream training, evaluation, LDS models)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from ..errors import TarotInputError

__all__ = ["STAGES", "RESOURCE_KEYS", "Settings", "TaskSettings", "setting"]

S = TypeVar("S", bound="Settings")

#: Stages whose settings :meth:`TaskSettings.for_stage` knows.
STAGES: tuple[str, ...] = ("data", "proxy", "downstream")
#: Keys of one rule's resources (``resources.<rule>`` globally or in a task block).
RESOURCE_KEYS: tuple[str, ...] = ("mem_mb", "runtime", "threads", "gpu")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    non_empty: bool = False,
    unique: bool = False,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A settings field with a default, a one-line description and bounds.

    Parameters
    ----------
    default : any
        Default value (omit for a required key).
    doc : str
        One-line description (shown by ``tarot-select`` docs and in error messages).
    minimum, maximum : float, optional
        Bounds of a number (or of every number in a tuple); ``exclusive_minimum`` makes the
        lower bound strict.
    non_empty, unique : bool
        For tuples: at least one item; no repeated items.
    factory : callable, optional
        Default factory (for nested :class:`Settings` blocks).
    """
    meta = {
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "non_empty": non_empty,
        "unique": unique,
    }
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings block (frozen dataclass; see the module docstring)."""

    @classmethod
    def from_config(cls: type[S], block: Any, where: str = "", *, check: bool = True) -> S:
        """Read ``block`` (a mapping, or None for all defaults) into ``cls``.

        Parameters
        ----------
        block : mapping or None
            The user's keys; missing keys take their defaults.
        where : str
            Dotted config path of the block (``tasks.digits``), prefixed to every message.
        check : bool, default True
            Run the cross-field :meth:`check` (stage jobs that receive only their part of a
            block pass False; the whole block was checked when the config was loaded).

        Raises
        ------
        TarotInputError
            One line naming the key: unknown key, wrong type, value out of bounds, or a
            cross-field inconsistency.
        """
        if block is None:
            block = {}
        if isinstance(block, Settings):
            return typing.cast(S, block)
        if not isinstance(block, Mapping):
            raise TarotInputError(f"{where or cls.__name__}: must be a mapping, got {block!r}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [k for k in block if k not in fields]
        if unknown:
            key = str(unknown[0])
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TarotInputError(f"{_join(where, key)}: unknown key{hint}; known keys: {', '.join(fields)}")
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, f in fields.items():
            here = _join(where, name)
            if name in block:
                values[name] = _convert(block[name], hints[name], f.metadata, here, check)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TarotInputError(f"{here}: required key missing")
        out = cls(**values)
        if check:
            out.check(where)
        return out

    def check(self, where: str = "") -> None:
        """Cross-field checks (override): raise :class:`TarotInputError` naming the key."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples): the form stored in sidecars and params."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """``(key, type, default, doc)`` of every key, nested blocks as dotted keys."""
        rows: list[tuple[str, str, Any, str]] = []
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            nested = _settings_class(kind)
            if nested is not None:
                for key, t, d, doc in nested.describe():
                    rows.append((f"{f.name}.{key}", t, d, doc))
                continue
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            rows.append((f.name, _type_name(kind), _plain(default), f.metadata.get("doc", "")))
        return rows


@dataclasses.dataclass(frozen=True)
class TaskSettings(Settings):
    """Keys every task block has besides its own.

    Attributes
    ----------
    kind : str
        The task kind (a package under :mod:`tarot_select.tasks`).
    device : str or None
        Torch device of this task's jobs (``cpu``, ``cuda``, ``cuda:1``); None: the
        workflow's global ``device``.
    resources : mapping or None
        Per-rule resources of this task's jobs (``{train_proxy: {mem_mb: 16000, gpu: 1}}``),
        over the workflow's global ``resources`` table, so that a GPU task and a CPU toy
        task in one config do not share rule resources.
    """

    #: Fields that are stage blocks (see :meth:`for_stage`); others are data settings.
    STAGE_BLOCKS: ClassVar[tuple[str, ...]] = ("proxy", "downstream")
    #: Fields that change how a job runs but not what it computes.
    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("device", "resources")

    kind: str = setting("", doc="task kind (a package under tarot_select.tasks)")
    device: str | None = setting(None, doc="torch device of this task's jobs (None: the global device)")
    resources: dict[str, dict[str, int]] | None = setting(None, doc="per-rule resources of this task's jobs")

    def target_names(self) -> tuple[str, ...]:
        """Names of the task's target sets when it has several (one candidate pool serves
        them all); ``()`` for a task with one target set (override)."""
        return ()

    def split_sizes(self) -> dict[str, int] | None:
        """Rows of the ``candidates``, ``targets`` (of each target set) and ``evaluation``
        splits, from the settings alone (torch-free, no data read); None when the kind cannot
        tell (override). The workflow checks sizes against them before any job runs."""
        return None

    def proxy_parameters(self) -> dict[str, tuple[int, ...]] | None:
        """Shapes of the proxy model's trainable parameters by name, in the model's order, from
        the settings alone (torch-free); None when the kind cannot tell (override).

        The workflow matches ``features.params`` patterns against these names and estimates
        feature sizes from them before any job runs; a test keeps every kind's answer equal to
        ``task.proxy_model().named_parameters()``.
        """
        return None

    def conda_env(self) -> str:
        """Name of the conda env (``envs/<name>.yaml``) of this task's torch jobs: data,
        proxy, gradients, selection, downstream training and evaluation (override)."""
        return "torch"

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The settings stage ``stage`` (one of :data:`STAGES`) depends on, as a plain dict."""
        if stage not in STAGES:
            raise TarotInputError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        full = self.to_dict()
        out = {k: v for k, v in full.items() if k not in self.STAGE_BLOCKS and k not in self.RUN_FIELDS}
        if stage != "data" and stage in full:
            out[stage] = full[stage]
        return out


# --------------------------------------------------------------------------- conversion


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _settings_class(kind: Any) -> type[Settings] | None:
    return kind if isinstance(kind, type) and issubclass(kind, Settings) else None


def _type_name(kind: Any) -> str:
    origin = get_origin(kind)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(kind))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(kind))
    if origin is tuple:
        return f"list of {_type_name(get_args(kind)[0])}"
    if origin is dict:
        return "mapping"
    if kind is type(None):
        return "null"
    return getattr(kind, "__name__", str(kind))


def _convert(value: Any, kind: Any, meta: Mapping[str, Any], where: str, check: bool) -> Any:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        options = get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, meta, where, check)
            except TarotInputError as exc:
                errors.append(str(exc))
        raise TarotInputError(errors[0] if len(errors) == 1 else f"{where}: must be {_type_name(kind)}, got {value!r}")
    nested = _settings_class(kind)
    if nested is not None:
        return nested.from_config(value, where, check=check)
    if origin is Literal:
        choices = get_args(kind)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise TarotInputError(f"{where}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise TarotInputError(f"{where}: must be a list, got {value!r}")
        item = get_args(kind)[0]
        items = tuple(_convert(v, item, meta, f"{where}[{i}]", check) for i, v in enumerate(value))
        if meta.get("non_empty") and not items:
            raise TarotInputError(f"{where}: must not be empty")
        if meta.get("unique") and len(set(items)) != len(items):
            raise TarotInputError(f"{where}: has duplicates: {list(items)}")
        return items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise TarotInputError(f"{where}: must be a mapping, got {value!r}")
        return _plain(dict(value))
    if kind is bool:
        if not isinstance(value, bool):
            raise TarotInputError(f"{where}: must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TarotInputError(f"{where}: must be an integer, got {value!r}")
        _bounds(int(value), meta, where)
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise TarotInputError(f"{where}: must be a finite number, got {value!r}")
        _bounds(float(value), meta, where)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TarotInputError(f"{where}: must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: settings type {kind!r} is not supported")  # a bug in a task, not user input


def _bounds(value: float, meta: Mapping[str, Any], where: str) -> None:
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None:
        if meta.get("exclusive_minimum") and not value > low:
            raise TarotInputError(f"{where}: must be > {low}, got {value!r}")
        if not value >= low:
            raise TarotInputError(f"{where}: must be >= {low}, got {value!r}")
    if high is not None and not value <= high:
        raise TarotInputError(f"{where}: must be <= {high}, got {value!r}")
