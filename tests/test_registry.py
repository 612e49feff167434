"""Model registry: name resolution, and the embedded models' load round trip (real weights)."""

from __future__ import annotations

import time

import pytest

from fedcot.errors import ModelNotFoundError
from fedcot.models.backends import GenerationParams
from fedcot.models.backends.transformers import TransformersBackend
from fedcot.models.registry import EMBEDDED, MARKER, is_prepared, prepare, resolve


def test_resolve_kinds(tmp_path):
    assert resolve("smollm2-135m-instruct").kind == "embedded"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    src = resolve(tmp_path / "m.gguf")
    assert (src.kind, src.name) == ("gguf", "m")
    assert resolve(tmp_path).kind == "gguf"  # a folder holding exactly one .gguf
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert resolve(tmp_path / "hf").kind == "hf"
    assert is_prepared(resolve(tmp_path / "hf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a config.json"):
        resolve(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError) as info:
        resolve("gpt-17")
    assert "smollm2-135m-instruct" in str(info.value) and "fedcot models list" in str(info.value)


def _installed(name: str) -> None:
    if not EMBEDDED[name].installed():
        pytest.skip(f"{name} is not installed (run 'make install')")


@pytest.mark.models
@pytest.mark.parametrize(
    ("name", "prompt", "expect"),
    [
        ("smollm2-135m-instruct", [{"role": "user", "content": "What is 2+3?"}], "5"),
        ("gemma3-270m", "Question: What is 2+3?\nAnswer:", "5"),
    ],
)
def test_embedded_model_round_trip(name, prompt, expect):
    _installed(name)
    folder = prepare(name)  # converts on the first run, then reuses the cache
    assert (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert is_prepared(resolve(name))
    t0 = time.perf_counter()
    backend = TransformersBackend.from_pretrained(name)
    load_s = time.perf_counter() - t0
    # The cached float32 checkpoint loads in seconds (Gemma's 262k-token tokenizer is most of it).
    assert load_s < 20, f"cached load took {load_s:.1f} s"
    assert backend.supports_chat == EMBEDDED[name].chat
    assert next(backend.model.parameters()).dtype.is_floating_point
    out = backend.generate([prompt], GenerationParams(max_new_tokens=12))[0]
    assert expect in out.text, out.text
    assert prepare(name) == folder  # idempotent


@pytest.mark.models
def test_gguf_file_path_loads_like_its_name():
    _installed("smollm2-135m-instruct")
    gguf = EMBEDDED["smollm2-135m-instruct"].gguf_path()
    src = resolve(gguf)
    assert src.kind == "gguf" and src.path == gguf.resolve()
    a = TransformersBackend.from_pretrained("smollm2-135m-instruct")
    b = TransformersBackend.from_pretrained(str(gguf))
    p = GenerationParams(max_new_tokens=8)
    prompt = [[{"role": "user", "content": "Name a colour."}]]
    assert a.generate(prompt, p)[0].text == b.generate(prompt, p)[0].text
