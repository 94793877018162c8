"""Stage functions behind the Snakemake rules (the scripts only unpack ``snakemake.*``).

Every stage reads its inputs, calls the library and writes its outputs atomically, so
a job killed half way leaves nothing a rerun would trust. Directory outputs are built
in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..api import select
from ..errors import TarotInputError
from ..featurize import Checkpoint, GradientFeaturizer, combine_checkpoints, load_partial_state
from ..gradients import AdamPreconditioner, select_parameters
from ..infdist import InfdistOptions, choose_landmarks
from ..io import (
    atomic_path,
    load_features,
    open_feature_writer,
    open_row_writer,
    write_json_atomic,
)
from ..knn import Neighbors, merge_neighbors
from ..result import Selection, read_selection
from ..tasks import RunContext, Task, TaskData, get_task, require_model_outputs
from ..tasks.base import load_torch_file
from ..weight import uniform_counts
from ..whiten import WhiteningStats, neighbors_of_files, whiten_files
from .naming import FEATURE_KEYS, INFDIST_KEYS, OUTPUT_KEYS, REFERENCES, parse_selection, ratio_label, selection_draw

__all__ = [
    "composition",
    "dump_gradients",
    "embed_candidates",
    "evaluate_model",
    "gather_features",
    "job_task",
    "load_data",
    "make_featurizer",
    "make_selection",
    "prepare_data",
    "proxy_manifest",
    "proxy_train_weights",
    "read_json",
    "select_for_job",
    "setup_stage",
    "shard_rows",
    "stage",
    "task_architectures",
    "train_downstream",
    "train_proxy",
    "whiten_features",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- set-up
def setup_stage(log_path: str | os.PathLike[str] | None, threads: int = 1) -> None:
    """Send logging (and warnings) of this job to its log file, and cap torch's and the
    BLAS / OpenMP libraries' thread pools at the job's ``threads``, so parallel jobs do not
    oversubscribe the cores Snakemake gave them."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(log_path, mode="w")]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )
    logging.captureWarnings(True)
    n = max(1, int(threads))
    torch.set_num_threads(n)
    threadpool_limits(limits=n)  # numpy / scipy BLAS (kept for the rest of the process)


#: Exit status of a job stopped by bad input (a :class:`~tarot_select.errors.TarotInputError`).
INPUT_ERROR_STATUS = 2


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def stage(log_path: str | os.PathLike[str] | None, threads: int = 1) -> Iterator[None]:
    """Run a job body with logging set up.

    Bad input (a :class:`~tarot_select.errors.TarotInputError`: a damaged or stale file, a
    setting that cannot work) is reported as one line, without a traceback, to the job's log
    and to stderr, and the job exits with status :data:`INPUT_ERROR_STATUS` (2). Any other
    exception is a bug: it is logged with its traceback and re-raised.
    """
    setup_stage(log_path, threads)
    t0 = time.perf_counter()
    try:
        yield
    except TarotInputError as exc:
        log.info("stage stopped by bad input after %.1f s", time.perf_counter() - t0)
        root = logging.getLogger()
        to_stderr = None
        if log_path:  # the log file gets the line; so does stderr, which Snakemake shows
            to_stderr = logging.StreamHandler(sys.stderr)
            to_stderr.setFormatter(logging.Formatter("error: %(message)s"))
            root.addHandler(to_stderr)
        try:
            log.error("%s", one_line(exc))
        finally:
            if to_stderr is not None:
                root.removeHandler(to_stderr)
            for handler in root.handlers:
                handler.flush()
        raise SystemExit(INPUT_ERROR_STATUS) from None
    except Exception:
        log.exception("stage failed after %.1f s", time.perf_counter() - t0)
        raise
    log.info("stage done in %.1f s", time.perf_counter() - t0)


def job_task(job: Mapping[str, Any], threads: int = 1) -> Task:
    """Build the task of a job from its ``params.job`` (:func:`~.plan.job_params`).

    ``job`` holds ``task`` (the settings the stage depends on, with ``kind``), ``seed``,
    ``device`` (``auto`` resolves here) and ``target`` (the unit's target set or None). The
    job sees no other setting, so its output depends on nothing the workflow does not track.
    """
    settings = job["task"]
    context = RunContext(
        device=resolve_device(str(job.get("device", "cpu"))),
        threads=max(1, int(threads)),
        progress=sys.stderr.isatty(),
    )
    task = get_task(settings["kind"], settings, seed=int(job.get("seed", 0)), context=context, check=False)
    task.target = job.get("target")
    return task


