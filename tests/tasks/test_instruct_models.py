"""The instruction task's models: tokenizer, tiny presets, local folders, LoRA, the response-only loss
and its per-sample LoRA gradients, base training, LoRA learning, and MMLU / BBH evaluation on stubs."""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tarot_select import TarotInputError
from tarot_select.featurize import Checkpoint, GradientFeaturizer
from tarot_select.tasks.instruct.encode import batch_loss, collate, encode_conversation, lm_loss
from tarot_select.tasks.instruct.evaluate import (
    _fit_mmlu_prompt,
    bbh_exact_match,
    greedy_generate,
    mmlu_accuracy,
)
from tarot_select.tasks.instruct.lm import (
    PRESETS,
    SPECIAL_TOKENS,
    add_lora,
    build_model,
    count_parameters,
    load_local_model,
    load_local_tokenizer,
    load_lora_state,
    lora_state,
    pretrain_base,
    save_local,
    train_tokenizer,
)
from tarot_select.tasks.instruct.records import (
    Conversation,
    ExactExample,
    MCQuestion,
    Message,
    bbh_prompt,
    mmlu_prompt,
)

WORDS = ["the", "a", "cat", "dog", "bird", "fish", "red", "blue", "green", "small", "big", "runs", "sits", "flies"]
WORDS += ["swims", "on", "under", "near", "tree", "house", "river"]
LORA_PATTERNS = ["*lora_A*", "*lora_B*"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest and does not stall on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))
        texts.append(f"{sentence.capitalize()}. Answer: {rng.choice('ABCD')}\nQ: {rng.choice(WORDS)}?")
    return texts


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(_corpus(), vocab_size=400)


@pytest.fixture(scope="module")
def base(tok):
    """A llama-tiny model after 40 steps of base training (copy it before changing it)."""
    model = build_model("llama-tiny", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    pretrain_base(model, tok, _corpus(300, seed=1), steps=40, batch_size=8, block_size=32, lr=3e-3)
    return model


def _conv(i: int, user: str, *answers: str) -> Conversation:
    msgs = [Message("system", "Be brief.")]
    for k, a in enumerate(answers):
        msgs += [Message("user", user if k == 0 else f"And {user}?"), Message("assistant", a)]
    return Conversation("toy", str(i), tuple(msgs))


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_deterministic_and_round_trips(tok, tmp_path):
    again = train_tokenizer(_corpus(), vocab_size=400)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    other = train_tokenizer(_corpus(seed=5), vocab_size=400)
    assert other.backend_tokenizer.to_str() != tok.backend_tokenizer.to_str()
    assert len(tok) <= 400 and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    text = "<|user|>\nÜber 3 Äpfel — naïve café?\n<|assistant|>\n42 € 🙂</s>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>") and tok.eos_token_id in ids
    assert tok.decode(ids) == text  # byte-level: every character survives
    save_local(tok, tmp_path / "tok")
    loaded = load_local_tokenizer(tmp_path / "tok")
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.pad_token_id == tok.pad_token_id and loaded.padding_side == "right"
    with pytest.raises(TarotInputError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)


# --------------------------------------------------------------------------- presets and folders


