"""Settings of the motion task (torch-free): keys, defaults and checks in one place.

The checks run in the Snakemake process before any job: for ``dataset: scenarionet`` they
list every ScenarioNet folder (its summary and mapping only, :func:`.scenarionet.list_scenarios`),
so a missing folder or summary stops the run naming the key and the path.

Stages (:meth:`MotionSettings.for_stage`): the downstream stage also receives the proxy's
``model`` block when ``downstream.also_proxy_arch`` is on, because the downstream job then
trains the proxy's architecture on the selection too (the transfer comparison).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ...errors import TarotInputError
from ..settings import Settings, TaskSettings, setting
from .presets import PRESETS
from .scenarionet import list_scenarios

__all__ = [
    "MODEL_PRESETS",
    "MotionCut",
    "MotionDownstream",
    "MotionDownstreamModel",
    "MotionModelSettings",
    "MotionProxy",
    "MotionProxyModel",
    "MotionSettings",
    "model_parameters",
]

Style = Literal["womd", "av2", "nuplan", "glitch", "nuscenes"]
Arch = Literal["autobots", "wayformer"]

#: Size presets of :func:`.models.build_model` (the one table, in the torch-free :mod:`.presets`).
MODEL_PRESETS: Final[dict[str, dict[str, dict[str, int]]]] = PRESETS

#: Styles that cannot be the synthetic target (their futures are wrong on purpose).
_NOT_TARGET: Final[tuple[str, ...]] = ("glitch",)
_SOURCE_NAME: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SIZE_KEYS: Final[tuple[str, ...]] = ("width", "heads", "enc_layers", "dec_layers", "ffn_mult", "num_modes")


@dataclass(frozen=True)
class MotionCut(Settings):
    """How scenarios become agent-centric samples (:class:`.agent_centric.CutConfig`)."""

    history: int = setting(21, minimum=2, doc="history steps Th, the current one included (paper: 21 = 2.1 s)")
    future: int = setting(60, minimum=1, doc="future steps Tf to predict (paper: 60 = 6 s)")
    agents: int = setting(8, minimum=1, doc="agents per sample: the focal one and the nearest others")
    polylines: int = setting(32, minimum=1, doc="map polyline pieces per sample (the nearest)")
    points: int = setting(10, minimum=2, doc="points per polyline piece")
    point_spacing: float = setting(1.0, minimum=0, exclusive_minimum=True, doc="metres between map points at most")
    dt: float = setting(0.1, minimum=0, exclusive_minimum=True, doc="seconds per step (sources resampled to it)")
    min_displacement: float = setting(
        2.0, minimum=0, doc="metres an automatically chosen focal agent must move (the paper's nuPlan filter)"
    )
    max_focal: int | None = setting(4, minimum=1, doc="samples per scene (per current step) at most; null: all")
    stride: int = setting(0, minimum=0, doc="further current steps every k steps (0: one window per scenario)")
    use_tracks_to_predict: bool = setting(True, doc="focal agents: the dataset's tracks_to_predict when it names some")
    focal_types: tuple[Literal["VEHICLE", "PEDESTRIAN", "CYCLIST"], ...] = setting(
        ("VEHICLE",), non_empty=True, unique=True, doc="object types of automatically chosen focal agents"
    )

    def cut_config(self) -> dict[str, Any]:
        """Keyword arguments of :class:`.agent_centric.CutConfig`."""
        return {
            "history": self.history,
            "future": self.future,
            "agents": self.agents,
            "polylines": self.polylines,
            "points": self.points,
            "dt": self.dt,
            "point_spacing": self.point_spacing,
            "stride": self.stride,
            "use_tracks_to_predict": self.use_tracks_to_predict,
            "focal_types": tuple(self.focal_types),
            "min_displacement": self.min_displacement,
            "max_focal": self.max_focal,
        }

    def data_sizes(self) -> dict[str, int]:
        """The data sizes a model is built for (:func:`.models.build_model` keys)."""
        return {
            "history_steps": self.history,
            "future_steps": self.future,
            "num_agents": self.agents,
            "num_polylines": self.polylines,
            "points_per_polyline": self.points,
        }


@dataclass(frozen=True)
class MotionModelSettings(Settings):
    """A motion model: an architecture, a size preset and optional overrides (null: the preset's)."""

    arch: Arch = setting("autobots", doc="autobots (Girgis et al. 2022) | wayformer (Nayakanti et al. 2023)")
    preset: Literal["mini", "paper"] = setting("mini", doc="size preset: mini (CPU) | paper (the papers' widths)")
    width: int | None = setting(None, minimum=1, doc="model width (null: the preset's)")
    heads: int | None = setting(None, minimum=1, doc="attention heads, dividing width (null: the preset's)")
    enc_layers: int | None = setting(None, minimum=0, doc="encoder layers (null: the preset's)")
    dec_layers: int | None = setting(None, minimum=1, doc="decoder layers (null: the preset's)")
    ffn_mult: int | None = setting(None, minimum=1, doc="feed-forward width / model width (null: the preset's)")
    num_modes: int | None = setting(None, minimum=1, doc="predicted modes K (null: the preset's, 6)")
    num_latents: int | None = setting(None, minimum=1, doc="wayformer: latent queries (null: the preset's)")
    dropout: float = setting(0.0, minimum=0, maximum=0.9, doc="dropout in training (never in gradients)")

    def sizes(self) -> dict[str, Any]:
        """The preset with the overrides applied, and the dropout."""
        out: dict[str, Any] = dict(MODEL_PRESETS[self.arch][self.preset])
        for key in (*_SIZE_KEYS, "num_latents"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["dropout"] = self.dropout
        return out

    def check(self, where: str = "") -> None:
        if self.arch != "wayformer" and self.num_latents is not None:
            raise TarotInputError(f"{where}.num_latents: only for arch wayformer, not {self.arch}")
        s = self.sizes()
        if s["width"] % s["heads"]:
            key = "width" if self.width is not None else "heads"
            raise TarotInputError(f"{where}.{key}: width {s['width']} is not a multiple of heads {s['heads']}")
        if s["width"] % 2:
            raise TarotInputError(f"{where}.width: must be even (sinusoidal time encoding), got {s['width']}")


@dataclass(frozen=True)
class MotionProxyModel(MotionModelSettings):
    """The proxy model (AutoBots by default, as in the paper)."""

    arch: Arch = setting("autobots", doc="autobots (Girgis et al. 2022) | wayformer (Nayakanti et al. 2023)")


@dataclass(frozen=True)
class MotionDownstreamModel(MotionModelSettings):
    """The downstream model (Wayformer by default, as in the paper)."""

    arch: Arch = setting("wayformer", doc="autobots (Girgis et al. 2022) | wayformer (Nayakanti et al. 2023)")


@dataclass(frozen=True)
class MotionTraining(Settings):
    """Keys of both trainings: AdamW (Adam for weight_decay 0), cosine decay per epoch, clipping."""

    epochs: int = setting(20, minimum=1, doc="training epochs")
    lr: float = setting(0.001, minimum=0, exclusive_minimum=True, doc="initial learning rate (cosine decay per epoch)")
    batch_size: int = setting(32, minimum=1, doc="mini-batch size")
    weight_decay: float = setting(0.0, minimum=0, doc="decoupled weight decay (AdamW); 0: Adam")
    grad_clip: float = setting(5.0, minimum=0, doc="clip the gradient's global norm to this (0: no clipping)")


@dataclass(frozen=True)
class MotionProxy(MotionTraining):
    """Proxy training on candidates ∪ targets; its checkpoints keep the Adam moments (LESS)."""

    model: MotionProxyModel = setting(factory=MotionProxyModel, doc="the proxy model")
    epochs: int = setting(10, minimum=1, doc="training epochs")
    checkpoints: int = setting(1, minimum=1, doc="last epochs whose gradients are used (the paper: the final one)")

    def check(self, where: str = "") -> None:
        if self.checkpoints > self.epochs:
            raise TarotInputError(f"{where}.checkpoints: {self.checkpoints} exceeds epochs={self.epochs}")


@dataclass(frozen=True)
class MotionDownstream(MotionTraining):
    """Downstream training on a selection, what evaluation reports first, and the transfer check."""

    model: MotionDownstreamModel = setting(factory=MotionDownstreamModel, doc="the downstream model")
    eval_every: int = setting(0, minimum=0, doc="evaluate on the evaluation split every k epochs (0: never)")
    primary: Literal["final", "best"] = setting(
        "final",
        doc="tables' metric: final Brier-minFDE | best (best_brier_min_fde: best evaluation, the paper's)",
    )
    also_proxy_arch: bool = setting(
        False, doc="also train the proxy's model on each selection (metrics proxy_arch_*: the transfer check)"
    )

    def check(self, where: str = "") -> None:
        if self.eval_every > self.epochs:
            raise TarotInputError(f"{where}.eval_every: {self.eval_every} exceeds epochs={self.epochs}")
        if self.primary == "best" and self.eval_every == 0:
            raise TarotInputError(f"{where}.primary: best needs eval_every > 0 (evaluations during training)")


@dataclass(frozen=True)
class MotionSettings(TaskSettings):
    """Multi-source motion prediction (see :mod:`tarot_select.tasks.motion`)."""

    kind: str = setting("motion", doc="task kind")
    dataset: Literal["synthetic", "scenarionet"] = setting(
        "synthetic", doc="synthetic (generated scenes written as ScenarioNet folders) | scenarionet (your folders)"
    )
    sources: tuple[Style, ...] = setting(
        ("womd", "av2", "nuplan", "glitch"), non_empty=True, unique=True, doc="synthetic: candidate styles"
    )
    target_style: Style = setting("nuscenes", doc="synthetic: style of the targets and the evaluation scenes")
    per_source: int = setting(150, minimum=1, doc="synthetic: candidate samples per source (exact)")
    candidate_roots: dict[str, str] | None = setting(
        None, doc="scenarionet: source name -> ScenarioNet folder of candidates"
    )
    target_root: str | None = setting(None, doc="scenarionet: ScenarioNet folder of the targets (nuScenes train)")
    evaluation_root: str | None = setting(None, doc="scenarionet: ScenarioNet folder of the evaluation (nuScenes val)")
    n_candidates: int | None = setting(
        None, minimum=1, doc="scenarionet: samples per source at most, from a seeded scenario order (null: all)"
    )
    n_targets: int | None = setting(
        100, minimum=1, doc="target samples (synthetic: exact; scenarionet: at most, null: all)"
    )
    n_evaluation: int | None = setting(
        200, minimum=1, doc="evaluation samples (synthetic: exact; scenarionet: at most, null: all)"
    )
    cut: MotionCut = setting(factory=MotionCut, doc="agent-centric cutting")
    proxy: MotionProxy = setting(factory=MotionProxy, doc="proxy training")
    downstream: MotionDownstream = setting(factory=MotionDownstream, doc="downstream training")

    # ----------------------------------------------------------------- checks
    def check(self, where: str = "") -> None:
        if self.dataset == "synthetic":
            self._check_synthetic(where)
        else:
            self._check_scenarionet(where)

    def _check_synthetic(self, where: str) -> None:
        if self.target_style in _NOT_TARGET:
            raise TarotInputError(
                f"{where}.target_style: {self.target_style} cannot be the target (its futures are wrong)"
            )
        for key in ("n_targets", "n_evaluation"):
            if getattr(self, key) is None:
                raise TarotInputError(f"{where}.{key}: needs a number for dataset synthetic")
        for key in ("candidate_roots", "target_root", "evaluation_root", "n_candidates"):
            if getattr(self, key) is not None:
                raise TarotInputError(
                    f"{where}.{key}: only for dataset scenarionet; set dataset: scenarionet or remove it"
                )

    def _check_scenarionet(self, where: str) -> None:
        roots = self.candidate_roots
        if not roots:
            raise TarotInputError(f"{where}.candidate_roots: required for dataset scenarionet (source name -> folder)")
        for name, root in roots.items():
            here = f"{where}.candidate_roots.{name}"
            if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name):
                raise TarotInputError(f"{here}: source names are letters, digits, '_', '.', '-' (got {name!r})")
            if not isinstance(root, str):
                raise TarotInputError(f"{here}: must be a folder path, got {root!r}")
        for key in ("target_root", "evaluation_root"):
            if getattr(self, key) is None:
                raise TarotInputError(f"{where}.{key}: required for dataset scenarionet")
        listed = {f"candidate_roots.{k}": v for k, v in roots.items()}
        listed.update({"target_root": str(self.target_root), "evaluation_root": str(self.evaluation_root)})
        for key, root in listed.items():
            try:
                entries = list_scenarios(root, check_files=False)
            except TarotInputError as exc:
                raise TarotInputError(f"{where}.{key}: {exc}") from None
            if not entries:
                raise TarotInputError(f"{where}.{key}: {root} lists no scenario in its summary")
        evaluation = _same(str(self.evaluation_root))
        for key, root in listed.items():
            if key != "evaluation_root" and _same(root) == evaluation:
                raise TarotInputError(
                    f"{where}.evaluation_root: {self.evaluation_root} is also {key}; the evaluation must be held out"
                )

    # ----------------------------------------------------------------- sizes
    def split_sizes(self) -> dict[str, int] | None:
        """Rows of each split: exact for synthetic data (scenes are generated until each quota
        is met); None for ScenarioNet folders (the count depends on the cutting)."""
        if self.dataset != "synthetic":
            return None
        return {
            "candidates": len(self.sources) * self.per_source,
            "targets": int(self.n_targets or 0),
            "evaluation": int(self.n_evaluation or 0),
        }

    def proxy_parameters(self) -> dict[str, tuple[int, ...]] | None:
        """Shapes of the proxy model's parameters, in the model's order."""
        return model_parameters(self.proxy.model, self.cut)

    def source_names(self) -> tuple[str, ...]:
        """Names of the candidate sources, in pool order."""
        if self.dataset == "synthetic":
            return tuple(self.sources)
        return tuple((self.candidate_roots or {}).keys())

    def for_stage(self, stage: str) -> dict[str, Any]:
        """As :meth:`TaskSettings.for_stage`; with ``downstream.also_proxy_arch`` the downstream
        stage also gets ``proxy.model`` (its jobs then train that model too)."""
        out = super().for_stage(stage)
        if stage == "downstream" and self.downstream.also_proxy_arch:
            out["proxy"] = {"model": self.to_dict()["proxy"]["model"]}
        return out


def _same(path: str) -> str:
    return os.path.normcase(str(Path(path).resolve()))


# --------------------------------------------------------------------------- parameter shapes


def _linear(out: dict[str, tuple[int, ...]], name: str, d_in: int, d_out: int) -> None:
    out[f"{name}.weight"] = (d_out, d_in)
    out[f"{name}.bias"] = (d_out,)


def _norm(out: dict[str, tuple[int, ...]], name: str, d: int) -> None:
    out[f"{name}.weight"] = (d,)
    out[f"{name}.bias"] = (d,)


def _attention_block(out: dict[str, tuple[int, ...]], name: str, d: int, cross: bool) -> None:
    _norm(out, f"{name}.norm", d)
    if cross:
        _norm(out, f"{name}.norm_ctx", d)
    _linear(out, f"{name}.attn.q", d, d)
    _linear(out, f"{name}.attn.kv", d, 2 * d)
    _linear(out, f"{name}.attn.out", d, d)


def _feed_forward(out: dict[str, tuple[int, ...]], name: str, d: int, mult: int) -> None:
    _norm(out, f"{name}.net.0", d)
    _linear(out, f"{name}.net.1", d, mult * d)
    _linear(out, f"{name}.net.3", mult * d, d)


def model_parameters(model: MotionModelSettings, cut: MotionCut) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the trainable parameters of ``build_model`` for these settings,
    in the model's registration order (torch-free; a test holds it to the model)."""
    from .sample import AGENT_FEATURES, MAP_FEATURES  # numpy only

    s = model.sizes()
    d, mult, k = int(s["width"]), int(s["ffn_mult"]), int(s["num_modes"])
    n_agent, n_map = len(AGENT_FEATURES), len(MAP_FEATURES)
    # A module lists its own parameters (nn.Parameter attributes) before its submodules'.
    out: dict[str, tuple[int, ...]] = {}
    if model.arch == "autobots":
        out["seeds"] = (k, cut.future, d)
        out["mode_seeds"] = (k, d)
        _linear(out, "agent_embed", n_agent, d)
        for i in range(int(s["enc_layers"])):
            for part in ("temporal", "social"):
                _attention_block(out, f"encoder.{i}.{part}", d, cross=False)
                _feed_forward(out, f"encoder.{i}.{part}_ffn", d, mult)
        _norm(out, "context_norm", d)
        _linear(out, "point_mlp.0", n_map, d)
        _linear(out, "point_mlp.2", d, d)
        _linear(out, "polyline_out", d, d)
        for i in range(int(s["dec_layers"])):
            _attention_block(out, f"decoder.{i}.map_attn", d, cross=True)
            _attention_block(out, f"decoder.{i}.temporal", d, cross=False)
            _attention_block(out, f"decoder.{i}.context_attn", d, cross=True)
            _feed_forward(out, f"decoder.{i}.ffn", d, mult)
        _norm(out, "out_norm", d)
        _linear(out, "out_head.0", d, d)
        _linear(out, "out_head.2", d, 5)
        _attention_block(out, "mode_context", d, cross=True)
        _attention_block(out, "mode_map", d, cross=True)
        _feed_forward(out, "mode_ffn", d, mult)
        _norm(out, "mode_head.0", d)
        _linear(out, "mode_head.1", d, 1)
        return out
    out["time_embed"] = (cut.history, d)
    out["modality_embed"] = (3, d)
    out["latents"] = (int(s["num_latents"]), d)
    out["mode_queries"] = (k, d)
    _linear(out, "agent_proj.0", n_agent, d)
    _linear(out, "agent_proj.2", d, d)
    _linear(out, "map_proj.0", n_map, d)
    _linear(out, "map_proj.2", d, d)
    _attention_block(out, "latent_cross", d, cross=True)
    _feed_forward(out, "latent_cross_ffn", d, mult)
    layers = int(s["enc_layers"])
    for i in range(layers):
        _attention_block(out, f"latent_self.{i}", d, cross=False)
    for i in range(layers):
        _feed_forward(out, f"latent_ffn.{i}", d, mult)
    dec = int(s["dec_layers"])
    for i in range(dec):
        _attention_block(out, f"dec_self.{i}", d, cross=False)
    for i in range(dec):
        _attention_block(out, f"dec_cross.{i}", d, cross=True)
    for i in range(dec):
        _feed_forward(out, f"dec_ffn.{i}", d, mult)
    _norm(out, "out_norm", d)
    _linear(out, "traj_head.0", d, d)
    _linear(out, "traj_head.2", d, cut.future * 5)
    _linear(out, "mode_head", d, 1)
    return out