def load_data(task: Task, data_dir: str | os.PathLike[str]) -> TaskData:
    """The splits of ``task``'s unit (its target set, if it has several)."""
    return task.load(Path(data_dir), target=task.target)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- checked reads
def read_json(path: str | os.PathLike[str], what: str, fix: str = "delete it and rerun the step that made it") -> Any:
    """The JSON document at ``path`` (an earlier job's output), or a one-line
    :class:`~tarot_select.errors.TarotInputError` naming it, and saying ``fix``, if it is
    missing, empty or damaged."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise TarotInputError(f"{p}: {what} not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TarotInputError(f"{p}: cannot read the {what} ({one_line(exc)[:120]}); {fix}") from None
    if not text.strip():
        raise TarotInputError(f"{p}: the {what} is empty (an interrupted write?); {fix}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise TarotInputError(f"{p}: the {what} is truncated or not JSON ({one_line(exc)[:120]}); {fix}") from None


def proxy_manifest(proxy_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The checkpoint entries (``file``, ``lr``, ``epoch``, ...) of ``proxy_dir/checkpoints.json``,
    checked to be a non-empty list of entries with a ``file`` and an ``lr``."""
    path = Path(proxy_dir) / "checkpoints.json"
    doc = read_json(path, "proxy checkpoint list", fix=f"delete the folder {proxy_dir} and rerun train_proxy")
    entries = doc.get("checkpoints") if isinstance(doc, Mapping) else None
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, Mapping) and isinstance(e.get("file"), str) and "lr" in e for e in entries)
    ):
        raise TarotInputError(
            f"{path}: not a proxy checkpoint list (needs 'checkpoints': [{{'file', 'lr'}}, ...]); "
            "delete the proxy folder and rerun train_proxy"
        )
    return [dict(e) for e in entries]


# ---------------------------------------------------------------- stages
def prepare_data(task: Task, out_dir: str | os.PathLike[str]) -> None:
    """Materialise the task's splits into ``out_dir``."""
    task.check()
    with atomic_dir(out_dir) as tmp:
        task.prepare(tmp)


