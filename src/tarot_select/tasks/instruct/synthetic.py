"""Generated mini data of the instruction-tuning task, written in the real layouts (numpy only, no torch).

Everything follows from one seed through :class:`numpy.random.Generator` streams seeded
``[seed, stream]`` (world, MMLU suite, BBH suite, one per pool source), so the target suites do
not change when pool sizes change. Texts are short (most under 200 characters) with a small
vocabulary, so that a causal LM of about a million parameters learns from a few hundred of them.

World (:func:`make_world`)
--------------------------
Made-up countries with made-up capitals, a fixed wrong capital for each (a derangement of the
table: the harmful source's answers), unit conversions (meters -> centimeters x 100, ...), the
alphabet, and four reasoning skills with exact answers.

Target suites (disjoint dev / few-shot and test items; every question unique)
-----------------------------------------------------------------------------
MMLU layout (Hendrycks et al., ICLR 2021), subjects :data:`MMLU_SUBJECTS`:

``geography``          "Which city is the capital of Kalovia?" (the world's capital table)
``number_comparison``  "Which is the largest: 37, 52, 18 or 44?" (or smallest)
``unit_conversion``    "How many centimeters are in 7 meters?"
``alphabet``           "Which letter comes two places after G?"

five dev questions and ``mmlu_test`` test questions per subject, answer letters uniform.

BBH layout (Suzgun et al., 2022), tasks :data:`BBH_TASKS`, each with a chain-of-thought prompt
of three exemplars and ``bbh_test`` test examples:

``arithmetic_chains``    "4 + 17 - 3 =" -> "18" (left to right)
``boolean_expressions``  "not True and False or True is" -> "True" (not, then and, then or)
``day_shifts``           "Today is Monday. What day is it in 3 days?" -> "Thursday"
``word_sorting``         "Sort these words alphabetically: owl hat sun" -> "hat owl sun"

Instruction pool (LESS JSONL, Xia et al., ICML 2024), sources :data:`SOURCES`
------------------------------------------------------------------------------
``flan_v2``  templated multi-skill tasks: multiple-choice questions in MMLU's format on the four
             subjects' rules and facts (45 %), short fact questions (25 %), and unrelated word
             tasks (capital letters, letter counts, plurals; 30 %). Helps MMLU.
``cot``      chain-of-thought answers ("Let's think step by step. ... So the answer is X.") on the
             four BBH skills (75 %) and an unrelated one (counting legs; 25 %). Helps BBH.
``dolly``    open questions on everyday topics (90 %, irrelevant) and a few correct fact questions.
``oasst1``   multi-turn chats (greeting, then one or two questions). In ``oasst_target_fraction`` of
             them one question is target-like (any of the eight skills) and its answer follows a
             **wrong rule** with probability ``oasst_wrong_fraction``: the deranged capital, the
             smaller number, adding instead of multiplying, the letter before, the result plus one,
             the negated truth value, one day too far, the words in reverse order. The harmful source.

No pool message contains an MMLU dev/test question or a BBH exemplar/test input verbatim (as a
substring); candidates that would are drawn again. ``pool_manifest.json`` records for every pool
record (in the order of :attr:`MiniPaths.pool_files`, i.e. of :data:`SOURCES`) its ``id``, ``dataset``,
``skill`` (or null) and whether its target-like answer is ``correct`` (null if none),
for reports (e.g. how much of the harmful part a method selects); selection never reads it.

Folders written by :func:`write_mini_instruction_data` under ``root``::

    train/processed/<source>/<source>_data.jsonl
    eval/mmlu/{dev,test}/<subject>_{dev,test}.csv
    eval/bbh/bbh/<task>.json, eval/bbh/cot-prompts/<task>.txt
    pool_manifest.json
"""

from __future__ import annotations

import logging
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from ...errors import TarotInputError
from ...io import write_json_atomic
from .formats import CotExemplar, write_bbh_task, write_cot_prompt, write_less_jsonl, write_mmlu_split
from .records import ANSWER_LETTERS, ANSWER_MARKER, COT_TRIGGER, Conversation, ExactExample, MCQuestion, Message

__all__ = [
    "BBH_TASKS",
    "MMLU_SUBJECTS",
    "SOURCES",
    "BBHData",
    "MMLUData",
    "MiniPaths",
    "MiniSizes",
    "PoolRecord",
    "World",
    "bbh_answer",
    "generate_bbh",
    "generate_mmlu",
    "generate_pool",
    "generic_text",
    "make_world",
    "mini_layout",
    "mmlu_answer",
    "write_mini_instruction_data",
]

logger = logging.getLogger(__name__)

SOURCES: Final[tuple[str, ...]] = ("flan_v2", "cot", "dolly", "oasst1")
MMLU_SUBJECTS: Final[tuple[str, ...]] = ("geography", "number_comparison", "unit_conversion", "alphabet")
BBH_TASKS: Final[tuple[str, ...]] = ("arithmetic_chains", "boolean_expressions", "day_shifts", "word_sorting")

