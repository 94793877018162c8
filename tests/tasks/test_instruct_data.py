"""Data of the instruction-tuning task: the LESS / MMLU / BBH readers on tiny hand-written fakes in
exactly their layouts, the prompt formats against hand-written strings, the few-shot targets, and
the generated mini data (round trip through the real readers, determinism, disjointness of pool
and test questions, the harmful source's wrong answers).
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from tarot_select import TarotInputError
from tarot_select.tasks.instruct import formats, synthetic
from tarot_select.tasks.instruct.records import (
    Conversation,
    ExactExample,
    MCQuestion,
    Message,
    bbh_prompt,
    chat_text,
    extract_bbh_answer,
    mmlu_prompt,
)

# --------------------------------------------------------------------------- prompt formats


def test_chat_text_matches_the_tulu_template_and_spans_select_assistant_content():
    msgs = [
        Message("system", "Be brief."),
        Message("user", " Hi \n"),
        Message("assistant", "Hello!"),
        Message("user", "2+2?"),
        Message("assistant", " 4 "),
    ]
    text, spans = chat_text(msgs, tokenizer_eos="</s>")
    expected = "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!</s>\n<|user|>\n2+2?\n<|assistant|>\n4</s>\n"
    assert text == expected
    assert [text[a:b] for a, b in spans] == ["Hello!</s>", "4</s>"]
    # what is outside the spans is the template and the other turns
    cuts = [0, *(i for span in spans for i in span), len(text)]
    outside = "".join(text[cuts[i] : cuts[i + 1]] for i in range(0, len(cuts), 2))
    assert outside == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n\n<|user|>\n2+2?\n<|assistant|>\n\n"
    _, spans2 = chat_text(msgs, tokenizer_eos="<|endoftext|>")
    assert text.replace("</s>", "<|endoftext|>")[spans2[1][0] : spans2[1][1]] == "4<|endoftext|>"


def test_chat_text_without_assistant_has_no_spans():
    assert chat_text([Message("user", "x")]) == ("<|user|>\nx\n", [])


def test_message_role_is_checked():
    with pytest.raises(TarotInputError, match="role 'bot'"):
        Message("bot", "x")


def test_mmlu_prompt_is_the_official_format():
    shot = MCQuestion("high_school_physics", "What is 1+1?", ("1", "2", "3", "4"), "B")
    q = MCQuestion("high_school_physics", "Pick, please: x", ("a", "b", "c", "d"), "D")
    expected = (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "Pick, please: x\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    )
    assert mmlu_prompt(q, [shot], "high_school_physics") == expected
    assert mmlu_prompt(q, [], "x").endswith("about x.\n\nPick, please: x\nA. a\nB. b\nC. c\nD. d\nAnswer:")


def test_mc_question_checks_answer_and_choices():
    with pytest.raises(TarotInputError, match="'E'"):
        MCQuestion("s", "q", ("a", "b", "c", "d"), "E")
    with pytest.raises(TarotInputError, match="3 choices"):
        MCQuestion("s", "q", ("a", "b", "c"), "A")  # type: ignore[arg-type]
    assert MCQuestion("s", "q", ("a", "b", "c", "d"), "C").answer_text == "c"


def test_bbh_prompt_and_answer_extraction():
    ex = ExactExample("t", "True and False is", "False")
    cot = "Evaluate.\n\nQ: True is\nA: Let's think step by step.\nSo the answer is True."
    assert bbh_prompt(ex, cot) == (
        "Evaluate.\n\nQ: True is\nA: Let's think step by step.\nSo the answer is True."
        "\n\nQ: True and False is\nA: Let's think step by step."
    )
    assert bbh_prompt(ex, None) == "Q: True and False is\nA:"
    gen = "\nTrue and False = False. So the answer is False.\n\nQ: next"
    assert extract_bbh_answer(gen, cot=True) == "False"
    assert extract_bbh_answer(" So the answer is (B). So the answer is egg sun.", cot=True) == "egg sun"
    assert extract_bbh_answer(" 42.\nQ: more", cot=False) == "42"
    assert extract_bbh_answer("no marker here\nx", cot=True) == "no marker here"
    assert extract_bbh_answer("   ", cot=False) == ""


# --------------------------------------------------------------------------- LESS JSONL

LESS_LINE = (
    '{"dataset": "oasst1", "id": "oasst1_7", "messages": [{"role": "user", "content": "Hi, \\"you\\"\\nthere"}, '
    '{"role": "assistant", "content": "Hello \\u00e9!"}]}'
)


def test_parse_hand_written_less_line():
    conv = formats.parse_less_record(LESS_LINE)
    assert conv == Conversation(
        "oasst1", "oasst1_7", (Message("user", 'Hi, "you"\nthere'), Message("assistant", "Hello é!"))
    )
    assert formats.parse_less_record('{"dataset": "d", "id": 3, "messages": []}').id == "3"


def _write_less_fake(root):
    """LESS's layout: train/processed/<name>/<name>_data.jsonl."""
    flan = root / "processed" / "flan_v2" / "flan_v2_data.jsonl"
    oasst = root / "processed" / "oasst1" / "oasst1_data.jsonl"
    flan.parent.mkdir(parents=True)
    oasst.parent.mkdir(parents=True)
    rec = {"dataset": "flan_v2", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    flan.write_text(
        "\n".join(
            [
                json.dumps({**rec, "id": "flan_v2_0"}),
                "",  # blank lines are allowed
                json.dumps({"dataset": "flan_v2", "id": "flan_v2_1", "messages": []}),  # unusable: line 3
                json.dumps({**rec, "id": "flan_v2_2", "messages": rec["messages"][:1]}),  # no answer: line 4
                json.dumps({**rec, "id": "flan_v2_3"}),
            ]
        )
        + "\n"
    )
    oasst.write_text(LESS_LINE + "\n")
    return flan, oasst


def test_read_less_folder_and_files_in_order_skipping_unusable(tmp_path, caplog):
    flan, oasst = _write_less_fake(tmp_path)
    with caplog.at_level(logging.WARNING):
        convs = formats.read_less_jsonl(tmp_path)
    assert [c.id for c in convs] == ["flan_v2_0", "flan_v2_3", "oasst1_7"]  # files sorted by path
    assert "skipped 2 record(s)" in caplog.text and "lines 3, 4" in caplog.text
    assert [c.id for c in formats.read_less_jsonl([oasst, flan])] == ["oasst1_7", "flan_v2_0", "flan_v2_3"]
    with pytest.raises(TarotInputError, match=rf"{re.escape(str(flan))}:3: record 'flan_v2_1' has no messages"):
        formats.read_less_jsonl(flan, unusable="error")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"dataset": "d", "id": "x", "messages": [}', "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"dataset": "d", "id": "x"}', "no 'messages' key"),
        ('{"dataset": "d", "id": "x", "messages": [{"role": "bot", "content": "a"}]}', "role 'bot'"),
        ('{"dataset": "d", "id": "x", "messages": [{"role": "user"}]}', "message 0 must be"),
        ('{"dataset": "d", "id": "x", "messages": "hi"}', "'messages' must be a list"),
    ],
)
def test_less_errors_name_file_and_line(tmp_path, line, message):
    good = '{"dataset": "d", "id": "y", "messages": [{"role": "assistant", "content": "a"}]}'
    path = tmp_path / "pool.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(TarotInputError, match=rf"pool\.jsonl:3: .*{re.escape(message)}"):
        formats.read_less_jsonl(path)


