"""The segmentation task: data preparation (synthetic scenes or GTA5 / Cityscapes), DeepLabV3
proxy and downstream training, mIoU evaluation."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...embed import pool_feature_maps
from ...errors import TarotInputError
from ...io import atomic_path, integrity_of, library_versions, load_npy, sidecar_path, write_json_atomic
from .._config import seeded
from .._training import (
    EpochLog,
    IndexBatches,
    batch_of,
    check_request,
    cpu_state,
    epoch_order,
    evaluated_epochs,
    train_epochs,
    train_proxy_pool,
)
from ..base import SPLITS, Metric, ProxyCheckpoint, Task, TaskData
from .data import ALL_STYLES, synthesize
from .labels import IGNORE, N_CLASSES, train_id_names
from .metrics import confusion_matrix, scores_from_confusion
from .model import build_model
from .readers import Pair, list_cityscapes, list_gta5, read_pair
from .settings import SegmentationSettings

__all__ = ["SegmentationArrays", "SegmentationTask", "pixel_losses"]

logger = logging.getLogger(__name__)

_MANIFEST: Final[str] = "data.json"
_LOG_EVERY: Final[float] = 0.1  # fraction of a split between progress lines of prepare
#: Most tokens a (B, N, C) block output keeps in the infdist embedding (averaged groups).
_MAX_TOKENS: Final[int] = 64

# Stream identifiers of the seeded generators (second entry of the seed).
_STREAM_CANDIDATES, _STREAM_TARGETS, _STREAM_EVALUATION = 1, 2, 3
_STREAM_PROXY, _STREAM_DOWNSTREAM, _STREAM_SUBSETS = 4, 5, 6
_STREAM_OF_SPLIT: Final[dict[str, int]] = {
    "candidates": _STREAM_CANDIDATES,
    "targets": _STREAM_TARGETS,
    "evaluation": _STREAM_EVALUATION,
}


# --------------------------------------------------------------------------- data


class SegmentationArrays(torch.utils.data.Dataset):
    """Images and train-id labels of one split, as (memory-mapped) uint8 arrays.

    Item ``i`` is ``(image uint8 (3, H, W), labels int64 (H, W))``; :attr:`groups` gives each
    item's source or style (not part of the item, so that items stay ``(x, y)`` for the loss).

    Parameters
    ----------
    images : np.ndarray, shape (n, 3, H, W), uint8
    labels : np.ndarray, shape (n, H, W), uint8
        Train ids ``0..18`` and 255 (ignore).
    groups : np.ndarray, shape (n,), str
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or labels.shape != (images.shape[0], *images.shape[2:]):
            raise TarotInputError(f"images {images.shape} and labels {labels.shape} do not match")
        if len(groups) != len(images):
            raise TarotInputError(f"{len(groups)} group names for {len(images)} images")
        self.images, self.labels, self.groups = images, labels, np.asarray(groups).astype(str)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.images[i])), torch.from_numpy(self.labels[i].astype(np.int64))

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``idx`` stacked: ``(uint8 (b, 3, H, W), int64 (b, H, W))``."""
        idx = np.asarray(idx, dtype=np.int64)
        return torch.from_numpy(np.asarray(self.images[idx])), torch.from_numpy(self.labels[idx].astype(np.int64))


def _batches_of_order(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` cut into mini-batches of ``batch_size``; a last batch of one sample joins the
    one before (batch norm cannot train on one sample whose ASPP pooling is 1×1), and a
    lone sample is doubled."""
    if len(order) == 1:
        return [np.repeat(order, 2)]
    cuts = list(range(batch_size, len(order), batch_size))
    if cuts and len(order) - cuts[-1] == 1:
        cuts.pop()
    return np.split(order, cuts)


