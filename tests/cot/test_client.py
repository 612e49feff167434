"""The FedCoT pipeline end to end on tiny random models: run folder, privacy, resume."""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from fedcot.cot.cache import RationaleCache
from fedcot.cot.client import run_fedcot
from fedcot.cot.config import FedCoTConfig
from fedcot.data.loaders import write_jsonl
from fedcot.data.synthetic import generate_private_records
from fedcot.data.tasks import Example
from fedcot.errors import ConfigError
from fedcot.models.backends.base import Backend
from fedcot.models.backends.replay import example_block
from fedcot.privacy.units import split_units

from fake_openai_server import FakeOpenAIServer
from leaks import sensitive_units

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cqa_file(tmp_path_factory) -> Path:
    """Twelve small multiple-choice examples as JSONL (train and test alike)."""
    rows = []
    for i in range(12):
        choices = [f"thing{i}{c}" for c in "abcde"]
        rows.append(Example(f"q{i}", f"Where is item {i} kept?", choices[i % 5], choices))
    return write_jsonl(rows, tmp_path_factory.mktemp("data") / "cqa.jsonl")


class SpyServer(Backend):
    """Wraps a backend and records every prompt it receives."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.received: list[object] = []

    @property
    def supports_chat(self) -> bool:
        return self.inner.supports_chat

    def generate(self, prompts, params=None):
        self.received.extend(prompts)
        return self.inner.generate(prompts, params)


def _cfg(tmp_path: Path, tiny_dir: Path, data: Path | str, **kw) -> FedCoTConfig:
    base = {
        "task": "cqa",
        "data": str(data),
        "train_split": "train",
        "test_split": "test",
        "train_limit": 6,
        "test_limit": 4,
        "student": {"model": str(tiny_dir), "batch_size": 4},
        "server": {"model": str(tiny_dir), "batch_size": 2},
        "strategy": "exponential",
        "privacy": {"model": str(tiny_dir), "epsilon": 3.0},
        "generation": {"max_new_tokens": 12},
        "eval_generation": {"max_new_tokens": 8},
        "train": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, "lora_r": 4},
        "output_dir": str(tmp_path / "run"),
    }
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return FedCoTConfig.model_validate(base)


def test_pipeline_end_to_end_on_tiny_models(tmp_path, tiny_dir, cqa_file):
    from fedcot.models.backends.transformers import TransformersBackend

    cfg = _cfg(tmp_path, tiny_dir, cqa_file)
    spy = SpyServer(TransformersBackend.from_pretrained(str(tiny_dir), batch_size=2))
    res = run_fedcot(cfg, server=spy, progress=False)
    run = Path(res.run_dir)
    # Every stage left its artefact.
    for name in (
        "config.yaml",
        "manifest.json",
        "metrics.json",
        "server_cache.jsonl",
        "privacy_ledger.json",
        "plots/loss.png",
        "plots/accuracy.png",
        "eval/before.json",
        "eval/after.json",
        "client_private/perturbations.jsonl",
        "client_private/rationales.jsonl",
        "train/adapter/adapter_config.json",
    ):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["strategy"] == "exponential" and manifest["decoder"] == "inverse-map"
    assert manifest["versions"]["torch"] and manifest["seeds"]["privacy"] is None
    assert manifest["privacy_randomness"] == "OS entropy"  # never the run seed
    assert manifest["privacy"]["ledger"]["draws"] > 0 and "finished" in manifest
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["before"]["n"] == metrics["after"]["n"] == 4
    assert metrics["rationales"]["requested"] == 6
    assert metrics["train"]["steps"] == 2
    assert len(spy.received) == 6
    assert len(RationaleCache(run / "server_cache.jsonl")) == 6
    # The server saw perturbed text only: the prompts it got are those in the cache, and
    # none of them holds an original example verbatim.
    from fedcot.data.loaders import load_dataset
    from fedcot.data.tasks import get_task

    task = get_task("cqa")
    originals = [task.input_text(ex) for ex in load_dataset(cqa_file, task)[:6]]
    blocks = [example_block(p) for p in spy.received]
    assert len(blocks) == 6 and not set(blocks) & set(originals)
    # The template's field labels are public and kept; only the example's text changed.
    assert all(b.startswith("Question: ") and "\n(e) " in b for b in blocks)
    # The adapter loads with plain PEFT + transformers.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    PeftModel.from_pretrained(base, run / "train" / "adapter")

    # Resuming a finished run asks the server nothing and keeps the same perturbations.
    spy2 = SpyServer(spy.inner)
    res2 = run_fedcot(cfg, server=spy2, resume=True, progress=False)
    assert spy2.received == []
    assert res2.server["asked"] == 0 and res2.server["cached"] == 6
    # Without --resume an existing run folder is refused; a changed config too.
    with pytest.raises(ConfigError, match="already holds a run"):
        run_fedcot(cfg, server=spy2, progress=False)
    changed = cfg.model_copy(update={"fewshot": 1})
    with pytest.raises(ConfigError, match="different configuration"):
        run_fedcot(changed, server=spy2, resume=True, progress=False)


def test_label_only_training_asks_no_server(tmp_path, tiny_dir, cqa_file):
    cfg = _cfg(tmp_path, tiny_dir, cqa_file, strategy="none", train={"alpha": 0.0})
    res = run_fedcot(cfg, server=None, progress=False)  # would fail if it built the server
    assert res.rationales == {"requested": 0}
    assert not (Path(res.run_dir) / "server_cache.jsonl").exists()


def test_replay_teacher_only_serves_strategy_none():
    with pytest.raises(Exception, match="replay"):
        FedCoTConfig.model_validate({"server": {"kind": "replay"}, "strategy": "exponential"})
    cfg = FedCoTConfig.model_validate({"server": {"kind": "replay"}, "strategy": "none"})
    assert cfg.decoder_name == "identity"
    with pytest.raises(Exception, match="inverse-map"):
        FedCoTConfig.model_validate({"strategy": "none", "decoder": "inverse-map"})


@pytest.mark.models
@pytest.mark.parametrize("strategy", ["exponential", "adaptive", "encoder-decoder"])
def test_spy_server_receives_no_sensitive_unit(tmp_path, tiny_dir, strategy):
    """For every private strategy, no sensitive unit of a record reaches the server in the
    prompt about that record, and no long sensitive span reaches it at all."""
    from fedcot.models.backends.transformers import TransformersBackend

    # The real word space of the client model (SmolLM2): tens of thousands of candidates.
    kw: dict = {
        "task": "private-records",
        "strategy": strategy,
        "privacy": {"model": "smollm2-135m-instruct", "epsilon": 3.0},
        "train_limit": 8,
        "test_limit": 2,
        "train": {"max_steps": 1, "batch_size": 2, "lora_r": 4},
    }
    if strategy == "encoder-decoder":
        public = write_jsonl(generate_private_records(6, seed=99), tmp_path / "public.jsonl")
        kw["encoder_decoder"] = {
            "public_data": str(public),
            "public_limit": 6,
            "mechanism": {"strategy": "exponential", "model": "smollm2-135m-instruct"},
            "train": {"max_steps": 1, "batch_size": 2, "lora_r": 4},
            "max_new_tokens_encode": 24,
            "max_new_tokens_decode": 8,
        }
    cfg = _cfg(tmp_path, tiny_dir, "synthetic", **kw)
    spy = SpyServer(TransformersBackend.from_pretrained(str(tiny_dir), batch_size=4))
    run_fedcot(cfg, server=spy, progress=False)
    private = generate_private_records(8, seed=0)
    # The prompts about private records come last and in order (the encoder-decoder first
    # asks about its public examples; records it could not encode are not sent).
    sent_ids = list(range(8))
    if strategy == "encoder-decoder":
        encoded = (Path(cfg.output_dir) / "client_private" / "encoded.jsonl").read_text()
        texts = [json.loads(x)["text"] for x in encoded.splitlines()]
        sent_ids = [i for i, t in enumerate(texts) if t != "[unavailable]"]
    prompts = spy.received[len(spy.received) - len(sent_ids) :]
    assert len(prompts) == len(sent_ids)
    draws: list[Counter] = [Counter() for _ in private]
    if strategy != "encoder-decoder":
        rows = (Path(cfg.output_dir) / "client_private" / "perturbations.jsonl").read_text()
        for i, line in enumerate(rows.splitlines()):
            for u in json.loads(line)["units"]:
                # Every draw counts, also one that landed on its own value (with OS entropy a
                # number or a month name is sometimes drawn again); an entity's stand-in is
                # several units ("3 September 1994", "x@y.com").
                if u["kind"] != "name-part":
                    for v in split_units(u["output"]):
                        draws[i][v.text] += v.kind in ("word", "number")
    for i, prompt in zip(sent_ids, prompts):
        block = example_block(prompt)
        seen = Counter(u.text for u in split_units(block) if u.kind in ("word", "number"))
        # A sensitive unit may appear only where a draw produced that very string (for a
        # different unit, e.g. "27" → "750" next to a phone with "750", or onto itself).
        leaked = sorted(w for w in sensitive_units(private[i]) if seen[w] > draws[i][w])
        assert leaked == [], (private[i].id, leaked)
    received = "\n".join(example_block(p) for p in spy.received[len(spy.received) - len(prompts) :])
    months = set(calendar.month_name)  # "in December": a surrogate date may say it too
    for r in private:
        for sp in r.meta["spans"]:
            # Shorter spans (ages, small amounts) and bare month names recur by chance.
            if len(sp["text"]) >= 6 and sp["text"] not in months:
                assert not re.search(rf"(?<!\w){re.escape(sp['text'])}(?!\w)", received), sp


def test_killed_run_resumes_without_re_asking(tmp_path, tiny_dir, cqa_file):
    """SIGKILL during generation; the resumed run asks only what was not yet answered."""
    cfg_path = tmp_path / "run.toml"
    run_dir = tmp_path / "run"
    with FakeOpenAIServer(delay=(0.4, 0.4)) as server:
        cfg_path.write_text(
            f"""
