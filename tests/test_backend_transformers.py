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
