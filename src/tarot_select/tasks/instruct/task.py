"""The instruction-tuning task: a LESS pool, MMLU / BBH target sets, LoRA proxy and downstream models."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from ...errors import TarotInputError
from ...io import atomic_path, library_versions, write_json_atomic
from .._training import EpochLog, check_request, epoch_order, to_cpu, train_epochs
from ..base import Metric, ProxyCheckpoint, Task, TaskData, load_torch_file
from . import lm
from .encode import batch_loss, collate, encode_conversation, lm_loss
from .evaluate import bbh_exact_match, mmlu_accuracy
from .formats import BBHSuite, MMLUSuite, bbh_targets, mmlu_targets, read_bbh, read_less_jsonl, read_mmlu
from .records import Conversation, ExactExample, MCQuestion, Message, TargetExample, chat_text, mmlu_prompt
from .settings import TARGET_SHOTS, InstructModel, InstructSettings, InstructTraining
from .synthetic import MiniSizes, generic_text, write_mini_instruction_data

__all__ = ["ConversationDataset", "EvaluationItems", "InstructTask"]

logger = logging.getLogger(__name__)

_MANIFEST: Final[str] = "data.json"
_FORMAT: Final[str] = "tarot-instruct-data"
_STREAM_WARMUP, _STREAM_PROXY, _STREAM_DOWNSTREAM = 11, 12, 13
_METRIC: Final[dict[str, Metric]] = {
    "mmlu": Metric("mmlu_accuracy", True, "%", 100.0, "MMLU accuracy"),
    "bbh": Metric("bbh_exact_match", True, "%", 100.0, "BBH exact match"),
}


class ConversationDataset(torch.utils.data.Dataset):
    """Conversations of one split; item ``i`` is the :class:`~.records.Conversation` itself
    (encoded by the task with the tokenizer and ``max_len`` of the model that reads it)."""

    def __init__(self, conversations: Sequence[Conversation]) -> None:
        self.conversations = list(conversations)

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, i: int) -> Conversation:
        return self.conversations[int(i)]


class EvaluationItems(torch.utils.data.Dataset):
    """The evaluation split: MMLU test questions and / or BBH test examples, in suite order."""

    def __init__(self, items: Sequence[MCQuestion | ExactExample]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> MCQuestion | ExactExample:
        return self.items[int(i)]


def _items(dataset: torch.utils.data.Dataset) -> list[Any]:
    """The items of a dataset or a ``Subset`` of one, in index order."""
    if isinstance(dataset, torch.utils.data.Subset):
        inner = _items(dataset.dataset)
        return [inner[int(i)] for i in dataset.indices]
    return [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]


def linear_schedule(base: float, step: int, total: int, warmup: int) -> float:
    """Learning rate of 0-based ``step`` of ``total``: linear warm-up over ``warmup`` steps to
    ``base``, then linear decay to 0 at ``total`` (LESS's / ``transformers``' linear schedule)."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * max(0.0, (total - step) / max(total - warmup, 1))


def base_corpus(lines: Sequence[str]) -> list[str]:
    """The base models' pre-training text: the generic lines, every other one as a one-turn chat
    in the tulu template (user: ``"Continue: "`` and the first half of its words, assistant: the
    rest), so that a base knows the role tags and the eos as a pretrained model knows its chat
    format; no instruction of the pool and no target fact is in it."""
    out: list[str] = []
    for i, line in enumerate(lines):
        words = line.split()
        if i % 2 or len(words) < 2:
            out.append(line)
            continue
        half = len(words) // 2
        turns = (Message("user", "Continue: " + " ".join(words[:half])), Message("assistant", " ".join(words[half:])))
        out.append(chat_text(turns, lm.EOS_TOKEN)[0])
    return out