def test_less_missing_paths(tmp_path):
    with pytest.raises(TarotInputError, match="not found"):
        formats.read_less_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TarotInputError, match="no .jsonl files"):
        formats.read_less_jsonl(tmp_path / "empty")
    with pytest.raises(TarotInputError, match="'skip' or 'error'"):
        formats.read_less_jsonl(tmp_path, unusable="drop")  # type: ignore[arg-type]


def test_less_writer_round_trip(tmp_path):
    convs = [
        Conversation("cot", "c0", (Message("user", 'a, "b"\nc ü'), Message("assistant", "x\ty"))),
        Conversation("oasst1", "o1", (Message("system", "s"), Message("user", "u"), Message("assistant", "v"))),
    ]
    path = formats.write_less_jsonl(tmp_path / "d" / "x_data.jsonl", convs)
    assert formats.read_less_jsonl(path) == convs
    assert json.loads(path.read_text().splitlines()[1]) == {
        "dataset": "oasst1",
        "id": "o1",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "v"},
        ],
    }


# --------------------------------------------------------------------------- MMLU CSV

MMLU_DEV = (
    '"What is 2, plus 2?",3,4,5,6,B\n'
    '"He said ""hi""\nthen left. Who?",Ann,Bob,Cy,Di, D \n'
    "Q3,a,b,c,d,A\n"
    "Q4,a,b,c,d,C\n"
    "Q5,a,b,c,d,A\n"
    "Q6,a,b,c,d,B\n"
)


