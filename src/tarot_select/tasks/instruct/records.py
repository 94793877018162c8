"""Records and prompt formats of the instruction-tuning task (plain frozen dataclasses, no torch).

Records
-------
:class:`Message`, :class:`Conversation`
    One record of LESS's instruction pool (Xia et al., "LESS: Selecting Influential Data for
    Targeted Instruction Tuning", ICML 2024): a JSON object with ``dataset``, ``id`` and
    ``messages`` (a list of ``{"role", "content"}`` turns, roles ``system``/``user``/``assistant``).
:class:`MCQuestion`
    One row of MMLU (Hendrycks et al., "Measuring Massive Multitask Language Understanding",
    ICLR 2021): a question, four choices and the answer letter, with its subject.
:class:`ExactExample`
    One example of BIG-Bench Hard (Suzgun et al., "Challenging BIG-Bench Tasks and Whether
    Chain-of-Thought Can Solve Them", 2022): an input and the exact target string.
:class:`TargetExample`
    A few-shot target example turned into a one-turn conversation, with its suite (``mmlu``
    or ``bbh``) and subtask (subject or task) label; LESS's target features are loss
    gradients of these conversations.

Prompt formats
--------------
:func:`chat_text`
    The tulu template LESS trains with::

        <|system|>\\n{content}\\n          (system turn)
        <|user|>\\n{content}\\n            (user turn)
        <|assistant|>\\n{content}{eos}\\n  (assistant turn)

    Contents are stripped of surrounding white space (as LESS's encoder does). It returns the
    text and the character spans ``[start, end)`` of every assistant content *with* its eos,
    the characters whose tokens the loss is over.
:func:`mmlu_prompt`
    MMLU's few-shot prompt (the official evaluation's format): a header naming the subject
    (underscores as spaces), the shots with their answers, then the question ending in
    ``"Answer:"``; scored by the log-likelihood of ``" A"``, ``" B"``, ``" C"``, ``" D"``.
:func:`bbh_prompt`, :func:`extract_bbh_answer`
    BBH's prompt (the chain-of-thought prompt file, then ``Q: {input}`` and ``A: Let's think
    step by step.``, or the bare ``Q: {input}\\nA:`` without one) and the answer read from a
    greedy generation (after the last ``"So the answer is "`` with CoT, else the first line;
    stripped, one trailing ``"."`` removed), compared by exact match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ...errors import TarotInputError

__all__ = [
    "ANSWER_LETTERS",
    "ANSWER_MARKER",
    "COT_TRIGGER",
    "ROLES",
    "Conversation",
    "ExactExample",
    "MCQuestion",
    "Message",
    "TargetExample",
    "bbh_prompt",
    "chat_text",
    "extract_bbh_answer",
    "format_mc_question",
    "mmlu_header",
    "mmlu_prompt",
]

#: Roles of a LESS message.
ROLES: Final[tuple[str, ...]] = ("system", "user", "assistant")
#: MMLU's answer letters, in the order of the choices.
ANSWER_LETTERS: Final[str] = "ABCD"
#: What BBH's chain-of-thought answers end with, before the answer.
ANSWER_MARKER: Final[str] = "So the answer is "
#: What BBH's chain-of-thought prompt puts after ``A:``.
COT_TRIGGER: Final[str] = "Let's think step by step."

_ROLE_TAGS: Final[dict[str, str]] = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}


@dataclass(frozen=True)
class Message:
    """One turn of a conversation: ``role`` in :data:`ROLES` and its text."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise TarotInputError(f"message role {self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise TarotInputError(f"message content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class Conversation:
    """One LESS JSONL record: the source ``dataset``, its ``id`` and the turns."""

    dataset: str
    id: str
    messages: tuple[Message, ...]

    def to_json(self) -> dict[str, object]:
        """The record as LESS writes it: ``{"dataset", "id", "messages": [{"role", "content"}, ...]}``."""
        return {
            "dataset": self.dataset,
            "id": self.id,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
        }

    @property
    def has_assistant(self) -> bool:
        """Whether any turn is the assistant's (a record without one has no loss tokens)."""
        return any(m.role == "assistant" for m in self.messages)


@dataclass(frozen=True)
class MCQuestion:
    """One MMLU question: four ``choices`` and the ``answer`` letter (one of ``"ABCD"``)."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str

    def __post_init__(self) -> None:
        if len(self.choices) != 4:
            raise TarotInputError(f"MMLU question in {self.subject!r} has {len(self.choices)} choices, expected 4")
        if len(self.answer) != 1 or self.answer not in ANSWER_LETTERS:
            raise TarotInputError(f"MMLU answer {self.answer!r} in {self.subject!r} is not one of A, B, C, D")

    @property
    def answer_index(self) -> int:
        """Index ``0..3`` of the right choice."""
        return ANSWER_LETTERS.index(self.answer)

    @property
    def answer_text(self) -> str:
        """The right choice's text."""
        return self.choices[self.answer_index]


@dataclass(frozen=True)
class ExactExample:
    """One BBH example of ``task``: the ``input`` and the exact ``target`` answer."""

    task: str
    input: str
    target: str


@dataclass(frozen=True)
class TargetExample:
    """A few-shot target example as a one-turn conversation, with its suite and subtask label."""

    suite: str
    subtask: str
    conversation: Conversation


def chat_text(messages: Sequence[Message], tokenizer_eos: str = "</s>") -> tuple[str, list[tuple[int, int]]]:
    """The tulu-style chat text of ``messages`` and the spans of the assistant contents.

    Parameters
    ----------
    messages
        The turns, in order.
    tokenizer_eos
        The tokenizer's end-of-sequence string, appended to every assistant content.

    Returns
    -------
    text
        ``"".join(tag(role) + content.strip() + (eos if assistant) + "\\n")``.
    spans
        ``[(start, end), ...]``, one per assistant turn: ``text[start:end]`` is its stripped
        content followed by ``tokenizer_eos`` (the role tag and the final newline are outside).
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for msg in messages:
        if msg.role not in _ROLE_TAGS:
            raise TarotInputError(f"message role {msg.role!r} is not one of {', '.join(ROLES)}")
        tag = _ROLE_TAGS[msg.role]
        body = msg.content.strip()
        if msg.role == "assistant":
            body += tokenizer_eos
            spans.append((pos + len(tag), pos + len(tag) + len(body)))
        piece = tag + body + "\n"
        parts.append(piece)
        pos += len(piece)
    return "".join(parts), spans


def mmlu_header(subject: str) -> str:
    """``"The following are multiple choice questions (with answers) about {subject}.\\n\\n"``, with
    underscores of the subject written as spaces (``high_school_physics`` -> ``high school physics``)."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def format_mc_question(question: MCQuestion, with_answer: bool) -> str:
    """``"{q}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:"``, followed by ``" X\\n\\n"`` if ``with_answer``."""
    lines = [question.question]
    lines += [f"{letter}. {choice}" for letter, choice in zip(ANSWER_LETTERS, question.choices, strict=True)]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {question.answer}\n\n" if with_answer else text


def mmlu_prompt(question: MCQuestion, few_shot: Sequence[MCQuestion], subject: str) -> str:
    """MMLU's few-shot prompt for ``question``: header, the answered shots, the question ending ``"Answer:"``.

    The model's choice is the letter ``X`` with the highest log-likelihood of ``" X"`` after it.
    """
    return (
        mmlu_header(subject)
        + "".join(format_mc_question(q, True) for q in few_shot)
        + format_mc_question(question, False)
    )


def bbh_prompt(example: ExactExample, cot_prompt: str | None) -> str:
    """BBH's prompt for ``example``.

    With a chain-of-thought prompt: ``cot_prompt + "\\n\\nQ: {input}\\nA: Let's think step by step."``;
    without one: ``"Q: {input}\\nA:"``.
    """
    if cot_prompt is None:
        return f"Q: {example.input}\nA:"
    return f"{cot_prompt}\n\nQ: {example.input}\nA: {COT_TRIGGER}"


def extract_bbh_answer(generation: str, cot: bool) -> str:
    """The answer in a BBH generation.

    With ``cot``, the text after the last :data:`ANSWER_MARKER` up to the end of its line
    (the whole first line of the generation if the marker is missing); without, the first
    line. Stripped, then one trailing ``"."`` removed.
    """
    text = generation
    if cot and ANSWER_MARKER in text:
        text = text.rsplit(ANSWER_MARKER, 1)[1]
    text = text.strip().split("\n", 1)[0].strip() if text.strip() else ""
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text