task = "cqa"
data = "{cqa_file}"
train_split = "train"
test_split = "test"
train_limit = 10
test_limit = 2
strategy = "none"
eval_before = false
output_dir = "{run_dir}"
[student]
model = "{tiny_dir}"
[server]
kind = "openai"
model = "teacher"
base_url = "{server.url}"
batch_size = 2
max_concurrency = 1
[generation]
max_new_tokens = 8
[train]
max_steps = 1
batch_size = 2
lora_r = 4
"""
        )
        env = {
            **os.environ,
            "FEDCOT_PROGRESS": "0",
            "HF_HUB_OFFLINE": "1",
            "OPENAI_API_KEY": "test",
        }
        cmd = [sys.executable, "-m", "fedcot", "distill", "--config", str(cfg_path)]
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        cache_file = run_dir / "server_cache.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline:
            if cache_file.exists() and len(cache_file.read_text().splitlines()) >= 4:
                break
            if proc.poll() is not None:
                pytest.fail("run ended before it was killed:\n" + proc.stdout.read().decode())
            time.sleep(0.05)
        else:
            proc.kill()
            pytest.fail("no cache lines appeared")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        answered = {
            example_block(json.loads(line)["prompt"])
            for line in cache_file.read_text().splitlines()
            if line.endswith("}")
        }
        assert 4 <= len(answered) < 10
        n_before = server.count()
        done = subprocess.run(
            [*cmd, "--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        after = [
            example_block(r.body.get("messages") or r.body["prompt"])
            for r in server.requests[n_before:]
        ]
    assert after, "the resumed run asked nothing"
    assert not set(after) & answered, "the resumed run re-asked answered prompts"
    assert len(RationaleCache(cache_file)) == 10
    assert json.loads((run_dir / "metrics.json").read_text())["server"]["asked"] == len(after)


def _filtered_replay_cfg(tmp_path, tiny_dir, rows):
    """strategy none, the recorded rationales as the teacher, the agreement filter on."""
    data = write_jsonl(rows, tmp_path / "cqa_rat.jsonl")
    replay = {"kind": "replay", "model": "palm"}
    return _cfg(tmp_path, tiny_dir, data, strategy="none", server=replay, filter=True, privacy={})


def test_replay_teacher_with_filter_drops_disagreeing_rationales(tmp_path, tiny_dir):
    """strategy none + replay: recorded rationales; the filter drops the two whose recorded
    conclusion is wrong, and the count is reported."""
    rows = []
    for i in range(6):
        choices = [f"thing{i}{c}" for c in "abcde"]
        wrong = i in (1, 4)
        rows.append(
            Example(
                f"q{i}",
                f"Where is item {i} kept?",
                choices[0],
                choices,
                rationale=f"Item {i} is usually kept there.",
                rationale_label=choices[1] if wrong else choices[0],
            )
        )
    cfg = _filtered_replay_cfg(tmp_path, tiny_dir, rows)
    res = run_fedcot(cfg, progress=False)
    assert res.rationales["requested"] == 6
    assert res.rationales["agree_with_gold"] == 4 and res.rationales["kept"] == 4
    assert res.train["with_rationale"] == 4
    kept = [
        json.loads(x)
        for x in (Path(res.run_dir) / "client_private/rationales.jsonl").read_text().splitlines()
    ]
    assert [r["kept"] for r in kept] == [True, False, True, True, False, True]
    assert kept[0]["rationale"] == "Item 0 is usually kept there."


def test_filter_that_drops_every_rationale_is_an_error_naming_the_fix(tmp_path, tiny_dir):
    rows = [
        Example(
            f"q{i}",
            f"Where is item {i} kept?",
            "a",
            list("abcde"),
            rationale=f"Item {i} is kept elsewhere.",
            rationale_label="b",
        )
        for i in range(3)
    ]
    cfg = _filtered_replay_cfg(tmp_path, tiny_dir, rows)
    with pytest.raises(ConfigError, match="filter = true drops them all") as err:
        run_fedcot(cfg, progress=False)
    assert "filter = false" in (err.value.hint or "")


class ArithmeticServer(Backend):
    """A scripted teacher: adds the numbers of the question it receives, step by step
    (subtracts them on every fifth prompt: a wrong plan)."""

    model_name = "scripted-adder"

    def __init__(self) -> None:
        self.received: list[str] = []

    def generate(self, prompts, params=None):
        from fedcot.models.backends.base import Completion

        out = []
        for prompt in prompts:
            question = example_block(prompt)
            self.received.append(question)
            a, b = (int(n) for n in re.findall(r"\d+", question)[:2])
            if len(self.received) % 5 == 0:  # a wrong plan: re-execution cannot save it
                text = f"She loses {b}: {a} - {b} = {a - b}. So the answer is {a - b}."
            else:
                text = (
                    f"She has {a} and gets {b} more: {a} + {b} = {a + b}. So the answer is {a + b}."
                )
            out.append(Completion(text, "stop", 0, len(text.split())))
        return out


def test_rationale_stage_counts_fidelity_and_redoes_arithmetic(tmp_path):
    """stage = rationales on numbers hidden by the metric mechanism: the scripted server
    computes on stand-ins, the decoder redoes its steps on the real numbers, and the run
    reports the share that reaches the gold answer, without loading a student."""
    rows = [
        Example(
            f"s{i}",
            f"Mia has {20 + i} shells and finds {7 + 2 * i} more. How many now?",
            str(27 + 3 * i),
        )
        for i in range(10)
    ]
    data = write_jsonl(rows, tmp_path / "svamp.jsonl")
    cfg = FedCoTConfig.model_validate(
        {
            "task": "svamp",
            "data": str(data),
            "train_limit": 10,
            "test_limit": 2,
            "strategy": "adaptive",
            "stage": "rationales",
            "student": {"model": "no-such-model-is-loaded"},
            "output_dir": str(tmp_path / "run"),
        }
    )
    server = ArithmeticServer()
    res = run_fedcot(cfg, server=server, progress=False)
    assert res.after is None and res.before is None and "load_student" not in res.timings
    sent_numbers = [int(n) for q in server.received for n in re.findall(r"\d+", q)]
    real = {20 + i for i in range(10)} | {7 + 2 * i for i in range(10)}
    assert sum(n not in real for n in sent_numbers) >= 10  # the server saw stand-ins
    assert res.rationales["requested"] == 10
    assert res.rationales["agree_with_gold"] == 8  # the two wrong plans stay wrong
    assert res.rationales["fidelity"] == pytest.approx(0.8)
    decoded = [
        json.loads(x)
        for x in (Path(res.run_dir) / "client_private/rationales.jsonl").read_text().splitlines()
    ]
    assert decoded[0]["rationale"] == "She has 20 and gets 7 more: 20 + 7 = 27."


def test_distill_reads_columns_named_by_fields(tmp_path):
    """A file whose question column is 'query' loads through `fields` (no student needed)."""
    path = tmp_path / "mine.jsonl"
    rows = [
        {"query": f"Tom has {3 + i} cards and gets {4} more. How many?", "answer": 7 + i}
        for i in range(4)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {
        "task": "svamp",
        "data": str(path),
        "train_limit": 4,
        "test_limit": 1,
        "strategy": "none",
        "stage": "rationales",
        "output_dir": str(tmp_path / "run"),
    }
    with pytest.raises(Exception, match="query"):
        run_fedcot(FedCoTConfig.model_validate(base), server=ArithmeticServer(), progress=False)
    cfg = FedCoTConfig.model_validate(
        {**base, "fields": {"question": "query"}, "output_dir": str(tmp_path / "run2")}
    )
    res = run_fedcot(cfg, server=ArithmeticServer(), progress=False)
    assert res.rationales["requested"] == 4 and res.rationales["agree_with_gold"] == 4