def _write_mmlu_fake(root, with_val=True):
    for split, subject, text in [
        ("dev", "high_school_physics", MMLU_DEV),
        ("dev", "anatomy", "A1,a,b,c,d,A\nA2,a,b,c,d,B\nA3,a,b,c,d,C\nA4,a,b,c,d,D\nA5,a,b,c,d,A\n"),
        ("test", "high_school_physics", "T1,w,x,y,z,C\n"),
        ("test", "anatomy", "T2,w,x,y,z,A\nT3,w,x,y,z,D\n"),
        *([("val", "anatomy", "V1,w,x,y,z,B\n")] if with_val else []),
    ]:
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / f"{subject}_{split}.csv").write_text(text)
    (root / "test" / "README.txt").write_text("not a csv")


def test_read_mmlu_fake_folder(tmp_path):
    _write_mmlu_fake(tmp_path)
    suite = formats.read_mmlu(tmp_path)
    assert suite.subjects == ["anatomy", "high_school_physics"]
    phys = suite.dev["high_school_physics"]
    assert len(phys) == 6
    assert phys[0] == MCQuestion("high_school_physics", "What is 2, plus 2?", ("3", "4", "5", "6"), "B")
    assert phys[1].question == 'He said "hi"\nthen left. Who?' and phys[1].answer == "D"
    assert [q.answer for q in suite.test["anatomy"]] == ["A", "D"]
    assert suite.val["anatomy"][0].question == "V1"
    _write_mmlu_fake(tmp_path / "noval", with_val=False)
    assert formats.read_mmlu(tmp_path / "noval").val == {}


def test_mmlu_writer_round_trip(tmp_path):
    _write_mmlu_fake(tmp_path / "a")
    suite = formats.read_mmlu(tmp_path / "a")
    for split in ("dev", "test", "val"):
        formats.write_mmlu_split(tmp_path / "b", split, getattr(suite, split))
    again = formats.read_mmlu(tmp_path / "b")
    assert again == suite
    assert (tmp_path / "b" / "dev" / "anatomy_dev.csv").read_text().splitlines()[0] == "A1,a,b,c,d,A"


def test_mmlu_errors(tmp_path):
    with pytest.raises(TarotInputError, match="MMLU folder not found"):
        formats.read_mmlu(tmp_path / "none")
    (tmp_path / "dev").mkdir()
    with pytest.raises(TarotInputError, match="no <subject>_dev.csv files"):
        formats.read_mmlu(tmp_path)
    (tmp_path / "dev" / "s_dev.csv").write_text("Q,a,b,c,d,A\n")
    with pytest.raises(TarotInputError, match="test folder not found"):
        formats.read_mmlu(tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "s_test.csv").write_text("Q,a,b,c,d,A\nQ,a,b,c,B\n")
    with pytest.raises(TarotInputError, match=r"s_test\.csv: row 2 \(line 2\): 5 fields"):
        formats.read_mmlu(tmp_path)
    (tmp_path / "test" / "s_test.csv").write_text("Q,a,b,c,d,A\nQ,a,b,c,d,E\n")
    with pytest.raises(TarotInputError, match=r"row 2 .*answer 'E' is not one of A, B, C, D"):
        formats.read_mmlu(tmp_path)


