"""The in-process transformers backend on a tiny random model (no downloads)."""

from __future__ import annotations

import pytest
import torch

from fedcot.models.backends import GenerationParams
from fedcot.models.backends.transformers import TransformersBackend

from tiny_models import make_tiny_lm

PROMPTS = [
    "Question: What is two plus three?",
    "a",
    "The capital of France is Paris. The answer is",
    "Maria Keller, 42, from Graz paid 1,250 EUR",
    "0 1 2",
]


@pytest.fixture(scope="module")
def tiny():
    model, tok = make_tiny_lm(seed=1)
    return model, tok


def test_batched_left_padding_matches_one_by_one(tiny):
    model, tok = tiny
    params = GenerationParams(max_new_tokens=8)
    batched = TransformersBackend(model, tok, batch_size=8).generate(PROMPTS, params)
    single = TransformersBackend(model, tok, batch_size=1).generate(PROMPTS, params)
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.prompt_tokens for c in batched] == [len(tok(p)["input_ids"]) for p in PROMPTS]
    assert all(c.completion_tokens == 8 and c.finish_reason == "length" for c in batched)


def test_greedy_equals_argmax_decoding(tiny):
    model, tok = tiny
    prompt = PROMPTS[0]
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    expected = tok.decode(ids[0, -6:])
    got = TransformersBackend(model, tok).generate([prompt], GenerationParams(max_new_tokens=6))
    assert got[0].text == expected


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    be = TransformersBackend(model, tok)
    p = GenerationParams(max_new_tokens=12, temperature=1.0, seed=7)
    a = be.generate(PROMPTS[:2], p)
    b = be.generate(PROMPTS[:2], p)
    c = be.generate(PROMPTS[:2], p.model_copy(update={"seed": 8}))
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    # Seeded sampling leaves the global RNG untouched.
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    be.generate(PROMPTS[:1], p)
    assert torch.equal(torch.rand(1), before)