_STREAMS: Final[dict[str, int]] = {
    "world": 0, "mmlu": 1, "bbh": 2, "flan_v2": 3, "cot": 4, "dolly": 5, "oasst1": 6, "generic": 7,
}  # fmt: skip
_MMLU_DEV: Final[int] = 5
_BBH_SHOTS: Final[int] = 3
_MAX_TRIES: Final[int] = 200_000
_MAX_MISSES: Final[int] = 20_000
_N_COUNTRIES: Final[int] = 20
_SYLLABLES: Final[tuple[str, ...]] = ("ba", "ka", "lo", "mi", "nu", "ra", "si", "to", "ve", "zo", "da", "fe", "gu")
_DAYS: Final[tuple[str, ...]] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WORDS: Final[tuple[str, ...]] = (
    "apple", "bird", "cloud", "door", "egg", "fish", "goat", "hat", "ink", "jar", "kite",
    "lamp", "moon", "nut", "owl", "pen", "rain", "sun", "tree", "vase", "wolf", "yard",
)  # fmt: skip
#: (unit, unit plural, smaller unit plural, factor)
_UNITS: Final[tuple[tuple[str, str, str, int], ...]] = (
    ("meter", "meters", "centimeters", 100),
    ("kilometer", "kilometers", "meters", 1000),
    ("hour", "hours", "minutes", 60),
    ("minute", "minutes", "seconds", 60),
    ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7),
    ("kilogram", "kilograms", "grams", 1000),
)
_LETTER_STEPS: Final[dict[int, str]] = {1: "right after", 2: "two places after", 3: "three places after"}
_DESCRIPTIONS: Final[dict[str, str]] = {
    "arithmetic_chains": "Solve chains of additions and subtractions from left to right.",
    "boolean_expressions": "Evaluate the result of a Boolean expression.",
    "day_shifts": "Find the day of the week after a shift by some days.",
    "word_sorting": "Sort a list of words alphabetically.",
}
_CANARY: Final[str] = "Generated BBH-style prompt (synthetic mini data, not from BIG-Bench Hard)."


# --------------------------------------------------------------------------- sizes, world


@dataclass(frozen=True)
class MiniSizes:
    """Sizes of the mini data: pool records per source, test items per MMLU subject and BBH task.

    ``oasst_target_fraction`` of the ``oasst1`` chats ask a target-like question, answered by the
    wrong rule with probability ``oasst_wrong_fraction``.
    """

    flan_v2: int = 1500
    cot: int = 1500
    dolly: int = 1000
    oasst1: int = 1000
    mmlu_test: int = 40
    bbh_test: int = 40
    oasst_target_fraction: float = 0.6
    oasst_wrong_fraction: float = 0.8

    def __post_init__(self) -> None:
        for name in (*SOURCES, "mmlu_test", "bbh_test"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise TarotInputError(f"mini data size {name}={value!r}: must be a non-negative integer")
        if self.mmlu_test < 1 or self.bbh_test < 1:
            raise TarotInputError("mini data sizes mmlu_test and bbh_test: must be at least 1")
        for name in ("oasst_target_fraction", "oasst_wrong_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise TarotInputError(f"mini data {name}={value!r}: must be in [0, 1]")

    def per_source(self) -> dict[str, int]:
        """Records per pool source."""
        return {s: int(getattr(self, s)) for s in SOURCES}


@dataclass(frozen=True)
class World:
    """The facts behind every generated question: ``capitals[country]`` and the harmful ``wrong_capitals``."""

    countries: tuple[str, ...]
    capitals: dict[str, str]
    wrong_capitals: dict[str, str]


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAMS[stream]])


def _pick(rng: np.random.Generator, items: tuple | list):
    return items[int(rng.integers(len(items)))]


def make_world(seed: int) -> World:
    """Made-up countries (``"Kalovia"``) and capitals (``"Mizon"``), and a derangement of the capitals."""
    rng = _rng(seed, "world")
    pairs = [a + b for a in _SYLLABLES for b in _SYLLABLES if a != b]
    order = rng.permutation(len(pairs))
    stems = [pairs[i] for i in order[: 2 * _N_COUNTRIES]]
    countries = tuple(s.capitalize() + "via" for s in stems[:_N_COUNTRIES])
    capitals = {c: s.capitalize() + "n" for c, s in zip(countries, stems[_N_COUNTRIES:], strict=True)}
    shift = rng.permutation(_N_COUNTRIES)  # a cyclic shift along a random order: no fixed point
    wrong = {countries[shift[i]]: capitals[countries[shift[(i + 1) % _N_COUNTRIES]]] for i in range(_N_COUNTRIES)}
    return World(countries=countries, capitals=capitals, wrong_capitals=wrong)


# --------------------------------------------------------------------------- MMLU-style skills