def test_mmlu_targets(tmp_path):
    _write_mmlu_fake(tmp_path)
    suite = formats.read_mmlu(tmp_path)
    targets = formats.mmlu_targets(suite)
    assert [(t.suite, t.subtask) for t in targets] == [("mmlu", "anatomy")] * 5 + [("mmlu", "high_school_physics")] * 5
    first = targets[5].conversation
    assert first.messages == (
        Message(
            "user",
            "The following are multiple choice questions (with answers) about high school physics.\n\n"
            "What is 2, plus 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:",
        ),
        Message("assistant", "B"),
    )
    assert len(formats.mmlu_targets(suite, k=2, subjects=["anatomy"])) == 2
    with pytest.raises(TarotInputError, match="'virology' has no test questions"):
        formats.mmlu_targets(suite, subjects=["virology"])
    with pytest.raises(TarotInputError, match="'anatomy' has 5 dev questions, 6 needed"):
        formats.mmlu_targets(suite, k=6)


# --------------------------------------------------------------------------- BBH JSON

COT_FILE = (
    "BIG-Bench Hard canary line\n"
    "-----\n"
    "Evaluate the result of a random Boolean expression.\n"
    "\n"
    "Q: not True is\n"
    "A: Let's think step by step.\n"
    "not True = False. So the answer is False.\n"
    "\n"
    "Q: True and True is\n"
    "A: Let's think step by step.\n"
    "True and True = True. So the answer is True.\n"
    "\n"
    "Q: Options:\n(A) x\n(B) y\n"
    "A: Let's think step by step.\n"
    "It is x. So the answer is (A).\n"
)


def _write_bbh_fake(root):
    (root / "bbh").mkdir(parents=True)
    (root / "cot-prompts").mkdir()
    boolean = {
        "examples": [{"input": "not True is", "target": "False"}, {"input": "False or True is", "target": "True"}]
    }
    (root / "bbh" / "boolean_expressions.json").write_text(json.dumps(boolean))
    words = {"examples": [{"input": f"Sort: w{i} a", "target": f"a w{i}"} for i in range(5)]}
    (root / "bbh" / "word_sorting.json").write_text(json.dumps(words))
    (root / "bbh" / "numbers.json").write_text(json.dumps({"examples": [{"input": "1 + 1 =", "target": 2}]}))
    (root / "cot-prompts" / "boolean_expressions.txt").write_text(COT_FILE)


def test_read_bbh_fake_folder_and_cot_prompt(tmp_path):
    _write_bbh_fake(tmp_path)
    suite = formats.read_bbh(tmp_path)
    assert suite.tasks == ["boolean_expressions", "numbers", "word_sorting"]
    assert suite.examples["numbers"] == [ExactExample("numbers", "1 + 1 =", "2")]  # numeric target read as text
    prompt = suite.cot_prompts["boolean_expressions"]
    assert prompt == COT_FILE.split("-----\n", 1)[1].strip()
    assert prompt.startswith("Evaluate the result") and set(suite.cot_prompts) == {"boolean_expressions"}
    _, exemplars = formats.parse_cot_prompt(COT_FILE)
    assert [e.question for e in exemplars] == ["not True is", "True and True is", "Options:\n(A) x\n(B) y"]
    assert [e.answer for e in exemplars] == ["False", "True", "(A)"]
    assert exemplars[0].rationale == "Let's think step by step.\nnot True = False. So the answer is False."


def test_bbh_targets_from_cot_or_first_examples(tmp_path):
    _write_bbh_fake(tmp_path)
    suite = formats.read_bbh(tmp_path)
    targets, test = formats.bbh_targets(suite, tasks=["boolean_expressions", "word_sorting"])
    assert [(t.subtask, t.conversation.messages[0].content) for t in targets] == [
        ("boolean_expressions", "not True is"),
        ("boolean_expressions", "True and True is"),
        ("boolean_expressions", "Options:\n(A) x\n(B) y"),
        ("word_sorting", "Sort: w0 a"),
        ("word_sorting", "Sort: w1 a"),
        ("word_sorting", "Sort: w2 a"),
    ]
    assert targets[0].conversation.messages[1].content.endswith("So the answer is False.")
    assert targets[3].conversation.messages[1] == Message("assistant", "a w0")
    # CoT exemplar "not True is" also in the JSON: removed from the test set; first k examples removed
    assert [e.input for e in test["boolean_expressions"]] == ["False or True is"]
    assert [e.input for e in test["word_sorting"]] == ["Sort: w3 a", "Sort: w4 a"]
    with pytest.raises(TarotInputError, match="'numbers' has 1 examples: none left to test"):
        formats.bbh_targets(suite)
    with pytest.raises(TarotInputError, match="'dates' has no examples"):
        formats.bbh_targets(suite, tasks=["dates"])