@contextlib.contextmanager
def _array_file(path: Path, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """A writable uint8 memory map of ``shape`` that becomes the ``.npy`` file ``path``, with an
    integrity sidecar, only if the block exits cleanly."""
    with atomic_path(path) as tmp:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        yield mm
        mm.flush()
        del mm
        record = integrity_of(tmp, rows=shape[0])
    write_json_atomic(sidecar_path(path), {"shape": list(shape), "dtype": "uint8", "integrity": record})


# --------------------------------------------------------------------------- losses


def pixel_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image loss: mean cross-entropy over the image's valid pixels.

    .. math:: \\ell_i = \\frac{1}{|V_i|} \\sum_{p \\in V_i} -\\log \\operatorname{softmax}(z_{i,p})_{y_{i,p}},
              \\quad V_i = \\{p : y_{i,p} \\ne 255\\}

    (0 for an image without a valid pixel). Written without data-dependent control flow, so
    it runs under :func:`torch.func.vmap`.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, C, H, W)
    labels : torch.Tensor, shape (B, H, W), integer (255: ignore)

    Returns
    -------
    torch.Tensor, shape (B,)
    """
    valid = labels != IGNORE
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    nll = -torch.log_softmax(logits.float(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    return (nll * valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2)).clamp_min(1)


def _batch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Training loss of a batch: cross-entropy averaged over every valid pixel of the batch."""
    valid = (labels != IGNORE).sum()
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum") / valid.clamp_min(1)


def _trainable(model: nn.Module, name: str) -> bool:
    """Whether ``model`` has a submodule ``name`` that holds a trainable parameter."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return False
    return any(p.requires_grad for p in module.parameters())


def _called_stages(module: nn.Module, prefix: str) -> list[str]:
    """Names of ``module``'s children with trainable weights, in order; a ``ModuleList`` child
    (never called itself) is replaced by its elements, recursively."""
    names = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}"
        if isinstance(child, nn.ModuleList):
            names.extend(_called_stages(child, full))
        elif any(p.requires_grad for p in child.parameters()):
            names.append(full)
    return names


def _poly_lr(base: float, step: int, total: int, power: float) -> float:
    """DeepLab's polynomial decay: ``base * (1 - step / total) ** power``."""
    return base * (1.0 - step / total) ** power


# --------------------------------------------------------------------------- task