class InstructTask(Task):
    """LoRA instruction tuning (see :mod:`tarot_select.tasks.instruct`).

    Parameters
    ----------
    config : mapping
        The task's settings (:class:`~.settings.InstructSettings`) or config block.
    seed : int
        Seeds the synthetic data, the base models, the warm-up subset, the proxy's LoRA
        initialisation and its shuffling.
    """

    name = "instruct"
    SETTINGS = InstructSettings
    options: InstructSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._data_dir: Path | None = None
        self._manifest: dict[str, Any] | None = None
        self._tokenizers: dict[str, Any] = {}

    # ------------------------------------------------------------------ metrics
    def _suites(self) -> tuple[str, ...]:
        if self.target is None:
            return tuple(self.options.targets)
        if self.target not in self.options.targets:
            raise TarotInputError(
                f"instruct: unknown target set {self.target!r}; one of {', '.join(self.options.targets)}"
            )
        return (self.target,)

    @property  # type: ignore[override]
    def metrics(self) -> tuple[Metric, ...]:
        """The suite's metric of the unit (MMLU accuracy or BBH exact match, in %), then, with
        ``downstream.also_transfer``, the same metric of the transfer model (``transfer_``)."""
        first = [_METRIC[s] for s in self._suites()]
        out = list(first)
        if self.options.downstream.also_transfer is not None:
            name = self.options.model_names()["transfer"]
            out += [Metric(f"transfer_{m.name}", True, "%", 100.0, f"{m.label} ({name})") for m in first]
        return tuple(out)

    def architectures(self) -> dict[str, str]:
        """The models the run records describe: ``downstream`` and, with ``also_transfer``,
        ``transfer`` (the tables' transfer column, from the metrics prefixed ``transfer_``)."""
        return self.options.model_names()

    # ------------------------------------------------------------------ data
    def _sizes(self) -> MiniSizes:
        o = self.options
        return MiniSizes(**o.per_source.to_dict(), mmlu_test=o.mmlu_test, bbh_test=o.bbh_test)

    def prepare(self, out_dir: Path) -> None:
        """Write ``data.json`` (what the splits are read from) and, for synthetic data, the
        generated LESS / MMLU / BBH folders under ``raw/``, the tokenizer (``tokenizer/``) and
        the pre-trained base model of every preset used (``models/<preset>/``)."""
        out = Path(out_dir)
        o = self.options
        manifest: dict[str, Any] = {"format": _FORMAT, "dataset": o.dataset, "seed": self.seed}
        if o.dataset == "synthetic":
            paths = write_mini_instruction_data(out / "raw", seed=self.seed, sizes=self._sizes())
            rel = lambda p: str(Path(p).relative_to(out))
            manifest.update(
                pool=[rel(p) for p in paths.pool_files],
                mmlu_root=rel(paths.mmlu_dir),
                bbh_root=rel(paths.bbh_dir),
                pool_manifest=rel(paths.manifest),
                tokenizer="tokenizer",
                models=self._build_bases(out, paths),
            )
        else:
            pool = read_less_jsonl(list(o.pool or ()))
            logger.info("instruct: %d usable pool records in %s", len(pool), ", ".join(o.pool or ()))
            manifest.update(
                pool=[str(Path(p).expanduser().resolve()) for p in o.pool or ()],
                mmlu_root=None if o.mmlu_root is None else str(Path(o.mmlu_root).expanduser().resolve()),
                bbh_root=None if o.bbh_root is None else str(Path(o.bbh_root).expanduser().resolve()),
                n_pool=len(pool),
            )
        manifest["versions"] = library_versions()
        write_json_atomic(out / _MANIFEST, manifest)

    def _build_bases(self, out: Path, paths: Any) -> dict[str, str]:
        """Train the tokenizer and pre-train a base model per preset; returns preset -> folder."""
        o = self.options
        pool = read_less_jsonl(list(paths.pool_files))
        mmlu, bbh = read_mmlu(paths.mmlu_dir), read_bbh(paths.bbh_dir)
        corpus = [chat_text(c.messages, lm.EOS_TOKEN)[0] for c in pool]
        corpus += [mmlu_prompt(q, [], q.subject) for qs in mmlu.dev.values() for q in qs]
        corpus += list(bbh.cot_prompts.values())
        generic = base_corpus(generic_text(self.seed, o.base.lines))
        tokenizer = lm.train_tokenizer(corpus + generic, o.vocab_size)
        lm.save_local(tokenizer, out / "tokenizer")
        models: dict[str, str] = {}
        for preset in o.presets():
            model = lm.build_model(
                preset,
                len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                seed=self.seed,
            )
            losses = lm.pretrain_base(
                model,
                tokenizer,
                generic,
                steps=o.base.steps,
                batch_size=o.base.batch_size,
                block_size=o.base.block_size,
                lr=o.base.lr,
                seed=self.seed,
                progress=self.context.progress,
            )
            lm.save_local(model, out / "models" / preset)
            models[preset] = f"models/{preset}"
            logger.info("instruct: base model %s pre-trained, loss %.3f -> %.3f", preset, losses[0], losses[-1])
        return models

    def _read_manifest(self, data_dir: Path) -> dict[str, Any]:
        path = Path(data_dir) / _MANIFEST
        if not path.is_file():
            raise TarotInputError(f"{path}: not found; delete the folder {data_dir} and prepare again")
        try:
            manifest = json.loads(path.read_text())
        except ValueError:
            raise TarotInputError(f"{path}: not JSON; delete the folder {data_dir} and prepare again") from None
        if manifest.get("format") != _FORMAT or manifest.get("dataset") != self.options.dataset:
            raise TarotInputError(
                f"{path}: not instruct data of dataset {self.options.dataset}; delete the folder and prepare again"
            )
        return manifest

    def _path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() or self._data_dir is None else self._data_dir / p

    def load(self, data_dir: Path, target: str | None = None) -> TaskData:
        """The pool (candidates, with their sources), the few-shot targets of the target set
        (MMLU: 5 dev questions per subject; BBH: 3 CoT exemplars per task; their subtask labels
        in ``target_groups``) and its test set (evaluation). ``target`` None: every target set
        (labels ``<suite>/<subtask>``), as the pool-level jobs (proxy, candidate gradients) see it."""
        if target is not None:
            self.target = target
        self._data_dir = Path(data_dir)
        manifest = self._read_manifest(self._data_dir)
        self._manifest = manifest
        pool = read_less_jsonl([self._path(p) for p in manifest["pool"]])
        if not pool:
            raise TarotInputError(f"{data_dir}: the pool has no usable record")
        suites = self._suites()
        targets: list[TargetExample] = []
        evaluation: list[MCQuestion | ExactExample] = []
        for suite in suites:
            t, e = self._suite(manifest, suite)
            targets += t
            evaluation += e
        prefix = len(suites) > 1
        groups = np.array([f"{t.suite}/{t.subtask}" if prefix else t.subtask for t in targets])
        return TaskData(
            candidates=ConversationDataset(pool),
            targets=ConversationDataset([t.conversation for t in targets]),
            evaluation=EvaluationItems(evaluation),
            sources=np.array([c.dataset for c in pool]),
            target_groups=groups,
        )

    def _suite(self, manifest: Mapping[str, Any], suite: str) -> tuple[list[TargetExample], list[Any]]:
        root = manifest.get(f"{suite}_root")
        if root is None:
            raise TarotInputError(f"instruct: the data folder has no {suite} suite; set {suite}_root and prepare again")
        if suite == "mmlu":
            mmlu = self._mmlu(root)
            questions = [q for s in mmlu.subjects for q in mmlu.test[s]]
            return mmlu_targets(mmlu, TARGET_SHOTS["mmlu"]), questions
        bbh = self._bbh(root)
        targets, test = bbh_targets(bbh, TARGET_SHOTS["bbh"])
        return targets, [e for task in sorted(test) for e in test[task]]

    def _mmlu(self, root: str) -> MMLUSuite:
        return read_mmlu(self._path(root))

    def _bbh(self, root: str) -> BBHSuite:
        return read_bbh(self._path(root))

    def candidate_groups(self, data: TaskData) -> dict[str, np.ndarray]:
        """``source`` (the record's ``dataset``) and, for synthetic data, ``answer``: whether a
        record's target-like answer is ``right``, ``wrong`` (the harmful part of oasst1) or
        absent (``none``), from the generator's ``pool_manifest.json`` (never read by selection)."""
        groups = {"source": np.asarray(data.sources)}
        manifest = self._manifest or {}
        path = manifest.get("pool_manifest")
        if path is None:
            return groups
        records = json.loads(self._path(path).read_text())["records"]
        if len(records) != len(data.candidates):  # type: ignore[arg-type]
            return groups
        names = {True: "right", False: "wrong", None: "none"}
        groups["answer"] = np.array([names[r["correct"]] for r in records])
        return groups

    # ----------------------------------------------------------------- models
    def _require_loaded(self) -> Path:
        if self._data_dir is None or self._manifest is None:
            raise TarotInputError("instruct: load the data folder (task.load) before building models")
        return self._data_dir

    def _model_folder(self, model: InstructModel) -> Path:
        self._require_loaded()
        if model.path is not None:
            return Path(model.path).expanduser()
        folders = (self._manifest or {}).get("models", {})
        if model.preset not in folders:
            raise TarotInputError(f"instruct: no base model {model.preset!r} in the data folder; prepare again")
        return self._path(folders[model.preset])

    def tokenizer_for(self, model: InstructModel) -> Any:
        """The tokenizer of a model block (synthetic: the shared one; less: the model folder's)."""
        data_dir = self._require_loaded()
        key = "synthetic" if model.path is None else str(model.path)
        if key not in self._tokenizers:
            folder = data_dir / str(self._manifest["tokenizer"]) if model.path is None else Path(model.path)  # type: ignore[index]
            self._tokenizers[key] = lm.load_local_tokenizer(folder)
        return self._tokenizers[key]

    def _base(self, model: InstructModel) -> nn.Module:
        return lm.load_local_model(self._model_folder(model), dtype=model.dtype)

    def _with_lora(self, base: nn.Module, training: InstructTraining, seed: int) -> nn.Module:
        lora = training.lora
        return lm.add_lora(
            base, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules, seed=seed
        )

    def proxy_model(self) -> nn.Module:
        """The proxy's base model with fresh LoRA adapters (``proxy.lora``, seeded by the task
        seed); only the adapters are trainable. Needs :meth:`load` first (the data folder)."""
        return self._with_lora(self._base(self.options.proxy.model), self.options.proxy, self.seed)

    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """:func:`.encode.lm_loss`: mean next-token cross-entropy over the response tokens."""
        return lm_loss(forward, sample)

    def embedding_blocks(self, model: nn.Module) -> list[str]:
        """The decoder layers of the causal LM in forward order, for
        :class:`~tarot_select.embed.JVPEmbedder` (as Influence Distillation embeds with the
        first transformer blocks): the elements of the model's one ``ModuleList`` named
        ``layers``, e.g. ``base_model.model.model.layers.0`` .. ``.layers.3`` for the LoRA-wrapped
        tiny Llama / Qwen2 (their LoRA adapters are the perturbed parameters). Each layer
        outputs hidden states ``(B, L, d)``."""
        found = [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(module) > 0
        ]
        if len(found) != 1:
            raise TarotInputError(
                f"instruct: expected one ModuleList of decoder layers named 'layers' in the model, found {found}"
            )
        layers = model.get_submodule(found[0])
        return [f"{found[0]}.{i}" for i in range(len(layers))]

    def embedding_reduce(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """The hidden state ``(B, d)`` of each row's last real token (the last 1 of the
        batch's ``attention_mask``; the last position without a mask): a sequence
        representation that right padding does not change (causal attention). Selecting a
        position is linear."""
        length = output.shape[1]
        positions = torch.arange(length, device=output.device)
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if mask is None:
            last = torch.full((output.shape[0],), length - 1, device=output.device)
        else:
            last = torch.where(mask.bool(), positions, -1).amax(dim=1).clamp(min=0)
        return output[torch.arange(output.shape[0], device=output.device), last]

    def gradient_batches(
        self, dataset: torch.utils.data.Dataset, batch_size: int = 64
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Padded batches (:func:`.encode.collate`) of the conversations of ``dataset`` in index
        order, encoded with the proxy's tokenizer and ``proxy.max_len``."""
        tokenizer = self.tokenizer_for(self.options.proxy.model)
        max_len = self.options.proxy.max_len
        convs = _items(dataset)
        size = max(1, int(batch_size))
        for start in range(0, len(convs), size):
            encoded = [encode_conversation(c, tokenizer, max_len) for c in convs[start : start + size]]
            yield collate(encoded, tokenizer.pad_token_id)

    def load_checkpoint(
        self, model: nn.Module, path: Path
    ) -> tuple[Mapping[str, torch.Tensor], Mapping[str, Any] | None]:
        """The LoRA state of proxy checkpoint ``path`` (loaded over the base model with
        ``strict=False`` by the featurizer) and the AdamW state of the adapters (LESS's
        preconditioning). Every adapter of ``model`` must be in the checkpoint."""
        blob = load_torch_file(
            path, "proxy checkpoint", fix=f"delete the folder {Path(path).parent} and rerun train_proxy"
        )
        if not isinstance(blob, Mapping) or "model" not in blob:
            raise TarotInputError(f"{path}: not a proxy checkpoint (expected a dict with 'model'); rerun train_proxy")
        own = {k for k in model.state_dict() if ".lora_A." in k or ".lora_B." in k}
        missing = sorted(own - set(blob["model"]))
        if missing:
            raise TarotInputError(
                f"{path}: lacks the adapter {missing[0]} of the proxy (other LoRA settings?); rerun train_proxy"
            )
        return blob["model"], blob.get("optimizer")

    # -------------------------------------------------------------- training
    def _train_lora(
        self,
        model: nn.Module,
        tokenizer: Any,
        convs: Sequence[Conversation],
        order_of_epoch: Callable[[], np.ndarray],
        cfg: InstructTraining,
        rng: np.random.Generator,
        log: EpochLog,
        on_epoch: Callable[[int, float, float, torch.optim.Optimizer], None] | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        """LoRA training: AdamW over the adapters on the mean response-token loss of padded
        batches, linear warm-up (``warmup_ratio`` of the steps) and linear decay per step,
        gradient-norm clipping; ``order_of_epoch()`` gives an epoch's conversation indices."""
        device = self.context.torch_device
        model.to(device)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        encoded = [encode_conversation(c, tokenizer, cfg.max_len) for c in convs]
        pad = tokenizer.pad_token_id
        per_epoch = steps_per_epoch or 1
        total = per_epoch * cfg.epochs
        warmup = math.ceil(cfg.warmup_ratio * total)

        def batches(_: int) -> list[np.ndarray]:
            order = order_of_epoch()
            return [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]

        def loss_of(idx: np.ndarray) -> torch.Tensor:
            batch = collate([encoded[int(i)] for i in idx], pad)
            return batch_loss(model, {k: v.to(device) for k, v in batch.items()})

        def end(epoch: int, lr: float, loss: float, opt: torch.optim.Optimizer) -> None:
            if on_epoch is not None:
                on_epoch(epoch, lr, loss, opt)
            else:
                log.end(loss, lr)

        train_epochs(
            model,
            optimizer,
            batches,
            loss_of,
            lambda _e, step: linear_schedule(cfg.lr, step, total, warmup),
            log=log,
            rng=rng,
            device=device,
            on_epoch=end,
            grad_clip=cfg.grad_clip,
        )
        model.eval()

    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """LESS's warm-up: LoRA training of the proxy on a seeded random ``proxy.warmup_fraction``
        of the pool (candidates only) for ``proxy.epochs`` epochs.

        After each of the last ``proxy.checkpoints`` epochs, ``out_dir/ckpt_{epoch}.pt`` receives
        ``{"model": LoRA state only, "optimizer": AdamW state of the adapters, "lr": ...}``; its
        :attr:`ProxyCheckpoint.lr` is the mean learning rate of the epoch (LESS's weight).
        """
        cfg = self.options.proxy
        convs = _items(data.candidates)
        n = len(convs)
        k = max(1, round(cfg.warmup_fraction * n))
        chosen = np.sort(np.random.default_rng([self.seed, _STREAM_WARMUP]).choice(n, size=k, replace=False))
        warm = [convs[int(i)] for i in chosen]
        logger.info("instruct proxy: warm-up on %d of %d pool records (%.1f %%)", k, n, 100.0 * k / n)
        model = self.proxy_model()
        tokenizer = self.tokenizer_for(cfg.model)
        rng = np.random.default_rng([self.seed, _STREAM_PROXY])
        log = EpochLog(logger, f"{self.name} proxy", cfg.epochs, self.context.progress)
        first_saved = cfg.epochs - cfg.checkpoints
        saved: list[ProxyCheckpoint] = []
        out = Path(out_dir)

        def on_epoch(epoch: int, lr: float, loss: float, optimizer: torch.optim.Optimizer) -> None:
            log.end(loss, lr)
            if epoch < first_saved:
                return
            path = out / f"ckpt_{epoch + 1}.pt"
            with atomic_path(path) as tmp:
                torch.save({"model": lm.lora_state(model), "optimizer": to_cpu(optimizer.state_dict()), "lr": lr}, tmp)
            saved.append(
                ProxyCheckpoint(path=str(path), lr=lr, epoch=epoch + 1, extra={"train_loss": loss, "warmup_size": k})
            )

        steps = math.ceil(k / cfg.batch_size)
        self._train_lora(model, tokenizer, warm, lambda: rng.permutation(k), cfg, rng, log, on_epoch, steps)
        return saved

    def _train_one(
        self,
        block: InstructModel,
        convs: Sequence[Conversation],
        idx: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        stage: str,
    ) -> dict[str, torch.Tensor]:
        cfg = self.options.downstream
        model = self._with_lora(self._base(block), cfg, seed)
        rng = np.random.default_rng([seed, _STREAM_DOWNSTREAM])
        log = EpochLog(logger, f"{self.name} {stage}", cfg.epochs, self.context.progress)
        per_epoch = len(epoch_order(idx, weights, np.random.default_rng(0)))
        steps = math.ceil(per_epoch / cfg.batch_size)
        self._train_lora(
            model, self.tokenizer_for(block), convs, lambda: epoch_order(idx, weights, rng), cfg, rng, log, None, steps
        )
        return lm.lora_state(model)

    def train_downstream(
        self,
        data: TaskData,
        split: str,
        indices: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        progress: bool = False,
    ) -> dict[str, Any]:
        """LoRA fine-tuning of the downstream base model on ``split[indices]`` (``downstream``).

        Each epoch is a shuffled pass over the indices (integer ``weights``: repeat counts;
        float ``weights``: ``len(indices)`` draws in proportion), seeded by ``seed`` (which also
        seeds the adapters). With ``downstream.also_transfer`` the transfer model is trained the
        same way on the same sequence of conversations (its own tokenizer).

        Returns
        -------
        dict
            ``{"downstream": LoRA state}`` and, with a transfer model, ``"transfer"``.
        """
        dataset, idx, w, seed = check_request(data, split, indices, weights, seed, "instruct")
        convs = _items(dataset)
        out = {"downstream": self._train_one(self.options.downstream_model(), convs, idx, w, seed, "downstream")}
        transfer = self.options.downstream.also_transfer
        if transfer is not None:
            out["transfer"] = self._train_one(transfer, convs, idx, w, seed, "transfer")
        return out

    # ------------------------------------------------------------ evaluation
    def _scores(self, block: InstructModel, lora: Mapping[str, torch.Tensor], data: TaskData) -> dict[str, float]:
        cfg = self.options.downstream
        model = self._with_lora(self._base(block), cfg, 0)
        lm.load_lora_state(model, dict(lora))
        model.to(self.context.torch_device).eval()
        tokenizer = self.tokenizer_for(block)
        items = _items(data.evaluation)
        manifest = self._manifest or {}
        out: dict[str, float] = {}
        questions = [q for q in items if isinstance(q, MCQuestion)]
        if questions:
            mmlu = self._mmlu(manifest["mmlu_root"])
            shots = {s: qs[: cfg.mmlu_shots] for s, qs in mmlu.dev.items()}
            res = mmlu_accuracy(
                model, tokenizer, questions, shots, cfg.eval_batch_size, cfg.eval_max_len, cfg.chat_format
            )
            out["mmlu_accuracy"] = float(res["accuracy"])
            out.update({f"mmlu_accuracy.{s}": float(v) for s, v in res["per_subject"].items()})
        examples = [e for e in items if isinstance(e, ExactExample)]
        if examples:
            cots = self._bbh(manifest["bbh_root"]).cot_prompts if cfg.bbh_cot else None
            res = bbh_exact_match(
                model,
                tokenizer,
                examples,
                cots,
                cfg.max_new_tokens,
                cfg.eval_batch_size,
                cfg.eval_max_len,
                cfg.chat_format,
            )
            out["bbh_exact_match"] = float(res["exact_match"])
            out.update({f"bbh_exact_match.{t}": float(v) for t, v in res["per_task"].items()})
        return out

    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """The unit's suite on ``data.evaluation``: ``mmlu_accuracy`` (few-shot, ``mmlu_shots``
        dev questions per subject, answer-letter log-likelihood) or ``bbh_exact_match``
        (greedy, chain-of-thought prompts), each in [0, 1] with per-subtask values
        (``mmlu_accuracy.<subject>``, ``bbh_exact_match.<task>``); with a transfer model the
        same keys prefixed ``transfer_``."""
        if not isinstance(state, Mapping) or "downstream" not in state:
            raise TarotInputError("instruct: not a downstream state (expected {'downstream': LoRA state}); train again")
        out = self._scores(self.options.downstream_model(), state["downstream"], data)
        transfer = self.options.downstream.also_transfer
        if transfer is not None:
            if "transfer" not in state:
                raise TarotInputError(
                    "instruct: the state has no transfer model though also_transfer is set; train again"
                )
            out.update({f"transfer_{k}": v for k, v in self._scores(transfer, state["transfer"], data).items()})
        return out
