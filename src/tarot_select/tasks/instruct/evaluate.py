"""Evaluation of a causal LM on MMLU-style multiple choice and BBH-style exact match.

MMLU (Hendrycks et al., "Measuring Massive Multitask Language Understanding", ICLR 2021)
-----------------------------------------------------------------------------------------
For each question the few-shot prompt :func:`.records.mmlu_prompt` (ending ``"Answer:"``)
is scored against the four continuations ``" A"``, ``" B"``, ``" C"``, ``" D"``; the
prediction is the letter of largest log-likelihood
:math:`\\sum_j \\log p(c_j \\mid \\text{prompt}, c_{<j})` (with one token per letter, as for
Llama and Qwen tokenizers, that is the next-token distribution after the prompt; ties go to
the earlier letter). Prompt and continuation are tokenised separately and joined, as
evaluation harnesses do. Reported: accuracy over all questions, per subject, and ``n``.
A prompt too long for the model loses its last shots first (the official evaluation's rule),
then, at zero shots, its first tokens.

BBH (Suzgun et al., "Challenging BIG-Bench Tasks and Whether Chain-of-Thought Can Solve Them", 2022)
----------------------------------------------------------------------------------------------------
Greedy generation of at most ``max_new_tokens`` after :func:`.records.bbh_prompt` (the
task's chain-of-thought prompt when one is given), cut at the eos and at the first
``"\\nQ:"`` (the start of a question the model invents after its answer), then the answer
of :func:`.records.extract_bbh_answer`, compared to the target by exact string match.
Reported: exact match over all examples, per task, and ``n``.

Inputs go to the model right-padded and without an attention mask (causal attention: no
real token sees a pad, see :mod:`.encode`), except in ``transformers``' batched
``generate``, which pads on the left with a mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import torch
from torch import nn

from ...errors import TarotInputError
from .records import (
    ANSWER_LETTERS,
    ExactExample,
    MCQuestion,
    Message,
    bbh_prompt,
    chat_text,
    extract_bbh_answer,
    mmlu_prompt,
)

__all__ = [
    "bbh_chat_prompt",
    "bbh_exact_match",
    "chat_prompt",
    "greedy_generate",
    "mmlu_accuracy",
    "score_continuations",
]

logger = logging.getLogger(__name__)

#: Where a generation is cut: the model starting a new few-shot question.
STOP_MARKER: Final[str] = "\nQ:"


def _device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _max_len(model: nn.Module, max_len: int | None) -> int | None:
    if max_len is not None:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
            raise TarotInputError(f"max_len must be an integer >= 2, got {max_len!r}")
        return max_len
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TarotInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _ids(tokenizer: Any, text: str, bos: bool) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if bos and tokenizer.bos_token_id is not None:
        ids.insert(0, int(tokenizer.bos_token_id))
    return ids


def _padded(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out.to(device)


@torch.no_grad()
def score_continuations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """Log-likelihood of every continuation after every prompt, shape (n_prompts, n_continuations).

    ``out[i, c] = sum_j log p(cont_c[j] | prompt_i, cont_c[:j])``. When every continuation is
    one token, one forward pass per prompt serves all of them; otherwise each
    prompt + continuation is scored separately.

    Parameters
    ----------
    model : nn.Module
        ``model(input_ids=...)`` returns an object with ``logits`` (B, L, V).
    prompts : sequence of token-id lists, each non-empty
    continuations : sequence of token-id lists, each non-empty
    pad_id : int
    batch_size : int, default 8
        Sequences per forward pass.
    """
    batch_size = _check_batch_size(batch_size)
    if any(len(p) == 0 for p in prompts) or not continuations or any(len(c) == 0 for c in continuations):
        raise TarotInputError("prompts and continuations must be non-empty token lists")
    device = _device(model)
    out = torch.empty(len(prompts), len(continuations), dtype=torch.float64)
    if all(len(c) == 1 for c in continuations):
        first = torch.tensor([c[0] for c in continuations], dtype=torch.long)
        for start in range(0, len(prompts), batch_size):
            rows = prompts[start : start + batch_size]
            logits = model(input_ids=_padded(rows, pad_id, device)).logits
            last = torch.tensor([len(r) - 1 for r in rows], device=logits.device)
            logp = torch.log_softmax(logits[torch.arange(len(rows), device=logits.device), last].double(), dim=-1)
            out[start : start + len(rows)] = logp[:, first.to(logits.device)].cpu()
        return out
    pairs = [(i, c) for i in range(len(prompts)) for c in range(len(continuations))]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows = [list(prompts[i]) + list(continuations[c]) for i, c in chunk]
        logp = torch.log_softmax(model(input_ids=_padded(rows, pad_id, device)).logits.double(), dim=-1)
        for b, (i, c) in enumerate(chunk):
            n_p, cont = len(prompts[i]), torch.as_tensor(list(continuations[c]), device=logp.device)
            positions = torch.arange(n_p - 1, n_p - 1 + len(cont), device=logp.device)
            out[i, c] = logp[b, positions, cont].sum().cpu()
    return out


def chat_prompt(user: str, assistant_start: str = "") -> str:
    """``user`` as one user turn of the tulu template (:func:`.records.chat_text`), then the
    assistant tag and ``assistant_start``: what a model fine-tuned in that template continues
    (LESS's and open-instruct's ``use_chat_format`` evaluation)."""
    text, _ = chat_text([Message("user", user)])
    return text + "<|assistant|>\n" + assistant_start


def bbh_chat_prompt(example: ExactExample, cot_prompt: str | None) -> str:
    """BBH in the chat template: the user turn holds the CoT prompt and ``"Q: {input}"``, or
    the bare input without one (the form of the pool's and the targets' questions); the
    assistant turn is left to the model (a model tuned on chain-of-thought answers starts with
    ``"Let's think step by step."`` itself; a prefilled trigger would split its tokens differently)."""
    if cot_prompt is None:
        return chat_prompt(example.input)
    return chat_prompt(f"{cot_prompt}\n\nQ: {example.input}")


def _fit_mmlu_prompt(
    tokenizer: Any, question: MCQuestion, shots: Sequence[MCQuestion], limit: int | None, chat: bool = False
) -> list[int]:
    """Token ids of the MMLU prompt with as many shots as fit in ``limit`` tokens (last shots
    dropped first); with ``chat``, wrapped by :func:`chat_prompt`."""
    k = len(shots)
    while True:
        text = mmlu_prompt(question, shots[:k], question.subject)
        ids = _ids(tokenizer, chat_prompt(text) if chat else text, bos=True)
        if limit is None or len(ids) <= limit:
            return ids
        if k == 0:
            logger.debug(
                "MMLU question of %s: zero-shot prompt of %d tokens cut to %d", question.subject, len(ids), limit
            )
            return ids[-limit:]
        k -= 1


def _rate_by(groups: Sequence[str], right: Sequence[bool]) -> dict[str, float]:
    """The share of ``right`` answers within each group (subject or task), by sorted group name."""
    hits: dict[str, list[bool]] = {}
    for group, ok in zip(groups, right, strict=True):
        hits.setdefault(group, []).append(ok)
    return {g: sum(v) / len(v) for g, v in sorted(hits.items())}


def mmlu_accuracy(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[MCQuestion],
    few_shot_by_subject: Mapping[str, Sequence[MCQuestion]],
    batch_size: int = 8,
    max_len: int | None = None,
    chat: bool = False,
) -> dict[str, Any]:
    """MMLU accuracy by the log-likelihood of the answer letter (module docstring).

    Parameters
    ----------
    model : nn.Module
        A causal LM (eval mode is set and restored).
    tokenizer : PreTrainedTokenizerFast
    questions : sequence of MCQuestion
        The test questions.
    few_shot_by_subject : mapping of subject to MCQuestion list
        The answered shots of each subject (MMLU's ``dev`` split, 5 per subject); a subject
        missing here is asked zero-shot (with a warning).
    batch_size : int, default 8
    max_len : int, optional
        Longest sequence the model takes (default: its ``config.max_position_embeddings``, if any).
    chat : bool, default False
        Ask in the chat template (:func:`chat_prompt`: the prompt is the user turn, the
        answer the assistant's first token), scoring ``"A"`` .. ``"D"`` without the leading
        space; for models fine-tuned in that template (LESS's ``use_chat_format``).

    Returns
    -------
    dict
        ``accuracy`` (float in [0, 1]), ``per_subject`` ({subject: accuracy}), ``n`` (int),
        ``predictions`` (one letter per question, in order).
    """
    if not questions:
        raise TarotInputError("mmlu_accuracy needs at least one question")
    limit = _max_len(model, max_len)
    letters = [_ids(tokenizer, letter if chat else f" {letter}", bos=False) for letter in ANSWER_LETTERS]
    width = max(len(c) for c in letters)
    missing = sorted({q.subject for q in questions} - set(few_shot_by_subject))
    if missing:
        logger.warning(
            "MMLU: no few-shot examples for %d subjects (e.g. %s); asked zero-shot", len(missing), missing[0]
        )
    prompts = [
        _fit_mmlu_prompt(
            tokenizer,
            q,
            list(few_shot_by_subject.get(q.subject, ())),
            None if limit is None else limit - width,
            chat,
        )
        for q in questions
    ]
    was_training = model.training
    model.eval()
    try:
        scores = score_continuations(model, prompts, letters, tokenizer.pad_token_id, batch_size)
    finally:
        model.train(was_training)
    predictions = [ANSWER_LETTERS[int(i)] for i in scores.argmax(dim=1)]
    right = [p == q.answer for p, q in zip(predictions, questions, strict=True)]
    result = {
        "accuracy": sum(right) / len(right),
        "per_subject": _rate_by([q.subject for q in questions], right),
        "n": len(right),
        "predictions": predictions,
    }
    logger.info("MMLU accuracy %.4f over %d questions", result["accuracy"], result["n"])
    return result


# --------------------------------------------------------------------------- generation


def _is_hf_generator(model: nn.Module) -> bool:
    try:
        from transformers import GenerationMixin
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, GenerationMixin) or isinstance(getattr(model, "base_model", None), GenerationMixin)


@torch.no_grad()
def _greedy_loop(model: nn.Module, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Greedy decoding of one prompt by full forward passes (any model that returns logits)."""
    device = _device(model)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(model(input_ids=ids).logits[0, -1].argmax())
        if nxt == eos_id:
            break
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], dtype=torch.long, device=device)], dim=1)
    return new