def train_proxy(task: Task, data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Train the proxy and write its checkpoints plus ``checkpoints.json`` into ``out_dir``."""
    data = load_data(task, data_dir)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        ckpts = task.train_proxy(data, tmp)
        manifest = [
            {"file": Path(c.path).name, "lr": float(c.lr), "epoch": int(c.epoch), **dict(c.extra)} for c in ckpts
        ]
        write_json_atomic(tmp / "checkpoints.json", {"task": task.name, "checkpoints": manifest})
    log.info("trained proxy with %d checkpoints in %.1f s", len(manifest), time.perf_counter() - t0)


def dump_gradients(
    task: Task,
    data_dir: str | os.PathLike[str],
    proxy_dir: str | os.PathLike[str],
    split: str,
    out_path: str | os.PathLike[str],
    features: Mapping[str, Any],
    adam: bool = False,
    shard: int = 0,
    n_shards: int = 1,
    stats_path: str | os.PathLike[str] | None = None,
    output: bool = False,
    landmarks: Mapping[str, int] | None = None,
) -> None:
    """Projected per-sample gradient features of one shard of a split at every proxy checkpoint.

    Shard ``shard`` of ``n_shards`` holds the contiguous rows :func:`shard_rows` gives, so
    shards gathered in order equal the unsharded file. ``adam=True`` preconditions with
    each checkpoint's Adam state (LESS training features); ``output=True`` differentiates
    the task's model output (the margin; TRAK / DsDm features) instead of its loss.
    ``stats_path`` receives the
    whitening sums of the shard's rows combined as ``features.combine`` says
    (:func:`~tarot_select.featurize.combine_checkpoints`) (:class:`~tarot_select.whiten.WhiteningStats`), so whitening
    never needs every feature in one job.

    ``split="landmarks"`` (with ``landmarks = {"count", "seed"}``) is Influence Distillation's
    landmark set: the candidates at :func:`~tarot_select.infdist.choose_landmarks` ``(n, count,
    seed)``, in that order; the sidecar records their indices (``landmarks.indices``).
    """
    data = load_data(task, data_dir)
    extra: dict[str, Any] = {}
    if split == "landmarks":
        if not landmarks:
            raise TarotInputError("the landmarks split needs the landmark count and seed (infdist.landmarks)")
        full = data.split("candidates")
        try:
            chosen = choose_landmarks(len(full), int(landmarks["count"]), int(landmarks["seed"]))
        except TarotInputError as exc:
            raise TarotInputError(f"infdist.landmarks: {exc}") from None
        full = torch.utils.data.Subset(full, chosen.tolist())
        extra["landmarks"] = {
            "count": len(chosen),
            "seed": int(landmarks["seed"]),
            "n_candidates": len(data.candidates),
            "indices": chosen.tolist(),
        }
    else:
        full = data.split(split)
    lo, hi = shard_rows(len(full), shard, n_shards)
    dataset = torch.utils.data.Subset(full, range(lo, hi))
    manifest = proxy_manifest(proxy_dir)
    model = task.proxy_model()
    param_names = select_parameters(model, features.get("params"))
    ckpts = []
    for entry in manifest:
        state, optimizer_state = task.load_checkpoint(model, Path(proxy_dir) / entry["file"])
        pre = None
        if adam:
            if optimizer_state is None:
                raise TarotInputError(
                    f"{Path(proxy_dir) / entry['file']}: no optimizer state for the Adam-preconditioned features"
                )
            pre = AdamPreconditioner.from_optimizer_state(optimizer_state, model, param_names)
        ckpts.append(Checkpoint(state_dict=state, weight=float(entry["lr"]), name=entry["file"], preconditioner=pre))
    loss = require_model_outputs(task).output_fn if output else task.loss_fn
    featurizer = make_featurizer(model, loss, features, device=task.context.device)
    batch_size = int(features.get("batch_size", 64))
    featurizer.featurize_to_file(
        out_path,
        lambda: task.gradient_batches(dataset, batch_size),
        len(dataset),
        ckpts,
        dtype=features.get("dtype", "float32"),
        extra_meta={
            "task": task.name,
            "split": split,
            "adam_preconditioned": bool(adam),
            "gradient_of": "model output" if output else "loss",
            "shard": {"index": shard, "count": n_shards, "rows": [lo, hi]},
            **extra,
        },
        progress=False,
    )
    log.info("wrote %s rows %d..%d (shard %d/%d) to %s", split, lo, hi, shard + 1, n_shards, out_path)
    if stats_path is not None:
        written = load_features(out_path)
        arr = combine_checkpoints(
            written.array, written.checkpoint_dims, written.checkpoint_weights, features.get("combine", "sum")
        )
        WhiteningStats(arr.shape[1]).update(arr).save(
            stats_path, meta={"features": Path(out_path).name, "split": split, "shard": [shard, n_shards]}
        )


def proxy_train_weights(task: Task, data: TaskData, proxy_dir: str | os.PathLike[str]) -> np.ndarray:
    """TRAK's :math:`q_i = 1 - p_{y_i}` of every candidate under every proxy checkpoint,
    shape ``(n_candidates, n_checkpoints)`` (the :math:`Q` of DsDm's TRAK scores)."""
    outputs = require_model_outputs(task)
    manifest = proxy_manifest(proxy_dir)
    columns = []
    for entry in manifest:
        model = task.proxy_model()
        state, _ = task.load_checkpoint(model, Path(proxy_dir) / entry["file"])
        columns.append(outputs.train_weights(data, state, "candidates", model=model))
    return np.stack(columns, axis=1)


def embed_candidates(
    task: Task,
    data_dir: str | os.PathLike[str],
    proxy_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    settings: Mapping[str, Any],
) -> None:
    """Influence Distillation's JVP embeddings of every candidate (:class:`~tarot_select.embed.JVPEmbedder`).

    The proxy at its last checkpoint (the warmed-up model), differentiated along
    ``settings["tangents"]`` random directions of the parameters of its first
    ``settings["blocks"]`` blocks (as :meth:`~tarot_select.tasks.base.Task.embedding_blocks`
    names them; all of them, with a warning in the log, when the model has fewer), projected to
    at most ``settings["dim"]`` columns. The sidecar's ``embedding`` entry says which blocks. No backward pass: the cost
    is about ``tangents`` forward passes through those blocks.
    """
    from ..embed import JVPEmbedder  # the only stage that needs forward-mode AD

    data = load_data(task, data_dir)
    entry = proxy_manifest(proxy_dir)[-1]
    model = task.proxy_model()
    path = Path(proxy_dir) / entry["file"]
    state, _ = task.load_checkpoint(model, path)
    load_partial_state(model, state, f"{path} (rerun train_proxy if the proxy settings changed)")
    blocks = task.embedding_blocks(model)
    n_blocks = int(settings["blocks"])
    if n_blocks > len(blocks):
        log.warning(
            "infdist.blocks is %d but the proxy of %s has %d blocks (%s): using all of them",
            n_blocks,
            task.name,
            len(blocks),
            ", ".join(blocks),
        )
        n_blocks = len(blocks)
    embedder = JVPEmbedder(
        model,
        task.loss_fn,
        blocks,
        n_blocks=n_blocks,
        n_tangents=int(settings["tangents"]),
        dim=int(settings["dim"]),
        seed=int(settings["seed"]),
        reduce=task.embedding_reduce,
        proj_kind=str(settings.get("proj_kind", "rademacher")),
        device=task.context.device,
    )
    candidates = data.candidates
    batch_size = int(settings.get("batch_size", 64))
    t0 = time.perf_counter()
    emb = embedder.embed(
        lambda: task.gradient_batches(candidates, batch_size), n_samples=len(candidates), progress=task.context.progress
    )
    meta = {
        "task": task.name,
        "split": "candidates",
        "kind": "jvp_embeddings",
        "checkpoint": entry["file"],
        "embedding": embedder.metadata(),
    }
    with open_row_writer(out_path, emb.shape, dtype="float32", meta=meta) as out:
        out.write(emb)
    log.info(
        "embedded %d candidates into %d dims in %.1f s (%s)",
        emb.shape[0],
        emb.shape[1],
        time.perf_counter() - t0,
        out_path,
    )


def make_featurizer(
    model: torch.nn.Module, loss_fn: Any, features: Mapping[str, Any], device: str = "cpu"
) -> GradientFeaturizer:
    """The gradient featurizer that ``features.engine`` names.

    ``vmap`` and ``loop``: :class:`~tarot_select.featurize.GradientFeaturizer` (per-sample
    gradients by ``torch.func.vmap`` or one backward pass per sample, then a dense or
    count-sketch projection); ``factored``:
    :class:`~tarot_select.factored.FactoredGradientFeaturizer` (per-layer Kronecker
    projections from hooked activations and output gradients; the only engine fast enough
    for a ResNet-50; sum layout, so ``proj_dim`` is the exact output dimension).
    """
    engine = features.get("engine", "vmap")
    common = {
        "proj_dim": int(features["proj_dim"]) if features.get("proj_kind") != "none" else None,
        "proj_kind": features.get("proj_kind", "rademacher"),
        "seed": int(features.get("seed", 0)),
        "params": features.get("params"),
        "device": device,
    }
    if engine == "factored":
        from ..factored import FactoredGradientFeaturizer

        return FactoredGradientFeaturizer(model, loss_fn, **common)
    if engine not in ("vmap", "loop"):
        raise TarotInputError(f"features.engine: unknown engine {engine!r}; one of vmap, loop, factored")
    return GradientFeaturizer(model, loss_fn, mode=engine, **common)


def shard_rows(n: int, shard: int, n_shards: int) -> tuple[int, int]:
    """Row range ``[lo, hi)`` of shard ``shard`` when ``n`` rows are cut into ``n_shards``."""
    if not 0 <= shard < n_shards:
        raise TarotInputError(f"shard {shard} outside 0..{n_shards - 1}")
    if n_shards > n:
        raise TarotInputError(f"{n_shards} shards for only {n} samples: lower features.shards")
    edges = np.linspace(0, n, n_shards + 1).round().astype(int)
    return int(edges[shard]), int(edges[shard + 1])


def gather_features(shards: list[str], out_path: str | os.PathLike[str]) -> None:
    """Concatenate shard feature files (in order) into one file, streaming row blocks."""
    parts = [load_features(p) for p in shards]
    dims = {p.array.shape[1] for p in parts}
    if len(dims) != 1:
        raise TarotInputError(f"shards disagree on the feature dimension: {sorted(dims)}")
    rows = 0
    for i, part in enumerate(parts):
        info = part.meta.get("shard", {})
        if info.get("index", i) != i or info.get("rows", [rows])[0] != rows:
            raise TarotInputError(f"shard {shards[i]} is out of order (expected index {i} starting at row {rows})")
        rows += part.array.shape[0]
    meta = {k: v for k, v in parts[0].meta.items() if k not in ("shape", "dtype", "versions", "shard")}
    meta["shards"] = len(parts)
    with open_feature_writer(out_path, (rows, dims.pop()), dtype=parts[0].array.dtype, meta=meta) as out:
        start = 0
        for part in parts:
            for s in range(0, part.array.shape[0], 65536):
                block = np.asarray(part.array[s : s + 65536])
                out[start : start + len(block)] = block
                start += len(block)
    log.info("gathered %d shards into %s (%d rows)", len(parts), out_path, rows)


def whiten_features(
    candidates: str | os.PathLike[str],
    targets: str | os.PathLike[str],
    out_candidates: str | os.PathLike[str],
    out_targets: str | os.PathLike[str],
    method: str = "cholesky",
    normalize: bool = True,
    eps: float = 1e-5,
    stats: list[str] | None = None,
    out_neighbors: str | os.PathLike[str] | None = None,
    neighbors_k: int = 16,
    combine: str = "sum",
) -> None:
    """Fit the whitening on candidates ∪ targets and write both WFD feature files.

    :func:`tarot_select.whiten.whiten_files` does the work: checkpoint blocks merged as
    ``combine`` says (``sum`` is the paper's Eq. 4), the fit from the features or from
    the per-shard ``stats``, both files streamed row block by row block and, with
    ``out_neighbors``, every target's ``neighbors_k`` nearest WFD candidates found in the
    same pass (so selections need not search the pool again).
    """
    whiten_files(
        candidates,
        targets,
        out_candidates,
        out_targets,
        method=method,  # type: ignore[arg-type]
        normalize=normalize,
        eps=eps,
        combine=combine,
        stats=stats,
        out_neighbors=out_neighbors,
        neighbors_k=neighbors_k,
    )


def neighbor_shard(
    candidates: str | os.PathLike[str],
    targets: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    k: int,
    shard: int,
    shards: int,
) -> None:
    """One job of a sharded neighbour search: the ``k`` nearest WFD candidates of every target
    among the candidate rows of shard ``shard`` of ``shards`` (:func:`shard_rows`), with global
    indices and their scores (:func:`tarot_select.whiten.neighbors_of_files`)."""
    n = load_features(candidates).array.shape[0]
    start, stop = shard_rows(n, shard, shards)
    part = neighbors_of_files(candidates, targets, k, rows=(start, stop))
    part.save(out, meta={"features": str(candidates), "rows": [start, stop], "shard": shard, "shards": shards})


def merge_neighbor_shards(
    parts: list[str], out: str | os.PathLike[str], *, k: int, features: str | os.PathLike[str]
) -> None:
    """Join the shards' lists into the pool's (:func:`tarot_select.knn.merge_neighbors`): the
    same file, indices and distances as the whitening pass's own search would have written."""
    loaded = [Neighbors.load(p) for p in parts]
    n = load_features(features).array.shape[0]
    merged = merge_neighbors(loaded, k=min(int(k), n))
    merged.check(n, merged.indices.shape[0])
    merged.save(out, meta={"features": str(features), "merged_from": len(parts)})


#: Selection methods of the workflow that run a library method on other inputs.
VARIANTS: dict[str, str] = {
    "tarot_weighted": "tarot",  # TAROT, then OT-potential repeat counts
    "tarot_concat": "tarot",  # TAROT on WFD features of concatenated checkpoint blocks (ablation)
    "otm_weighted": "otm",  # OTM, then OT-potential repeat counts (the paper's TAROT-OTM, Table 2)
}
#: Selections trained on OT-potential repeat counts (``weighting.repeat`` x their size).
WEIGHTED: frozenset[str] = frozenset({"tarot_weighted", "otm_weighted"})


def composition(indices: np.ndarray, groups: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What a selection is made of: per kind of group (``source``, ``class``), the count of
    each group among the selected candidates (``composition``), the number of groups in the
    pool (``group_totals``) and each group's size in the pool (``group_sizes``), so that a
    table can say which share of every source a selection kept."""
    if not groups:
        return {}
    counts, sizes = {}, {}
    for kind, labels in groups.items():
        labels = np.asarray(labels)
        values, n = np.unique(labels[indices], return_counts=True)
        counts[kind] = {str(v): int(c) for v, c in zip(values, n)}
        values, n = np.unique(labels, return_counts=True)
        sizes[kind] = {str(v): int(c) for v, c in zip(values, n)}
    return {
        "composition": counts,
        "group_totals": {k: len(v) for k, v in sizes.items()},
        "group_sizes": sizes,
    }


def make_selection(
    method: str,
    ratio: float | None,
    features: Mapping[str, str],
    out_csv: str | os.PathLike[str],
    settings: Mapping[str, Any],
    target_groups: np.ndarray | None = None,
    candidate_groups: Mapping[str, np.ndarray] | None = None,
    train_weights: np.ndarray | None = None,
    output_description: str | None = None,
    workers: int = 1,
) -> Selection:
    """Run one selection and write ``index,weight`` CSV + sidecar.

    ``features`` maps ``candidates``, ``targets``, ``candidates_adam``, ``wfd_candidates``,
    ``wfd_targets`` and optionally ``wfd_neighbors`` (the whitening stage's neighbour
    lists, used by ``tarot``/``otm``) to files. ``method`` may also be ``full`` / ``target_only`` (all
    candidates / all targets), ``tarot_weighted`` / ``otm_weighted`` (TAROT / OTM + OT-potential
    weights) or
    ``tarot_concat`` (TAROT; its ``wfd_*`` files whiten concatenated checkpoint blocks).
    ``output_description`` says what DsDm's model-output features are (the task's
    ``output_description``, e.g. the classifiers' margin with :math:`Q = \\mathrm{diag}(1 - p_y)`);
    it goes into the sidecar and the table's footnote. ``workers``: OTM's folds on this many
    forked processes (the same selection).
    """
    meta: dict[str, Any] = {"split": "candidates", "ratio_label": ratio_label(method, ratio), "requested_ratio": ratio}
    groups = candidate_groups or {}
    if method == "infdist":
        sel = _infdist_selection(ratio, features, settings)
        sel.to_csv(out_csv, extra_meta={**meta, **composition(sel.indices, groups)})
        return sel
    cand = load_features(features["candidates"])
    targ = load_features(features["targets"])
    n = cand.array.shape[0]
    if method in REFERENCES:
        if method == "full":
            sel = Selection(indices=np.arange(n, dtype=np.int64), method="full", n_candidates=n, budget=n)
        else:
            m = targ.array.shape[0]
            sel = Selection(indices=np.arange(m, dtype=np.int64), method="target_only", n_candidates=n, budget=m)
            meta["split"] = "targets"
            groups = {}
        sel.to_csv(out_csv, extra_meta={**meta, **composition(sel.indices, groups)})
        return sel
    wfd = (load_features(features["wfd_candidates"]).array, load_features(features["wfd_targets"]).array)
    base = VARIANTS.get(method, method)
    nb_path = features.get("wfd_neighbors")
    neighbors = Neighbors.load(nb_path) if nb_path and base in ("tarot", "otm") else None
    raw_cand, raw_targ = cand, targ
    if base == "less":
        raw_cand = load_features(features["candidates_adam"])
    elif base == "dsdm" and "candidates_output" in features:  # TRAK datamodels: margin gradients, Q
        raw_cand, raw_targ = load_features(features["candidates_output"]), load_features(features["targets_output"])
        meta["dsdm_features"] = output_description or "model-output gradients, Q from the task's train_weights"
    elif base == "dsdm":
        meta["dsdm_features"] = "loss gradients, Q = I (the task has no model outputs)"
    sel = select(
        base,
        raw_cand.array,
        raw_targ.array,
        ratio=ratio if base != "otm" else None,
        seed=int(settings.get("seed", 0)),
        weighting="potential" if method in WEIGHTED else None,
        repeat=float(settings.get("repeat", 1.0)),
        n_folds=int(settings.get("folds", 10)),
        patience=int(settings.get("patience", 1)),
        ot_method=settings.get("ot_method", "auto"),
        reg=float(settings.get("reg", 0.01)),
        target_groups=target_groups if base == "less" else None,
        checkpoint_dims=raw_cand.checkpoint_dims,
        checkpoint_weights=raw_cand.checkpoint_weights,
        train_weights=train_weights if base == "dsdm" else None,
        wfd_features=wfd,
        neighbors=neighbors,
        workers=workers if base == "otm" else 1,
    )
    sel = sel.with_updates(method=method)
    sel.to_csv(out_csv, extra_meta={**meta, **composition(sel.indices, groups)})
    return sel


def _infdist_selection(ratio: float | None, features: Mapping[str, str], settings: Mapping[str, Any]) -> Selection:
    """Influence Distillation from the JVP embeddings of every candidate, the landmarks'
    gradient features (indices in their sidecar) and the targets' gradient features; the
    WFD features only measure the selection's OT distance to the target, like every method's."""
    emb = load_features(features["embeddings"])
    land = load_features(features["landmarks"])
    targ = load_features(features["targets"])
    drawn = land.meta.get("landmarks") or {}
    indices = np.asarray(drawn.get("indices", []), dtype=np.int64)
    if indices.shape != (land.array.shape[0],) or drawn.get("n_candidates") != emb.array.shape[0]:
        raise TarotInputError(
            f"{features['landmarks']}: its landmark indices ({indices.size} for {land.array.shape[0]} rows, drawn from "
            f"{drawn.get('n_candidates')} candidates) do not match the {emb.array.shape[0]} embedded candidates; "
            "delete it and rerun"
        )
    wfd = None
    if "wfd_candidates" in features.keys():  # noqa: SIM118 (Snakemake's input: keys, not file names)
        wfd = (load_features(features["wfd_candidates"]).array, load_features(features["wfd_targets"]).array)
    opts = dict(settings.get("infdist", {}))
    options = InfdistOptions(
        kernel=str(opts.get("kernel", "rbf")),
        bandwidth=None if opts.get("bandwidth") is None else float(opts["bandwidth"]),
        damping=float(opts.get("damping", 1e-2)),
        strategy=str(opts.get("strategy", "round_robin")),
        seed=int(settings.get("seed", 0)),
    )
    sel = select(
        "infdist",
        emb.array,
        targ.array,
        ratio=ratio,
        landmarks=(indices, land.array),
        infdist=options,
        checkpoint_dims=land.checkpoint_dims,
        checkpoint_weights=land.checkpoint_weights,
        ot_method=settings.get("ot_method", "auto"),
        reg=float(settings.get("reg", 0.01)),
        wfd_features=wfd,
        evaluate=wfd is not None,
    )
    return sel.with_updates(info={**sel.info, "embedding": emb.meta.get("embedding")})


def select_for_job(
    task: Task,
    selection: str,
    files: Mapping[str, str],
    out_csv: str | os.PathLike[str],
    settings: Mapping[str, Any],
) -> Selection:
    """The select rule's job: selection ``selection`` (a file stem, :func:`~.naming.selection_name`)
    from the feature ``files`` (keys :data:`~.naming.FEATURE_KEYS`, and ``data``). LESS also
    gets the target subtask labels of the task's data; DsDm, given :data:`~.naming.OUTPUT_KEYS`
    and ``proxy``, scores TRAK datamodels (margin gradients, :func:`proxy_train_weights`).
    OTM runs its folds on the job's threads (one forked process each, the same selection).
    The sidecar records the selection's source / class composition."""
    method, ratio = parse_selection(selection)
    draw = selection_draw(selection)
    if draw is not None:  # one subset per downstream seed, each from its own stream
        seed = int(np.random.SeedSequence([int(settings.get("seed", 0)), draw]).generate_state(1)[0])
        settings = {**settings, "seed": seed}
    data = load_data(task, files["data"])
    groups = data.target_groups if method == "less" else None
    # .keys(): ``in`` on Snakemake's input (a Namedlist) looks among the file names, not the keys
    keys = (*FEATURE_KEYS, *OUTPUT_KEYS, *INFDIST_KEYS)
    features = {key: files[key] for key in keys if key in files.keys()}  # noqa: SIM118
    q = (
        proxy_train_weights(task, data, files["proxy"])
        if method == "dsdm" and "candidates_output" in features
        else None
    )
    return make_selection(
        method,
        ratio,
        features,
        out_csv,
        settings,
        target_groups=groups,
        candidate_groups=task.candidate_groups(data),
        train_weights=q,
        output_description=getattr(task, "output_description", None),
        workers=task.context.threads,
    )


def train_downstream(
    task: Task,
    data_dir: str | os.PathLike[str],
    selection_csv: str | os.PathLike[str],
    seed: int,
    out_model: str | os.PathLike[str],
    repeat: float = 1.0,
) -> None:
    """Train the downstream model from scratch on a selection and save its state.

    An unweighted selection trains with every sample repeated ``repeat`` times
    (:func:`~tarot_select.weight.uniform_counts`; see :func:`~.plan.repeat_factor`), a
    weighted one on its own counts; the model file records the samples seen per epoch.
    """
    data = load_data(task, data_dir)
    indices, weights, meta = read_selection(selection_csv)
    weights = weights if meta.get("weighting") else None
    if weights is None and float(repeat) != 1.0:
        weights = uniform_counts(len(indices), float(repeat))
    if meta["split"] == "candidates":
        indices, weights = task.training_examples(indices, weights)
    per_epoch = int(weights.sum()) if weights is not None and np.issubdtype(weights.dtype, np.integer) else len(indices)
    t0 = time.perf_counter()
    state = task.train_downstream(data, meta["split"], indices, weights, seed=int(seed))
    with atomic_path(out_model) as tmp:
        torch.save(
            {"state": state, "selection": str(selection_csv), "seed": int(seed), "samples_per_epoch": per_epoch}, tmp
        )
    log.info(
        "trained downstream on %d samples, %d per epoch (seed %d) in %.1f s",
        len(indices),
        per_epoch,
        seed,
        time.perf_counter() - t0,
    )


def task_architectures(task: Task) -> dict[str, str] | None:
    """The model architectures a task's run records name, from its optional ``architectures()``
    method: ``{"downstream": ..., "proxy_arch": ...}`` (the second when the task also trains
    the proxy's architecture on every selection, its metrics prefixed ``proxy_arch_``); None
    for a task without the method."""
    names = getattr(task, "architectures", None)
    if not callable(names):
        return None
    return {str(k): str(v) for k, v in dict(names()).items()}


def evaluate_model(
    task: Task,
    data_dir: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    selection_csv: str | os.PathLike[str],
    seed: int,
    out_json: str | os.PathLike[str],
) -> dict[str, Any]:
    """Evaluate a downstream model and write a run record for the tables."""
    data = load_data(task, data_dir)
    blob = load_torch_file(
        model_path, "downstream model", fix="delete it and rerun (snakemake reruns train_downstream)"
    )
    if not isinstance(blob, Mapping) or not isinstance(blob.get("state"), Mapping):
        raise TarotInputError(f"{model_path}: not a downstream model file (no 'state'); delete it and rerun")
    _, _, meta = read_selection(selection_csv)
    metrics = task.evaluate(data, blob["state"])
    method = meta["method"]
    record = {
        "task": task.name,
        "method": method,
        "selection": Path(selection_csv).stem,
        "ratio": None if method == "target_only" else meta["ratio"],
        "ratio_label": meta["ratio_label"],
        "seed": int(seed),
        "metric": task.metric,
        "metric_spec": task.primary_metric.to_dict(),
        "metrics": metrics,
        "size": meta["size"],
        "samples_per_epoch": blob.get("samples_per_epoch"),
        "dsdm_features": meta.get("dsdm_features"),
        "composition": meta.get("composition"),
        "group_totals": meta.get("group_totals"),
        "group_sizes": meta.get("group_sizes"),
        "architectures": task_architectures(task),
        "ot_distance": meta.get("ot_distance"),
    }
    write_json_atomic(out_json, record)
    return record
