"""Settings of the instruction-tuning task (torch-free): keys, defaults and checks in one place.

Two datasets (key ``dataset``):

``synthetic``
    The generated mini data of :func:`.synthetic.write_mini_instruction_data` (``per_source``
    records per pool source, ``mmlu_test`` / ``bbh_test`` test items per subject / task), a
    byte-level BPE tokenizer trained on the fly (``vocab_size``) and tiny base models built from
    :data:`.lm.PRESETS` and pre-trained on generic text (``base``), all made by ``prepare``.
``less``
    Your folders (never downloaded): ``pool`` (LESS JSONL files or folders), ``mmlu_root`` (the
    official ``data/`` folder: ``dev/``, ``test/``), ``bbh_root`` (``bbh/<task>.json``,
    ``cot-prompts/<task>.txt``), and ``path`` of every model block (a local
    ``save_pretrained`` folder holding the tokenizer too). Paths are checked at config time.

Target sets (key ``targets``): ``mmlu`` and/or ``bbh``; each is a workflow unit
``<task>-<target>`` sharing the pool, the proxy and the candidate gradients.

Stages (:meth:`InstructSettings.for_stage`): ``prepare`` builds the base models of every model
block (synthetic data), so the data stage also depends on ``proxy.model``,
``downstream.model`` and ``downstream.also_transfer``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ...errors import TarotInputError
from ..settings import Settings, TaskSettings, setting

__all__ = [
    "LORA_MODULES",
    "PRESET_SHAPES",
    "TARGET_SETS",
    "InstructBase",
    "InstructDownstream",
    "InstructDownstreamModel",
    "InstructLora",
    "InstructModel",
    "InstructPerSource",
    "InstructProxy",
    "InstructSettings",
    "lora_parameters",
]

#: Target sets (evaluation suites) the task knows.
TARGET_SETS: Final[tuple[str, ...]] = ("mmlu", "bbh")
#: Few-shot target examples per subject / task (LESS: MMLU 5 per subject, BBH 3 per task).
TARGET_SHOTS: Final[dict[str, int]] = {"mmlu": 5, "bbh": 3}
#: Modules LoRA may adapt (attention and MLP projections of Llama / Qwen2), in layer order.
LORA_MODULES: Final[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Shapes of :data:`.lm.PRESETS` (hidden, intermediate, layers, heads, kv heads), kept here
#: torch-free; a test holds them equal to the presets.
PRESET_SHAPES: Final[dict[str, dict[str, int]]] = {
    "llama-tiny": {"hidden": 96, "intermediate": 256, "layers": 4, "heads": 4, "kv_heads": 2},
    "qwen-tiny": {"hidden": 160, "intermediate": 512, "layers": 4, "heads": 4, "kv_heads": 2},
}
Preset = Literal["llama-tiny", "qwen-tiny"]
DType = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class InstructPerSource(Settings):
    """Synthetic pool records per source (:data:`.synthetic.SOURCES`)."""

    flan_v2: int = setting(1500, minimum=0, doc="templated multi-skill tasks (MMLU-style questions): helps MMLU")
    cot: int = setting(1500, minimum=0, doc="chain-of-thought answers on BBH-like skills: helps BBH")
    dolly: int = setting(1000, minimum=0, doc="open everyday questions: mostly irrelevant")
    oasst1: int = setting(1000, minimum=0, doc="multi-turn chats, target-like questions often answered wrongly")


@dataclass(frozen=True)
class InstructBase(Settings):
    """Synthetic: the causal-LM pre-training of the tiny base models on generic text."""

    lines: int = setting(4000, minimum=1, doc="generic text lines (counting, alphabet, days, sentences)")
    steps: int = setting(300, minimum=1, doc="training steps of every base model")
    batch_size: int = setting(16, minimum=1, doc="windows per step")
    block_size: int = setting(64, minimum=2, doc="tokens per window")
    lr: float = setting(0.003, minimum=0, exclusive_minimum=True, doc="peak learning rate (warm-up, cosine)")


@dataclass(frozen=True)
class InstructModel(Settings):
    """A causal LM: a tiny preset (synthetic data) or a local folder (dataset less)."""

    preset: Preset | None = setting("llama-tiny", doc="synthetic: llama-tiny | qwen-tiny (lm.PRESETS)")
    path: str | None = setting(None, doc="less: local save_pretrained folder (weights, config, tokenizer)")
    dtype: DType = setting("float32", doc="parameter dtype of the base model (bfloat16 for 7-8 B models)")


@dataclass(frozen=True)
class InstructDownstreamModel(InstructModel):
    """The downstream model; null preset and path: the proxy's model (the paper's main column)."""

    preset: Preset | None = setting(None, doc="synthetic: a preset, null: the proxy's")
    path: str | None = setting(None, doc="less: local folder, null: the proxy's")


@dataclass(frozen=True)
class InstructLora(Settings):
    """LoRA adapters (Hu et al., ICLR 2022); LESS: r 128, alpha 512, dropout 0.1 on q/k/v/o."""

    r: int = setting(8, minimum=1, doc="rank")
    alpha: float = setting(16.0, minimum=0, exclusive_minimum=True, doc="scale numerator (scale alpha / r)")
    dropout: float = setting(0.0, minimum=0, maximum=0.9, doc="dropout on the adapter input in training")
    target_modules: tuple[str, ...] = setting(
        ("q_proj", "k_proj", "v_proj", "o_proj"), non_empty=True, unique=True, doc="adapted linear maps"
    )

    def check(self, where: str = "") -> None:
        bad = [m for m in self.target_modules if m not in LORA_MODULES]
        if bad:
            raise TarotInputError(f"{where}.target_modules: {bad[0]!r} is not one of {', '.join(LORA_MODULES)}")


@dataclass(frozen=True)
class InstructTraining(Settings):
    """Keys of both LoRA trainings: AdamW, linear warm-up then linear decay per step (LESS)."""

    lora: InstructLora = setting(factory=InstructLora, doc="LoRA adapters")
    epochs: int = setting(4, minimum=1, doc="epochs (LESS: 4)")
    lr: float = setting(0.001, minimum=0, exclusive_minimum=True, doc="peak learning rate (LESS: 2e-5 at 7-8 B)")
    warmup_ratio: float = setting(0.03, minimum=0, maximum=0.5, doc="share of the steps of linear warm-up (LESS)")
    weight_decay: float = setting(0.0, minimum=0, doc="AdamW's decoupled weight decay")
    batch_size: int = setting(16, minimum=1, doc="conversations per step (LESS: 128)")
    max_len: int = setting(256, minimum=8, doc="tokens per conversation at most (left truncation)")
    grad_clip: float = setting(1.0, minimum=0, doc="global gradient-norm clipping (0: none)")


@dataclass(frozen=True)
class InstructProxy(InstructTraining):
    """LESS's warm-up: LoRA training on a random share of the pool; a checkpoint per epoch."""

    model: InstructModel = setting(factory=InstructModel, doc="the proxy (selection) model")
    warmup_fraction: float = setting(
        0.05, minimum=0, maximum=1, exclusive_minimum=True, doc="share of the pool the warm-up trains on (LESS: 5 %)"
    )
    checkpoints: int = setting(4, minimum=1, doc="last epochs whose LoRA state is saved (LESS: one per epoch)")

    def check(self, where: str = "") -> None:
        if self.checkpoints > self.epochs:
            raise TarotInputError(f"{where}.checkpoints: {self.checkpoints} exceeds epochs={self.epochs}")