def test_bbh_errors(tmp_path):
    with pytest.raises(TarotInputError, match="BBH folder not found"):
        formats.read_bbh(tmp_path / "none")
    with pytest.raises(TarotInputError, match="BBH task folder not found"):
        formats.read_bbh(tmp_path)
    (tmp_path / "bbh").mkdir()
    with pytest.raises(TarotInputError, match="no <task>.json files"):
        formats.read_bbh(tmp_path)
    (tmp_path / "bbh" / "t.json").write_text('{"examples": [{"input": "x"}]}')
    with pytest.raises(TarotInputError, match=r"t\.json: example 0 must be"):
        formats.read_bbh(tmp_path)
    (tmp_path / "bbh" / "t.json").write_text('{"examples": [')
    with pytest.raises(TarotInputError, match=r"t\.json: not valid JSON"):
        formats.read_bbh(tmp_path)
    with pytest.raises(TarotInputError, match="exemplar 1 has no 'So the answer is'"):
        formats.parse_cot_prompt("Intro.\n\nQ: x\nA: y.")


# --------------------------------------------------------------------------- generated mini data

SMALL = synthetic.MiniSizes(flan_v2=120, cot=120, dolly=60, oasst1=200, mmlu_test=12, bbh_test=10)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The default mini data, written once and read back through the real readers."""
    root = tmp_path_factory.mktemp("mini")
    paths = synthetic.write_mini_instruction_data(root, seed=3)
    return {
        "paths": paths,
        "world": synthetic.make_world(3),
        "pool": formats.read_less_jsonl(paths.pool_dir, unusable="error"),
        "mmlu": formats.read_mmlu(paths.mmlu_dir),
        "bbh": formats.read_bbh(paths.bbh_dir),
        "manifest": json.loads(paths.manifest.read_text()),
    }


def test_generated_data_round_trips_through_the_real_layouts(mini):
    paths, sizes = mini["paths"], synthetic.MiniSizes()
    assert [p.relative_to(paths.root).as_posix() for p in paths.pool_files] == [
        f"train/processed/{s}/{s}_data.jsonl" for s in synthetic.SOURCES
    ]
    pool = mini["pool"]
    assert len(pool) == sum(sizes.per_source().values())
    assert {s: sum(c.dataset == s for c in pool) for s in synthetic.SOURCES} == sizes.per_source()
    assert len({c.id for c in pool}) == len(pool)
    assert max(len(m.content) for c in pool for m in c.messages) < 200
    assert any(len(c.messages) >= 6 for c in pool if c.dataset == "oasst1")  # multi-turn chats
    mmlu, bbh = mini["mmlu"], mini["bbh"]
    assert mmlu.subjects == sorted(synthetic.MMLU_SUBJECTS)
    assert all(len(mmlu.dev[s]) == 5 and len(mmlu.test[s]) == sizes.mmlu_test for s in mmlu.subjects)
    targets = formats.mmlu_targets(mmlu)
    assert len(targets) == 5 * len(synthetic.MMLU_SUBJECTS)
    btargets, btest = formats.bbh_targets(bbh)
    assert {t.subtask for t in btargets} == set(synthetic.BBH_TASKS) and len(btargets) == 3 * len(synthetic.BBH_TASKS)
    assert all(len(btest[t]) == sizes.bbh_test for t in synthetic.BBH_TASKS)
    assert all(t.conversation.messages[1].content.startswith("Let's think step by step.") for t in btargets)
    # answer letters are spread over A-D
    letters = [q.answer for qs in mmlu.test.values() for q in qs]
    assert all(letters.count(x) > len(letters) / 8 for x in "ABCD")
    # the manifest lists the records in the order of ``pool_files`` (the folder reads them sorted by path)
    in_order = formats.read_less_jsonl(list(paths.pool_files))
    assert [r["id"] for r in mini["manifest"]["records"]] == [c.id for c in in_order]
    assert sorted(c.id for c in in_order) == sorted(c.id for c in pool)


def test_generated_answers_follow_the_rules(mini):
    world = mini["world"]
    for split in (mini["mmlu"].dev, mini["mmlu"].test):
        for qs in split.values():
            for q in qs:
                assert q.answer_text == synthetic.mmlu_answer(world, q), q
                assert len(set(q.choices)) == 4
    targets, test = formats.bbh_targets(mini["bbh"])
    for t in targets:
        ex = ExactExample(t.subtask, t.conversation.messages[0].content, "")
        assert extract_bbh_answer(t.conversation.messages[1].content, cot=True) == synthetic.bbh_answer(ex)
    for exs in test.values():
        for ex in exs:
            assert ex.target == synthetic.bbh_answer(ex), ex
    # the rule oracle itself, on hand-computed cases
    assert synthetic.bbh_answer(ExactExample("arithmetic_chains", "4 + 17 - 3 =", "")) == "18"
    assert synthetic.bbh_answer(ExactExample("boolean_expressions", "not True and False or True is", "")) == "True"
    assert synthetic.bbh_answer(ExactExample("day_shifts", "Today is Monday. What day was it 2 days ago?", "")) == (
        "Saturday"
    )
    assert synthetic.bbh_answer(ExactExample("word_sorting", "Sort these words alphabetically: owl hat sun", "")) == (
        "hat owl sun"
    )
    q = MCQuestion("unit_conversion", "How many meters are in 7 kilometers?", ("7000", "70", "700", "7"), "A")
    assert synthetic.mmlu_answer(world, q) == "7000"


def test_pool_never_contains_a_target_or_test_question(mini):
    contents = [m.content for c in mini["pool"] for m in c.messages]
    protected = [q.question for split in (mini["mmlu"].dev, mini["mmlu"].test) for qs in split.values() for q in qs]
    targets, test = formats.bbh_targets(mini["bbh"])
    protected += [t.conversation.messages[0].content for t in targets]
    protected += [e.input for es in test.values() for e in es]
    hits = [p for p in protected if any(p in c for c in contents)]
    assert hits == []
    # ... while the pool does teach the same rules (flan's multiple choice in MMLU's format, cot's skills)
    mc = [c for c in mini["pool"] if c.dataset == "flan_v2" and c.messages[0].content.endswith("\nAnswer:")]
    assert len(mc) > 300
    templates = {s: synthetic._MMLU_TEMPLATES[s] + synthetic._POOL_MC_TEMPLATES[s] for s in synthetic.MMLU_SUBJECTS}
    for c in mc[:200]:
        lines = c.messages[0].content.split("\n")
        subject = next(s for s in synthetic.MMLU_SUBJECTS if _matches(lines[0], templates[s]))
        q = MCQuestion(subject, lines[0], tuple(x[3:] for x in lines[1:5]), c.messages[1].content)
        assert q.answer_text == synthetic.mmlu_answer(mini["world"], q)


def _matches(question, templates):
    return any(re.fullmatch(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)), question) for t in templates)


def test_harmful_source_answers_disagree_with_the_rules(mini):
    world = mini["world"]
    by_id = {c.id: c for c in mini["pool"]}
    rows = [r for r in mini["manifest"]["records"] if r["dataset"] == "oasst1" and r["skill"] is not None]
    wrong = [r for r in rows if r["correct"] is False]
    sizes = synthetic.MiniSizes()
    assert abs(len(rows) / sizes.oasst1 - sizes.oasst_target_fraction) < 0.06
    assert abs(len(wrong) / len(rows) - sizes.oasst_wrong_fraction) < 0.06
    assert {r["skill"] for r in wrong} == set(synthetic.MMLU_SUBJECTS) | set(synthetic.BBH_TASKS)
    for r in rows:
        question, answer = by_id[r["id"]].messages[2].content, by_id[r["id"]].messages[3].content
        right = _right_answer(world, r["skill"], question)
        agrees = _agrees(r["skill"], answer, right)
        assert agrees == r["correct"], (question, answer, right)
    # the other sources never answer wrongly
    assert all(r["correct"] in (None, True) for r in mini["manifest"]["records"] if r["dataset"] != "oasst1")


def _right_answer(world, skill, question):
    """The rule's answer, computed here independently of the generator."""
    if skill == "geography":
        country = next(c for c in world.countries if c in question)
        return world.capitals[country]
    if skill == "number_comparison":
        return str(max(int(x) for x in re.findall(r"\d+", question)))
    if skill == "unit_conversion":
        v = int(re.findall(r"\d+", question)[0])
        table = {
            ("meters", "centimeters"): 100,
            ("kilometers", "meters"): 1000,
            ("hours", "minutes"): 60,
            ("minutes", "seconds"): 60,
            ("days", "hours"): 24,
            ("weeks", "days"): 7,
            ("kilograms", "grams"): 1000,
        }
        words = set(re.findall(r"\w+", question))
        (f,) = [f for (big, small), f in table.items() if big in words and small in words]
        return str(v * f)
    if skill == "alphabet":
        x = re.findall(r"\b[A-Z]\b", question.replace("What", ""))[-1]
        return chr(ord(x) + 1)
    return synthetic.bbh_answer(ExactExample(skill, question, ""))


