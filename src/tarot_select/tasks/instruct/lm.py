"""Causal language models of the instruction task: tokenizer, tiny presets, local models, LoRA, base training.

What lives here
---------------
:func:`train_tokenizer`
    A byte-level BPE tokenizer (the GPT-2 scheme: every byte is a symbol, merges learned by
    frequency) trained on the fly with ``tokenizers``, with the chat template's role tags
    ``<|system|>``, ``<|user|>``, ``<|assistant|>``, the eos ``</s>`` and a ``<pad>`` as
    special tokens, wrapped as a :class:`~transformers.PreTrainedTokenizerFast`.
:data:`PRESETS`, :func:`build_model`
    Tiny Llama-style and Qwen2-style causal LMs built from ``transformers`` configs (no
    download): the mini version's proxy and transfer models.
:func:`load_local_model`, :func:`load_local_tokenizer`, :func:`save_local`
    ``from_pretrained`` / ``save_pretrained`` on a local folder only (the paper scale's
    Llama-3.1-8B and Qwen-2.5-7B folders; no hub access).
:func:`add_lora`, :func:`lora_state`, :func:`load_lora_state`
    LoRA adapters (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022)
    through ``peft`` on the attention projections, as LESS trains them (Xia et al., "LESS:
    Selecting Influential Data for Targeted Instruction Tuning", ICML 2024: r 128, alpha 512,
    dropout 0.1 on q/k/v/o); only the adapters are trainable and only they are saved.
:func:`pretrain_base`
    A short causal-LM training on generic text, so that a tiny model has a base that LoRA
    fine-tuning can adapt.

Why eager attention
-------------------
Per-sample gradients go through :func:`torch.func.vmap` (:mod:`tarot_select.gradients`).
With ``attn_implementation="sdpa"`` and an attention mask, ``transformers`` builds the mask
with data-dependent control flow, which ``vmap`` refuses; without a mask ``sdpa`` traces but
``torch`` has no batching rule for its CPU kernel and falls back to a slow per-sample loop.
The eager implementation (explicit ``softmax(QK^T / sqrt(d) + mask) V``) is made of ordinary
batched operations, so the presets and the default of :func:`load_local_model` use it.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...errors import TarotInputError
from ...io import atomic_path

__all__ = [
    "ASSISTANT_TOKEN",
    "EOS_TOKEN",
    "LORA_TARGETS",
    "PAD_TOKEN",
    "PRESETS",
    "SPECIAL_TOKENS",
    "SYSTEM_TOKEN",
    "USER_TOKEN",
    "ModelPreset",
    "add_lora",
    "build_model",
    "count_parameters",
    "load_local_model",
    "load_local_tokenizer",
    "load_lora_state",
    "lora_state",
    "pretrain_base",
    "save_local",
    "train_tokenizer",
]

logger = logging.getLogger(__name__)

PAD_TOKEN: Final[str] = "<pad>"
EOS_TOKEN: Final[str] = "</s>"
SYSTEM_TOKEN: Final[str] = "<|system|>"
USER_TOKEN: Final[str] = "<|user|>"
ASSISTANT_TOKEN: Final[str] = "<|assistant|>"
#: Special tokens of :func:`train_tokenizer`, with ids 0..4 in this order.
SPECIAL_TOKENS: Final[tuple[str, ...]] = (PAD_TOKEN, EOS_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)
#: Modules LESS puts LoRA adapters on (the attention projections of Llama / Qwen2).
LORA_TARGETS: Final[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj")
_N_BYTES: Final[int] = 256
_WEIGHT_FILES: Final[tuple[str, ...]] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE tokenizer on ``texts``.

    The initial alphabet is the 256 bytes (mapped to printable characters as in GPT-2), so
    any text encodes without unknown tokens; merges are learned greedily by pair frequency
    until the vocabulary holds ``vocab_size`` entries. The 5 :data:`SPECIAL_TOKENS` take
    ids 0..4 and are matched whole in any text (the chat template's role tags and the eos are
    single tokens). Offsets are not trimmed, so token ``i`` covers characters
    ``offsets[i]`` of the text including a leading space (:mod:`.encode` needs them).

    Training is deterministic: the same ``texts`` give the same vocabulary and merges, in any
    process (ties between equally frequent pairs are broken by the pair, not by hashing).

    Parameters
    ----------
    texts : sequence of str
        Training corpus (e.g. the pool's chat texts and the targets' prompts).
    vocab_size : int
        Final vocabulary size, at least ``256 + 5 + 1``.
    min_frequency : int, default 2
        Pairs seen fewer times are never merged (the vocabulary may end up smaller).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        With ``eos_token="</s>"``, ``pad_token="<pad>"`` and the role tags as additional
        special tokens; no bos is added and no special token is inserted by ``encode``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    smallest = _N_BYTES + len(SPECIAL_TOKENS) + 1
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        raise TarotInputError(f"tokenizer vocab_size must be an integer >= {smallest}, got {vocab_size!r}")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
        raise TarotInputError("train_tokenizer needs a non-empty sequence of strings")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        padding_side="right",
    )
    logger.info("trained a byte-level BPE tokenizer of %d tokens on %d texts", len(fast), len(texts))
    return fast


def load_local_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in folder ``path`` (``AutoTokenizer``, local files only).

    A tokenizer without a pad token (Llama's) gets its eos as pad; padding is on the right
    (what :func:`.encode.collate` and the evaluation assume).
    """
    from transformers import AutoTokenizer

    folder = _local_folder(path, "tokenizer")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise TarotInputError(f"{folder}: no tokenizer.json or tokenizer_config.json; point to a saved tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TarotInputError(f"{folder}: cannot load the tokenizer ({_one_line(exc)})") from None
    if tok.eos_token is None:
        raise TarotInputError(f"{folder}: the tokenizer has no eos token; set eos_token in tokenizer_config.json")
    if tok.pad_token is None:
        logger.info("%s: no pad token, using the eos %r", folder, tok.eos_token)
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a tiny causal LM built from a ``transformers`` config.

    Attributes
    ----------
    family : {"llama", "qwen2"}
        ``LlamaForCausalLM`` (no biases, SwiGLU MLP, RMSNorm, RoPE) or ``Qwen2ForCausalLM``
        (the same with biases on q/k/v).
    hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads : int
        Width, MLP width, depth, query heads and key/value heads (grouped-query attention).
    max_positions : int
        Longest sequence (RoPE table).
    tie_embeddings : bool
        Output layer shares the input embedding.
    init_std : float, optional
        Standard deviation of the initial weights; default ``hidden_size ** -0.5``. Not the
        0.02 of large models' configs: LoRA leaves the (tied) embeddings frozen, and with
        unit-RMS final hidden states a logit is at most ``|e_v| sqrt(d)``; at ``d = 96`` and
        std 0.02 that is about 2 nats, so a briefly trained tiny base cannot become confident
        under LoRA, whatever the data (its held-out loss stalls near 3 nats on a toy pattern
        that it learns to 0.2 with std ``d ** -0.5``).
    """

    family: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_positions: int = 1024
    tie_embeddings: bool = True
    init_std: float | None = None


#: The mini version's models. With a 1,024-token vocabulary ``llama-tiny`` has 0.50 M
#: parameters and ``qwen-tiny`` 1.46 M (the transfer model is the larger one, of another family).
PRESETS: Final[dict[str, ModelPreset]] = {
    "llama-tiny": ModelPreset(
        "llama", hidden_size=96, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2
    ),
    "qwen-tiny": ModelPreset(
        "qwen2", hidden_size=160, intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2
    ),
}


def build_model(
    preset: str | ModelPreset,
    vocab_size: int,
    *,
    pad_token_id: int,
    eos_token_id: int,
    seed: int = 0,
    attn_implementation: str = "eager",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A freshly initialised tiny causal LM (no download), seeded.

    Parameters
    ----------
    preset : str or ModelPreset
        A key of :data:`PRESETS` or a preset.
    vocab_size : int
        Size of the tokenizer's vocabulary (``len(tokenizer)``).
    pad_token_id, eos_token_id : int
    seed : int, default 0
        Seeds the initialisation (torch's global generator is forked and restored).
    attn_implementation : str, default "eager"
        See the module docstring for why ``vmap`` needs ``"eager"``.
    dtype : torch.dtype, default float32

    Returns
    -------
    transformers.PreTrainedModel
        In eval mode; dropout is 0 everywhere.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise TarotInputError(f"unknown model preset {preset!r}; one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise TarotInputError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    for name, tid in (("pad_token_id", pad_token_id), ("eos_token_id", eos_token_id)):
        if not 0 <= int(tid) < vocab_size:
            raise TarotInputError(f"{name} {tid} is outside the vocabulary of {vocab_size}")
    if preset.hidden_size % preset.num_heads or preset.num_heads % preset.num_kv_heads:
        raise TarotInputError(f"preset {preset}: heads must divide hidden_size and kv heads must divide heads")
    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if preset.family not in classes:
        raise TarotInputError(f"unknown model family {preset.family!r}; one of {', '.join(classes)}")
    config_cls, model_cls = classes[preset.family]
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.max_positions,
        tie_word_embeddings=preset.tie_embeddings,
        attention_dropout=0.0,
        pad_token_id=int(pad_token_id),
        eos_token_id=int(eos_token_id),
        bos_token_id=None,
        use_cache=True,
        attn_implementation=attn_implementation,
        initializer_range=preset.init_std if preset.init_std is not None else preset.hidden_size**-0.5,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = model_cls(config)
    model = model.to(dtype)
    model.eval()
    logger.info("built a %s model of %d parameters", preset.family, count_parameters(model))
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors such as tied embeddings counted once)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def _local_folder(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TarotInputError(f"{what} folder not found: {folder}; give the path of a local folder")
    return folder


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def load_local_model(
    path: str | Path, dtype: torch.dtype | str = torch.float32, attn_implementation: str = "eager"
) -> Any:
    """A causal LM from a local ``save_pretrained`` folder (``local_files_only=True``; never the hub).

    Parameters
    ----------
    path : path-like
        Folder with ``config.json`` and the weights (``model.safetensors``,
        ``pytorch_model.bin``, or a sharded ``*.index.json``).
    dtype : torch.dtype or str, default float32
        E.g. ``torch.bfloat16`` (or ``"bfloat16"``) at paper scale.
    attn_implementation : str, default "eager"
        ``"eager"`` for ``vmap`` per-sample gradients (module docstring).

    Returns
    -------
    transformers.PreTrainedModel
        In eval mode.
    """
    from transformers import AutoModelForCausalLM

    folder = _local_folder(path, "model")
    if not (folder / "config.json").is_file():
        raise TarotInputError(f"{folder}: no config.json; point to a folder written by save_pretrained")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise TarotInputError(f"{folder}: no model weights ({', '.join(_WEIGHT_FILES)}); copy the weights there")
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise TarotInputError(f"unknown dtype {dtype!r}; e.g. float32, bfloat16, float16")
        dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, dtype=dtype, attn_implementation=attn_implementation
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TarotInputError(f"{folder}: cannot load the model ({_one_line(exc)})") from None
    model.eval()
    logger.info("loaded %s (%d parameters, %s) from %s", type(model).__name__, count_parameters(model), dtype, folder)
    return model


def save_local(obj: Any, path: str | Path) -> Path:
    """``obj.save_pretrained`` (a model or a tokenizer) into folder ``path``, file by file atomically.

    Files are written to a temporary folder first, then each is moved into ``path`` through
    :func:`tarot_select.io.atomic_path`, so a killed job never leaves a half-written file.
    """
    if not hasattr(obj, "save_pretrained"):
        raise TarotInputError(f"cannot save a {type(obj).__name__}: it has no save_pretrained")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".save.") as tmp:
        obj.save_pretrained(tmp)
        for src in sorted(Path(tmp).rglob("*")):
            if src.is_file():
                with atomic_path(folder / src.relative_to(tmp)) as dst:
                    shutil.copyfile(src, dst)
    return folder


# --------------------------------------------------------------------------- LoRA


def add_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] = LORA_TARGETS,
    seed: int = 0,
) -> Any:
    """Wrap ``model`` with LoRA adapters; only the adapters are trainable.

    Every targeted linear map ``W`` (d_out x d_in) becomes ``W x + (alpha / r) B A dropout(x)``
    with ``A`` (r x d_in, Kaiming-uniform) and ``B`` (d_out x r, zeros), so the wrapped model
    starts equal to ``model``. The base weights are frozen (``requires_grad=False``).

    Parameters
    ----------
    model : transformers.PreTrainedModel
    r : int
        Rank (LESS: 128).
    alpha : float
        Scale numerator (LESS: 512).
    dropout : float, default 0.0
        Dropout on the adapter input in training mode (LESS: 0.1); none in eval mode.
    target_modules : sequence of str, default q/k/v/o projections
    seed : int, default 0
        Seeds the initialisation of ``A`` (torch's global generator is forked and restored).

    Returns
    -------
    peft.PeftModel
        Adapter parameters are named ``...<module>.lora_A.default.weight`` /
        ``...lora_B.default.weight`` (fnmatch ``"*lora_A*"``, ``"*lora_B*"``).
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise TarotInputError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise TarotInputError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise TarotInputError(f"LoRA dropout must lie in [0, 1), got {dropout!r}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if not targets or missing:
        raise TarotInputError(f"LoRA target modules {missing or targets} are not in the model; e.g. {LORA_TARGETS}")
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=float(dropout), target_modules=targets, bias="none", task_type="CAUSAL_LM"
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft calls a transformers property that transformers 5 renamed; harmless
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(int(seed))
        wrapped = get_peft_model(model, config)
    for name, p in wrapped.named_parameters():
        p.requires_grad_(_is_lora(name))
    logger.info(
        "LoRA r=%d alpha=%s on %s: %d trainable of %d parameters",
        r,
        alpha,
        ",".join(targets),
        count_parameters(wrapped, trainable_only=True),
        count_parameters(wrapped),
    )
    return wrapped


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of ``model`` as detached CPU copies, keyed as in ``model.state_dict()``.

    Those keys make the dict a partial checkpoint that
    :class:`~tarot_select.featurize.GradientFeaturizer` loads over the model (and
    :func:`load_lora_state` restores).
    """
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if _is_lora(k)}
    if not state:
        raise TarotInputError("the model has no LoRA adapters (lora_A / lora_B weights); wrap it with add_lora")
    return state


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights (as :func:`lora_state` returns them) into ``model``, in place.

    Every adapter of the model must be given, and nothing else, with matching shapes.
    """
    own = {k: v for k, v in model.state_dict().items() if _is_lora(k)}
    if not own:
        raise TarotInputError("the model has no LoRA adapters (lora_A / lora_B weights); wrap it with add_lora")
    extra = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if extra or missing:
        raise TarotInputError(
            f"LoRA state does not fit the model: unexpected {extra[:3]}, missing {missing[:3]} "
            "(same base model, rank and target modules needed)"
        )
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise TarotInputError(
            f"LoRA state shape of {bad[0]} is {tuple(state[bad[0]].shape)}, the model's {tuple(own[bad[0]].shape)}"
        )
    model.load_state_dict(dict(state), strict=False)


# --------------------------------------------------------------------------- base training


def _token_stream(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """All ``texts`` tokenised and joined, each followed by the eos, as one 1-D int64 tensor."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor of 0-based ``step``: linear warm-up to 1, then a cosine to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def pretrain_base(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int = 16,
    block_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    warmup: int = 10,
    progress: bool = False,
) -> list[float]:
    """Train every weight of ``model`` for ``steps`` steps of next-token prediction on ``texts``.

    The texts are tokenised, each followed by the eos, and joined into one stream; every step
    takes ``batch_size`` windows of ``block_size + 1`` tokens at random offsets and minimises
    the mean cross-entropy :math:`-\\frac{1}{B L} \\sum_{b, t} \\log p(x_{b,t+1} \\mid x_{b, \\le t})`
    with AdamW (weight decay 0, gradient norm clipped to 1), the learning rate rising
    linearly over ``warmup`` steps, then decaying as a cosine to 0.

    Deterministic: the offsets come from a generator seeded with ``seed``, and torch's global
    generator is forked and seeded for the duration (nothing in the presets draws from it).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Trained in place on its own device; left in eval mode.
    tokenizer : PreTrainedTokenizerFast
    texts : sequence of str
        Generic text (needs at least ``block_size + 1`` tokens in all).
    steps, batch_size, block_size : int
    lr : float, default 3e-3
    seed : int, default 0
    warmup : int, default 10
    progress : bool, default False
        A tqdm bar over steps.

    Returns
    -------
    list of float
        The training loss of every step.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TarotInputError(f"pretrain_base: {name} must be a positive integer, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise TarotInputError(f"pretrain_base: lr must be a positive number, got {lr!r}")
    stream = _token_stream(tokenizer, texts)
    if len(stream) < block_size + 1:
        raise TarotInputError(f"pretrain_base: the texts have {len(stream)} tokens, fewer than block_size + 1")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(int(seed))
    window = torch.arange(block_size + 1)
    losses: list[float] = []
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            for step in tqdm(range(steps), desc="base training", unit="step", disable=not progress):
                scale = _schedule(step, steps, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr * scale
                starts = torch.randint(0, len(stream) - block_size, (batch_size,), generator=generator)
                chunk = stream[starts[:, None] + window].to(device)
                logits = model(input_ids=chunk[:, :-1]).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), chunk[:, 1:].reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        model.eval()
    logger.info("base training: %d steps, loss %.3f -> %.3f", steps, losses[0], losses[-1])
    return losses
