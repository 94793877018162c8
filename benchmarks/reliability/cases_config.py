"""Hostile workflow configs: every mistake stops the run before its first job, in one line.

Classes:

* ``config-line``: a config the schema refuses (a typo in a key, a wrong type, a value out
  of range, a broken task block) gives one line naming the key path, not the schema
  (Snakemake's own ``validate`` printed up to 867 lines); ``--config`` values given on the
  command line are read as the YAML they are (``ratios=[0.1,0.5]`` works); a
  ``--configfile`` that is missing, empty or not YAML is refused by Snakemake itself and
  never falls back to the default config.
* ``config-early``: what used to fail in the tenth job fails before the first: NaN and
  infinities anywhere, sizes the settings tell (``features.shards``, ``otm.folds``,
  ``lds.chunks``, ``lds.fraction``, ``features.params``), a results folder that cannot be
  written, and features too large for the disk or the memory (``proj_dim: 1000000000``).

Most cases call :func:`tarot_select.experiments.config.load_config` in-process (what the
Snakefile calls); the ``snakemake -n`` ones run the real workflow and are slow (about 5 s
each). A refusal must be a :class:`~tarot_select.errors.TarotInputError` whose one-line
message starts with the key path; a config that is accepted where it cannot run is
``late`` (it would fail in a job).
"""

from __future__ import annotations

import copy
import math
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from probe import ROOT, Case, Ran, Verdict, expect_answer, expect_clear_error, run_snakemake, snapshot

TINY = ROOT / "tests" / "data" / "tiny.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
LINE, EARLY = "config-line", "config-early"
_tiny: dict[str, Any] = {}


# --------------------------------------------------------------------------- helpers