def _agrees(skill, answer, right):
    if skill == "geography":
        return answer.endswith(f" {right}.")
    if skill == "number_comparison":
        return answer.startswith(f"{right} ")
    if skill == "unit_conversion":
        return f" is {right} " in answer
    if skill == "alphabet":
        return answer.startswith(f"{right} ")
    return answer == f"The answer is {right}."


def test_generation_is_deterministic_by_seed(tmp_path):
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a = files(synthetic.write_mini_instruction_data(tmp_path / "a", seed=5, sizes=SMALL).root)
    b = files(synthetic.write_mini_instruction_data(tmp_path / "b", seed=5, sizes=SMALL).root)
    c = files(synthetic.write_mini_instruction_data(tmp_path / "c", seed=6, sizes=SMALL).root)
    assert a == b
    assert len(a) == 4 + 8 + 8 + 1
    assert all(a[k] != c[k] for k in a if k.endswith((".jsonl", ".csv")))
    # the target suites do not depend on the pool sizes
    bigger = synthetic.MiniSizes(flan_v2=7, cot=0, dolly=3, oasst1=11, mmlu_test=12, bbh_test=10)
    d = files(synthetic.write_mini_instruction_data(tmp_path / "d", seed=5, sizes=bigger).root)
    assert {k: v for k, v in d.items() if k.startswith("eval/")} == {
        k: v for k, v in a.items() if k.startswith("eval/")
    }