def test_presets_have_the_stated_sizes_and_eager_attention():
    sizes = {}
    for name in PRESETS:
        model = build_model(name, 1024, pad_token_id=0, eos_token_id=1, seed=3)
        sizes[name] = count_parameters(model)
        assert model.config._attn_implementation == "eager" and not model.training
    assert 0.4e6 < sizes["llama-tiny"] < 0.6e6 and 1.3e6 < sizes["qwen-tiny"] < 1.7e6
    assert type(build_model("qwen-tiny", 300, pad_token_id=0, eos_token_id=1)).__name__ == "Qwen2ForCausalLM"
    a, b, c = (build_model("llama-tiny", 300, pad_token_id=0, eos_token_id=1, seed=s) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    with pytest.raises(TarotInputError, match="unknown model preset"):
        build_model("gpt-huge", 300, pad_token_id=0, eos_token_id=1)


def test_local_model_folder_round_trip_and_errors(tok, tmp_path):
    model = build_model("qwen-tiny", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    folder = save_local(model, tmp_path / "m")
    loaded = load_local_model(folder, dtype="float32")
    x = torch.tensor([[5, 9, 30, 2, 77]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)
    assert loaded.config._attn_implementation == "eager" and not loaded.training
    with pytest.raises(TarotInputError, match="model folder not found"):
        load_local_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TarotInputError, match="no config.json"):
        load_local_model(tmp_path / "empty")
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(TarotInputError, match="no model weights"):
        load_local_model(tmp_path / "cfg_only")


# --------------------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters_and_its_state_round_trips(base):
    plain = copy.deepcopy(base)
    model = add_lora(copy.deepcopy(base), r=4, alpha=8.0, dropout=0.1, seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    cfg = base.config
    head = cfg.hidden_size // cfg.num_attention_heads
    d_q, d_kv = cfg.num_attention_heads * head, cfg.num_key_value_heads * head
    per_layer = sum(4 * (cfg.hidden_size + d_out) for d_out in (d_q, d_kv, d_kv, cfg.hidden_size))  # r (d_in + d_out)
    assert count_parameters(model, trainable_only=True) == cfg.num_hidden_layers * per_layer
    x = torch.tensor([[3, 40, 41, 42, 4, 50, 51]])
    model.eval()
    with torch.no_grad():
        start = model(input_ids=x).logits
        assert torch.equal(start, plain(input_ids=x).logits)  # B = 0: the adapters start as the identity
    saved = lora_state(model)
    assert set(saved) == {k for k in model.state_dict() if ".lora_" in k} and len(saved) == len(trainable)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        changed = model(input_ids=x).logits
        assert (changed - start).abs().max() > 1e-4
        load_lora_state(model, saved)
        assert torch.equal(model(input_ids=x).logits, start)
    with pytest.raises(TarotInputError, match="missing"):
        load_lora_state(model, dict(list(saved.items())[:-1]))
    with pytest.raises(TarotInputError, match="not in the model"):
        add_lora(copy.deepcopy(base), r=2, alpha=4, target_modules=("c_attn",))


# --------------------------------------------------------------------------- encoding and loss


def test_labels_cover_exactly_the_responses_and_their_eos(tok):
    conv = _conv(0, "What sits on the tree?", "A small bird.", "The blue cat")
    enc = encode_conversation(conv, tok, max_len=512)
    ids, labels = enc["input_ids"], enc["labels"]
    assert ids.dtype == labels.dtype == torch.long and torch.equal(enc["attention_mask"], torch.ones_like(ids))
    assert tok.decode(ids[labels != -100]) == "A small bird.</s>The blue cat</s>"
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    assert int(ids[-1]) == tok.eos_token_id and int(labels[-1]) == tok.eos_token_id  # trailing "\n" dropped
    text = tok.decode(ids)
    assert text.startswith("<|system|>\nBe brief.\n<|user|>\n") and text.endswith("<|assistant|>\nThe blue cat</s>")
    # a trailing user turn carries no loss: it is dropped, and the last response survives truncation
    tail = Conversation("toy", "t", (*conv.messages, Message("user", "Thanks a lot, that was great!")))
    assert torch.equal(encode_conversation(tail, tok, 512)["input_ids"], ids)
    short = encode_conversation(conv, tok, max_len=9)  # left truncation: the last 9 tokens
    assert torch.equal(short["input_ids"], ids[-9:]) and torch.equal(short["labels"], labels[-9:])
    assert (short["labels"][1:] != -100).any()
    with pytest.raises(TarotInputError, match="no assistant turn"):
        encode_conversation(Conversation("toy", "q", (Message("user", "hi"),)), tok, 64)


def test_collate_pads_on_the_right(tok):
    encs = [encode_conversation(_conv(i, "Q" * (i + 1), "ok " * (i + 1)), tok, 64) for i in range(3)]
    batch = collate(encs, pad_id=tok.pad_token_id)
    n = [len(e["input_ids"]) for e in encs]
    assert batch["input_ids"].shape == (3, max(n)) and len(set(n)) == 3
    for i, e in enumerate(encs):
        assert torch.equal(batch["input_ids"][i, : n[i]], e["input_ids"])
        assert (batch["input_ids"][i, n[i] :] == tok.pad_token_id).all() and (batch["labels"][i, n[i] :] == -100).all()
        assert batch["attention_mask"][i].sum() == n[i] and (batch["attention_mask"][i, n[i] :] == 0).all()
    with pytest.raises(TarotInputError, match="lacks"):
        collate([{"input_ids": torch.ones(3, dtype=torch.long)}], 0)


def _reference_loss(model: nn.Module, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the response tokens of one unpadded sample (plain torch)."""
    logits = model(input_ids=enc["input_ids"][None]).logits[0]
    return F.cross_entropy(logits[:-1], enc["labels"][1:], ignore_index=-100)


def test_lm_loss_is_the_response_cross_entropy_whatever_the_padding(base, tok):
    encs = [
        encode_conversation(_conv(i, " ".join(WORDS[: 2 + 3 * i]), " ".join(WORDS[i : i + 3])), tok, 64)
        for i in range(3)
    ]
    batch = collate(encs, tok.pad_token_id)
    with torch.no_grad():
        per = batch_loss(base, batch, per_sample=True)
        for i, enc in enumerate(encs):
            want = _reference_loss(base, enc)
            one = {k: v[i : i + 1] for k, v in batch.items()}  # padded row
            assert torch.allclose(lm_loss(lambda **kw: base(**kw), one), want, atol=1e-5)
            assert torch.allclose(per[i], want, atol=1e-5)
        n_tok = torch.tensor([int((e["labels"][1:] != -100).sum()) for e in encs], dtype=torch.float32)
        assert torch.allclose(batch_loss(base, batch), (per * n_tok).sum() / n_tok.sum(), atol=1e-6)


def test_lora_gradient_features_equal_per_sample_autograd(base, tok):
    model = add_lora(copy.deepcopy(base), r=4, alpha=8.0, dropout=0.1, seed=1)
    with torch.no_grad():  # non-zero B, so that both adapter factors have informative gradients
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    model.eval()
    convs = [_conv(i, " ".join(WORDS[: 1 + 4 * i]), " ".join(WORDS[2 * i : 3 * i + 2])) for i in range(4)]
    encs = [encode_conversation(c, tok, 64) for c in convs]
    assert len({len(e["input_ids"]) for e in encs}) == 4
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [dict(model.named_parameters())[n] for n in names]
    want = []
    for enc in encs:
        grads = torch.autograd.grad(_reference_loss(model, enc), params)
        want.append(torch.cat([g.reshape(-1) for g in grads]))
    want = torch.stack(want).numpy()
    featurizer = GradientFeaturizer(model, lm_loss, proj_kind="none", params=LORA_PATTERNS, mode="vmap")
    assert featurizer.param_names == names and featurizer.n_params == want.shape[1]
    ckpt = Checkpoint(state_dict=lora_state(model), name="lora")
    got = featurizer.featurize([collate(encs, tok.pad_token_id)], [ckpt], progress=False)
    assert got.shape == want.shape and abs(want).max() > 1e-3
    assert abs(got - want).max() <= 1e-5 * max(1.0, abs(want).max())
    # padding does not change a sample's row: each sample alone, and in another batch order
    alone = featurizer.featurize([collate([e], tok.pad_token_id) for e in encs], [ckpt], progress=False)
    assert abs(alone - want).max() <= 1e-5 * max(1.0, abs(want).max())
    reordered = featurizer.featurize([collate(encs[::-1], tok.pad_token_id)], [ckpt], progress=False)
    assert abs(reordered[::-1] - want).max() <= 1e-5 * max(1.0, abs(want).max())


# --------------------------------------------------------------------------- training


def test_base_training_is_seeded_and_lowers_the_loss(tok):
    runs = []
    for _ in range(2):
        model = build_model("llama-tiny", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        losses = pretrain_base(model, tok, _corpus(200, seed=2), steps=25, batch_size=8, block_size=32, lr=3e-3, seed=4)
        runs.append((losses, model.state_dict()))
    (l1, s1), (l2, s2) = runs
    assert l1 == l2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert sum(l1[-5:]) / 5 < 0.8 * sum(l1[:5]) / 5


def _pattern_conv(i: int, rng: random.Random) -> Conversation:
    """A toy instruction: name the colour of an animal (a fixed, arbitrary mapping)."""
    colour = {"cat": "blue", "dog": "green", "bird": "red", "fish": "small"}
    animal = rng.choice(sorted(colour))
    filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    return Conversation(
        "pattern",
        str(i),
        (Message("user", f"{filler} {animal}?"), Message("assistant", f"The {animal} is {colour[animal]}.")),
    )


def test_lora_finetuning_learns_a_toy_pattern(base, tok):
    rng = random.Random(0)
    train = [encode_conversation(_pattern_conv(i, rng), tok, 64) for i in range(64)]
    held = collate([encode_conversation(_pattern_conv(100 + i, rng), tok, 64) for i in range(32)], tok.pad_token_id)
    model = add_lora(copy.deepcopy(base), r=8, alpha=16.0, dropout=0.0, seed=0)
    with torch.no_grad():
        before = float(batch_loss(model.eval(), held))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(8):
        perm = torch.randperm(len(train), generator=order).tolist()
        for start in range(0, len(train), 16):
            loss = batch_loss(model, collate([train[j] for j in perm[start : start + 16]], tok.pad_token_id))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        after = float(batch_loss(model.eval(), held))
    assert after < 0.3 * before and after < 1.0, (before, after)
    frozen = dict(base.named_parameters())
    for name, p in model.named_parameters():  # the base weights did not move
        if "lora_" not in name:
            assert torch.equal(p, frozen[name.removeprefix("base_model.model.").replace(".base_layer", "")])


# --------------------------------------------------------------------------- evaluation


class CumsumStub(nn.Module):
    """A "model" whose next-token logits favour ``favoured[sum(input_ids[:t+1]) % 4]`` by 5 nats.

    Right padding never changes the logits of real positions (a prefix sum), as for a causal LM.
    """

    def __init__(self, vocab: int, favoured: list[int]) -> None:
        super().__init__()
        self.vocab, self.favoured = vocab, torch.tensor(favoured)

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        which = self.favoured[input_ids.cumsum(dim=1) % len(self.favoured)]
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(2, which.unsqueeze(-1), 5.0)
        return SimpleNamespace(logits=logits)


def _questions(subjects: list[str]) -> list[MCQuestion]:
    return [
        MCQuestion(s, f"Which {WORDS[i]} is {WORDS[i + 3]}?", (WORDS[i], WORDS[i + 1], WORDS[i + 2], "none"), "A")
        for i, s in enumerate(subjects)
    ]


@pytest.mark.parametrize("letters_are_single_tokens", [True, False])
def test_mmlu_accuracy_picks_the_letter_the_stub_favours(tok, letters_are_single_tokens):
    tokenizer = tok if letters_are_single_tokens else train_tokenizer([t.lower() for t in _corpus()], 300)
    letter_ids = [tokenizer(f" {x}", add_special_tokens=False)["input_ids"] for x in "ABCD"]
    assert {len(ids) for ids in letter_ids} == ({1} if letters_are_single_tokens else {2})
    stub = CumsumStub(len(tokenizer), [ids[-1] for ids in letter_ids])
    shots = {"biology": _questions(["biology"] * 2), "law": _questions(["law"])}
    raw = _questions(["biology", "biology", "law", "law", "history"])
    expected = []
    for q in raw:
        prompt = tokenizer(mmlu_prompt(q, shots.get(q.subject, []), q.subject), add_special_tokens=False)["input_ids"]
        offset = 0 if letters_are_single_tokens else letter_ids[0][0]  # the shared first token (" ")
        expected.append("ABCD"[(sum(prompt) + offset) % 4])
    wrong = {0, 3}  # make these two answers wrong on purpose
    questions = [
        MCQuestion(q.subject, q.question, q.choices, "ABCD"[("ABCD".index(e) + 1) % 4] if i in wrong else e)
        for i, (q, e) in enumerate(zip(raw, expected, strict=True))
    ]
    result = mmlu_accuracy(stub, tokenizer, questions, shots, batch_size=2)
    assert result["predictions"] == expected
    assert result["n"] == 5 and result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_subject"] == {"biology": 0.5, "history": 1.0, "law": 0.5}


def test_mmlu_prompts_drop_their_last_shots_to_fit(tok):
    q, *shots = _questions(["x"] * 4)
    one_shot = tok(mmlu_prompt(q, shots[:1], "x"), add_special_tokens=False)["input_ids"]
    assert _fit_mmlu_prompt(tok, q, shots, limit=len(one_shot)) == one_shot
    assert len(_fit_mmlu_prompt(tok, q, shots, limit=None)) > len(one_shot)
    zero = tok(mmlu_prompt(q, [], "x"), add_special_tokens=False)["input_ids"]
    assert _fit_mmlu_prompt(tok, q, shots, limit=5) == zero[-5:]


class ScriptStub(nn.Module):
    """A "model" that, after a known prompt, emits a fixed token script (then eos), greedily."""

    def __init__(self, vocab: int, eos: int, scripts: dict[tuple[int, ...], list[int]]) -> None:
        super().__init__()
        self.vocab, self.eos, self.scripts = vocab, eos, scripts

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            prompt = next(p for p in self.scripts if tuple(row[: len(p)]) == p)
            done = len(row) - len(prompt)
            script = self.scripts[prompt]
            logits[b, -1, script[done] if done < len(script) else self.eos] = 1.0
        return SimpleNamespace(logits=logits)


def test_bbh_exact_match_on_scripted_generations(tok):
    cot = {"arith": "Q: 1 + 1?\nA: Let's think step by step. One and one. So the answer is 2."}
    cases = [  # (example, what the stub generates); read: 5, 7, 4, False, True, Maybe True (4 of 6 right)
        (
            ExactExample("arith", "2 + 3?", "5"),
            " Two and three. So the answer is 5.\n\nQ: 4 + 4?\nA: So the answer is 8.",
        ),
        (ExactExample("arith", "3 + 3?", "6"), " Three and three. So the answer is 7."),
        (ExactExample("arith", "1 + 3?", "4"), " One and three. So the answer is 4.</s> So the answer is 9."),
        (ExactExample("logic", "not True?", "False"), " False\nQ: and more"),
        (ExactExample("logic", "True and True?", "True"), " True."),
        (ExactExample("logic", "not False?", "True"), " Maybe True"),
    ]
    scripts = {}
    for ex, text in cases:
        prompt = tuple(tok(bbh_prompt(ex, cot.get(ex.task)), add_special_tokens=False)["input_ids"])
        scripts[prompt] = tok(text, add_special_tokens=False)["input_ids"]
    stub = ScriptStub(len(tok), tok.eos_token_id, scripts)
    result = bbh_exact_match(stub, tok, [c[0] for c in cases], cot, max_new_tokens=40)
    assert result["predictions"] == ["5", "7", "4", "False", "True", "Maybe True"]
    assert result["n"] == 6 and result["exact_match"] == pytest.approx(4 / 6)
    assert result["per_task"] == {"arith": pytest.approx(2 / 3), "logic": pytest.approx(2 / 3)}
    # max_new_tokens cuts the generation before the answer
    short = bbh_exact_match(stub, tok, [cases[0][0]], cot, max_new_tokens=3)
    assert short["exact_match"] == 0.0 and short["predictions"][0] != "5"


def test_batched_generate_matches_the_plain_greedy_loop(tok):
    # float32: in float64, transformers' eager attention turns the left-padding mask into NaNs
    model = build_model("llama-tiny", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, seed=2)
    prompts = ["The cat", "A small bird sits on the big tree near", "Q: dog?\nA:"]
    loop = greedy_generate(model, tok, prompts, max_new_tokens=6, engine="loop")
    batched = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3, engine="generate")
    assert batched == loop and any(loop)
