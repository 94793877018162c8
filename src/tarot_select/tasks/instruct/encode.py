"""Conversations as token tensors, padded batches, and the response-only causal-LM loss.

A conversation is written in the tulu chat template (:func:`.records.chat_text`) and
tokenised; the loss is over the tokens of the assistant contents and their eos only, as in
LESS (Xia et al., "LESS: Selecting Influential Data for Targeted Instruction Tuning",
ICML 2024) and its training code. With ``r_t = 1`` for a response token ``t`` (0 else),
the loss of one sequence ``x`` is the mean next-token cross-entropy over response tokens

.. math::

    \\ell(x) = \\frac{\\sum_{t \\ge 1} r_t \\, (-\\log p_\\theta(x_t \\mid x_{<t}))}{\\sum_{t \\ge 1} r_t},

and a training batch averages over all its response tokens (:func:`batch_loss`, the token
mean of ``transformers``' own loss).

Truncation
----------
Tokens after the last response token are dropped first: a causal model's predictions of
earlier tokens do not depend on them, so the loss and its gradient are unchanged. If the
sequence is still longer than ``max_len``, its *first* tokens are dropped (left
truncation). So the last response and its eos always survive and every encoded sample has
loss tokens (open-instruct, which LESS uses, cuts on the right instead, where a long prompt
can leave a sample with no loss token at all, a zero gradient that is then selected or not
for no reason).

Padding
-------
:func:`collate` pads on the right. The loss functions do not pass the attention mask to the
model: with causal attention no real token attends to a later position, so right padding
cannot change the logits of real tokens (their positions are the same too), and pads carry
label ``-100``. Leaving the mask out also keeps ``transformers`` from building it with the
data-dependent control flow that :func:`torch.func.vmap` refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import TarotInputError
from .records import Conversation, chat_text

__all__ = ["IGNORE_INDEX", "KEYS", "batch_loss", "collate", "encode_conversation", "lm_loss", "response_nll"]

logger = logging.getLogger(__name__)

#: Label of tokens outside the loss (the convention of ``transformers`` and torch).
IGNORE_INDEX: Final[int] = -100
#: Keys of an encoded sample and of a batch.
KEYS: Final[tuple[str, ...]] = ("input_ids", "labels", "attention_mask")


def encode_conversation(conv: Conversation, tokenizer: Any, max_len: int) -> dict[str, torch.Tensor]:
    """Token ids, loss labels and attention mask of one conversation.

    The text is ``chat_text(conv.messages, tokenizer.eos_token)``, tokenised without added
    special tokens (the tokenizer's bos, if it has one, is put first, as a plain
    ``tokenizer(text)`` would for Llama). A token is a response token when its first
    character lies in one of the assistant spans ``chat_text`` returns (the content and its
    eos). Truncation: see the module docstring (trailing non-response tokens, then from the left).

    Parameters
    ----------
    conv : Conversation
        Must have at least one assistant turn.
    tokenizer : transformers.PreTrainedTokenizerFast
        A fast tokenizer (offsets are needed) with an eos token.
    max_len : int
        Longest encoded sequence, >= 2.

    Returns
    -------
    dict of str to torch.Tensor
        ``input_ids`` (L,) int64, ``labels`` (L,) int64 (the token id on response tokens,
        ``-100`` elsewhere), ``attention_mask`` (L,) int64 ones, with ``L <= max_len``.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise TarotInputError(f"max_len must be an integer >= 2, got {max_len!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise TarotInputError("encode_conversation needs a fast tokenizer (character offsets of tokens)")
    if tokenizer.eos_token is None:
        raise TarotInputError("the tokenizer has no eos token; responses must end with one")
    if not any(m.role == "assistant" for m in conv.messages):
        raise TarotInputError(f"conversation {conv.dataset}/{conv.id} has no assistant turn, so no loss tokens")
    text, spans = chat_text(conv.messages, tokenizer.eos_token)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    in_response = [any(s <= start < e for s, e in spans) for start, _ in enc["offset_mapping"]]
    if tokenizer.bos_token_id is not None:
        ids.insert(0, int(tokenizer.bos_token_id))
        in_response.insert(0, False)
    if not any(in_response):
        raise TarotInputError(f"conversation {conv.dataset}/{conv.id}: the assistant turns encode to no token")
    last = max(i for i, r in enumerate(in_response) if r)
    ids, in_response = ids[: last + 1], in_response[: last + 1]
    if len(ids) > max_len:
        logger.debug("conversation %s/%s: %d tokens, keeping the last %d", conv.dataset, conv.id, len(ids), max_len)
        ids, in_response = ids[-max_len:], in_response[-max_len:]
    input_ids = torch.tensor(ids, dtype=torch.long)
    labels = torch.where(torch.tensor(in_response), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids)}