def tiny(work: Path, changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The tiny test config with dotted-key ``changes`` (``None`` deletes), results under ``work``."""
    if not _tiny:
        _tiny.update(yaml.safe_load(TINY.read_text()))
    cfg = copy.deepcopy(_tiny)
    cfg["results"] = str(work / "results")
    for dotted, value in (changes or {}).items():
        node = cfg
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None and last in node:
            del node[last]
        else:
            node[last] = value
    return cfg


def _load(cfg: Any, overrides: Mapping[str, Any] | None, environment: bool) -> None:
    from tarot_select.experiments.config import load_config

    load_config(cfg, SCHEMA, overrides=overrides, environment=environment)


def refused(
    group: str,
    name: str,
    changes: Mapping[str, Any] | None,
    key: str,
    *,
    contains: str = "",
    overrides: Mapping[str, Any] | None = None,
    environment: bool = True,
    config: Callable[[Path], Any] | None = None,
) -> Case:
    """A config that must be refused with one line starting with ``key`` (and holding ``contains``)."""

    def run(work: Path) -> Verdict:
        from tarot_select.errors import TarotInputError

        cfg = config(work) if config is not None else tiny(work, changes)
        try:
            _load(cfg, overrides, environment)
        except TarotInputError as exc:
            msg = str(exc)
            if "\n" in msg or len(msg) > 600:
                return Verdict("traceback", f"{len(msg.splitlines())} lines, {len(msg)} characters: {msg[:200]}")
            if not msg.startswith(key) or contains not in msg:
                return Verdict("silent", f"refused, but does not name {key!r} / {contains!r}: {msg}")
            if (work / "results").exists():
                return Verdict("overwritten", "the check created the results folder")
            return Verdict("clear error", msg)
        except Exception:  # noqa: BLE001 - a traceback is what the probe looks for
            return Verdict("traceback", traceback.format_exc().strip().splitlines()[-1])
        return Verdict("late", f"accepted; {key} would fail in a job")

    return Case(group, name, run)


def accepted(
    group: str,
    name: str,
    changes: Mapping[str, Any] | None,
    check: Callable[[dict[str, Any]], str | None],
    *,
    overrides: Mapping[str, Any] | None = None,
    environment: bool = True,
) -> Case:
    """A config that must load; ``check(config)`` returns None or what is wrong with the result."""

    def run(work: Path) -> Verdict:
        cfg = tiny(work, changes)
        try:
            _load(cfg, overrides, environment)
        except Exception:  # noqa: BLE001
            return Verdict("traceback", traceback.format_exc().strip().splitlines()[-1])
        problem = check(cfg)
        return Verdict("silent", problem) if problem else Verdict("right answer")

    return Case(group, name, run)


def _under_a_file(work: Path) -> dict[str, Any]:
    """The tiny config with its results folder under a regular file."""
    (work / "afile").write_text("")
    return tiny(work, {"results": str(work / "afile" / "results")})


def _at(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


def equals(dotted: str, expected: Any) -> Callable[[dict[str, Any]], str | None]:
    def check(cfg: dict[str, Any]) -> str | None:
        got = _at(cfg, dotted)
        same = got == expected and type(got) is type(expected)
        if isinstance(expected, list):
            same = got == expected and all(type(a) is type(b) for a, b in zip(got, expected, strict=False))
        return None if same else f"{dotted} is {got!r}, expected {expected!r}"

    return check


def smk_refused(group: str, name: str, changes: Mapping[str, Any], key: str, *extra: str, dry: bool = True) -> Case:
    """``snakemake [-n] --configfile <tiny + changes>``: exit 2, one stderr line naming ``key``, nothing written."""

    def run(work: Path) -> Verdict:
        cfg = work / "config.yaml"
        cfg.write_text(yaml.safe_dump(tiny(work, changes)))
        before = snapshot(work)
        args = ["-n"] if dry else ["--cores", "1"]
        ran = run_snakemake([*args, "--configfile", cfg, *extra], timeout=300)
        verdict = expect_clear_error(ran, before, snapshot(work), code=2)
        if verdict.ok and key not in verdict.detail:
            return Verdict("silent", f"does not name {key!r}: {verdict.detail}")
        return verdict

    return Case(group, name, run, slow=True)


def smk_own_refusal(name: str, content: str | None) -> Case:
    """A ``--configfile`` Snakemake itself cannot read: a non-zero exit that names the file or
    the problem, no job planned, no fallback to the default config, nothing written.

    Snakemake reads ``--configfile`` before the Snakefile runs, so its message is its own:
    for a missing file, a Python traceback whose last line names the file (the Snakefile
    cannot shorten it); for an empty, non-mapping or broken file, two lines.
    """

    def run(work: Path) -> Verdict:
        cfg = work / "config.yaml"
        if content is not None:
            cfg.write_text(content)
        before = snapshot(work)
        ran = run_snakemake(["-n", "--configfile", cfg, "--config", f"results={work / 'results'}"], timeout=300)
        out = (ran.stdout + ran.stderr).strip().splitlines()
        if ran.code == 0:
            return Verdict("silent", "exit 0: ran with some other config")
        if any("Job stats" in ln or "rule " in ln for ln in out):
            return Verdict("silent", "planned jobs (fell back to another config)")
        changed = sorted(k for k, v in snapshot(work).items() if before.get(k) != v)
        if changed or (work / "results").exists():
            return Verdict("overwritten", f"wrote {changed}")
        last = out[-1] if out else ""
        named = str(cfg) in last or "config" in last.lower()
        if not named:
            return Verdict("silent", f"last line names nothing: {last}")
        if ran.raised:  # Snakemake's own traceback, before the Snakefile (ours) runs
            return Verdict("upstream", f"Snakemake prints a traceback ending: {last}")
        return Verdict("clear error", last)

    return Case(LINE, name, run, slow=True)


def dry_run_ok(name: str, extra: list[str], expect: str) -> Case:
    """``snakemake -n --configfile <tiny> *extra`` plans a run whose output mentions ``expect``."""

    def run(work: Path) -> Verdict:
        cfg = work / "config.yaml"
        cfg.write_text(yaml.safe_dump(tiny(work)))
        ran: Ran = run_snakemake(["-n", "--configfile", cfg, *extra], timeout=300)
        return expect_answer(ran, lambda: None if expect in ran.stdout else f"{expect!r} not planned")

    return Case(LINE, name, run, slow=True)


# --------------------------------------------------------------------------- config-line

CASES: list[Case] = [
    # unknown keys: the key path and the closest known key, at every depth
    refused(LINE, "top-level-typo", {"ratioz": [0.1]}, "ratioz", contains="did you mean 'ratios'"),
    refused(LINE, "nested-typo", {"whitening.epz": 1e-5}, "whitening.epz", contains="did you mean 'eps'"),
    refused(LINE, "features-typo", {"features.proj_dimm": 64}, "features.proj_dimm", contains="'proj_dim'"),
    refused(LINE, "lds-typo", {"lds.featurs": {}}, "lds.featurs", contains="'features'"),
    refused(LINE, "lds-features-typo", {"lds.features.proj_dims": 8}, "lds.features.proj_dims"),
    refused(LINE, "resources-rule-typo", {"resources.train_proxi": {"threads": 1}}, "resources.train_proxi"),
    refused(LINE, "resources-key-typo", {"resources.default.mem_gb": 4}, "resources.default.mem_gb", contains="mem_mb"),
    refused(LINE, "task-key-typo", {"tasks.digits.per_sauce": 3}, "tasks.digits.per_sauce", contains="per_source"),
    # wrong types
    refused(LINE, "ratios-not-a-list", {"ratios": 0.1}, "ratios", contains="must be a list"),
    refused(LINE, "ratio-a-string", {"ratios": ["0.1", 0.5]}, "ratios[0]", contains="must be a number"),
    refused(LINE, "integer-as-float", {"features.shards": 2.0}, "features.shards", contains="must be an integer"),
    refused(LINE, "seed-a-bool", {"seed": True}, "seed", contains="must be an integer"),
    refused(LINE, "bool-a-string", {"whitening.normalize": "yes"}, "whitening.normalize", contains="true or false"),
    refused(
        LINE,
        "block-null",
        None,
        "features",
        contains="must be a mapping",
        config=lambda w: tiny(w) | {"features": None},
    ),
    refused(LINE, "params-a-string", {"features.params": "fc*"}, "features.params", contains="a list or null"),
    refused(LINE, "task-not-a-mapping", {"tasks.digits": 3}, "tasks.digits", contains="mapping"),
    refused(LINE, "whole-config-a-list", None, "config", config=lambda work: [1, 2]),
    # values out of range or not allowed
    refused(LINE, "ratio-above-one", {"ratios": [1.5]}, "ratios[0]", contains="<= 1"),
    refused(LINE, "ratio-zero", {"ratios": [0.0, 0.1]}, "ratios[0]", contains="> 0"),
    refused(LINE, "unknown-method", {"methods": ["tarot", "best"]}, "methods[1]", contains="tarot"),
    refused(LINE, "unknown-device", {"device": "gpu"}, "device", contains="cuda"),
    refused(LINE, "one-fold", {"otm.folds": 1}, "otm.folds", contains=">= 2"),
    refused(LINE, "no-seeds", {"seeds": []}, "seeds", contains="at least 1"),
    refused(LINE, "repeated-seed", {"seeds": [0, 0]}, "seeds", contains="duplicates"),
    refused(LINE, "empty-params", {"features.params": []}, "features.params", contains="at least 1"),
    refused(LINE, "proj-dim-zero", {"features.proj_dim": 0}, "features.proj_dim", contains=">= 1"),
    refused(LINE, "negative-eps", {"whitening.eps": -1.0}, "whitening.eps", contains=">= 0"),
    refused(LINE, "task-name-with-space", {"tasks.my task": {"kind": "digits"}}, "tasks.my task"),
    refused(LINE, "task-without-kind", {"tasks.digits.kind": None}, "tasks.digits", contains="kind"),
    refused(LINE, "unknown-kind", {"tasks.digits.kind": "cifar100"}, "tasks.digits.kind", contains="cifar100"),
    refused(LINE, "lds-external-half", {"lds.external": {"digits-lds": {"masks": "m.npy"}}}, "lds.external.digits-lds"),
    # --config values: Snakemake hands nested ones over as strings; they must work as YAML
    accepted(LINE, "cli-ratios-list", None, equals("ratios", [0.1, 0.5]), overrides={"ratios": ["0.1", "0.5"]}),
    accepted(
        LINE,
        "cli-nested-number",
        None,
        equals("features.proj_dim", 16),
        overrides={"features": {"proj_dim": "16"}},
    ),
    accepted(
        LINE,
        "cli-nested-bool",
        None,
        equals("otm.enabled", False),
        overrides={"otm": {"enabled": "false"}},
    ),
    accepted(
        LINE,
        "cli-task-block-number",
        None,
        equals("tasks.digits.per_source", 30),
        overrides={"tasks": {"digits": {"per_source": "30"}}},
    ),
    accepted(
        LINE,
        "cli-params-null",
        {"features.params": ["fc*"]},
        equals("features.params", None),
        overrides={"features": {"params": "null"}},
    ),
    accepted(
        LINE,
        "cli-top-level-string-kept",
        None,
        lambda cfg: None if cfg["results"] == "2024-01-01" else f"results became {cfg['results']!r}",
        overrides={"results": "2024-01-01"},
        environment=False,
    ),
    refused(LINE, "cli-ratio-not-a-number", None, "ratios[1]", overrides={"ratios": ["0.1", "abc"]}),
    refused(LINE, "cli-nan", None, "weighting.repeat", contains="finite", overrides={"weighting": {"repeat": ".nan"}}),
    # the real workflow: one line on stderr, exit 2, nothing written
    smk_refused(LINE, "smk-top-level-typo", {"ratioz": [0.1]}, "ratioz"),
    smk_refused(LINE, "smk-nested-typo", {"whitening.epz": 1e-5}, "whitening.epz"),
    smk_refused(LINE, "smk-typo-real-run", {"whitening.epz": 1e-5}, "whitening.epz", dry=False),
    smk_refused(LINE, "smk-task-typo", {"tasks.digits.per_sauce": 3}, "tasks.digits.per_sauce"),
    smk_refused(LINE, "smk-cli-bad-ratio", {}, "ratios[1]", "--config", "ratios=[0.1,abc]"),
    dry_run_ok("smk-cli-ratios-list", ["--config", "ratios=[0.1,0.5]"], "tarot.r0.5"),
    smk_own_refusal("smk-configfile-missing", None),
    smk_own_refusal("smk-configfile-empty", ""),
    smk_own_refusal("smk-configfile-a-list", "- 1\n- 2\n"),
    smk_own_refusal("smk-configfile-broken-yaml", "ratios: [0.1\nseed: 1\n"),
]

# --------------------------------------------------------------------------- config-early

NAN, INF = math.nan, math.inf
CASES += [
    # NaN and infinities pass JSON-schema ranges; a generic walk refuses them anywhere
    refused(EARLY, "nan-repeat", {"weighting.repeat": NAN}, "weighting.repeat", contains="finite"),
    refused(EARLY, "nan-eps", {"whitening.eps": NAN}, "whitening.eps", contains="finite"),
    refused(EARLY, "nan-ratio", {"ratios": [0.1, NAN]}, "ratios[1]", contains="finite"),
    refused(EARLY, "inf-ratio", {"ratios": [INF]}, "ratios[0]", contains="finite"),
    refused(EARLY, "inf-reg", {"ot.reg": INF}, "ot.reg", contains="finite"),
    refused(EARLY, "nan-tsne-ratio", {"report.tsne_ratio": NAN}, "report.tsne_ratio", contains="finite"),
    refused(EARLY, "nan-lds-fraction", {"lds.fraction": NAN}, "lds.fraction", contains="finite"),
    refused(EARLY, "nan-lds-eps", {"lds.eps": NAN}, "lds.eps", contains="finite"),
    refused(EARLY, "nan-task-lr", {"tasks.digits.proxy.lr": NAN}, "tasks.digits.proxy.lr", contains="finite"),
    refused(EARLY, "nan-in-unknown-key", {"tasks.digits.extra": NAN}, "tasks.digits.extra", contains="finite"),
    refused(EARLY, "minus-inf-eps", {"whitening.eps": -INF}, "whitening.eps", contains="finite"),
    # sizes the settings tell without reading data
    refused(EARLY, "shards-over-targets", {"features.shards": 25}, "features.shards", contains="24 targets"),
    refused(EARLY, "shards-over-candidates", {"features.shards": 500}, "features.shards", contains="candidates"),
    refused(EARLY, "folds-over-targets", {"otm.folds": 25}, "otm.folds", contains="24 targets"),
    accepted(EARLY, "folds-over-targets-otm-off", {"otm.folds": 25, "otm.enabled": False}, lambda cfg: None),
    refused(EARLY, "lds-chunks-over-subsets", {"lds.chunks": 9}, "lds.chunks", contains="8 subsets"),
    refused(EARLY, "lds-fraction-empty-subsets", {"lds.fraction": 0.001}, "lds.fraction", contains="subsets of 0"),
    refused(EARLY, "lds-fraction-whole-set", {"lds.fraction": 0.999}, "lds.fraction", contains="subsets of 80"),
    refused(EARLY, "params-match-nothing", {"features.params": ["fcc*"]}, "features.params[0]", contains="fc1.weight"),
    refused(EARLY, "params-one-typo", {"features.params": ["fc1.*", "conv3.*"]}, "features.params[1]"),
    accepted(EARLY, "params-match", {"features.params": ["fc*"]}, lambda cfg: None),
    refused(
        EARLY,
        "params-mnist-task",
        {"tasks.digits": {"kind": "mnist_mlp", "n_train": 60, "n_targets": 30}, "features.params": ["fc*"]},
        "features.params[0]",
        contains="net.0.weight",
    ),
    # the results folder, the disk and the memory
    refused(
        EARLY,
        "results-under-a-file",
        None,
        "results",
        contains="is a file",
        config=lambda work: _under_a_file(work),
    ),
    refused(EARLY, "results-unwritable", {"results": "/sys/tarot-results"}, "results", contains="cannot write"),
    refused(EARLY, "proj-dim-billion", {"features.proj_dim": 1_000_000_000}, "features.proj_dim", contains="GB"),
    refused(EARLY, "proj-dim-covariance", {"features.proj_dim": 200_000}, "features.proj_dim", contains="memory"),
    refused(
        EARLY,
        "proj-dim-concat",
        {"features.proj_dim": 60_000, "features.combine": "concat", "features.shards": 1},
        "features.proj_dim",
        contains="GB",
    ),
    refused(EARLY, "lds-proj-dim-huge", {"lds.features.proj_dim": 10**9}, "lds.features.proj_dim", contains="GB"),
    accepted(
        EARLY,
        "proj-kind-none-documented",
        {"features.proj_kind": "none"},
        equals("features.proj_kind", "none"),
        environment=False,
    ),
    refused(
        EARLY,
        "proj-kind-none-too-wide",
        {"features.proj_kind": "none", "tasks.digits.proxy.width": 64},
        "features.proj_kind",
        contains="GB",
    ),
    accepted(
        EARLY,
        "default-config-fits",
        None,
        lambda cfg: None if cfg["features"]["shards"] == 2 else "defaults not kept",
    ),
    smk_refused(EARLY, "smk-nan", {"weighting.repeat": NAN}, "weighting.repeat"),
    smk_refused(EARLY, "smk-proj-dim-billion", {"features.proj_dim": 1_000_000_000}, "features.proj_dim"),
    smk_refused(EARLY, "smk-shards", {"features.shards": 25}, "features.shards"),
    smk_refused(EARLY, "smk-unwritable", {"results": "/sys/tarot-results"}, "results"),
]