def test_mini_sizes_are_checked():
    with pytest.raises(TarotInputError, match="cot=-1"):
        synthetic.MiniSizes(cot=-1)
    with pytest.raises(TarotInputError, match="oasst_wrong_fraction"):
        synthetic.MiniSizes(oasst_wrong_fraction=1.5)
    world = synthetic.make_world(0)
    with pytest.raises(TarotInputError, match="geography.*distinct items"):
        synthetic.generate_mmlu(world, 0, n_test=100)


def test_world_capitals_and_wrong_capitals():
    world = synthetic.make_world(0)
    assert len(set(world.countries)) == len(world.countries) == len(set(world.capitals.values()))
    assert sorted(world.wrong_capitals.values()) == sorted(world.capitals.values())
    assert all(world.wrong_capitals[c] != world.capitals[c] for c in world.countries)


def test_generic_text_is_deterministic_and_free_of_target_facts():
    world = synthetic.make_world(0)
    lines = synthetic.generic_text(0, 300)
    assert lines == synthetic.generic_text(0, 300) and lines != synthetic.generic_text(1, 300)
    assert len(lines) == 300 and max(map(len, lines)) < 120
    text = "\n".join(lines)
    assert not any(name in text for c in world.countries for name in (c, world.capitals[c]))
    assert "Letters: " in text and "Days: " in text
    for line in lines:
        if line.startswith("Count: "):
            nums = [int(x) for x in line[7:-1].split()]
            assert nums == list(range(nums[0], nums[0] + len(nums)))