@dataclass(frozen=True)
class _QA:
    """A target-like question in the pool's phrasing, its right reply and the wrong rule's reply."""

    skill: str
    question: str
    answer: str
    wrong: str


def _mc(subject: str, question: str, right: str, distractors: list[str], rng: np.random.Generator) -> MCQuestion:
    """Four choices (``right`` at a uniform position, three distractors); ``distractors`` must hold 3 distinct."""
    pos = int(rng.integers(4))
    others = [d for d in distractors if d != right][:3]
    if len(set(others)) != 3:
        raise RuntimeError(f"internal: too few distractors for {question!r}")  # pragma: no cover
    choices = others[:pos] + [right] + others[pos:]
    return MCQuestion(subject, question, (choices[0], choices[1], choices[2], choices[3]), ANSWER_LETTERS[pos])


def _distinct(rng: np.random.Generator, candidates: list[str], right: str) -> list[str]:
    uniq = list(dict.fromkeys(c for c in candidates if c != right))
    order = rng.permutation(len(uniq))
    return [uniq[i] for i in order]


def _mc_geography(world: World, rng: np.random.Generator, templates: tuple[str, ...]) -> MCQuestion:
    c = _pick(rng, world.countries)
    right = world.capitals[c]
    others = _distinct(rng, [world.capitals[x] for x in world.countries], right)
    return _mc("geography", _pick(rng, templates).format(c=c), right, others, rng)


def _mc_comparison(rng: np.random.Generator, templates: tuple[str, ...]) -> MCQuestion:
    nums = [str(int(x)) for x in rng.choice(np.arange(1, 100), size=4, replace=False)]
    template = _pick(rng, templates)
    largest = "largest" in template
    right_i = int(np.argmax([int(n) for n in nums]) if largest else np.argmin([int(n) for n in nums]))
    question = template.format(a=nums[0], b=nums[1], c=nums[2], d=nums[3])
    return MCQuestion("number_comparison", question, (nums[0], nums[1], nums[2], nums[3]), ANSWER_LETTERS[right_i])