def collate(batch: Sequence[Mapping[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded samples to the longest one of the batch.

    Parameters
    ----------
    batch : sequence of dict
        Samples of :func:`encode_conversation` (1-D tensors or lists under :data:`KEYS`).
    pad_id : int
        Token id put in ``input_ids`` after each sample's end.

    Returns
    -------
    dict of str to torch.Tensor
        ``input_ids`` (B, L) padded with ``pad_id``, ``labels`` (B, L) with ``-100``,
        ``attention_mask`` (B, L) with 0, ``L`` = the longest sample's length.
    """
    if not batch:
        raise TarotInputError("cannot collate an empty batch")
    rows = []
    for i, sample in enumerate(batch):
        missing = [k for k in KEYS if k not in sample]
        if missing:
            raise TarotInputError(f"sample {i} of the batch lacks {missing}; encode it with encode_conversation")
        row = {k: torch.as_tensor(sample[k], dtype=torch.long) for k in KEYS}
        lengths = {tuple(v.shape) for v in row.values()}
        if len(lengths) != 1 or row["input_ids"].ndim != 1:
            raise TarotInputError(f"sample {i}: input_ids, labels and attention_mask must be 1-D of one length")
        rows.append(row)
    width = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": int(pad_id), "labels": IGNORE_INDEX, "attention_mask": 0}
    out = {k: torch.full((len(rows), width), fill[k], dtype=torch.long) for k in KEYS}
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        for k in KEYS:
            out[k][i, :n] = r[k]
    return out


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood over response tokens, and their number, per row.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, L, V)
        Position ``t`` predicts token ``t + 1``.
    labels : torch.Tensor, shape (B, L)
        Token ids on loss tokens, ``-100`` elsewhere (position 0 is never predicted).

    Returns
    -------
    (torch.Tensor, torch.Tensor), shapes (B,) and (B,)
        :math:`\\sum_{t \\ge 1} r_t (-\\log p(x_t \\mid x_{<t}))` in float32 (or wider), and
        :math:`\\sum_{t \\ge 1} r_t`. No data-dependent control flow (runs under ``vmap``).
    """
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, torch.where(valid, target, torch.zeros_like(target)).unsqueeze(-1)).squeeze(-1)
    return -(picked * valid).sum(dim=1), valid.sum(dim=1)


def lm_loss(forward: Callable[..., Any], sample: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample loss in the protocol of :mod:`tarot_select.gradients`: mean response-token NLL.

    ``sample`` is one padded sample as a batch of size 1 (``input_ids`` and ``labels`` of
    shape (1, L)); ``forward(input_ids=...)`` returns an object with ``logits`` (1, L, V).
    The attention mask is not passed (module docstring: right padding cannot change the
    logits of real tokens), so the value and its gradient do not depend on the padding.
    Runs under :func:`torch.func.vmap` with eager attention.

    Returns
    -------
    torch.Tensor, shape ()
        :math:`\\ell(x)` of the module docstring (0 if the sample had no loss token).
    """
    out = forward(input_ids=sample["input_ids"])
    total, count = response_nll(out.logits, sample["labels"])
    return (total / count.clamp(min=1)).sum()


def batch_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], per_sample: bool = False) -> torch.Tensor:
    """The response-token loss of a padded batch (training and held-out losses).

    Parameters
    ----------
    model : nn.Module
        Returns an object with ``logits`` from ``model(input_ids=...)``.
    batch : dict
        :func:`collate`'s output, on the model's device.
    per_sample : bool, default False
        False: the token mean over the whole batch (sum of NLLs / number of response
        tokens), the training loss. True: each sample's :func:`lm_loss`, shape (B,).

    Returns
    -------
    torch.Tensor, shape () or (B,)
    """
    out = model(input_ids=batch["input_ids"])
    total, count = response_nll(out.logits, batch["labels"])
    if per_sample:
        return total / count.clamp(min=1)
    return total.sum() / count.sum().clamp(min=1)
