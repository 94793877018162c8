"""Readers and writers of the instruction-tuning data in their real layouts, and the few-shot targets.

Layouts
-------
LESS instruction pool (Xia et al., ICML 2024; as ``data/train/processed/<name>/<name>_data.jsonl``)::

    {"dataset": "flan_v2", "id": "flan_v2_0", "messages": [{"role": "user", "content": "..."},
                                                          {"role": "assistant", "content": "..."}]}

one JSON object per line; blank lines are allowed. :func:`read_less_jsonl` takes one file, several
files, or a folder (every ``*.jsonl`` below it, sorted by path). A line that is not JSON, not an
object, lacks a key, or has a message without a string ``role`` in ``system``/``user``/``assistant``
and a string ``content`` raises :class:`~tarot_select.errors.TarotInputError` naming the file and
line. A well-formed record that cannot be trained on (empty ``messages``, or no assistant turn with
non-blank content: it has no loss tokens and so no gradient) is **skipped by default**, with one
logged warning per file giving the count and the first line numbers; ``unusable="error"`` refuses
it instead, naming file and line.

MMLU (Hendrycks et al., ICLR 2021; the official ``data/`` folder)::

    <root>/dev/<subject>_dev.csv      5 few-shot examples per subject
    <root>/test/<subject>_test.csv    the test questions
    <root>/val/<subject>_val.csv      optional

CSV without a header, six fields per row (question, A, B, C, D, answer), fields may hold commas,
quotes and newlines (standard CSV quoting); the answer is one of ``A``, ``B``, ``C``, ``D``
(surrounding white space ignored); the subject is the file name without ``_<split>.csv``.

BIG-Bench Hard (Suzgun et al., 2022; the ``suzgun/BIG-Bench-Hard`` layout)::

    <root>/bbh/<task>.json            {"examples": [{"input": "...", "target": "..."}, ...]}
    <root>/cot-prompts/<task>.txt     optional chain-of-thought prompt

A prompt file may start with a canary line and a line of dashes (as the official files do);
everything up to and including that dash line is dropped. The rest is a task description and
exemplar blocks ``"Q: {input}\\nA: Let's think step by step.\\n... So the answer is X."``, separated
by blank lines. The prompt text (:attr:`BBHSuite.cot_prompts`) is that rest, stripped.

Targets
-------
LESS selects for the few-shot examples of the evaluation suites, each a one-turn conversation with
its subtask label (:class:`~.records.TargetExample`):

MMLU (:func:`mmlu_targets`)
    the first ``k`` (5) dev questions of each subject; user: :func:`~.records.mmlu_header` plus the
    question with its choices ending ``"Answer:"``; assistant: the answer letter. Subtask: subject.
BBH (:func:`bbh_targets`)
    ``k`` (3) exemplars per task; from the CoT prompt when the task has one (user: the exemplar's
    question, assistant: its rationale ending ``"So the answer is X."``), else the first ``k``
    examples of ``bbh/<task>.json`` (assistant: the target). The test set is the task's examples
    without those used as targets (a CoT exemplar whose input also appears in the JSON is removed too).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from ...errors import TarotInputError
from ...io import atomic_path
from .records import (
    ANSWER_LETTERS,
    ANSWER_MARKER,
    ROLES,
    Conversation,
    ExactExample,
    MCQuestion,
    Message,
    TargetExample,
    format_mc_question,
    mmlu_header,
)

__all__ = [
    "BBH_TARGET_SHOTS",
    "MMLU_SPLITS",
    "MMLU_TARGET_SHOTS",
    "BBHSuite",
    "CotExemplar",
    "MMLUSuite",
    "bbh_targets",
    "list_jsonl_files",
    "mmlu_targets",
    "parse_cot_prompt",
    "parse_less_record",
    "read_bbh",
    "read_less_jsonl",
    "read_mmlu",
    "read_mmlu_split",
    "write_bbh_task",
    "write_cot_prompt",
    "write_less_jsonl",
    "write_mmlu_split",
]

logger = logging.getLogger(__name__)

#: MMLU's splits, in the order they are listed; ``val`` is optional.
MMLU_SPLITS: Final[tuple[str, ...]] = ("dev", "test", "val")
#: Few-shot examples per MMLU subject (LESS, after MMLU's 5-shot evaluation).
MMLU_TARGET_SHOTS: Final[int] = 5
#: Few-shot examples per BBH task (the three exemplars of its CoT prompt).
BBH_TARGET_SHOTS: Final[int] = 3

_MMLU_FIELDS: Final[int] = 6
_SHOWN_LINES: Final[int] = 5
_DASH_LINE: Final[re.Pattern[str]] = re.compile(r"^-{3,}\s*$")
_EXEMPLAR_SPLIT: Final[re.Pattern[str]] = re.compile(r"\n\s*\n(?=Q:)")


# --------------------------------------------------------------------------- LESS JSONL


def list_jsonl_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The JSONL files named by ``paths``: files as given, folders as every ``*.jsonl`` below them (sorted).

    Raises
    ------
    TarotInputError
        A path that does not exist, or no ``.jsonl`` file at all.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise TarotInputError("no LESS JSONL path given: name a .jsonl file or a folder holding them")
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.jsonl") if f.is_file())
            if not found:
                raise TarotInputError(f"{p}: no .jsonl files in this folder (LESS pool files are <name>_data.jsonl)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise TarotInputError(f"{p}: LESS JSONL file or folder not found")
    return files


def _field(obj: Mapping[str, object], key: str, where: str) -> object:
    if key not in obj:
        raise TarotInputError(f"{where}: record has no {key!r} key (LESS records have 'dataset', 'id', 'messages')")
    return obj[key]


def parse_less_record(line: str, where: str = "<line>") -> Conversation:
    """One LESS JSONL line as a :class:`~.records.Conversation` (``where`` names it in errors).

    ``dataset`` and ``id`` are read as strings (a numeric id is converted); every message must be
    an object with a ``role`` in ``system``/``user``/``assistant`` and a string ``content``.
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TarotInputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise TarotInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    dataset = _field(obj, "dataset", where)
    rec_id = _field(obj, "id", where)
    raw = _field(obj, "messages", where)
    if not isinstance(dataset, str) or not isinstance(rec_id, (str, int)) or isinstance(rec_id, bool):
        raise TarotInputError(f"{where}: 'dataset' must be a string and 'id' a string or integer")
    if not isinstance(raw, list):
        raise TarotInputError(f"{where}: 'messages' must be a list of {{'role', 'content'}} objects")
    messages: list[Message] = []
    for k, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TarotInputError(f"{where}: message {k} must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise TarotInputError(f"{where}: message {k} has role {m['role']!r}, expected one of {', '.join(ROLES)}")
        messages.append(Message(m["role"], m["content"]))
    return Conversation(dataset=dataset, id=str(rec_id), messages=tuple(messages))


def _usable(conv: Conversation) -> bool:
    return any(m.role == "assistant" and m.content.strip() for m in conv.messages)


def read_less_jsonl(
    paths: str | Path | Sequence[str | Path], unusable: Literal["skip", "error"] = "skip"
) -> list[Conversation]:
    """Read LESS instruction records from one or several JSONL files or folders, in file and line order.

    Parameters
    ----------
    paths
        A ``.jsonl`` file, a folder (every ``*.jsonl`` below it, sorted), or a list of them.
    unusable
        What to do with a record with empty ``messages`` or no non-blank assistant turn:
        ``"skip"`` (default; one warning per file with the count) or ``"error"``.

    Returns
    -------
    list of Conversation
        The usable records.

    Raises
    ------
    TarotInputError
        A missing path, no JSONL files, a malformed line (file and line number named), or an
        unusable record with ``unusable="error"``.
    """
    if unusable not in ("skip", "error"):
        raise TarotInputError(f"unusable={unusable!r}: expected 'skip' or 'error'")
    out: list[Conversation] = []
    for path in list_jsonl_files(paths):
        skipped: list[int] = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                conv = parse_less_record(line, where)
                if not _usable(conv):
                    if unusable == "error":
                        what = "has no messages" if not conv.messages else "has no non-blank assistant turn"
                        raise TarotInputError(f"{where}: record {conv.id!r} {what}; remove it or read with skip")
                    skipped.append(lineno)
                    continue
                out.append(conv)
        if skipped:
            shown = ", ".join(map(str, skipped[:_SHOWN_LINES])) + (", ..." if len(skipped) > _SHOWN_LINES else "")
            logger.warning("%s: skipped %d record(s) without an assistant answer (lines %s)", path, len(skipped), shown)
    return out


def write_less_jsonl(path: str | Path, conversations: Iterable[Conversation]) -> Path:
    """Write ``conversations`` as LESS JSONL (one object per line, UTF-8, not ASCII-escaped), atomically."""
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(conv.to_json(), ensure_ascii=False) + "\n" for conv in conversations)
    return target


