"""LoRA instruction tuning: LESS's pool (Flan V2, CoT, Dolly, Open Assistant 1) -> MMLU and BBH,
with transfer across model families (TAROT §5.4, Table 2), and a mini version with tiny
language models trained for real on a CPU.

Data (key ``dataset``)
----------------------
``synthetic`` (default)
    :mod:`.synthetic` writes a generated pool in **LESS's JSONL layout** (four sources of
    distinct styles, one of them partly harmful) and two target suites in **MMLU's CSV** and
    **BBH's JSON** layouts; everything is read back through the real readers (:mod:`.formats`).
    ``prepare`` also trains a byte-level BPE tokenizer (``vocab_size``) and pre-trains a tiny
    base model per preset used (:data:`.lm.PRESETS`; ``base``) on generic text.
``less``
    Your folders: ``pool`` (the LESS JSONL files), ``mmlu_root``, ``bbh_root``, and local
    model folders (``proxy.model.path``, optionally ``downstream.model.path`` and
    ``downstream.also_transfer.path``; each holds its tokenizer). Nothing is downloaded.

Target sets (``targets: [mmlu, bbh]``): each is a workflow unit ``<task>-mmlu``,
``<task>-bbh``; the pool, the proxy and the candidate gradients are shared. Targets are the
few-shot examples (MMLU: 5 dev questions per subject; BBH: the 3 CoT exemplars per task) as
one-turn conversations; their subtask labels are ``TaskData.target_groups`` (LESS uses them,
TAROT does not). The evaluation split is the suite's test set.

Proxy (LESS, Xia et al., ICML 2024)
-----------------------------------
LoRA (Hu et al., ICLR 2022; ``proxy.lora``) on the proxy model, warmed up for ``proxy.epochs``
epochs on a seeded random ``proxy.warmup_fraction`` (5 %) of the pool; after each epoch a
checkpoint holds **only the LoRA state** and the AdamW state of the adapters (LESS's
Adam-preconditioned candidate features), weighted by the epoch's mean learning rate. Features
are gradients of the LoRA weights only: they are the proxy's only trainable parameters, so
``features.params: null`` selects exactly them. Loss: :func:`.encode.lm_loss` (response tokens).

Downstream
----------
LoRA fine-tuning of the downstream model (default: the proxy's model, the paper's main column)
on each selection (repeat counts / masses honoured); ``downstream.also_transfer`` trains a
second model (another family: the transfer column) on the same selection. Metrics (%, higher
is better): ``mmlu_accuracy`` (few-shot with the dev questions, answer-letter log-likelihood;
Hendrycks et al., ICLR 2021) for unit ``mmlu``, ``bbh_exact_match`` (greedy generation with the
chain-of-thought prompts; Suzgun et al., 2022) for unit ``bbh``, per-subtask values
(``mmlu_accuracy.<subject>``, ``bbh_exact_match.<task>``) and ``transfer_<metric>``.
No LDS benchmark for this task (``model_outputs=False``).

Settings (:class:`~.settings.InstructSettings`, every key in ``config/tasks/instruct.yaml``).
"""

from __future__ import annotations

from ..registry import TaskSpec
from .settings import InstructSettings

__all__ = ["SPEC"]

SPEC = TaskSpec(
    kind="instruct",
    settings=InstructSettings,
    task="tarot_select.tasks.instruct.task:InstructTask",
    model_outputs=False,
    summary="LoRA instruction tuning, LESS pool -> MMLU / BBH, transfer across families (TAROT Table 2)",
)