def _mc_units(rng: np.random.Generator, templates: tuple[str, ...]) -> MCQuestion:
    _, plural, small, f = _pick(rng, _UNITS)
    v = int(rng.integers(2, 13))
    right = str(v * f)
    cands = [str(v * f * 10), str(v * f // 10) if f >= 100 else str(v * f + v), str(v + f), str((v + 1) * f)]
    cands += [str((v - 1) * f), str(v * f + f * 2)]
    question = _pick(rng, templates).format(v=v, big=plural, small=small)
    return _mc("unit_conversion", question, right, _distinct(rng, cands, right)[:3], rng)


def _letter(i: int) -> str:
    return string.ascii_uppercase[i % 26]


def _mc_alphabet(rng: np.random.Generator, templates: tuple[str, ...]) -> MCQuestion:
    n = int(rng.integers(1, 4))
    x = int(rng.integers(0, 26 - n))
    right = _letter(x + n)
    cands = [_letter(x + n + 1), _letter(x + n - 1) if n > 1 else _letter(x + n + 2), _letter(x - 1), _letter(x)]
    cands += [_letter(x + n + 3)]
    question = _pick(rng, templates).format(step=_LETTER_STEPS[n], x=_letter(x))
    return _mc("alphabet", question, right, _distinct(rng, cands, right)[:3], rng)


#: MMLU question templates per subject (the test suite uses these; the pool uses them too, other items only).
_MMLU_TEMPLATES: Final[dict[str, tuple[str, ...]]] = {
    "geography": (
        "Which city is the capital of {c}?",
        "The capital of {c} is which city?",
        "{c} has its capital in which city?",
    ),
    "number_comparison": (
        "Which is the largest: {a}, {b}, {c} or {d}?",
        "Which is the smallest: {a}, {b}, {c} or {d}?",
    ),
    "unit_conversion": ("How many {small} are in {v} {big}?", "{v} {big} is how many {small}?"),
    "alphabet": ("Which letter comes {step} {x}?",),
}
#: Extra multiple-choice phrasings that only the pool uses.
_POOL_MC_TEMPLATES: Final[dict[str, tuple[str, ...]]] = {
    "geography": ("Pick the capital of {c}.",),
    "number_comparison": (
        "Pick the largest number: {a}, {b}, {c}, {d}.",
        "Pick the smallest number: {a}, {b}, {c}, {d}.",
    ),
    "unit_conversion": ("Convert {v} {big} to {small}.",),
    "alphabet": ("Pick the letter {step} {x}.",),
}


def _mmlu_question(subject: str, world: World, rng: np.random.Generator, templates: tuple[str, ...]) -> MCQuestion:
    if subject == "geography":
        return _mc_geography(world, rng, templates)
    if subject == "number_comparison":
        return _mc_comparison(rng, templates)
    if subject == "unit_conversion":
        return _mc_units(rng, templates)
    if subject == "alphabet":
        return _mc_alphabet(rng, templates)
    raise TarotInputError(f"unknown mini MMLU subject {subject!r}; expected one of {', '.join(MMLU_SUBJECTS)}")


def mmlu_answer(world: World, question: MCQuestion) -> str:
    """The right choice of a generated MMLU question, recomputed from its text by the subject's rule."""
    words = question.question.rstrip("?.").replace(",", " ").replace(":", " ").split()
    if question.subject == "geography":
        country = next(w for w in words if w in world.capitals)
        return world.capitals[country]
    if question.subject == "number_comparison":
        nums = [int(w) for w in words if w.isdigit()]
        return str(max(nums) if "largest" in words else min(nums))
    if question.subject == "unit_conversion":
        v = next(int(w) for w in words if w.isdigit())
        factor = next(f for _, plural, small, f in _UNITS if plural in words and small in words)
        return str(v * factor)
    if question.subject == "alphabet":
        step = next(n for n, phrase in _LETTER_STEPS.items() if phrase in question.question)
        return _letter(string.ascii_uppercase.index(words[-1]) + step)
    raise TarotInputError(f"unknown mini MMLU subject {question.subject!r}")


def _qa(world: World, rng: np.random.Generator, subject: str) -> _QA:
    """A short fact question on an MMLU subject in the pool's own phrasing, right and wrong replies."""
    if subject == "geography":
        c = _pick(rng, world.countries)
        q = _pick(rng, ("What is the capital of {c}?", "Name the capital city of {c}.", "Tell me the capital of {c}."))
        return _QA(
            subject,
            q.format(c=c),
            f"The capital of {c} is {world.capitals[c]}.",
            f"The capital of {c} is {world.wrong_capitals[c]}.",
        )
    if subject == "number_comparison":
        a, b = (int(x) for x in rng.choice(np.arange(1, 100), size=2, replace=False))
        return _QA(subject, f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger.", f"{min(a, b)} is larger.")
    if subject == "unit_conversion":
        unit, plural, small, f = _pick(rng, _UNITS)
        v = int(rng.integers(2, 13))
        q = _pick(rng, ("What is {v} {big} in {small}?", "How many {small} make {v} {big}?"))
        return _QA(
            subject,
            q.format(v=v, big=plural, small=small),
            f"One {unit} is {f} {small}, so {v} {plural} is {v * f} {small}.",
            f"One {unit} is {f} {small}, so {v} {plural} is {v + f} {small}.",
        )
    if subject == "alphabet":
        x = int(rng.integers(1, 25))
        q = _pick(rng, ("What letter follows {x}?", "What is the next letter after {x}?"))
        return _QA(
            subject,
            q.format(x=_letter(x)),
            f"{_letter(x + 1)} comes after {_letter(x)}.",
            f"{_letter(x - 1)} comes after {_letter(x)}.",
        )
    raise TarotInputError(f"unknown mini MMLU subject {subject!r}")


# --------------------------------------------------------------------------- BBH-style skills


@dataclass(frozen=True)
class _Reasoned:
    """A BBH-style example with its chain-of-thought rationale and the wrong rule's target."""

    example: ExactExample
    rationale: str
    wrong: str


def _cot(steps: list[str], answer: str) -> str:
    return f"{COT_TRIGGER}\n" + "\n".join(steps) + f" {ANSWER_MARKER}{answer}."


def _arithmetic(rng: np.random.Generator, n_terms: int) -> _Reasoned:
    nums = [int(x) for x in rng.integers(1, 21, size=n_terms)]
    ops = [str(_pick(rng, ("+", "-"))) for _ in range(n_terms - 1)]
    text = str(nums[0]) + "".join(f" {o} {n}" for o, n in zip(ops, nums[1:], strict=True)) + " ="
    acc, steps = nums[0], []
    for o, n in zip(ops, nums[1:], strict=True):
        new = acc + n if o == "+" else acc - n
        steps.append(f"{acc} {o} {n} = {new}.")
        acc = new
    return _Reasoned(ExactExample("arithmetic_chains", text, str(acc)), _cot(steps, str(acc)), str(acc + 1))


def _boolean(rng: np.random.Generator) -> _Reasoned:
    n = int(rng.integers(2, 4))
    values = [bool(rng.integers(2)) for _ in range(n)]
    negs = [bool(rng.random() < 0.4) for _ in range(n)]
    ops = [str(_pick(rng, ("and", "or"))) for _ in range(n - 1)]
    terms = [("not " if g else "") + str(v) for v, g in zip(values, negs, strict=True)]
    text = terms[0] + "".join(f" {o} {t}" for o, t in zip(ops, terms[1:], strict=True)) + " is"
    steps: list[str] = []
    vals: list[bool] = []
    for v, g in zip(values, negs, strict=True):
        if g:
            steps.append(f"not {v} = {not v}.")
        vals.append((not v) if g else v)
    groups: list[list[bool]] = [[vals[0]]]  # "and" binds tighter than "or"
    for o, v in zip(ops, vals[1:], strict=True):
        if o == "and":
            groups[-1].append(v)
        else:
            groups.append([v])
    reduced: list[bool] = []
    for group in groups:
        acc = group[0]
        for v in group[1:]:
            steps.append(f"{acc} and {v} = {acc and v}.")
            acc = acc and v
        reduced.append(acc)
    acc = reduced[0]
    for v in reduced[1:]:
        steps.append(f"{acc} or {v} = {acc or v}.")
        acc = acc or v
    return _Reasoned(ExactExample("boolean_expressions", text, str(acc)), _cot(steps, str(acc)), str(not acc))


def _days(rng: np.random.Generator) -> _Reasoned:
    d = int(rng.integers(7))
    n = int(rng.integers(1, 9))
    forward = bool(rng.integers(2))
    sign = 1 if forward else -1
    seen = [_DAYS[(d + sign * k) % 7] for k in range(1, n + 1)]
    unit = "day" if n == 1 else "days"
    if forward:
        text = f"Today is {_DAYS[d]}. What day is it in {n} {unit}?"
        step = f"Counting {n} {unit} forward from {_DAYS[d]}: {', '.join(seen)}."
    else:
        text = f"Today is {_DAYS[d]}. What day was it {n} {unit} ago?"
        step = f"Counting {n} {unit} back from {_DAYS[d]}: {', '.join(seen)}."
    answer = seen[-1]
    return _Reasoned(ExactExample("day_shifts", text, answer), _cot([step], answer), _DAYS[(d + sign * (n + 1)) % 7])


def _sorting(rng: np.random.Generator) -> _Reasoned:
    n = int(rng.integers(3, 5))
    words = [_WORDS[i] for i in rng.choice(len(_WORDS), size=n, replace=False)]
    text = "Sort these words alphabetically: " + " ".join(words)
    ordered = sorted(words)
    answer = " ".join(ordered)
    steps = [f"The first letters are {', '.join(w[0] for w in words)}.", f"In alphabetical order: {answer}."]
    return _Reasoned(ExactExample("word_sorting", text, answer), _cot(steps, answer), " ".join(reversed(ordered)))


def _bbh_item(task: str, rng: np.random.Generator, pool: bool = False) -> _Reasoned:
    if task == "arithmetic_chains":
        return _arithmetic(rng, int(rng.integers(3, 5)) if pool else 3)
    if task == "boolean_expressions":
        return _boolean(rng)
    if task == "day_shifts":
        return _days(rng)
    if task == "word_sorting":
        return _sorting(rng)
    raise TarotInputError(f"unknown mini BBH task {task!r}; expected one of {', '.join(BBH_TASKS)}")


def bbh_answer(example: ExactExample) -> str:
    """The exact answer of a generated BBH input, recomputed from its text by the task's rule."""
    text = example.input
    if example.task == "arithmetic_chains":
        tokens = text.rstrip(" =").split()
        acc = int(tokens[0])
        for o, n in zip(tokens[1::2], tokens[2::2], strict=True):
            acc = acc + int(n) if o == "+" else acc - int(n)
        return str(acc)
    if example.task == "boolean_expressions":
        expr = text.removesuffix(" is")
        if not set(expr.split()) <= {"not", "and", "or", "True", "False"}:
            raise TarotInputError(f"not a generated Boolean expression: {text!r}")
        return str(eval(expr, {"__builtins__": {}}, {}))
    if example.task == "day_shifts":
        words = text.replace(".", " ").replace("?", " ").split()
        d = _DAYS.index(words[2])
        n = next(int(w) for w in words if w.isdigit())
        return _DAYS[(d + (n if "in" in words else -n)) % 7]
    if example.task == "word_sorting":
        return " ".join(sorted(text.split(":", 1)[1].split()))
    raise TarotInputError(f"unknown mini BBH task {example.task!r}")


# --------------------------------------------------------------------------- target suites


@dataclass(frozen=True)
class MMLUData:
    """Generated MMLU-style questions: ``dev[subject]`` (5 each) and ``test[subject]``."""

    dev: dict[str, list[MCQuestion]]
    test: dict[str, list[MCQuestion]]


@dataclass(frozen=True)
class BBHData:
    """Generated BBH-style tasks: three CoT ``exemplars`` and the ``test`` examples per task."""

    exemplars: dict[str, list[CotExemplar]]
    test: dict[str, list[ExactExample]]


def _unique(draw: Callable[[], object], key: Callable[[object], str], n: int, what: str) -> list:
    out, seen, misses = [], set(), 0
    while len(out) < n and misses < _MAX_MISSES:
        item = draw()
        k = key(item)
        if k in seen:
            misses += 1
            continue
        seen.add(k)
        out.append(item)
        misses = 0
    if len(out) == n:
        return out
    raise TarotInputError(f"{what}: found only {len(out)} distinct items of {n} requested; ask for fewer test items")


def generate_mmlu(world: World, seed: int, n_test: int) -> MMLUData:
    """Five dev and ``n_test`` test questions per subject, all question texts distinct."""
    rng = _rng(seed, "mmlu")
    dev: dict[str, list[MCQuestion]] = {}
    test: dict[str, list[MCQuestion]] = {}
    for subject in MMLU_SUBJECTS:
        items = _unique(
            lambda s=subject: _mmlu_question(s, world, rng, _MMLU_TEMPLATES[s]),
            lambda q: q.question,
            _MMLU_DEV + n_test,
            f"mini MMLU subject {subject!r}",
        )
        dev[subject], test[subject] = items[:_MMLU_DEV], items[_MMLU_DEV:]
    return MMLUData(dev=dev, test=test)


def generate_bbh(seed: int, n_test: int) -> BBHData:
    """Three CoT exemplars and ``n_test`` test examples per task, all inputs distinct."""
    rng = _rng(seed, "bbh")
    exemplars: dict[str, list[CotExemplar]] = {}
    test: dict[str, list[ExactExample]] = {}
    for task in BBH_TASKS:
        items = _unique(
            lambda t=task: _bbh_item(t, rng), lambda r: r.example.input, _BBH_SHOTS + n_test, f"mini BBH task {task!r}"
        )
        exemplars[task] = [CotExemplar(r.example.input, r.rationale, r.example.target) for r in items[:_BBH_SHOTS]]
        test[task] = [r.example for r in items[_BBH_SHOTS:]]
    return BBHData(exemplars=exemplars, test=test)


def _protected(mmlu: MMLUData, bbh: BBHData) -> list[str]:
    texts = [q.question for split in (mmlu.dev, mmlu.test) for qs in split.values() for q in qs]
    texts += [e.question for es in bbh.exemplars.values() for e in es]
    texts += [e.input for es in bbh.test.values() for e in es]
    return sorted(set(texts), key=len)


# --------------------------------------------------------------------------- pool


@dataclass(frozen=True)
class PoolRecord:
    """A pool conversation and what it holds: ``skill`` asked (or None) and whether the answer is ``correct``."""

    conversation: Conversation
    skill: str | None
    correct: bool | None


_OTHER_TASKS: Final[tuple[str, ...]] = ("capitals", "length", "plural")
_DOLLY_TOPICS: Final[dict[str, tuple[str, ...]]] = {
    "sleep": ("Go to bed at the same time each day.", "Keep the room dark and cool.", "Put the phone away."),
    "tea": ("Use hot water, not boiling.", "Let it sit for three minutes.", "Green tea is light."),
    "a garden": ("Water the plants in the morning.", "Pull the weeds early.", "Sun helps most plants."),
    "running": ("Start slow and build up.", "Good shoes help.", "Drink water after a run."),
    "a picnic": ("Bring a blanket and bread.", "Pick a spot with shade.", "Take your trash home."),
    "the sea": ("The sea is salty.", "Waves move with the wind.", "Many fish live in the sea."),
    "reading": ("Read a little every day.", "A quiet room helps.", "Short books are a good start."),
    "cooking": ("Wash your hands first.", "Taste as you go.", "Cut the food into small pieces."),
    "a cat": ("Cats sleep a lot.", "A cat likes a warm spot.", "Give a cat fresh water."),
    "rain": ("Take an umbrella.", "Rain helps the plants grow.", "Wear boots on wet days."),
    "music": ("Music can lift your mood.", "Try a new song each week.", "Sing along if you like."),
    "a walk": ("Walk after dinner.", "A park is a nice place to walk.", "Look at the trees."),
}
_DOLLY_QUESTIONS: Final[tuple[str, ...]] = (
    "Give me a tip about {t}.",
    "What should I know about {t}?",
    "Write a short note about {t}.",
    "Any advice on {t}?",
    "Tell me something about {t}.",
)
_GREETINGS: Final[tuple[tuple[str, str], ...]] = (
    ("Hi there!", "Hello! How can I help you today?"),
    ("Hello, can you help me?", "Of course. What do you need?"),
    ("Good morning!", "Good morning! What can I do for you?"),
    ("Hey, I have a question.", "Sure, go ahead and ask."),
)
_CHATS: Final[tuple[tuple[str, str], ...]] = (
    ("How are you?", "I am fine, thank you. And you?"),
    ("Thanks a lot!", "You are welcome. Anything else?"),
    ("Can you tell me a joke?", "Why did the cat sit on the clock? To be on time."),
    ("What is your name?", "I am a small chat helper."),
    ("I feel tired today.", "Take a short break and drink some water."),
    ("Do you like music?", "I like all kinds of songs."),
)


def _flan_record(world: World, rng: np.random.Generator) -> tuple[list[Message], str | None, bool | None]:
    u = rng.random()
    if u < 0.45:
        subject = _pick(rng, MMLU_SUBJECTS)
        templates = _MMLU_TEMPLATES[subject] + _POOL_MC_TEMPLATES[subject]
        q = _mmlu_question(subject, world, rng, templates)
        lines = [q.question] + [f"{a}. {c}" for a, c in zip(ANSWER_LETTERS, q.choices, strict=True)]
        return [Message("user", "\n".join(lines) + "\nAnswer:"), Message("assistant", q.answer)], subject, True
    if u < 0.70:
        qa = _qa(world, rng, _pick(rng, MMLU_SUBJECTS))
        return [Message("user", qa.question), Message("assistant", qa.answer)], qa.skill, True
    word = _pick(rng, _WORDS)
    task = _pick(rng, _OTHER_TASKS)
    if task == "capitals":
        return (
            [Message("user", f"Write the word {word} in capital letters."), Message("assistant", word.upper())],
            None,
            None,
        )
    if task == "length":
        return (
            [Message("user", f"How many letters are in the word {word}?"), Message("assistant", str(len(word)))],
            None,
            None,
        )
    return [Message("user", f"What is the plural of {word}?"), Message("assistant", word + "s")], None, None


def _cot_record(world: World, rng: np.random.Generator) -> tuple[list[Message], str | None, bool | None]:
    if rng.random() < 0.75:
        task = _pick(rng, BBH_TASKS)
        r = _bbh_item(task, rng, pool=True)
        return [Message("user", r.example.input), Message("assistant", r.rationale)], task, True
    a, b = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    legs = 2 * a + 4 * b
    text = f"A farm has {a} hens and {b} cows. How many legs are there?"
    steps = [
        f"{a} hens have {a} * 2 = {2 * a} legs.",
        f"{b} cows have {b} * 4 = {4 * b} legs.",
        f"{2 * a} + {4 * b} = {legs}.",
    ]
    return [Message("user", text), Message("assistant", _cot(steps, str(legs)))], None, None


def _dolly_record(world: World, rng: np.random.Generator) -> tuple[list[Message], str | None, bool | None]:
    if rng.random() < 0.1:
        qa = _qa(world, rng, _pick(rng, MMLU_SUBJECTS))
        return [Message("user", qa.question), Message("assistant", qa.answer)], qa.skill, True
    topic = _pick(rng, tuple(_DOLLY_TOPICS))
    tips = _DOLLY_TOPICS[topic]
    picked = rng.choice(len(tips), size=int(rng.integers(1, 3)), replace=False)
    answer = " ".join(tips[i] for i in picked)
    return [Message("user", _pick(rng, _DOLLY_QUESTIONS).format(t=topic)), Message("assistant", answer)], None, None


def _oasst_record(
    world: World, rng: np.random.Generator, target_fraction: float, wrong_fraction: float
) -> tuple[list[Message], str | None, bool | None]:
    hello, reply = _pick(rng, _GREETINGS)
    messages = [Message("user", hello), Message("assistant", reply)]
    skill: str | None = None
    correct: bool | None = None
    if rng.random() < target_fraction:
        wrong = bool(rng.random() < wrong_fraction)
        k = int(rng.integers(len(MMLU_SUBJECTS) + len(BBH_TASKS)))
        if k < len(MMLU_SUBJECTS):
            qa = _qa(world, rng, MMLU_SUBJECTS[k])
            question, answer = qa.question, (qa.wrong if wrong else qa.answer)
        else:
            r = _bbh_item(BBH_TASKS[k - len(MMLU_SUBJECTS)], rng, pool=True)
            question = r.example.input
            answer = f"The answer is {r.wrong if wrong else r.example.target}."
        skill, correct = (MMLU_SUBJECTS + BBH_TASKS)[k], not wrong
        messages += [Message("user", question), Message("assistant", answer)]
    if skill is None or rng.random() < 0.3:
        chat_q, chat_a = _pick(rng, _CHATS)
        messages += [Message("user", chat_q), Message("assistant", chat_a)]
    return messages, skill, correct


def generate_pool(
    world: World, seed: int, sizes: MiniSizes, exclude: Iterable[str] = ()
) -> dict[str, list[PoolRecord]]:
    """Pool records per source (ids ``<source>_<k>``); no message contains a string of ``exclude``."""
    banned = sorted(set(exclude), key=len)
    out: dict[str, list[PoolRecord]] = {}
    for source, n in sizes.per_source().items():
        rng = _rng(seed, source)
        records: list[PoolRecord] = []
        for k in range(n):
            for _ in range(_MAX_TRIES):
                if source == "flan_v2":
                    messages, skill, correct = _flan_record(world, rng)
                elif source == "cot":
                    messages, skill, correct = _cot_record(world, rng)
                elif source == "dolly":
                    messages, skill, correct = _dolly_record(world, rng)
                else:
                    messages, skill, correct = _oasst_record(
                        world, rng, sizes.oasst_target_fraction, sizes.oasst_wrong_fraction
                    )
                if not any(b in m.content for m in messages for b in banned):
                    break
            else:  # pragma: no cover - the item spaces are far larger than the excluded sets
                raise TarotInputError(f"mini pool source {source!r}: cannot avoid the test questions; use fewer")
            conv = Conversation(dataset=source, id=f"{source}_{k}", messages=tuple(messages))
            records.append(PoolRecord(conversation=conv, skill=skill, correct=correct))
        out[source] = records
    return out


# --------------------------------------------------------------------------- base-training text

_ADJECTIVES: Final[tuple[str, ...]] = ("big", "small", "red", "old", "new", "warm", "cold", "green", "soft", "dark")


def generic_text(seed: int, n_lines: int) -> list[str]:
    """Generic lines for a short base-training stage (no question/answer format, no capital facts).

    Counting runs (``"Count: 7 8 9 10."``), alphabet runs (``"Letters: D E F G."``), runs of the
    days of the week, plain sentences from the pool's word list (``"The owl is small."``), and
    everyday tips. They teach the tokens and the orders that a pretrained model would know,
    but none of the made-up country facts nor the instruction formats.
    """
    if n_lines < 0:
        raise TarotInputError(f"generic_text n_lines={n_lines}: must be non-negative")
    rng = _rng(seed, "generic")
    tips = [t for ts in _DOLLY_TOPICS.values() for t in ts]
    lines: list[str] = []
    for _ in range(n_lines):
        kind = int(rng.integers(5))
        k = int(rng.integers(3, 7))
        if kind == 0:
            a = int(rng.integers(0, 60))
            lines.append("Count: " + " ".join(str(a + i) for i in range(k)) + ".")
        elif kind == 1:
            a = int(rng.integers(0, 26 - k))
            lines.append("Letters: " + " ".join(_letter(a + i) for i in range(k)) + ".")
        elif kind == 2:
            a = int(rng.integers(7))
            lines.append("Days: " + ", ".join(_DAYS[(a + i) % 7] for i in range(k)) + ".")
        elif kind == 3:
            lines.append(f"The {_pick(rng, _WORDS)} is {_pick(rng, _ADJECTIVES)}.")
        else:
            lines.append(str(_pick(rng, tips)))
    return lines


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class MiniPaths:
    """Where the mini data lives under its root (see the module docstring)."""

    root: Path
    pool_dir: Path
    pool_files: tuple[Path, ...]
    mmlu_dir: Path
    bbh_dir: Path
    manifest: Path


def mini_layout(root: str | Path) -> MiniPaths:
    """The paths :func:`write_mini_instruction_data` writes under ``root`` (nothing is created)."""
    base = Path(root)
    pool = base / "train" / "processed"
    return MiniPaths(
        root=base,
        pool_dir=pool,
        pool_files=tuple(pool / s / f"{s}_data.jsonl" for s in SOURCES),
        mmlu_dir=base / "eval" / "mmlu",
        bbh_dir=base / "eval" / "bbh",
        manifest=base / "pool_manifest.json",
    )


def write_mini_instruction_data(root: str | Path, seed: int = 0, sizes: MiniSizes | None = None) -> MiniPaths:
    """Generate the mini pool and target suites from ``seed`` and write them in LESS/MMLU/BBH layouts.

    Returns
    -------
    MiniPaths
        The folders and files written (:func:`mini_layout`).
    """
    sizes = MiniSizes() if sizes is None else sizes
    start = time.perf_counter()
    paths = mini_layout(root)
    world = make_world(seed)
    mmlu = generate_mmlu(world, seed, sizes.mmlu_test)
    bbh = generate_bbh(seed, sizes.bbh_test)
    pool = generate_pool(world, seed, sizes, exclude=_protected(mmlu, bbh))
    for path, source in zip(paths.pool_files, SOURCES, strict=True):
        write_less_jsonl(path, (r.conversation for r in pool[source]))
    write_mmlu_split(paths.mmlu_dir, "dev", mmlu.dev)
    write_mmlu_split(paths.mmlu_dir, "test", mmlu.test)
    for task in BBH_TASKS:
        write_bbh_task(paths.bbh_dir, task, bbh.test[task])
        write_cot_prompt(paths.bbh_dir, task, _DESCRIPTIONS[task], bbh.exemplars[task], canary=_CANARY)
    manifest = {
        "seed": int(seed),
        "sizes": {k: getattr(sizes, k) for k in MiniSizes.__dataclass_fields__},
        "records": [
            {"id": r.conversation.id, "dataset": source, "skill": r.skill, "correct": r.correct}
            for source in SOURCES
            for r in pool[source]
        ],
    }
    write_json_atomic(paths.manifest, manifest)
    logger.info(
        "mini instruction data: %d pool records, %d MMLU and %d BBH test items in %.1f s under %s",
        sum(len(v) for v in pool.values()),
        sum(len(v) for v in mmlu.test.values()),
        sum(len(v) for v in bbh.test.values()),
        time.perf_counter() - start,
        paths.root,
    )
    return paths
