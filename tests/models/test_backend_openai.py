"""OpenAIBackend against a local scripted fake server (127.0.0.1, OS-assigned port)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fedcot.errors import BackendError, ConfigError
from fedcot.models.backends.base import GenerationParams
from fedcot.models.backends.openai import (
    OpenAIBackend,
    TextTopKLogprobs,
    _normalise_base_url,
    _parse_retry_after,
)

from fake_openai_server import FakeOpenAIServer, Fault

pytestmark = [pytest.mark.network, pytest.mark.timeout(30)]

MODEL = "fake-model"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    srv = FakeOpenAIServer(models={MODEL}).start()
    try:
        yield srv
    finally:
        srv.stop()


def make_backend(url: str, **kw: object) -> OpenAIBackend:
    """A backend with tiny backoffs so retry tests stay fast."""
    opts: dict[str, object] = {
        "api_key": "",
        "timeout": 2.0,
        "max_retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
    }
    opts.update(kw)
    return OpenAIBackend(url, MODEL, **opts)  # type: ignore[arg-type]


CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there friend"},
]


# ---------------------------------------------------------------- happy paths


def test_chat_and_completion_happy_path(server: FakeOpenAIServer) -> None:
    with make_backend(server.url) as be:
        out = be.generate([CHAT, "the quick brown fox"], GenerationParams(max_new_tokens=10))
    assert [c.text for c in out] == ["HELLO THERE FRIEND", "THE QUICK BROWN FOX"]
    assert [c.finish_reason for c in out] == ["stop", "stop"]
    assert out[0].prompt_tokens == 5 and out[0].completion_tokens == 3
    assert out[1].prompt_tokens == 4 and out[1].completion_tokens == 4
    paths = sorted(r.path for r in server.requests)
    assert paths == ["/v1/chat/completions", "/v1/completions"]


def test_model_name_and_supports_chat(server: FakeOpenAIServer) -> None:
    be = make_backend(server.url)
    assert be.model_name == MODEL
    assert be.supports_chat is True
    assert "Bearer" not in repr(be)
    be.close()
    be.close()  # idempotent


def test_finish_reason_length(server: FakeOpenAIServer) -> None:
    with make_backend(server.url) as be:
        (c,) = be.generate(["one two three four five"], GenerationParams(max_new_tokens=2))
    assert c.text == "ONE TWO"
    assert c.finish_reason == "length"
    assert c.completion_tokens == 2


def test_empty_prompt_list_sends_nothing(server: FakeOpenAIServer) -> None:
    with make_backend(server.url) as be:
        assert be.generate([]) == []
    assert server.count() == 0


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_normalised(server: FakeOpenAIServer, suffix: str) -> None:
    with make_backend(server.root + suffix) as be:
        assert be.base_url == server.url
        (c,) = be.generate(["ping"])
    assert c.text == "PING"


def test_normalise_base_url_rules() -> None:
    assert _normalise_base_url("https://api.example.com/openai/v1/") == (
        "https://api.example.com/openai/v1"
    )
    with pytest.raises(ConfigError):
        _normalise_base_url("127.0.0.1:8000")


def test_missing_usage_gives_zero_counts() -> None:
    with FakeOpenAIServer(include_usage=False) as srv, make_backend(srv.url) as be:
        (c,) = be.generate(["a b c"])
    assert c.text == "A B C"
    assert (c.prompt_tokens, c.completion_tokens) == (0, 0)


def test_order_preserved_and_concurrency_bounded() -> None:
    prompts = [f"prompt number {i}" for i in range(20)]
    with FakeOpenAIServer(delay=(0.005, 0.04), seed=1) as srv:
        with make_backend(srv.url, max_concurrency=4) as be:
            out = be.generate(prompts)
        assert srv.max_in_flight <= 4
        assert srv.max_in_flight >= 2  # requests did overlap
        assert srv.count() == 20
    assert [c.text for c in out] == [f"PROMPT NUMBER {i}" for i in range(20)]


# ---------------------------------------------------------------- params mapping


def test_params_mapped_into_request_json(server: FakeOpenAIServer) -> None:
    params = GenerationParams(
        max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=20, stop=["###", "\n\n"], seed=42
    )
    with make_backend(server.url) as be:
        be.generate(["x y"], params)
        be.generate([CHAT], GenerationParams())
    comp, chat = server.requests
    assert comp.path == "/v1/completions"
    assert comp.body == {
        "model": MODEL,
        "prompt": "x y",
        "max_tokens": 7,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "stop": ["###", "\n\n"],
        "seed": 42,
    }
    assert chat.path == "/v1/chat/completions"
    assert chat.body is not None
    assert chat.body["messages"] == CHAT
    assert chat.body["max_tokens"] == 128
    assert chat.body["temperature"] == 0.0
    # defaults that mean "off" are not sent
    for absent in ("top_k", "stop", "seed"):
        assert absent not in chat.body


def test_at_most_four_stop_strings_sent_all_applied(server: FakeOpenAIServer) -> None:
    stops = ["S1", "S2", "S3", "S4", "CUT"]
    with make_backend(server.url) as be:
        (c,) = be.generate(["keep this cut that"], GenerationParams(stop=stops))
    assert server.requests[0].body["stop"] == stops[:4]  # type: ignore[index]
    assert c.text == "KEEP THIS "
    assert c.finish_reason == "stop"


def test_stop_strings_applied_client_side(server: FakeOpenAIServer) -> None:
    params = GenerationParams(max_new_tokens=3, stop=["STOP"])
    with make_backend(server.url) as be:
        out = be.generate(
            ["alpha beta STOP gamma delta", [{"role": "user", "content": "a STOP b"}]], params
        )
    # the fake server ignores "stop"; the backend cuts anyway
    assert out[0].text == "ALPHA BETA "
    assert out[0].finish_reason == "stop"  # the server said "length", but a stop string hit
    assert out[1].text == "A "
    assert out[1].finish_reason == "stop"


def test_chat_prompt_refused_when_chat_disabled(server: FakeOpenAIServer) -> None:
    with make_backend(server.url, chat=False) as be:
        assert be.supports_chat is False
        with pytest.raises(BackendError, match="chat=False"):
            be.generate([CHAT])
        assert be.generate(["still fine"])[0].text == "STILL FINE"


def test_invalid_prompt_rejected_before_any_request(server: FakeOpenAIServer) -> None:
    with make_backend(server.url) as be, pytest.raises(TypeError):
        be.generate(["ok", 42])  # type: ignore[list-item]
    assert server.count() == 0


def test_closed_backend_raises(server: FakeOpenAIServer) -> None:
    be = make_backend(server.url)
    be.close()
    with pytest.raises(BackendError, match="closed"):
        be.generate(["x"])


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "faults",
    [
        [Fault.http(429)],
        [Fault.http(500), Fault.http(503)],
        [Fault.http(502), Fault.http(504), Fault.http(429)],
        [Fault.drop()],
        [Fault.malformed()],
    ],
    ids=["429", "500-503", "502-504-429", "drop", "malformed"],
)
def test_retry_then_success(server: FakeOpenAIServer, faults: list[Fault]) -> None:
    server.add_faults(*faults)
    with make_backend(server.url) as be:
        (c,) = be.generate(["retry me"])
    assert c.text == "RETRY ME"
    assert server.count() == len(faults) + 1


def test_retry_after_timeout(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault.hang(3.0))
    with make_backend(server.url, timeout=0.3) as be:
        t0 = time.monotonic()
        (c,) = be.generate(["slow one"])
        elapsed = time.monotonic() - t0
    assert c.text == "SLOW ONE"
    assert server.count() == 2
    assert 0.25 <= elapsed < 2.5


def test_retry_after_header_honoured(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault.http(429, retry_after="0.4"))
    with make_backend(server.url, backoff_base=0.001, backoff_max=5.0) as be:
        t0 = time.monotonic()
        (c,) = be.generate(["wait"])
        elapsed = time.monotonic() - t0
    assert c.text == "WAIT"
    assert elapsed >= 0.38
    assert server.count() == 2


def test_retry_after_capped_by_backoff_max(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault.http(503, retry_after="30"))
    with make_backend(server.url, backoff_max=0.1) as be:
        t0 = time.monotonic()
        be.generate(["cap"])
        elapsed = time.monotonic() - t0
    assert elapsed < 2.0


def test_parse_retry_after() -> None:
    assert _parse_retry_after(None) is None
    assert _parse_retry_after("2") == 2.0
    assert _parse_retry_after(" 0.5 ") == 0.5
    assert _parse_retry_after("soon") is None
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_gives_up_after_max_retries(server: FakeOpenAIServer) -> None:
    server.add_faults(*[Fault.http(503)] * 10)
    with make_backend(server.url, max_retries=2) as be, pytest.raises(BackendError) as ei:
        be.generate(["never"])
    msg = str(ei.value)
    assert "3 attempts" in msg
    assert "503" in msg and "injected fault" in msg
    assert server.count() == 3


def test_gives_up_on_repeated_timeouts(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault.hang(3.0), Fault.hang(3.0))
    be = make_backend(server.url, timeout=0.2, max_retries=1)
    with be, pytest.raises(BackendError, match=r"2 attempts.*timed out"):
        be.generate(["x"])


def test_unreachable_server_bounded() -> None:
    # a port that was just free: connection refused, retried, then a clear error
    srv = FakeOpenAIServer().start()
    url = srv.url
    srv.stop()
    with make_backend(url, max_retries=1) as be, pytest.raises(BackendError, match="2 attempts"):
        be.generate(["x"])


# ---------------------------------------------------------------- non-retried errors


def test_401_not_retried_and_mentions_api_key() -> None:
    with FakeOpenAIServer(api_key="sk-right") as srv:
        be = make_backend(srv.url, api_key="sk-wrong-secret")
        with be, pytest.raises(BackendError) as ei:
            be.generate(["x"])
        assert srv.count() == 1
    msg = str(ei.value)
    assert "401" in msg
    assert "API key" in msg
    assert "Incorrect API key provided" in msg
    assert "sk-wrong-secret" not in msg


def test_no_key_sent_hint_names_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKE_KEY_VAR", raising=False)
    with FakeOpenAIServer(api_key="sk-right") as srv:
        be = OpenAIBackend(srv.url, MODEL, api_key_env="FAKE_KEY_VAR", max_retries=0)
        with be, pytest.raises(BackendError, match="FAKE_KEY_VAR"):
            be.generate(["x"])
        assert "authorization" not in srv.requests[0].headers


def test_api_key_from_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_FAKE_KEY", "sk-from-env")
    with FakeOpenAIServer(api_key="sk-from-env") as srv:
        with OpenAIBackend(srv.url, MODEL, api_key_env="MY_FAKE_KEY") as be:
            (c,) = be.generate(["hi"])
        assert srv.requests[0].headers["authorization"] == "Bearer sk-from-env"
    assert c.text == "HI"


def test_explicit_key_beats_env_and_extra_headers_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    with FakeOpenAIServer(api_key="sk-explicit") as srv:
        with OpenAIBackend(srv.url, MODEL, api_key="sk-explicit", headers={"X-Trace": "abc"}) as be:
            be.generate(["hi"])
        headers = srv.requests[0].headers
    assert headers["authorization"] == "Bearer sk-explicit"
    assert headers["x-trace"] == "abc"


def test_404_unknown_model_hint(server: FakeOpenAIServer) -> None:
    be = OpenAIBackend(server.url, "no-such-model", max_retries=3)
    with be, pytest.raises(BackendError) as ei:
        be.generate(["x"])
    msg = str(ei.value)
    assert "404" in msg and "does not exist" in msg
    assert "base_url" in msg and "no-such-model" in msg
    assert server.count() == 1


def test_400_not_retried(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault.http(400))
    with make_backend(server.url) as be, pytest.raises(BackendError, match="HTTP 400"):
        be.generate(["x"])
    assert server.count() == 1


def test_fatal_error_stops_the_batch(server: FakeOpenAIServer) -> None:
    # the first request fails for good; queued prompts are not all sent
    server.add_faults(Fault.http(403))
    be = make_backend(server.url, max_concurrency=1)
    with be, pytest.raises(BackendError, match="403"):
        be.generate([f"p{i}" for i in range(10)])
    assert server.count() < 10


def test_non_openai_json_is_a_clear_error(server: FakeOpenAIServer) -> None:
    be = make_backend(server.url)
    # the backend talks to a server that answers JSON without "choices"
    with be, pytest.raises(BackendError, match="choices"):
        be._first_choice({"hello": "world"}, "/completions")


def test_constructor_validation() -> None:
    with pytest.raises(ConfigError):
        OpenAIBackend("http://127.0.0.1:1/v1", MODEL, max_concurrency=0)
    with pytest.raises(ConfigError):
        OpenAIBackend("http://127.0.0.1:1/v1", MODEL, timeout=0)
    with pytest.raises(ConfigError):
        OpenAIBackend("http://127.0.0.1:1/v1", "")


# ---------------------------------------------------------------- top-k logprobs


def test_topk_logprobs_echo_parsing(server: FakeOpenAIServer) -> None:
    text = "the cat sat down"
    with make_backend(server.url) as be:
        (res,) = be.topk_logprobs([text], k=3)
    assert isinstance(res, TextTopKLogprobs)
    assert res.tokens == ["the", " cat", " sat", " down"]
    n = len(res.tokens)
    assert res.token_ids == [-1] * n
    assert len(res.topk_tokens) == len(res.topk_logprobs) == len(res.topk_ids) == n
    for row_t, row_lp, row_id in zip(res.topk_tokens, res.topk_logprobs, res.topk_ids, strict=True):
        assert len(row_t) == len(row_lp) == len(row_id) == 3  # k+1 from the server, cut to k
        assert row_lp == sorted(row_lp, reverse=True)
        assert row_id == [-1, -1, -1]
    # entry i predicts token i+1: the fake's best candidate is the actual next token
    for i in range(n - 1):
        assert res.topk_tokens[i][0] == res.tokens[i + 1]
        assert res.topk_logprobs[i][0] == pytest.approx(-0.05)
    # the last entry predicts the token after the text (the generated one)
    assert res.topk_tokens[-1][0] == " END"
    assert res.topk_tokens[0][1:] == ["alt1_0", "alt1_1"]
    body = server.requests[0].body
    assert body is not None
    assert server.requests[0].path == "/v1/completions"
    assert body["echo"] is True and body["logprobs"] == 3 and body["max_tokens"] == 1
    assert body["prompt"] == text


def test_topk_logprobs_many_texts_in_order_without_usage() -> None:
    texts = [f"w{i} x{i} y{i}" for i in range(6)]
    srv = FakeOpenAIServer(include_usage=False, delay=(0.0, 0.02))
    with srv, make_backend(srv.url, max_concurrency=3) as be:
        res = be.topk_logprobs(texts, k=2)
    assert [r.tokens for r in res] == [[f"w{i}", f" x{i}", f" y{i}"] for i in range(6)]
    assert all(r.topk_tokens[-1][0] == " END" for r in res)


def test_topk_logprobs_unsupported_server() -> None:
    with FakeOpenAIServer(logprobs_supported=False) as srv, make_backend(srv.url) as be:
        with pytest.raises(BackendError, match="echo") as ei:
            be.topk_logprobs(["a b"], k=2)
        assert srv.count() == 1
    assert "logprobs" in str(ei.value)


def test_topk_logprobs_no_logprobs_block(server: FakeOpenAIServer) -> None:
    # a server that ignores echo/logprobs answers a plain completion: logprobs is null
    with make_backend(server.url) as be:
        data = {"choices": [{"text": "x", "logprobs": None}]}
        be._post = lambda *a, **k: data  # type: ignore[method-assign]
        with pytest.raises(BackendError, match="no prompt log-probabilities"):
            be.topk_logprobs(["a b"], k=2)


def test_topk_logprobs_rejects_bad_k(server: FakeOpenAIServer) -> None:
    with make_backend(server.url) as be, pytest.raises(ValueError):
        be.topk_logprobs(["a"], k=0)