def test_stop_string_cuts_and_finishes_early(tiny):
    model, tok = tiny
    be = TransformersBackend(model, tok)
    full = be.generate([PROMPTS[2]], GenerationParams(max_new_tokens=24))[0]
    # Stop at a substring of the unconstrained output that starts after its first character.
    stop = full.text[3:6]
    assert stop and stop in full.text
    cut = be.generate([PROMPTS[2]], GenerationParams(max_new_tokens=24, stop=[stop]))[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < 24


def test_chat_template_and_plain_model(tiny):
    model, tok = tiny
    be = TransformersBackend(model, tok)
    assert be.supports_chat
    text, special = be.render([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" and not special
    plain_model, plain_tok = make_tiny_lm(seed=1, chat=False)
    plain = TransformersBackend(plain_model, plain_tok)
    assert not plain.supports_chat
    with pytest.raises(ValueError, match="no chat template"):
        plain.generate([[{"role": "user", "content": "hi"}]])
    with pytest.raises(TypeError, match="either a string"):
        be.generate([42])  # type: ignore[list-item]


def test_topk_logprobs_match_the_model(tiny):
    model, tok = tiny
    be = TransformersBackend(model, tok, batch_size=3)
    res = be.topk_logprobs(PROMPTS, k=4)
    for prompt, r in zip(PROMPTS, res):
        ids = tok(prompt)["input_ids"]
        assert r.token_ids == ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        vals, top = logp.topk(4, -1)
        assert r.topk_ids == top.tolist()
        assert torch.allclose(torch.tensor(r.topk_logprobs), vals, atol=1e-4)
    with pytest.raises(ValueError):
        be.topk_logprobs(PROMPTS, k=0)


def test_loglikelihood_is_sum_of_continuation_logprobs(tiny):
    model, tok = tiny
    be = TransformersBackend(model, tok, batch_size=2)
    reqs = [(PROMPTS[0], " five."), (PROMPTS[2], " (c) wooded area"), ("a", " b c")]
    got = be.loglikelihood(reqs)
    for (ctx, cont), score in zip(reqs, got):
        n_ctx = len(tok(ctx)["input_ids"])
        full = tok(ctx + cont)["input_ids"]
        assert full[:n_ctx] == tok(ctx)["input_ids"]  # no merge across the boundary here
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
        expected = sum(float(logp[j - 1, full[j]]) for j in range(n_ctx, len(full)))
        assert score == pytest.approx(expected, abs=1e-4)
    assert be.loglikelihood(reqs[:1]) == pytest.approx(got[:1], abs=1e-5)


def test_bad_batch_size(tiny):
    with pytest.raises(ValueError):
        TransformersBackend(*tiny, batch_size=0)


# -- shared-prompt scoring (key/value cache) ----------------------------------------------


def _uncached(be: TransformersBackend, reqs) -> list[float]:
    """Reference scores: every request on its whole sequence (the path without a cache)."""
    items = []
    for i, (prompt, cont) in enumerate(reqs):
        text, special = be.render(prompt)
        ctx = be.tokenizer(text, add_special_tokens=special)["input_ids"]
        full = be.tokenizer(text + cont, add_special_tokens=special)["input_ids"]
        assert full[: len(ctx)] == ctx, "reference needs a clean prompt/continuation boundary"
        items.append((i, full, len(ctx)))
    scores = [0.0] * len(reqs)
    with torch.inference_mode():
        be._score_sequences(items, scores)
    return scores


def _shared_calls(be: TransformersBackend, monkeypatch) -> list[int]:
    """Record how many prompt groups each call of the cached path gets."""
    calls: list[int] = []
    inner = be._score_shared_prompts

    def spy(groups, scores):
        calls.append(len(groups))
        inner(groups, scores)

    monkeypatch.setattr(be, "_score_shared_prompts", spy)
    return calls


CANDIDATES = [" five.", " (c) wooded area", " b", " entailment neutral", " 1000 + 3 = 1003 ."]


@pytest.fixture(params=["wide", "narrow"])
def chunking(request, monkeypatch):
    """Candidate passes as the backend chunks them, and with a single row where possible
    (many passes over each prompt's cache)."""
    from fedcot.models.backends import transformers as tb

    if request.param == "narrow":
        monkeypatch.setattr(tb, "_CACHE_ROW_TOKENS", 1)
        monkeypatch.setattr(tb, "_CHUNK_TOKENS", 1)
    return request.param


@pytest.mark.parametrize("batch_size", [1, 3])
def test_cached_scores_equal_uncached_plain(tiny, batch_size, chunking, monkeypatch):
    model, tok = tiny
    be = TransformersBackend(model, tok, batch_size=batch_size)
    calls = _shared_calls(be, monkeypatch)
    # Prompts of mixed lengths, candidates of different token lengths (one token to many).
    reqs = [(p, c) for p in PROMPTS for c in CANDIDATES]
    assert len({len(tok(p + c)["input_ids"]) - len(tok(p)["input_ids"]) for p, c in reqs}) > 3
    done: list[int] = []
    be.set_progress(done.append)
    got = be.loglikelihood(reqs)
    assert calls == [len(PROMPTS)]  # every prompt went through the cache
    assert sum(done) == len(reqs)
    assert got == pytest.approx(_uncached(be, reqs), abs=1e-4)


def test_cached_scores_equal_uncached_chat_interleaved(tiny, chunking, monkeypatch):
    model, tok = tiny
    be = TransformersBackend(model, tok, batch_size=3)
    calls = _shared_calls(be, monkeypatch)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    # Repeated prompts interleaved in arbitrary order, uneven numbers of candidates, and a
    # prompt with a single candidate (scored without a cache).
    reqs = [(chats[k], CANDIDATES[j]) for j in range(5) for k in range(4) if (j + k) % 3 != 1]
    reqs.append((chats[4], "(a) yes"))
    order = torch.randperm(len(reqs), generator=torch.Generator().manual_seed(0)).tolist()
    reqs = [reqs[k] for k in order]
    got = be.loglikelihood(reqs)
    assert calls == [4]
    assert got == pytest.approx(_uncached(be, reqs), abs=1e-4)
    # The same scores one request at a time, and with the whole batch in one go.
    alone = [be.loglikelihood([r])[0] for r in reqs[:6]]
    assert alone == pytest.approx(got[:6], abs=1e-4)
    wide = TransformersBackend(model, tok, batch_size=16).loglikelihood(reqs)
    assert wide == pytest.approx(got, abs=1e-4)


def test_boundary_merge_falls_back_to_whole_sequence(tiny, monkeypatch):
    model, tok = tiny
    be = TransformersBackend(model, tok, batch_size=2)
    prompt = "The capital of France is Paris. The answer is (c) wooded "
    # The prompt's trailing space merges with "area" into one token.
    merged = "area"
    ctx = tok(prompt)["input_ids"]
    full = tok(prompt + merged)["input_ids"]
    assert full[: len(ctx)] != ctx
    start = next(j for j, (a, b) in enumerate(zip(ctx, full)) if a != b)
    reqs = [(prompt, merged), (prompt, "\n(a) five."), (prompt, " (b) 0 1 2")]
    calls = _shared_calls(be, monkeypatch)
    got = be.loglikelihood(reqs)
    assert calls == [1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
    expected = sum(float(logp[j - 1, full[j]]) for j in range(start, len(full)))
    assert got[0] == pytest.approx(expected, abs=1e-4)
    assert got[1:] == pytest.approx(_uncached(be, reqs[1:]), abs=1e-4)


def test_cache_is_not_mutated_between_candidates(tiny, chunking):
    model, tok = tiny
    be = TransformersBackend(model, tok, batch_size=4)
    # Many candidates per prompt, in one or many passes over the same prompt cache.
    reqs = [(PROMPTS[2], c) for c in CANDIDATES * 3] + [(PROMPTS[0], c) for c in CANDIDATES]
    got = be.loglikelihood(reqs)
    assert got[:5] == got[5:10] == got[10:15]
    assert got == pytest.approx(_uncached(be, reqs), abs=1e-4)


def test_unusual_cache_scores_whole_sequences(tiny, monkeypatch):
    from fedcot.models.backends import transformers as tb

    model, tok = tiny
    be = TransformersBackend(model, tok, batch_size=2)
    reqs = [(p, c) for p in PROMPTS[:3] for c in CANDIDATES[:3]]
    expected = _uncached(be, reqs)
    monkeypatch.setattr(tb, "_can_select_rows", lambda cache: False)
    done: list[int] = []
    be.set_progress(done.append)
    assert be.loglikelihood(reqs) == pytest.approx(expected, abs=1e-4)
    assert sum(done) == len(reqs)


def _tiny_gemma3(sliding_window: int = 4):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tiny_models import make_tokenizer

    tok = make_tokenizer(chat=False)
    torch.manual_seed(3)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    return Gemma3ForCausalLM(cfg).eval(), tok


def test_cached_scores_equal_uncached_gemma3_sliding_window(chunking, monkeypatch):
    model, tok = _tiny_gemma3(sliding_window=4)
    be = TransformersBackend(model, tok, batch_size=3)
    calls = _shared_calls(be, monkeypatch)
    # Prompts shorter and (much) longer than the window, continuations longer than it too.
    assert (
        min(len(tok(p)["input_ids"]) for p in PROMPTS)
        < 4
        < max(len(tok(p)["input_ids"]) for p in PROMPTS)
    )
    reqs = [(p, c) for c in CANDIDATES for p in PROMPTS]
    got = be.loglikelihood(reqs)
    assert calls == [len(PROMPTS)]
    assert got == pytest.approx(_uncached(be, reqs), abs=1e-4)
    # Unpadded, one sequence at a time, straight through the model.
    for (prompt, cont), score in list(zip(reqs, got))[:: len(PROMPTS) - 1]:
        ctx, full = tok(prompt)["input_ids"], tok(prompt + cont)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
        expected = sum(float(logp[j - 1, full[j]]) for j in range(len(ctx), len(full)))
        assert score == pytest.approx(expected, abs=1e-4)
    # The window matters: the same weights without it score differently.
    wide, _ = _tiny_gemma3(sliding_window=512)
    wide.load_state_dict(model.state_dict())
    assert TransformersBackend(wide, tok).loglikelihood(reqs[-2:]) != pytest.approx(
        got[-2:], abs=1e-3
    )


@pytest.mark.models
def test_real_cached_scores_equal_uncached_cqa():
    from fedcot.models.registry import load_model

    try:
        model, tok = load_model("smollm2-135m-instruct")
    except Exception as exc:
        pytest.skip(f"smollm2-135m-instruct cannot be loaded: {exc}")
    be = TransformersBackend(model, tok, batch_size=2)
    questions = [
        ("Where would you find a jellyfish?", ["ocean", "desert", "garage", "library", "oven"]),
        ("What do people use to cut paper?", ["spoon", "scissors", "pillow", "radio", "soap"]),
        ("Where do you keep milk cold?", ["closet", "refrigerator", "mailbox", "car", "shelf"]),
    ]
    reqs = []
    for q, choices in questions:
        text = (
            q
            + "\nAnswer Choices:\n"
            + "\n".join(f"({'abcde'[i]}) {c}" for i, c in enumerate(choices))
        )
        chat = [{"role": "user", "content": text}]
        reqs += [(chat, f"({'abcde'[i]}) {c}") for i, c in enumerate(choices)]
    got = be.loglikelihood(reqs)
    assert got == pytest.approx(_uncached(be, reqs), abs=1e-3)


def test_a_vanishing_temperature_decodes_greedily():
    """A temperature such as 1e-300 would overflow the logits to inf; it means greedy."""
    from fedcot.models.backends.base import GenerationParams
    from fedcot.models.backends.transformers import TransformersBackend

    from tiny_models import make_tiny_lm

    model, tok = make_tiny_lm(seed=0, chat=False)
    backend = TransformersBackend(model, tok, batch_size=2)
    assert GenerationParams(temperature=2.2e-308).greedy
    assert not GenerationParams(temperature=0.5).greedy
    tiny = backend.generate(
        ["Question: two"], GenerationParams(max_new_tokens=4, temperature=1e-300)
    )
    greedy = backend.generate(["Question: two"], GenerationParams(max_new_tokens=4))
    assert tiny[0].text == greedy[0].text