class SegmentationTask(Task):
    """Semantic segmentation with DeepLabV3 (see :mod:`tarot_select.tasks.segmentation`).

    Parameters
    ----------
    config : mapping
        The task's settings (:class:`~.settings.SegmentationSettings`) or config block.
    seed : int
        Seeds the synthetic scenes or the GTA5 / Cityscapes subsets, the proxy's
        initialisation and shuffling.
    """

    name = "segmentation"
    SETTINGS = SegmentationSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        final = Metric("miou", True, "%", 100.0, "mIoU (final epoch)")
        best = Metric("best_miou", True, "%", 100.0, "mIoU (best evaluation)")
        pixel = Metric("pixel_accuracy", True, "%", 100.0, "pixel accuracy (final epoch)")
        first = (best, final) if self.options.downstream.primary == "best" else (final, best)
        self._miou = final
        #: What :meth:`evaluate` returns; ``downstream.primary`` picks the first (the tables').
        self.metrics = (*first, pixel)

    # ------------------------------------------------------------------ data
    @property
    def _size(self) -> tuple[int, int]:
        h, w = self.options.image_size
        return int(h), int(w)

    def _subset(self, n_have: int, n_want: int | None, stream: int) -> np.ndarray:
        """Sorted seeded sample of ``n_want`` of ``range(n_have)`` (all for None)."""
        if n_want is None or n_want >= n_have:
            return np.arange(n_have)
        return np.sort(
            np.random.default_rng([self.seed, _STREAM_SUBSETS, stream]).choice(n_have, n_want, replace=False)
        )

    def _synthetic_styles(self) -> dict[str, list[str]]:
        """Style of every image of every split (targets and evaluation: balanced, shuffled)."""
        s = self.options
        out = {"candidates": [src for src in s.sources for _ in range(s.per_source)]}
        for split, n in (("targets", s.n_targets), ("evaluation", s.n_evaluation)):
            styles = np.asarray(s.target_styles)[np.arange(int(n)) % len(s.target_styles)]
            rng = np.random.default_rng([self.seed, _STREAM_OF_SPLIT[split], 0])
            out[split] = [str(v) for v in styles[rng.permutation(len(styles))]]
        return out

    def _real_pairs(self) -> dict[str, list[Pair]]:
        s = self.options
        listed = {
            "candidates": list_gta5(str(s.gta5_root)),
            "targets": list_cityscapes(str(s.cityscapes_root), "train"),
            "evaluation": list_cityscapes(str(s.cityscapes_root), "val"),
        }
        wanted = {"candidates": s.n_candidates, "targets": s.n_targets, "evaluation": s.n_evaluation}
        return {
            split: [pairs[i] for i in self._subset(len(pairs), wanted[split], _STREAM_OF_SPLIT[split])]
            for split, pairs in listed.items()
        }

    def prepare(self, out_dir: Path) -> None:
        """Write ``{split}_images.npy`` (uint8 ``(n, 3, H, W)``) and ``{split}_labels.npy``
        (uint8 train ids ``(n, H, W)``) for the three splits, each with an integrity sidecar,
        and ``data.json``: counts, the source / style of every row (``groups``), the files
        read (GTA5 / Cityscapes, relative to their roots) and per-class pixel counts.
        """
        out = Path(out_dir)
        h, w = self._size
        manifest: dict[str, Any] = {
            "task": self.name,
            "seed": self.seed,
            "config": self.settings,
            "dataset": self.options.dataset,
            "image_size": [h, w],
            "groups": {},
            "files": {},
            "counts": {},
            "class_pixels": {},
        }
        if self.options.dataset == "synthetic":
            for split, styles in self._synthetic_styles().items():
                images, labels = synthesize(
                    styles, (h, w), self.seed, _STREAM_OF_SPLIT[split], real=split != "candidates"
                )
                with _array_file(out / f"{split}_images.npy", images.shape) as mm:
                    mm[...] = images
                with _array_file(out / f"{split}_labels.npy", labels.shape) as mm:
                    mm[...] = labels
                manifest["groups"][split] = styles
                manifest["class_pixels"][split] = np.bincount(labels.ravel(), minlength=256)[:N_CLASSES].tolist()
        else:
            roots = {"candidates": self.options.gta5_root, "targets": self.options.cityscapes_root}
            roots["evaluation"] = roots["targets"]
            for split, pairs in self._real_pairs().items():
                counts = self._read_real(out, split, pairs)
                manifest["groups"][split] = ["gta5" if split == "candidates" else "cityscapes"] * len(pairs)
                manifest["files"][split] = [
                    [str(p.relative_to(roots[split])) for p in pair]
                    for pair in pairs  # type: ignore[arg-type]
                ]
                manifest["class_pixels"][split] = counts.tolist()
            manifest["roots"] = {
                "gta5": str(Path(str(roots["candidates"])).resolve()),
                "cityscapes": str(Path(str(roots["targets"])).resolve()),
            }
        manifest["counts"] = {split: len(manifest["groups"][split]) for split in SPLITS}
        manifest["versions"] = library_versions()
        write_json_atomic(out / _MANIFEST, manifest)
        logger.info("segmentation: wrote %s images of %dx%d to %s", manifest["counts"], h, w, out)

    def _read_real(self, out: Path, split: str, pairs: list[Pair]) -> np.ndarray:
        """Decode, map and resize ``pairs`` straight into the split's memory-mapped arrays (a
        thread pool of ``context.threads``); returns the pixel count of every train id."""
        h, w = self._size
        n = len(pairs)
        counts = np.zeros(N_CLASSES, dtype=np.int64)
        step = max(1, int(n * _LOG_EVERY))
        with (
            _array_file(out / f"{split}_images.npy", (n, 3, h, w)) as images,
            _array_file(out / f"{split}_labels.npy", (n, h, w)) as labels,
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.context.threads)) as pool,
        ):
            for i, (img, lab) in enumerate(pool.map(lambda p: read_pair(p[0], p[1], (h, w)), pairs)):
                images[i], labels[i] = img, lab
                counts += np.bincount(lab.ravel(), minlength=256)[:N_CLASSES]
                if (i + 1) % step == 0 or i + 1 == n:
                    logger.info("segmentation: %s: read %d/%d images", split, i + 1, n)
        return counts

    def load(self, data_dir: Path, target: str | None = None) -> TaskData:
        """Memory-map the arrays :meth:`prepare` wrote (checked against their sidecars) into
        :class:`SegmentationArrays` splits (one target set: ``target`` is ignored).

        ``sources`` is the style (synthetic) or ``gta5`` of every candidate; the target
        domain has no known subtasks, so ``target_groups`` is None (as for Cityscapes).
        """
        folder = Path(data_dir)
        path = folder / _MANIFEST
        if not path.is_file():
            raise TarotInputError(f"segmentation: {path} not found; run prepare first")
        try:
            manifest = json.loads(path.read_text())
            groups = {split: np.asarray(manifest["groups"][split]) for split in SPLITS}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:120]
            raise TarotInputError(f"segmentation: {path} is not a valid manifest ({detail}); prepare again") from None
        datasets = {}
        for split in SPLITS:
            images, _ = load_npy(folder / f"{split}_images.npy", what=f"segmentation {split} images")
            labels, _ = load_npy(folder / f"{split}_labels.npy", what=f"segmentation {split} labels")
            if images.dtype != np.uint8 or labels.dtype != np.uint8 or tuple(images.shape[2:]) != self._size:
                raise TarotInputError(
                    f"segmentation: {folder}: {split} arrays are {images.dtype} {images.shape} / {labels.dtype} "
                    f"{labels.shape}, expected uint8 images of size {self._size}; prepare again"
                )
            datasets[split] = SegmentationArrays(images, labels, groups[split])
        return TaskData(
            candidates=datasets["candidates"],
            targets=datasets["targets"],
            evaluation=datasets["evaluation"],
            sources=groups["candidates"].astype(str),
        )

    # ----------------------------------------------------------------- model
    def proxy_model(self) -> nn.Module:
        """A fresh model (``model`` settings), initialised under ``manual_seed(seed)``."""
        return seeded(functools.partial(build_model, self.settings["model"]), self.seed)

    def downstream_model(self) -> nn.Module:
        """A fresh model of the same architecture (default initialisation)."""
        return build_model(self.settings["model"])

    def gradient_batches(self, dataset: torch.utils.data.Dataset, batch_size: int = 64) -> Any:
        """Batches ``(uint8 images, int64 labels)`` of ``dataset`` in index order (array slices)."""
        return IndexBatches(dataset, batch_size)

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Sum over the batch of :func:`pixel_losses` of ``forward(x)``: for a sample ``(x, y)``
        of batch size 1, its mean pixel cross-entropy over valid pixels. Calls ``forward``
        once (as the factored featurizer requires); runs under ``vmap`` in eval mode."""
        return pixel_losses(forward(sample[0]), sample[1]).sum()

    def embedding_blocks(self, model: nn.Module) -> list[str]:
        """The backbone's stages in forward order, then the decoder, for
        :class:`~tarot_select.embed.JVPEmbedder`.

        The stages are the backbone's direct children that hold trainable weights, in
        registration order (the elements of a ``ModuleList`` child, which is never called
        itself, in their order):

        * ``small``: ``backbone.0`` .. ``backbone.3`` (conv-BN-ReLU), then ``classifier`` (the
          ASPP head);
        * ``deeplabv3_resnet50``: ``backbone.conv1``, ``backbone.bn1`` (the stem),
          ``backbone.layer1`` .. ``backbone.layer4``, then ``classifier``;
        * mmseg (:class:`~.mmseg_model.MMSegNet`): ``segmentor.backbone.<child>`` (e.g. the
          ResNet's ``stem`` and ``layer1`` .. ``layer4``; frozen stages are left out), then
          ``segmentor.neck`` if there is one. Not the decode head: mmseg runs it by calling its
          ``forward`` method, not the module, so no forward hook sees its output.
        """
        if hasattr(model, "segmentor"):
            root, decoders = "segmentor.", ["neck"]
        else:
            root, decoders = "", ["classifier"]
        stages = _called_stages(model.get_submodule(root + "backbone"), root + "backbone")
        heads = [root + name for name in decoders if _trainable(model, root + name)]
        if not stages or not (heads or root):
            raise TarotInputError(
                f"segmentation: cannot name the blocks of a {type(model).__name__} (no trainable backbone stage "
                "or decoder)"
            )
        return [*stages, *heads]

    def embedding_reduce(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """Feature maps ``(B, C, H, W)`` average-pooled to at most 8 x 8
        (:func:`~tarot_select.embed.pool_feature_maps`), token maps ``(B, N, C)`` (transformer
        backbones) averaged over groups of tokens to at most 64, then flattened: every step is
        linear, and the width does not depend on the batch (the image size is fixed)."""
        if output.ndim == 3 and output.shape[1] > _MAX_TOKENS:
            output = F.adaptive_avg_pool1d(output.transpose(1, 2), _MAX_TOKENS).transpose(1, 2)
        return pool_feature_maps(output)

    # -------------------------------------------------------------- training
    def _autocast(self, device: torch.device, cfg: Mapping[str, Any]) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when the training block's ``amp`` (or the run context's) asks."""
        if (cfg.get("amp") or self.context.amp) and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _fit(
        self,
        model: nn.Module,
        fetch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
        order_of_epoch: Callable[[], np.ndarray],
        cfg: Mapping[str, Any],
        log: EpochLog,
        rng: np.random.Generator,
        on_epoch: Callable[[int, float, float, torch.optim.Optimizer], None],
    ) -> None:
        """Train ``model`` for ``cfg["epochs"]`` epochs, each over ``fetch(order_of_epoch())`` in
        mini-batches (:func:`_batches_of_order`, :func:`~tarot_select.tasks._training.train_epochs`),
        with the optimizer of ``cfg`` and the poly learning rate per step.

        The dropout of the ASPP head draws from torch's generator, seeded from ``rng`` for the
        training (the global generator is restored afterwards), so a training is a function of
        its seed. The first epoch's order is drawn from ``rng`` before that seed. Calls
        ``on_epoch(epoch, mean lr, mean loss, optimizer)`` after every epoch (``epoch`` 0-based).
        """
        device = self.context.torch_device
        model.to(device)
        params = list(model.named_parameters())
        if cfg["optimizer"] == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
            )
        else:
            optimizer = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        batch_size = int(cfg["batch_size"])
        first = order_of_epoch()
        total = int(cfg["epochs"]) * len(_batches_of_order(first, batch_size))

        def batches(epoch: int) -> list[np.ndarray]:
            return _batches_of_order(first if epoch == 0 else order_of_epoch(), batch_size)

        def loss_of(idx: np.ndarray) -> torch.Tensor:
            x, y = fetch(idx)
            with self._autocast(device, cfg):
                out = model(x.to(device))
            return _batch_loss(out, y.to(device))

        def lr_at(_: int, step: int) -> float:
            return _poly_lr(float(cfg["lr"]), min(step, total - 1), total, float(cfg["poly_power"]))

        train_epochs(model, optimizer, batches, loss_of, lr_at, log=log, rng=rng, device=device, on_epoch=on_epoch)

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets (``proxy`` settings: Adam by default, poly lr).

        After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt``
        (``epoch`` 1-based) receives ``{"model": state_dict, "optimizer": optimizer_state}``
        (CPU tensors); its :attr:`ProxyCheckpoint.lr` is the mean learning rate of that
        epoch's steps. Shuffling is seeded by the task seed; trains on the context's device
        and logs one line per epoch (``progress`` is ignored: the context decides on a bar).
        """
        cfg = self.settings["proxy"]
        log = EpochLog(logger, f"{self.name} proxy", cfg["epochs"], self.context.progress)
        rng = np.random.default_rng([self.seed, _STREAM_PROXY])
        return train_proxy_pool(self._fit, self.proxy_model(), data, cfg, rng, out_dir, log)

    def train_downstream(
        self,
        data: TaskData,
        split: str,
        indices: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train a fresh model on ``split[indices]`` (``downstream`` settings).

        Each epoch is a shuffled pass over a list of indices: ``weights`` None (each index
        once), integer repeat counts (index ``i`` ``weights[i]`` times) or float masses
        (``len(indices)`` draws with replacement); initialisation, order and draws are seeded
        by ``seed``. Every ``downstream.eval_every`` epochs the model is evaluated on
        ``data.evaluation`` (eval mode, no gradients: the training is unchanged) and the
        scores are logged and kept.

        Returns
        -------
        dict
            ``{"model": state_dict (CPU), "history": {"epoch": [...], "miou": [...],
            "pixel_accuracy": [...]}}``, the input of :meth:`evaluate`. When the last epoch
            was evaluated (``eval_every`` divides ``epochs``), ``history`` also holds that
            evaluation's confusion matrices (``final_confusion``, ``final_group_confusions``),
            which :meth:`evaluate` then reuses instead of a second pass over the split.
        """
        dataset, idx, w, seed = check_request(data, split, indices, weights, seed, "segmentation")
        cfg = self.settings["downstream"]
        model = seeded(functools.partial(build_model, self.settings["model"]), seed)
        rng = np.random.default_rng([seed, _STREAM_DOWNSTREAM])
        evaluated = evaluated_epochs(int(cfg["epochs"]), int(cfg["eval_every"]))
        history: dict[str, list[float]] = {"epoch": [], "miou": [], "pixel_accuracy": []}
        log = EpochLog(logger, f"{self.name} downstream", cfg["epochs"], self.context.progress)
        fetch = functools.partial(batch_of, dataset)

        def on_epoch(epoch: int, lr: float, loss: float, _: torch.optim.Optimizer) -> None:
            if epoch + 1 in evaluated:
                total, per = self._confusions(model, data.evaluation)
                scores = scores_from_confusion(total)
                if epoch + 1 == cfg["epochs"]:  # the final model's evaluation, for evaluate()
                    history["final_confusion"] = total  # type: ignore[assignment]
                    history["final_group_confusions"] = per  # type: ignore[assignment]
                history["epoch"].append(float(epoch + 1))
                history["miou"].append(scores["miou"])  # type: ignore[arg-type]
                history["pixel_accuracy"].append(scores["pixel_accuracy"])  # type: ignore[arg-type]
                log.end(loss, lr, {self._miou: scores["miou"]})  # type: ignore[dict-item]
            else:
                log.end(loss, lr)

        self._fit(model, fetch, lambda: epoch_order(idx, w, rng), cfg, log, rng, on_epoch)
        return {"model": cpu_state(model), "history": history}

    # ------------------------------------------------------------ evaluation
    def _confusions(
        self, model: nn.Module, dataset: torch.utils.data.Dataset
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Confusion matrix of ``model`` (eval mode, no gradients) over ``dataset``, and one
        per group (style) of its rows; the model's train / eval mode is restored."""
        device = self.context.torch_device
        groups = np.asarray(getattr(dataset, "groups", np.full(len(dataset), "")))  # type: ignore[arg-type]
        names = [str(g) for g in np.unique(groups)] if len(np.unique(groups)) > 1 else []
        total = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.int64)
        per = {g: torch.zeros_like(total) for g in names}
        was_training = model.training
        model.to(device).eval()
        batch = max(8, int(self.settings["downstream"]["batch_size"]))
        try:
            with torch.no_grad():
                for start in range(0, len(dataset), batch):  # type: ignore[arg-type]
                    rows = np.arange(start, min(start + batch, len(dataset)))  # type: ignore[arg-type]
                    x, y = batch_of(dataset, rows)
                    with self._autocast(device, self.settings["downstream"]):
                        pred = model(x.to(device)).argmax(1).cpu()
                    total += confusion_matrix(pred, y)
                    for g in names:
                        mask = torch.from_numpy(groups[rows] == g)
                        if bool(mask.any()):
                            per[g] += confusion_matrix(pred[mask], y[mask])
        finally:
            model.train(was_training)
        return total, per

    def _final_confusions(
        self, model: nn.Module, dataset: torch.utils.data.Dataset, history: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The final model's confusion matrices: those recorded by the training's last
        evaluation when present and covering exactly the split's valid pixels, else computed."""
        final = history.get("final_confusion")
        labels = getattr(dataset, "labels", None)
        if isinstance(final, torch.Tensor) and final.shape == (N_CLASSES, N_CLASSES) and labels is not None:
            valid = sum(int((labels[i : i + 256] != IGNORE).sum()) for i in range(0, len(labels), 256))
            if int(final.sum()) == valid:
                return final.long(), {
                    str(k): v.long() for k, v in dict(history.get("final_group_confusions", {})).items()
                }
            logger.warning("segmentation: the recorded final evaluation does not match the split; evaluating again")
        return self._confusions(model, dataset)

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """Scores of the trained model on ``data.evaluation`` (confusion over the whole split).

        ``miou`` and ``pixel_accuracy`` of the final model; ``best_miou`` the largest mIoU of
        the evaluations during training and the final one (= ``miou`` without
        ``eval_every``), ``best_epoch`` where it was reached; ``iou_<class>`` per class
        present in ground truth or prediction; ``miou_<style>`` per evaluation style
        (synthetic).
        """
        if not isinstance(state, Mapping) or "model" not in state:
            raise TarotInputError("segmentation: not a downstream state (expected {'model', 'history'})")
        model = self.downstream_model()
        try:
            model.load_state_dict(dict(state["model"]), strict=True)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise TarotInputError(f"segmentation: state does not fit the downstream model: {exc}") from None
        history = state.get("history") or {}
        total, per = self._final_confusions(model, data.evaluation, history)
        scores = scores_from_confusion(total)
        epochs = [float(e) for e in history.get("epoch", [])]
        mious = [float(m) for m in history.get("miou", [])]
        final_epoch = float(self.settings["downstream"]["epochs"])
        if final_epoch not in epochs:
            epochs.append(final_epoch)
            mious.append(float(scores["miou"]))  # type: ignore[arg-type]
        best = int(np.argmax(mious))
        out: dict[str, float] = {
            "miou": float(scores["miou"]),  # type: ignore[arg-type]
            "best_miou": mious[best],
            "best_epoch": epochs[best],
            "pixel_accuracy": float(scores["pixel_accuracy"]),  # type: ignore[arg-type]
        }
        names = train_id_names()
        for c, iou in enumerate(scores["iou"]):  # type: ignore[arg-type]
            if np.isfinite(iou):
                out[f"iou_{names[c].replace(' ', '_')}"] = float(iou)
        for group, conf in per.items():
            if group in ALL_STYLES:
                out[f"miou_{group}"] = float(scores_from_confusion(conf)["miou"])  # type: ignore[arg-type]
        return out