@torch.no_grad()
def _greedy_hf(
    model: nn.Module, prompts: Sequence[list[int]], max_new_tokens: int, eos_id: int, pad_id: int
) -> list[list[int]]:
    """Greedy decoding of a batch with ``transformers``' ``generate`` (left padding, KV cache)."""
    device = _device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    result = []
    for row in out[:, width:].tolist():
        cut = row.index(eos_id) if eos_id in row else len(row)
        result.append(row[:cut])
    return result


def greedy_generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    max_len: int | None = None,
    engine: str = "auto",
) -> list[str]:
    """Greedy continuations of ``prompts``, decoded, without the eos and what follows it.

    Parameters
    ----------
    model : nn.Module
    tokenizer : PreTrainedTokenizerFast
    prompts : sequence of str
    max_new_tokens : int
    batch_size : int, default 8
        Prompts per ``generate`` call.
    max_len : int, optional
        Longest sequence (prompt + generation) the model takes; a longer prompt loses its
        first tokens. Default: the model's ``config.max_position_embeddings``, if any.
    engine : {"auto", "generate", "loop"}, default "auto"
        ``"generate"``: ``transformers``' batched ``generate`` (left padding, KV cache);
        ``"loop"``: one prompt at a time by full forward passes (any module returning
        ``logits``); ``"auto"``: ``generate`` when the model has it.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise TarotInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if engine not in ("auto", "generate", "loop"):
        raise TarotInputError(f"unknown generation engine {engine!r}; one of auto, generate, loop")
    batch_size = _check_batch_size(batch_size)
    limit = _max_len(model, max_len)
    if limit is not None and limit <= max_new_tokens:
        raise TarotInputError(f"max_len {limit} leaves no room for a prompt before {max_new_tokens} new tokens")
    encoded = [_ids(tokenizer, p, bos=True) for p in prompts]
    if limit is not None:
        encoded = [ids[-(limit - max_new_tokens) :] for ids in encoded]
    use_hf = engine == "generate" or (engine == "auto" and _is_hf_generator(model))
    eos_id, pad_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    try:
        if use_hf:
            new = []
            for start in range(0, len(encoded), batch_size):
                new.extend(_greedy_hf(model, encoded[start : start + batch_size], max_new_tokens, eos_id, pad_id))
        else:
            new = [_greedy_loop(model, ids, max_new_tokens, eos_id) for ids in encoded]
    finally:
        model.train(was_training)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]


def bbh_exact_match(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[ExactExample],
    cot_prompts: Mapping[str, str] | None,
    max_new_tokens: int,
    batch_size: int = 8,
    max_len: int | None = None,
    chat: bool = False,
) -> dict[str, Any]:
    """BBH exact match of greedy generations (module docstring).

    Parameters
    ----------
    model : nn.Module
    tokenizer : PreTrainedTokenizerFast
    examples : sequence of ExactExample
    cot_prompts : mapping of task to prompt text, or None
        A task's chain-of-thought prompt (its ``cot-prompts/<task>.txt``); a task missing here
        (or ``None``: every task) is asked directly, ``"Q: {input}\\nA:"``.
    max_new_tokens : int
    batch_size : int, default 8
    max_len : int, optional
        As in :func:`greedy_generate`.
    chat : bool, default False
        Ask in the chat template (:func:`bbh_chat_prompt`); the answer is then read after
        the last ``"So the answer is "`` whenever the generation has one.

    Returns
    -------
    dict
        ``exact_match`` (float in [0, 1]), ``per_task`` ({task: exact match}), ``n`` (int),
        ``predictions`` (the extracted answers, in order).
    """
    if not examples:
        raise TarotInputError("bbh_exact_match needs at least one example")
    cots = dict(cot_prompts or {})
    make = bbh_chat_prompt if chat else bbh_prompt
    prompts = [make(ex, cots.get(ex.task)) for ex in examples]
    generations = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size, max_len)
    predictions = [
        extract_bbh_answer(gen.split(STOP_MARKER, 1)[0], chat or ex.task in cots)
        for gen, ex in zip(generations, examples, strict=True)
    ]
    right = [p == ex.target.strip() for p, ex in zip(predictions, examples, strict=True)]
    result = {
        "exact_match": sum(right) / len(right),
        "per_task": _rate_by([ex.task for ex in examples], right),
        "n": len(right),
        "predictions": predictions,
    }
    logger.info("BBH exact match %.4f over %d examples", result["exact_match"], result["n"])
    return result
