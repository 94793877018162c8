"""The motion task: ScenarioNet data cut into agent-centric samples, an AutoBots proxy, a
Wayformer trained on each selection, Brier-minFDE on the held-out target split."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import json
import logging
import math
import multiprocessing
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from ...errors import TarotInputError
from ...io import library_versions, write_json_atomic
from .._config import seeded
from .._training import (
    EpochLog,
    IndexBatches,
    batch_of,
    check_request,
    cosine_lr,
    cpu_state,
    epoch_order,
    evaluated_epochs,
    train_epochs,
    train_proxy_pool,
)
from ..base import SPLITS, Metric, ProxyCheckpoint, Task, TaskData
from .agent_centric import CutConfig, cut_scenario
from .losses import batch_loss, loss_fn, wta_loss
from .metrics import METRIC_NAMES, MotionMetrics, constant_velocity
from .models import AutoBots, MotionModel, Wayformer, build_model
from .sample import ARRAY_NAMES, MotionSamples
from .scenarionet import ScenarioEntry, list_scenarios, read_scenario, write_scenarionet
from .settings import MotionModelSettings, MotionSettings
from .synthetic import STYLES, generate_scenarios

__all__ = ["MotionDataset", "MotionTask", "batch_of"]

logger = logging.getLogger(__name__)

_MANIFEST: Final[str] = "data.json"
_FORMAT: Final[str] = "tarot-motion-data"
#: Samples per saved part of a split (bounds the memory of cutting large datasets).
_PART_ROWS: Final[int] = 20_000
#: Batch of the forward passes of evaluation and outputs.
_EVAL_BATCH: Final[int] = 128
#: Synthetic scenes tried per requested sample before a style is declared empty.
_MAX_SCENES_PER_SAMPLE: Final[int] = 20

# Stream identifiers of the seeded generators (second entry of the seed).
_STREAM_PROXY, _STREAM_DOWNSTREAM, _STREAM_ORDER = 4, 5, 6
_STREAM_OF_SPLIT: Final[dict[str, int]] = {"candidates": 1, "targets": 2, "evaluation": 3}

#: Columns of the evaluation records kept in a trained model's buffers.
_RECORD_COLUMNS: Final[tuple[str, ...]] = ("epoch", *METRIC_NAMES)


# --------------------------------------------------------------------------- data


class MotionDataset(torch.utils.data.Dataset):
    """Agent-centric samples of one split, from one or more saved parts (memory-mapped).

    Item ``i`` is a dict of tensors: the model's inputs ``agents`` ``(A, Th, 9)``,
    ``agents_mask`` ``(A, Th)``, ``map`` ``(M, P, 8)``, ``map_mask`` ``(M, P)`` and the
    target ``future`` ``(Tf, 2)``, ``future_mask`` ``(Tf,)`` (float32 and bool); a batch
    (:meth:`batch`, or a ``DataLoader``) stacks them. :attr:`groups` is each item's source.
    """

    def __init__(self, parts: Sequence[MotionSamples]) -> None:
        if not parts:
            raise TarotInputError("motion: a split needs at least one part of samples")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.groups = np.concatenate([np.asarray(p.source) for p in self.parts]).astype(str)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"sample {i} of {n}")
        i = int(i) % n
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        part, j = self.parts[k], i - int(self.offsets[k])
        return {name: torch.from_numpy(np.array(getattr(part, name)[j])) for name in ARRAY_NAMES}

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Items ``idx`` stacked (any order, repeats allowed)."""
        idx = np.asarray(idx, dtype=np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        if len(self.parts) == 1:
            return {name: torch.from_numpy(np.asarray(getattr(self.parts[0], name)[idx])) for name in ARRAY_NAMES}
        out = {}
        for name in ARRAY_NAMES:
            first = getattr(self.parts[0], name)
            arr = np.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
            for k in np.unique(which):
                rows = np.flatnonzero(which == k)
                arr[rows] = getattr(self.parts[k], name)[idx[rows] - self.offsets[k]]
            out[name] = torch.from_numpy(arr)
        return out


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --------------------------------------------------------------------------- cutting


def _cut_entry(path: str, cfg: CutConfig, source: str) -> MotionSamples:
    """Read and cut one scenario file (a process-pool worker)."""
    return cut_scenario(read_scenario(path), cfg, source)


class _PartWriter:
    """Collects samples and saves them as parts of at most :data:`_PART_ROWS` samples under
    ``split_dir``, recording each part's folder (relative to the data folder) and size."""

    def __init__(self, data_dir: Path, split: str, source: str, cfg: CutConfig) -> None:
        self.data_dir, self.split, self.source, self.cfg = data_dir, split, source, cfg
        self.buffer: list[MotionSamples] = []
        self.buffered = 0
        self.parts: list[dict[str, Any]] = []

    def add(self, samples: MotionSamples) -> None:
        if len(samples):
            self.buffer.append(samples)
            self.buffered += len(samples)
        while self.buffered >= _PART_ROWS:
            self._flush(_PART_ROWS)

    def total(self) -> int:
        return sum(p["n"] for p in self.parts) + self.buffered

    def _flush(self, rows: int) -> None:
        joined = MotionSamples.concatenate(self.buffer, meta={"cut": self.cfg.as_dict(), "source": self.source})
        head, tail = joined.subset(np.arange(rows)), joined.subset(np.arange(rows, len(joined)))
        rel = f"{self.split}/{self.source}-{len(self.parts):04d}"
        head.save(self.data_dir / rel)
        self.parts.append({"folder": rel, "n": len(head), "source": self.source})
        self.buffer, self.buffered = ([tail] if len(tail) else []), len(tail)

    def close(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Save what is buffered (the first ``limit`` samples in all, when given) and return the parts."""
        if limit is not None:
            keep = limit - sum(p["n"] for p in self.parts)
            if self.buffered > keep:
                joined = MotionSamples.concatenate(self.buffer)
                self.buffer, self.buffered = [joined.subset(np.arange(keep))], keep
        if self.buffered:
            self._flush(self.buffered)
        return self.parts


def _cut_stream(paths: Iterable[str], cfg: CutConfig, source: str, workers: int) -> Iterator[MotionSamples]:
    """The samples of each scenario file, in order. ``workers`` > 1 cuts in a pool of
    processes with a bounded window of files in flight, so that a consumer that stops early
    (a quota is met) does not wait for the rest of a large folder.

    The pool forks (as torch's DataLoader workers do; the children run numpy code only).
    ``spawn`` is not an option: it re-runs the main module, which in a Snakemake job is the
    stage script itself. Where fork is not available, cutting is serial.
    """
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for p in paths:
            yield _cut_entry(p, cfg, source)
        return
    ctx = multiprocessing.get_context("fork")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    window: collections.deque[concurrent.futures.Future[MotionSamples]] = collections.deque()
    todo = iter(paths)
    try:
        for p in itertools.islice(todo, 4 * workers):
            window.append(pool.submit(_cut_entry, p, cfg, source))
        while window:
            done = window.popleft().result()
            for p in itertools.islice(todo, 1):
                window.append(pool.submit(_cut_entry, p, cfg, source))
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _cut_into(writer: _PartWriter, entries: Sequence[ScenarioEntry], quota: int | None, workers: int, what: str) -> int:
    """Cut ``entries`` in order into ``writer`` until ``quota`` samples (None: all); returns
    the number of scenarios cut."""
    used = 0
    step = max(1, len(entries) // 10)
    stream = _cut_stream((str(e.path) for e in entries), writer.cfg, writer.source, workers)
    try:
        for samples in stream:
            writer.add(samples)
            used += 1
            if used % step == 0:
                logger.info("motion: %s: cut %d/%d scenarios, %d samples", what, used, len(entries), writer.total())
            if quota is not None and writer.total() >= quota:
                break
    finally:
        stream.close()
    return used


# --------------------------------------------------------------------------- model records


def _with_records(model: MotionModel, rows: Mapping[str, int]) -> MotionModel:
    """``model`` with persistent float64 buffers ``<name>`` of shape ``(rows, 5)`` (epoch and
    the four metrics of each evaluation; NaN until filled), so that a trained model's state
    dict carries its own evaluation record and still loads into :meth:`MotionTask.downstream_model`."""
    for name, n in rows.items():
        model.register_buffer(name, torch.full((n, len(_RECORD_COLUMNS)), math.nan, dtype=torch.float64))
    return model


def _best(record: np.ndarray, final: Mapping[str, float], epochs: int) -> tuple[float, float]:
    """Lowest Brier-minFDE of the filled record rows and the final evaluation, and its epoch."""
    rows = [r for r in np.asarray(record, dtype=np.float64) if np.isfinite(r).all()]
    scores = [(float(r[1]), float(r[0])) for r in rows]
    if not any(e == float(epochs) for _, e in scores):
        scores.append((float(final["brier_min_fde"]), float(epochs)))
    value, epoch = min(scores, key=lambda s: (s[0], s[1]))
    return value, epoch


# --------------------------------------------------------------------------- task


class MotionTask(Task):
    """Multi-source motion prediction (see :mod:`tarot_select.tasks.motion`).

    Parameters
    ----------
    config : mapping
        The task's settings (:class:`~.settings.MotionSettings`) or config block.
    seed : int
        Seeds the synthetic scenes or the ScenarioNet scenario orders, the proxy's
        initialisation and its shuffling.

    Attributes
    ----------
    output_description : str
        What DsDm scores on this task (the reports quote it): gradients of the model output
        :math:`f = -L` (:meth:`output_fn`), whose out-to-loss factor is 1 (:math:`Q = I`,
        :meth:`train_weights`).
    """

    name = "motion"
    SETTINGS = MotionSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        final = Metric("brier_min_fde", False, "m", 1.0, "Brier-minFDE (final epoch)")
        best = Metric("best_brier_min_fde", False, "m", 1.0, "Brier-minFDE (best evaluation)")
        first = (best, final) if self.options.downstream.primary == "best" else (final, best)
        self._final = final
        rest = [
            Metric("min_ade", False, "m", 1.0, "minADE (final epoch)"),
            Metric("min_fde", False, "m", 1.0, "minFDE (final epoch)"),
            Metric("miss_rate", False, "%", 100.0, "miss rate at 2 m (final epoch)"),
        ]
        if self.options.downstream.also_proxy_arch:
            arch = self.options.proxy.model.arch
            rest += [
                Metric("proxy_arch_brier_min_fde", False, "m", 1.0, f"Brier-minFDE of {arch} (final epoch)"),
                Metric("proxy_arch_best_brier_min_fde", False, "m", 1.0, f"Brier-minFDE of {arch} (best evaluation)"),
            ]
        #: What :meth:`evaluate` returns first; ``downstream.primary`` picks the tables' metric.
        self.metrics = (*first, *rest)

    def architectures(self) -> dict[str, str]:
        """Names of the models the run records describe (the tables' transfer columns):
        ``downstream`` (``downstream.model.arch``) and, with ``downstream.also_proxy_arch``,
        ``proxy_arch`` (``proxy.model.arch``, trained on the same selections)."""
        names = {"downstream": self.options.downstream.model.arch}
        if self.options.downstream.also_proxy_arch:
            names["proxy_arch"] = self.options.proxy.model.arch
        return names

    # ------------------------------------------------------------------ data
    @property
    def _cut(self) -> CutConfig:
        return CutConfig(**self.options.cut.cut_config())

    def _scene_steps(self) -> int:
        """10 Hz steps a synthetic scene covers: history and future at ``cut.dt``, plus one
        native step of the slowest style (2 Hz) so that resampling never falls short."""
        c = self.options.cut
        return math.ceil((c.history + c.future - 1) * c.dt / 0.1 - 1e-9) + 1 + 5

    def _workers(self) -> int:
        return max(1, int(self.context.threads))

    def _synthetic_split(self, out: Path, split: str, style: str, quota: int) -> tuple[list[dict[str, Any]], int]:
        """Generate ``style`` scenes of ``split`` (scene ``i`` seeded by ``[seed, style, split, i]``),
        write them as a ScenarioNet folder, and cut it (through the reader) until ``quota``
        samples; more scenes are generated when the first batch falls short."""
        folder = out / "scenarionet" / f"{split}-{style}"
        cfg = self._cut
        per_scene = float(self.options.cut.max_focal or 4)
        n_scenes = math.ceil(quota / per_scene) + 2
        limit = _MAX_SCENES_PER_SAMPLE * quota + 10
        steps = self._scene_steps()
        while True:
            scenes = generate_scenarios(style, n_scenes, seed=self.seed, steps=steps, split=split)
            write_scenarionet(folder, scenes, workers=2, options=STYLES[style].write, overwrite=True)
            for old in (out / split).glob(f"{style}-*") if (out / split).is_dir() else []:
                shutil.rmtree(old)  # parts of a previous, too short attempt
            writer = _PartWriter(out, split, style, cfg)
            used = _cut_into(writer, list_scenarios(folder), quota, 1, f"{split} {style}")
            got = writer.total()
            if got >= quota:
                return writer.close(limit=quota), used
            if n_scenes >= limit:
                raise TarotInputError(
                    f"motion: synthetic style {style} gave {got} samples from {n_scenes} scenes, fewer than the "
                    f"{quota} asked for by the cut settings (cut.min_displacement, cut.focal_types?)"
                )
            rate = max(got, 1) / n_scenes
            n_scenes = min(limit, math.ceil(1.2 * quota / rate) + 2)
            logger.info("motion: %s %s: %d samples of %d, generating %d scenes", split, style, got, quota, n_scenes)

    def _scenarionet_split(
        self, out: Path, split: str, source: str, root: str, quota: int | None, index: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Cut the scenarios of ``root`` (all in listing order, or, with a ``quota``, in a
        seeded order until ``quota`` samples)."""
        entries = list_scenarios(root)
        if quota is not None:
            rng = np.random.default_rng([self.seed, _STREAM_OF_SPLIT[split], index])
            entries = [entries[i] for i in rng.permutation(len(entries))]
        writer = _PartWriter(out, split, source, self._cut)
        used = _cut_into(writer, entries, quota, self._workers(), f"{split} {source}")
        return writer.close(limit=quota), used

    def prepare(self, out_dir: Path) -> None:
        """Cut every split into agent-centric samples under ``out_dir``.

        ``synthetic``: for each candidate style and for the target style (splits ``targets``
        and ``evaluation``, other scenes than the candidates'), scenes are generated and
        written as ScenarioNet folders under ``scenarionet/<split>-<style>/`` (the style's own
        array layout and native rate, e.g. nuScenes-like 2 Hz), then read back and cut,
        scene by scene, until the split's quota of samples is met. ``scenarionet``: the
        user's folders are cut (all scenarios, or a seeded order until the cap).

        Samples are saved as :class:`~.sample.MotionSamples` parts ``<split>/<source>-<k>/``;
        ``data.json`` lists them in order with the counts and the settings.
        """
        out = Path(out_dir)
        s = self.options
        parts: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
        scenes: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
        if s.dataset == "synthetic":
            plan = [("candidates", style, s.per_source) for style in s.sources]
            plan += [("targets", s.target_style, int(s.n_targets or 0))]
            plan += [("evaluation", s.target_style, int(s.n_evaluation or 0))]
            for split, style, quota in plan:
                got, used = self._synthetic_split(out, split, style, quota)
                parts[split] += got
                scenes[split][style] = used
        else:
            roots = dict(s.candidate_roots or {})
            plan2 = [("candidates", name, root, s.n_candidates, i) for i, (name, root) in enumerate(roots.items())]
            plan2 += [("targets", "target", str(s.target_root), s.n_targets, 0)]
            plan2 += [("evaluation", "evaluation", str(s.evaluation_root), s.n_evaluation, 0)]
            for split, name, root, quota, index in plan2:
                got, used = self._scenarionet_split(out, split, name, root, quota, index)
                if not got:
                    raise TarotInputError(f"motion: {root} ({split} {name}) gave no sample with these cut settings")
                parts[split] += got
                scenes[split][name] = used
        counts = {split: sum(p["n"] for p in parts[split]) for split in SPLITS}
        write_json_atomic(
            out / _MANIFEST,
            {
                "format": _FORMAT,
                "task": self.name,
                "seed": self.seed,
                "config": self.options.for_stage("data"),
                "cut": self._cut.as_dict(),
                "parts": parts,
                "counts": counts,
                "scenarios_cut": scenes,
                "versions": library_versions(),
            },
        )
        logger.info("motion: wrote %s samples to %s", counts, out)

    def load(self, data_dir: Path, target: str | None = None) -> TaskData:
        """Memory-map the parts :meth:`prepare` wrote (one target set: ``target`` is ignored).

        ``sources`` is every candidate's source (style or ``candidate_roots`` name); the target
        has no subtasks (``target_groups`` None).
        """
        folder = Path(data_dir)
        path = folder / _MANIFEST
        if not path.is_file():
            raise TarotInputError(f"motion: {path} not found; run prepare first")
        try:
            manifest = json.loads(path.read_text())
            listed = {split: [(str(p["folder"]), int(p["n"])) for p in manifest["parts"][split]] for split in SPLITS}
            if manifest.get("format") != _FORMAT:
                raise ValueError(f"format is not {_FORMAT}")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:120]
            raise TarotInputError(f"motion: {path} is not a valid manifest ({detail}); prepare again") from None
        want = self._cut
        datasets = {}
        for split in SPLITS:
            parts = []
            for rel, n in listed[split]:
                samples = MotionSamples.load(folder / rel)
                sizes = samples.sizes()
                expected = {
                    "n": n,
                    "agents": want.agents,
                    "history": want.history,
                    "future": want.future,
                    "polylines": want.polylines,
                    "points": want.points,
                }
                if sizes != expected:
                    raise TarotInputError(
                        f"motion: {folder / rel} holds samples of sizes {sizes}, the settings ask for {expected}; "
                        "prepare again"
                    )
                parts.append(samples)
            if not parts:
                raise TarotInputError(f"motion: {path} lists no samples for the {split} split; prepare again")
            datasets[split] = MotionDataset(parts)
        return TaskData(
            candidates=datasets["candidates"],
            targets=datasets["targets"],
            evaluation=datasets["evaluation"],
            sources=datasets["candidates"].groups.copy(),
        )

    # ----------------------------------------------------------------- model
    def _build(self, model: MotionModelSettings) -> MotionModel:
        return build_model(model.arch, model.preset, **model.sizes(), **self.options.cut.data_sizes())

    def proxy_model(self) -> nn.Module:
        """A fresh proxy model (``proxy.model``), initialised under ``manual_seed(seed)``."""
        return seeded(functools.partial(self._build, self.options.proxy.model), self.seed)

    def _records(self) -> dict[str, int]:
        d = self.options.downstream
        rows = {"eval_record": len(evaluated_epochs(d.epochs, d.eval_every, final=False))}
        if d.also_proxy_arch:
            rows["proxy_arch_record"] = len(evaluated_epochs(d.epochs, d.eval_every, final=True))
        return rows

    def downstream_model(self) -> nn.Module:
        """A fresh downstream model (``downstream.model``, default initialisation) with the
        evaluation-record buffers that :meth:`train_downstream` fills (see :meth:`evaluate`)."""
        return _with_records(self._build(self.options.downstream.model), self._records())

    def gradient_batches(self, dataset: torch.utils.data.Dataset, batch_size: int = 64) -> Any:
        """Batch dicts of ``dataset`` in index order (array slices, no worker processes)."""
        return IndexBatches(dataset, batch_size)

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """:func:`.losses.loss_fn`: the winner-takes-all loss (Gaussian NLL of the best mode,
        mode cross-entropy and the best mode's squared error) of a batch dict, its mean over
        the batch (for one sample: its loss). Calls ``forward`` once; runs under ``vmap``."""
        return loss_fn(forward, sample)

    def embedding_blocks(self, model: nn.Module) -> list[str]:
        """The encoder of the motion model in forward order, for
        :class:`~tarot_select.embed.JVPEmbedder`.

        * :class:`~.models.AutoBots`: ``agent_embed`` (the per-step agent embedding), then
          ``encoder.0`` .. ``encoder.<enc_layers - 1>`` (temporal + social attention layers);
          outputs ``(B, A, Th, D)``. The map encoder and the decoder come later.
        * :class:`~.models.Wayformer`: ``latent_cross``, ``latent_cross_ffn`` (the latents
          reading the tokens), then ``latent_self.<i>``, ``latent_ffn.<i>`` per latent layer;
          outputs ``(B, num_latents, D)``. The token projections ``agent_proj`` and
          ``map_proj`` run side by side, not one after the other, so they are not blocks and
          their weights are not perturbed (like a language model's token embedding).
        """
        if isinstance(model, AutoBots):
            return ["agent_embed", *(f"encoder.{i}" for i in range(len(model.encoder)))]
        if isinstance(model, Wayformer):
            names = ["latent_cross", "latent_cross_ffn"]
            for i in range(len(model.latent_self)):
                names += [f"latent_self.{i}", f"latent_ffn.{i}"]
            return names
        raise TarotInputError(f"motion: cannot name the blocks of a {type(model).__name__}; AutoBots or Wayformer")

    def embedding_reduce(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """The focal agent's rows of an AutoBots block output ``(B, A, Th, D)``: ``output[:, 0]``
        times its valid-step mask ``agents_mask[:, 0]`` (the context the AutoBots decoder
        reads), flattened to ``Th * D``; a Wayformer latent output ``(B, num_latents, D)``
        flattened. Both are linear and of a width fixed by the model (``Th``, ``D``, the
        latents), whatever the batch."""
        if output.ndim == 4:
            mask = batch["agents_mask"][:, 0].to(output.dtype)  # (B, Th)
            return (output[:, 0] * mask[..., None]).flatten(start_dim=1)
        return output.flatten(start_dim=1)

    # ----------------------------------------------------- model outputs (LDS)
    output_description: str = "model-output gradients of the negative per-sample loss f = -L, Q = I"

    def output_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """The model output of a regression task: the negative per-sample loss,
        :math:`f(z) = -L(z)` (so that a larger output is a better prediction, as the margin
        is for a classifier)."""
        return -loss_fn(forward, sample)

    def _load_downstream(self, state: Mapping[str, Any], model: nn.Module | None = None) -> nn.Module:
        model = self.downstream_model() if model is None else model
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise TarotInputError(f"motion: the state does not fit the model: {detail}") from None
        return model

    def outputs(self, data: TaskData, state: Mapping[str, Any], split: str) -> np.ndarray:
        """:meth:`output_fn` of the trained downstream model ``state`` on every sample of
        ``split``, shape ``(n_split,)`` float64 (eval mode, no gradients)."""
        model = self._load_downstream(state)
        device = self.context.torch_device
        model.to(device).eval()
        dataset = data.split(split)
        parts = []
        with torch.no_grad():
            for batch in IndexBatches(dataset, _EVAL_BATCH):
                b = _to(batch, device)
                parts.append(-wta_loss(model(b), b["future"], b["future_mask"]).double().cpu())
        return torch.cat(parts).numpy()

    def train_weights(
        self, data: TaskData, state: Mapping[str, Any], split: str, model: nn.Module | None = None
    ) -> np.ndarray:
        """TRAK's out-to-loss factor :math:`-\\partial L / \\partial f`, which is exactly 1 for
        the output :math:`f = -L` (so DsDm's :math:`Q` is the identity); shape ``(n_split,)``."""
        return np.ones(len(data.split(split)), dtype=np.float64)  # type: ignore[arg-type]

    # -------------------------------------------------------------- training
    def _fit(
        self,
        model: nn.Module,
        fetch: Callable[[np.ndarray], dict[str, torch.Tensor]],
        order_of_epoch: Callable[[], np.ndarray],
        cfg: Mapping[str, Any],
        log: EpochLog,
        rng: np.random.Generator,
        on_epoch: Callable[[int, float, float, torch.optim.Optimizer], None],
    ) -> None:
        """Train ``model`` for ``cfg["epochs"]`` epochs over ``fetch(order_of_epoch())`` in
        mini-batches (:func:`~tarot_select.tasks._training.train_epochs`): AdamW (Adam for
        ``weight_decay`` 0) on the mean :func:`.losses.batch_loss`, the learning rate of epoch
        ``e`` is ``lr (1 + cos(pi e / E)) / 2``, and the gradient's global norm is clipped to
        ``grad_clip`` (0: not clipped). Dropout draws from torch's generator seeded from ``rng``
        (the global generator is restored). Calls ``on_epoch(epoch, lr, mean loss, optimizer)``
        after each epoch (0-based)."""
        device = self.context.torch_device
        model.to(device)
        base, epochs, batch_size = float(cfg["lr"]), int(cfg["epochs"]), int(cfg["batch_size"])
        optimizer = torch.optim.AdamW(list(model.named_parameters()), lr=base, weight_decay=float(cfg["weight_decay"]))

        def batches(_: int) -> list[np.ndarray]:
            order = order_of_epoch()
            return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

        def loss_of(idx: np.ndarray) -> torch.Tensor:
            b = _to(fetch(idx), device)
            return batch_loss(model(b), b["future"], b["future_mask"])

        def lr_of(epoch: int, _: int = 0) -> float:
            return cosine_lr(base, epoch, epochs)

        def end(epoch: int, _: float, loss: float, opt: torch.optim.Optimizer) -> None:
            on_epoch(epoch, lr_of(epoch), loss, opt)  # the epoch's rate itself, not a mean of equal floats

        train_epochs(
            model,
            optimizer,
            batches,
            loss_of,
            lr_of,
            log=log,
            rng=rng,
            device=device,
            on_epoch=end,
            grad_clip=float(cfg["grad_clip"]),
        )

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets (``proxy`` settings).

        After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt``
        (``epoch`` 1-based) receives ``{"model": state_dict, "optimizer": AdamW state}`` (CPU
        tensors, parameter names recorded); its :attr:`ProxyCheckpoint.lr` is that epoch's
        learning rate. Shuffling is seeded by the task seed; one log line per epoch.
        """
        cfg = self.settings["proxy"]
        log = EpochLog(logger, f"{self.name} proxy", cfg["epochs"], self.context.progress)
        rng = np.random.default_rng([self.seed, _STREAM_PROXY])
        return train_proxy_pool(self._fit, self.proxy_model(), data, cfg, rng, out_dir, log)

    def _train_one(
        self,
        model: MotionModel,
        record: str,
        data: TaskData,
        fetch: Callable[[np.ndarray], dict[str, torch.Tensor]],
        idx: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        final: bool,
        stage: str,
    ) -> None:
        """One downstream training of ``model``; evaluations fill its buffer ``record``."""
        cfg = self.settings["downstream"]
        every, epochs = int(cfg["eval_every"]), int(cfg["epochs"])
        rows = evaluated_epochs(epochs, every, final)
        rng = np.random.default_rng([seed, _STREAM_DOWNSTREAM])
        log = EpochLog(logger, f"{self.name} {stage}", epochs, self.context.progress)
        filled = 0

        def on_epoch(epoch: int, lr: float, loss: float, _: torch.optim.Optimizer) -> None:
            nonlocal filled
            if epoch + 1 in rows:
                scores = self._scores(model, data.evaluation)
                getattr(model, record)[filled] = torch.tensor(
                    [float(epoch + 1), *(scores[m] for m in METRIC_NAMES)], dtype=torch.float64
                )
                filled += 1
                log.end(loss, lr, {self._final: scores["brier_min_fde"]})
            else:
                log.end(loss, lr)

        self._fit(model, fetch, lambda: epoch_order(idx, weights, rng), cfg, log, rng, on_epoch)

    def train_downstream(
        self,
        data: TaskData,
        split: str,
        indices: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train a fresh downstream model on ``split[indices]`` (``downstream`` settings).

        Each epoch is a shuffled pass over a list of indices: ``weights`` None (each index
        once), integer repeat counts (index ``i`` ``weights[i]`` times) or float masses
        (``len(indices)`` draws with replacement); initialisation, order and draws are seeded
        by ``seed``. Every ``downstream.eval_every`` epochs the model is evaluated on
        ``data.evaluation`` (eval mode, no gradients) into its ``eval_record`` buffer. With
        ``downstream.also_proxy_arch``, the proxy's architecture (``proxy.model``) is trained
        the same way on the same sample sequence, and its evaluations, the final one
        included, fill ``proxy_arch_record`` (its weights are not kept).

        Returns
        -------
        dict
            The downstream model's state dict (CPU), records included: it loads into
            :meth:`downstream_model` (the LDS benchmark relies on that) and is what
            :meth:`evaluate` takes.
        """
        dataset, idx, w, seed = check_request(data, split, indices, weights, seed, "motion")
        fetch = functools.partial(batch_of, dataset)
        records = self._records()
        model = _with_records(seeded(functools.partial(self._build, self.options.downstream.model), seed), records)
        self._train_one(model, "eval_record", data, fetch, idx, w, seed, final=False, stage="downstream")
        if "proxy_arch_record" in records:
            other = seeded(functools.partial(self._build, self.options.proxy.model), seed)
            other = _with_records(other, {"proxy_arch_record": records["proxy_arch_record"]})
            self._train_one(other, "proxy_arch_record", data, fetch, idx, w, seed, final=True, stage="proxy-arch")
            model.proxy_arch_record.copy_(other.proxy_arch_record.cpu())
        return cpu_state(model)

    # ------------------------------------------------------------ evaluation
    def _scores(self, model: nn.Module, dataset: torch.utils.data.Dataset) -> dict[str, float]:
        """:data:`~.metrics.METRIC_NAMES` of ``model`` over ``dataset`` (eval mode, no
        gradients; the model's mode is restored)."""
        device = self.context.torch_device
        was_training = model.training
        model.to(device).eval()
        acc = MotionMetrics()
        try:
            with torch.no_grad():
                for batch in IndexBatches(dataset, _EVAL_BATCH):
                    b = _to(batch, device)
                    acc.update(model(b), b["future"], b["future_mask"])
        finally:
            model.train(was_training)
        return acc.compute()

    def constant_velocity_scores(self, dataset: torch.utils.data.Dataset) -> dict[str, float]:
        """The metrics of constant-velocity extrapolation of the focal agent on ``dataset``."""
        acc = MotionMetrics()
        for batch in IndexBatches(dataset, _EVAL_BATCH):
            pred = constant_velocity(batch["agents"], batch["agents_mask"], batch["future"].shape[1], self._cut.dt)
            acc.update(pred, batch["future"], batch["future_mask"])
        return acc.compute()

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """Scores on ``data.evaluation`` of the trained model ``state`` (means over samples).

        ``brier_min_fde`` (minFDE over the K modes plus :math:`(1 - p)^2` of the best
        mode's probability), ``min_ade``, ``min_fde`` and ``miss_rate`` (minFDE > 2 m) of the
        final model; ``best_brier_min_fde`` the lowest Brier-minFDE among the evaluations
        during training and the final one (= the final one without ``eval_every``; the
        paper's "best validation score") and ``best_epoch``; ``constant_velocity_brier_min_fde``
        the baseline; with ``also_proxy_arch``, ``proxy_arch_<metric>`` and
        ``proxy_arch_best_brier_min_fde``: the same selection trained with the proxy's
        architecture.

        When the training evaluated its last epoch (``eval_every`` divides ``epochs``), that
        evaluation is reused (the same model on the same split) instead of a second pass.
        """
        model = self._load_downstream(state)
        epochs = int(self.options.downstream.epochs)
        record = model.eval_record.numpy()
        last = record[record[:, 0] == float(epochs)]
        if len(last) == 1 and np.isfinite(last).all():  # the training evaluated its final model
            final = dict(zip(_RECORD_COLUMNS, (float(v) for v in last[0]), strict=True))
        else:
            final = self._scores(model, data.evaluation)
        best, best_epoch = _best(record, final, epochs)
        out: dict[str, float] = {m: float(final[m]) for m in METRIC_NAMES}
        out.update(best_brier_min_fde=best, best_epoch=best_epoch)
        out["constant_velocity_brier_min_fde"] = float(self.constant_velocity_scores(data.evaluation)["brier_min_fde"])
        if hasattr(model, "proxy_arch_record"):
            record = model.proxy_arch_record.numpy()
            last = record[record[:, 0] == float(epochs)]
            if len(last) != 1 or not np.isfinite(last).all():
                raise TarotInputError("motion: the proxy-architecture record lacks its final evaluation; train again")
            other = dict(zip(_RECORD_COLUMNS, (float(v) for v in last[0]), strict=True))
            for m in METRIC_NAMES:
                out[f"proxy_arch_{m}"] = other[m]
            out["proxy_arch_best_brier_min_fde"], out["proxy_arch_best_epoch"] = _best(record, other, epochs)
        return out