@dataclass(frozen=True)
class InstructDownstream(InstructTraining):
    """LoRA fine-tuning on each selection, its evaluation, and the transfer model."""

    model: InstructDownstreamModel = setting(factory=InstructDownstreamModel, doc="the downstream model")
    also_transfer: InstructModel | None = setting(
        None, doc="another model trained on every selection (metrics transfer_*), e.g. {preset: qwen-tiny}"
    )
    chat_format: bool = setting(
        True, doc="evaluate in the tulu chat template the LoRA models are tuned in (LESS's use_chat_format)"
    )
    mmlu_shots: int = setting(5, minimum=0, doc="MMLU few-shot examples (dev questions) per prompt")
    bbh_cot: bool = setting(True, doc="BBH with the chain-of-thought prompts (false: 'Q: ... A:' directly)")
    max_new_tokens: int = setting(64, minimum=1, doc="BBH: greedy tokens generated at most")
    eval_batch_size: int = setting(16, minimum=1, doc="prompts per forward pass in evaluation")
    eval_max_len: int | None = setting(None, minimum=8, doc="evaluation prompt tokens at most (null: the model's)")


@dataclass(frozen=True)
class InstructSettings(TaskSettings):
    """LoRA instruction tuning (see :mod:`tarot_select.tasks.instruct`)."""

    kind: str = setting("instruct", doc="task kind")
    dataset: Literal["synthetic", "less"] = setting("synthetic", doc="synthetic (generated) | less (your folders)")
    targets: tuple[Literal["mmlu", "bbh"], ...] = setting(
        ("mmlu", "bbh"), non_empty=True, unique=True, doc="target sets: units <task>-mmlu, <task>-bbh"
    )
    per_source: InstructPerSource = setting(factory=InstructPerSource, doc="synthetic: pool records per source")
    mmlu_test: int = setting(40, minimum=1, doc="synthetic: MMLU test questions per subject")
    bbh_test: int = setting(40, minimum=1, doc="synthetic: BBH test examples per task")
    vocab_size: int = setting(1024, minimum=262, doc="synthetic: tokenizer vocabulary (byte-level BPE)")
    base: InstructBase = setting(factory=InstructBase, doc="synthetic: base-model pre-training")
    pool: tuple[str, ...] | None = setting(None, doc="less: LESS JSONL files or folders of the candidate pool")
    mmlu_root: str | None = setting(None, doc="less: MMLU data folder (dev/, test/)")
    bbh_root: str | None = setting(None, doc="less: BBH folder (bbh/<task>.json, cot-prompts/<task>.txt)")
    proxy: InstructProxy = setting(factory=InstructProxy, doc="proxy warm-up training")
    downstream: InstructDownstream = setting(factory=InstructDownstream, doc="downstream LoRA fine-tuning")

    # ----------------------------------------------------------------- checks
    def check(self, where: str = "") -> None:
        models = self._model_blocks()
        if self.dataset == "synthetic":
            for key in ("pool", "mmlu_root", "bbh_root"):
                if getattr(self, key) is not None:
                    raise TarotInputError(f"{where}.{key}: only for dataset less; set dataset: less or remove it")
            for key, model in models.items():
                if model.path is not None:
                    raise TarotInputError(f"{where}.{key}.path: only for dataset less (synthetic models use preset)")
            if self.proxy.model.preset is None:
                raise TarotInputError(f"{where}.proxy.model.preset: required for dataset synthetic")
            if self.downstream.also_transfer is not None and self.downstream.also_transfer.preset is None:
                raise TarotInputError(f"{where}.downstream.also_transfer.preset: required for dataset synthetic")
            return
        if not self.pool:
            raise TarotInputError(f"{where}.pool: required for dataset less (LESS JSONL files or folders)")
        for i, item in enumerate(self.pool):
            if not Path(item).exists():
                raise TarotInputError(f"{where}.pool[{i}]: {item} not found (a LESS JSONL file or a folder of them)")
        if "mmlu" in self.targets:
            root = self._folder(self.mmlu_root, f"{where}.mmlu_root", "MMLU data folder")
            for split in ("dev", "test"):
                if not (root / split).is_dir():
                    raise TarotInputError(f"{where}.mmlu_root: {root} has no {split}/ folder (MMLU's data/ layout)")
        if "bbh" in self.targets:
            root = self._folder(self.bbh_root, f"{where}.bbh_root", "BBH folder")
            if not (root / "bbh").is_dir():
                raise TarotInputError(f"{where}.bbh_root: {root} has no bbh/ folder of <task>.json files")
        if self.proxy.model.path is None:
            raise TarotInputError(f"{where}.proxy.model.path: required for dataset less (a local model folder)")
        for key, model in models.items():
            if model.path is None:
                continue
            folder = self._folder(model.path, f"{where}.{key}.path", "model folder")
            if not (folder / "config.json").is_file():
                raise TarotInputError(f"{where}.{key}.path: {folder} has no config.json (a save_pretrained folder)")

    @staticmethod
    def _folder(path: str | None, key: str, what: str) -> Path:
        if path is None:
            raise TarotInputError(f"{key}: required for dataset less ({what})")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise TarotInputError(f"{key}: {what} not found: {folder}")
        return folder

    def _model_blocks(self) -> dict[str, InstructModel]:
        out: dict[str, InstructModel] = {"proxy.model": self.proxy.model, "downstream.model": self.downstream.model}
        if self.downstream.also_transfer is not None:
            out["downstream.also_transfer"] = self.downstream.also_transfer
        return out

    # ----------------------------------------------------------------- models
    def downstream_model(self) -> InstructModel:
        """The downstream model block with the proxy's preset / path filled in where null."""
        d, p = self.downstream.model, self.proxy.model
        if d.preset is None and d.path is None:
            return InstructModel(preset=p.preset, path=p.path, dtype=d.dtype)
        return InstructModel(preset=d.preset, path=d.path, dtype=d.dtype)

    def model_names(self) -> dict[str, str]:
        """Display names of the models: ``downstream`` and, with ``also_transfer``, ``transfer``."""
        out = {"downstream": _model_name(self.downstream_model())}
        if self.downstream.also_transfer is not None:
            out["transfer"] = _model_name(self.downstream.also_transfer)
        return out

    def presets(self) -> tuple[str, ...]:
        """Synthetic: the presets whose base models ``prepare`` builds (proxy, downstream, transfer)."""
        if self.dataset != "synthetic":
            return ()
        blocks = [self.proxy.model, self.downstream_model(), self.downstream.also_transfer]
        return tuple(dict.fromkeys(str(m.preset) for m in blocks if m is not None and m.preset is not None))

    # ----------------------------------------------------------------- units, sizes
    def target_names(self) -> tuple[str, ...]:
        """Every target set is a unit of its own (``<task>-mmlu``, ``<task>-bbh``)."""
        return tuple(self.targets)

    def split_sizes(self) -> dict[str, int] | None:
        """Synthetic: the pool (sum of ``per_source``), the targets of the *smallest* target set
        (MMLU 5 per subject, BBH 3 per task; 4 subjects and 4 tasks) and its evaluation split;
        None for dataset less (sizes depend on your files)."""
        if self.dataset != "synthetic":
            return None
        n_subtasks = 4
        targets = {t: TARGET_SHOTS[t] * n_subtasks for t in self.targets}
        evaluation = {"mmlu": self.mmlu_test * n_subtasks, "bbh": self.bbh_test * n_subtasks}
        smallest = min(self.targets, key=lambda t: targets[t])
        return {
            "candidates": sum(self.per_source.to_dict().values()),
            "targets": targets[smallest],
            "evaluation": evaluation[smallest],
        }

    def proxy_parameters(self) -> dict[str, tuple[int, ...]] | None:
        """The proxy's LoRA parameters (the only trainable ones) by name and shape, in the
        model's order: from the preset (synthetic) or the folder's ``config.json`` (less)."""
        shape = _model_shape(self.proxy.model)
        if shape is None:
            return None
        return lora_parameters(shape, self.proxy.lora.r, self.proxy.lora.target_modules)

    def for_stage(self, stage: str) -> dict[str, Any]:
        """As :meth:`TaskSettings.for_stage`, and every stage also gets the model blocks
        (``proxy.model``, ``downstream.model``, ``downstream.also_transfer``): ``prepare``
        builds those base models for synthetic data."""
        out = super().for_stage(stage)
        full = self.to_dict()
        proxy = dict(out.get("proxy", {}))
        proxy["model"] = full["proxy"]["model"]
        down = dict(out.get("downstream", {}))
        down["model"] = full["downstream"]["model"]
        down["also_transfer"] = full["downstream"]["also_transfer"]
        out["proxy"], out["downstream"] = proxy, down
        return out