# --------------------------------------------------------------------------- MMLU


@dataclass(frozen=True)
class MMLUSuite:
    """MMLU questions by split and subject: ``dev[subject]``, ``test[subject]``, ``val`` (empty if absent)."""

    dev: dict[str, list[MCQuestion]]
    test: dict[str, list[MCQuestion]]
    val: dict[str, list[MCQuestion]] = field(default_factory=dict)

    @property
    def subjects(self) -> list[str]:
        """Subjects with test questions, sorted."""
        return sorted(self.test)


def read_mmlu_split(root: str | Path, split: str) -> dict[str, list[MCQuestion]]:
    """The questions of ``<root>/<split>/<subject>_<split>.csv`` by subject (subjects sorted, rows in file order).

    Raises
    ------
    TarotInputError
        A missing folder, no ``*_<split>.csv`` file, a row without exactly six fields or with an
        answer that is not A-D (file and row named).
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise TarotInputError(
            f"{folder}: MMLU {split} folder not found (expected <root>/{split}/<subject>_{split}.csv)"
        )
    suffix = f"_{split}.csv"
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix))
    if not files:
        raise TarotInputError(f"{folder}: no <subject>{suffix} files in the MMLU {split} folder")
    out: dict[str, list[MCQuestion]] = {}
    for path in files:
        subject = path.name[: -len(suffix)]
        if not subject:
            raise TarotInputError(f"{path}: file name has no subject before {suffix!r}")
        rows: list[MCQuestion] = []
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            for n, row in enumerate(reader, start=1):
                where = f"{path}: row {n} (line {reader.line_num})"
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != _MMLU_FIELDS:
                    raise TarotInputError(
                        f"{where}: {len(row)} fields, expected 6 (question, A, B, C, D, answer; no header)"
                    )
                answer = row[5].strip()
                if len(answer) != 1 or answer not in ANSWER_LETTERS:
                    raise TarotInputError(f"{where}: answer {row[5]!r} is not one of A, B, C, D")
                rows.append(MCQuestion(subject, row[0], (row[1], row[2], row[3], row[4]), answer))
        if not rows:
            raise TarotInputError(f"{path}: no questions in this MMLU file")
        out[subject] = rows
    return out


def read_mmlu(root: str | Path) -> MMLUSuite:
    """Read an MMLU folder: ``dev`` and ``test`` required, ``val`` if present."""
    base = Path(root)
    if not base.is_dir():
        raise TarotInputError(f"{base}: MMLU folder not found (it should hold dev/ and test/)")
    val = read_mmlu_split(base, "val") if (base / "val").is_dir() else {}
    return MMLUSuite(dev=read_mmlu_split(base, "dev"), test=read_mmlu_split(base, "test"), val=val)


def write_mmlu_split(root: str | Path, split: str, questions: Mapping[str, Sequence[MCQuestion]]) -> list[Path]:
    """Write ``<root>/<split>/<subject>_<split>.csv`` for every subject (headerless CSV, six fields)."""
    paths: list[Path] = []
    for subject, rows in sorted(questions.items()):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for q in rows:
            writer.writerow([q.question, *q.choices, q.answer])
        path = Path(root) / split / f"{subject}_{split}.csv"
        with atomic_path(path) as tmp:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
        paths.append(path)
    return paths


def mmlu_targets(
    suite: MMLUSuite, k: int = MMLU_TARGET_SHOTS, subjects: Sequence[str] | None = None
) -> list[TargetExample]:
    """The first ``k`` dev questions of each subject as target conversations (suite ``"mmlu"``, subtask = subject).

    ``subjects`` defaults to every subject with test questions. Each must have test questions and
    at least ``k`` dev questions.
    """
    if k < 1:
        raise TarotInputError(f"MMLU target shots k={k}: must be at least 1")
    names = suite.subjects if subjects is None else list(subjects)
    out: list[TargetExample] = []
    for subject in names:
        if not suite.test.get(subject):
            raise TarotInputError(f"MMLU subject {subject!r} has no test questions (no test/{subject}_test.csv)")
        dev = suite.dev.get(subject, [])
        if len(dev) < k:
            raise TarotInputError(f"MMLU subject {subject!r} has {len(dev)} dev questions, {k} needed as targets")
        for j, q in enumerate(dev[:k]):
            conv = Conversation(
                dataset="mmlu",
                id=f"mmlu_{subject}_dev_{j}",
                messages=(
                    Message("user", mmlu_header(subject) + format_mc_question(q, with_answer=False)),
                    Message("assistant", q.answer),
                ),
            )
            out.append(TargetExample(suite="mmlu", subtask=subject, conversation=conv))
    return out


# --------------------------------------------------------------------------- BBH


@dataclass(frozen=True)
class CotExemplar:
    """One exemplar of a chain-of-thought prompt: the question, the rationale (after ``A:``) and its answer."""

    question: str
    rationale: str
    answer: str


@dataclass(frozen=True)
class BBHSuite:
    """BBH examples by task and the chain-of-thought prompt text of the tasks that have one."""

    examples: dict[str, list[ExactExample]]
    cot_prompts: dict[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        """Task names, sorted."""
        return sorted(self.examples)


def _strip_canary(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines[:3]):
        if _DASH_LINE.match(line):
            return "\n".join(lines[i + 1 :])
    return text


def parse_cot_prompt(text: str, where: str = "<cot prompt>") -> tuple[str, list[CotExemplar]]:
    """The prompt text (canary lines dropped, stripped) and its exemplars.

    Exemplar blocks start with ``"Q:"`` after a blank line; each must hold ``"\\nA:"`` and
    :data:`~.records.ANSWER_MARKER`; the answer is what follows the last marker, stripped and
    without its final ``"."``.
    """
    prompt = _strip_canary(text).strip()
    exemplars: list[CotExemplar] = []
    for n, block in enumerate(_EXEMPLAR_SPLIT.split("\n\n" + prompt)[1:], start=1):
        block = block.strip()
        if "\nA:" not in block:
            raise TarotInputError(f"{where}: exemplar {n} has no line starting 'A:'")
        q, a = block.split("\nA:", 1)
        rationale = a.strip()
        if ANSWER_MARKER not in rationale:
            raise TarotInputError(f"{where}: exemplar {n} has no {ANSWER_MARKER.strip()!r} in its answer")
        answer = rationale.rsplit(ANSWER_MARKER, 1)[1].strip()
        answer = answer[:-1].rstrip() if answer.endswith(".") else answer
        exemplars.append(CotExemplar(question=q[2:].strip(), rationale=rationale, answer=answer))
    return prompt, exemplars


def _read_bbh_task(path: Path) -> list[ExactExample]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TarotInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("examples"), list):
        raise TarotInputError(f"{path}: expected an object with an 'examples' list of {{'input', 'target'}}")
    task = path.stem
    out: list[ExactExample] = []
    for n, ex in enumerate(obj["examples"]):
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str) or "target" not in ex:
            raise TarotInputError(f"{path}: example {n} must be an object with a string 'input' and a 'target'")
        target = ex["target"]
        if not isinstance(target, (str, int, float)) or isinstance(target, bool):
            raise TarotInputError(f"{path}: example {n} has a target of type {type(target).__name__}")
        out.append(ExactExample(task=task, input=ex["input"], target=str(target)))
    if not out:
        raise TarotInputError(f"{path}: no examples in this BBH task file")
    return out


def read_bbh(root: str | Path) -> BBHSuite:
    """Read a BBH folder: ``bbh/<task>.json`` (required) and ``cot-prompts/<task>.txt`` (optional)."""
    base = Path(root)
    folder = base / "bbh"
    if not base.is_dir():
        raise TarotInputError(f"{base}: BBH folder not found (it should hold bbh/<task>.json)")
    if not folder.is_dir():
        raise TarotInputError(f"{folder}: BBH task folder not found (expected <root>/bbh/<task>.json)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".json")
    if not files:
        raise TarotInputError(f"{folder}: no <task>.json files in the BBH folder")
    examples = {p.stem: _read_bbh_task(p) for p in files}
    prompts: dict[str, str] = {}
    cot_dir = base / "cot-prompts"
    if cot_dir.is_dir():
        for p in sorted(cot_dir.glob("*.txt")):
            if p.stem in examples:
                prompt, _ = parse_cot_prompt(p.read_text(encoding="utf-8"), str(p))
                prompts[p.stem] = prompt
    return BBHSuite(examples=examples, cot_prompts=prompts)


def write_bbh_task(root: str | Path, task: str, examples: Sequence[ExactExample]) -> Path:
    """Write ``<root>/bbh/<task>.json`` as ``{"examples": [{"input", "target"}, ...]}``."""
    path = Path(root) / "bbh" / f"{task}.json"
    obj = {"examples": [{"input": e.input, "target": e.target} for e in examples]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_cot_prompt(
    root: str | Path, task: str, description: str, exemplars: Sequence[CotExemplar], canary: str | None = None
) -> Path:
    """Write ``<root>/cot-prompts/<task>.txt``: optional ``canary`` line and dash line, the description, the exemplars.

    Each exemplar is written ``"Q: {question}\\nA: {rationale}"`` (the rationale ends with the answer marker).
    """
    parts = [] if canary is None else [f"{canary}\n-----\n"]
    parts.append(description.strip())
    parts += [f"\n\nQ: {e.question}\nA: {e.rationale}" for e in exemplars]
    path = Path(root) / "cot-prompts" / f"{task}.txt"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(parts) + "\n", encoding="utf-8")
    return path


def bbh_targets(
    suite: BBHSuite, k: int = BBH_TARGET_SHOTS, tasks: Sequence[str] | None = None
) -> tuple[list[TargetExample], dict[str, list[ExactExample]]]:
    """Target conversations (suite ``"bbh"``, subtask = task) and the test examples left per task.

    With a CoT prompt the first ``k`` exemplars are the targets (assistant: the rationale); without
    one, the first ``k`` examples (assistant: the target), which leave the test set. ``tasks``
    defaults to every task. A task with fewer than ``k`` exemplars or no test example left is refused.
    """
    if k < 1:
        raise TarotInputError(f"BBH target shots k={k}: must be at least 1")
    names = suite.tasks if tasks is None else list(tasks)
    targets: list[TargetExample] = []
    test: dict[str, list[ExactExample]] = {}
    for task in names:
        examples = suite.examples.get(task)
        if not examples:
            raise TarotInputError(f"BBH task {task!r} has no examples (no bbh/{task}.json)")
        cot = suite.cot_prompts.get(task)
        if cot is not None:
            _, exemplars = parse_cot_prompt(cot, f"cot-prompts/{task}.txt")
            if len(exemplars) < k:
                raise TarotInputError(f"cot-prompts/{task}.txt has {len(exemplars)} exemplars, {k} needed as targets")
            pairs = [(e.question, e.rationale) for e in exemplars[:k]]
            used = {q for q, _ in pairs}
            rest = [e for e in examples if e.input not in used]
        else:
            if len(examples) <= k:
                raise TarotInputError(f"BBH task {task!r} has {len(examples)} examples: none left to test after {k}")
            pairs = [(e.input, e.target) for e in examples[:k]]
            rest = list(examples[k:])
        if not rest:
            raise TarotInputError(f"BBH task {task!r} has no test examples left after its {k} target examples")
        for j, (question, answer) in enumerate(pairs):
            conv = Conversation(
                dataset="bbh",
                id=f"bbh_{task}_shot_{j}",
                messages=(Message("user", question), Message("assistant", answer)),
            )
            targets.append(TargetExample(suite="bbh", subtask=task, conversation=conv))
        test[task] = rest
    return targets, test