def _model_name(model: InstructModel) -> str:
    return str(model.preset) if model.path is None else Path(model.path).name


def _model_shape(model: InstructModel) -> dict[str, int] | None:
    """Hidden sizes of a model block: its preset's, or its folder's ``config.json`` (None if unreadable)."""
    if model.path is None:
        return None if model.preset is None else dict(PRESET_SHAPES[model.preset])
    path = Path(model.path).expanduser() / "config.json"
    try:
        cfg = json.loads(path.read_text())
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return {
            "hidden": hidden,
            "intermediate": int(cfg["intermediate_size"]),
            "layers": int(cfg["num_hidden_layers"]),
            "heads": heads,
            "kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or hidden // heads),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lora_parameters(shape: dict[str, int], r: int, modules: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the LoRA weights of a Llama / Qwen2 model wrapped by ``peft``.

    For every layer ``i`` and adapted module (in the layer's order q, k, v, o, gate, up,
    down), ``base_model.model.model.layers.{i}.{self_attn|mlp}.{m}.lora_A.default.weight``
    of shape ``(r, d_in)`` then ``lora_B`` of shape ``(d_out, r)``, where with head size
    ``h = hidden / heads``: q ``hidden -> heads h``, k and v ``hidden -> kv_heads h``, o
    ``heads h -> hidden``, gate and up ``hidden -> intermediate``, down ``intermediate -> hidden``.
    """
    d = shape["hidden"]
    head = shape.get("head_dim", d // shape["heads"])
    dims = {
        "q_proj": (d, shape["heads"] * head),
        "k_proj": (d, shape["kv_heads"] * head),
        "v_proj": (d, shape["kv_heads"] * head),
        "o_proj": (shape["heads"] * head, d),
        "gate_proj": (d, shape["intermediate"]),
        "up_proj": (d, shape["intermediate"]),
        "down_proj": (shape["intermediate"], d),
    }
    out: dict[str, tuple[int, ...]] = {}
    for i in range(shape["layers"]):
        for m in LORA_MODULES:
            if m not in modules:
                continue
            block = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            d_in, d_out = dims[m]
            stem = f"base_model.model.model.layers.{i}.{block}.{m}"
            out[f"{stem}.lora_A.default.weight"] = (r, d_in)
            out[f"{stem}.lora_B.default.weight"] = (d_out, r)
    return out
