"""FedCoT building blocks: templates, response cache, replay teacher, decoders."""

from __future__ import annotations

import json

import pytest

from fedcot.cot.cache import AskStats, RationaleCache, ask_cached
from fedcot.cot.decoders import (
    DecodeItem,
    ICLDecoder,
    inverse_map,
    make_decoder,
    split_conclusion,
)
from fedcot.cot.templates import PUBLIC_SHOTS, fewshot_examples, server_prompt
from fedcot.data.tasks import Example, get_task
from fedcot.errors import BackendError, ConfigError
from fedcot.models.backends.base import Backend, Completion, GenerationParams
from fedcot.models.backends.replay import ReplayBackend, example_block
from fedcot.privacy.perturb import Perturbation, UnitDraw


class CountingBackend(Backend):
    """Answers "ANSWER to <last line>"; records every prompt it is sent."""

    model_name = "counting"

    def __init__(self, chat: bool = False) -> None:
        self.sent: list[object] = []
        self.calls = 0
        self._chat = chat

    @property
    def supports_chat(self) -> bool:
        return self._chat

    def generate(self, prompts, params=None):
        self.calls += 1
        self.sent.extend(prompts)
        return [Completion(f"ANSWER to {example_block(p)[-20:]}", "stop", 3, 4) for p in prompts]


# -- templates --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cqa", "esnli", "rte", "svamp", "private-records", "yes-no"])
def test_fewshot_shots_parse_back_to_their_labels(name):
    task = get_task(name)
    shots = fewshot_examples(task, 2)
    assert len(shots) == 2
    for shot in shots:
        target = task.target_text(shot, cot=True)
        assert task.is_correct(task.extract_answer(target, shot), shot), (name, target)
        if name == "cqa":
            assert len(shot.choices) == 5


def test_server_prompt_ends_with_the_given_text_only():
    task = get_task("cqa")
    shots = fewshot_examples(task, 2)
    p = server_prompt(task, "Question: PERTURBED?\nAnswer choices:\n(a) x", chat=False, shots=shots)
    assert isinstance(p, str)
    assert p.endswith("Question: PERTURBED?\nAnswer choices:\n(a) x\nAnswer:")
    assert example_block(p) == "Question: PERTURBED?\nAnswer choices:\n(a) x"
    chat = server_prompt(task, "Question: Q2", chat=True, shots=shots)
    assert chat[-1]["role"] == "user" and chat[-1]["content"].endswith("Question: Q2")
    assert len(chat) == 5  # two shots (user+assistant each) and the question


def test_fewshot_errors():
    with pytest.raises(ConfigError, match="only"):
        fewshot_examples(get_task("cqa"), len(PUBLIC_SHOTS["multiple-choice"]) + 1)


# -- cache --------------------------------------------------------------------------------


def test_cache_asks_only_missing_prompts_and_survives_reload(tmp_path):
    path = tmp_path / "cache.jsonl"
    be = CountingBackend()
    params = GenerationParams(max_new_tokens=8)
    prompts = [f"q{i}" for i in range(5)]
    stats = AskStats()
    got = ask_cached(be, prompts[:3], params, RationaleCache(path), batch_size=2, stats=stats)
    assert [g.prompt for g in got] == prompts[:3]
    assert stats.asked == 3 and be.calls == 2  # batches of 2 and 1
    # A new process: reload from disk, ask for all five (and a repeat) → only q3, q4 are new.
    be2 = CountingBackend()
    cache = RationaleCache(path)
    assert len(cache) == 3
    stats2 = AskStats()
    got2 = ask_cached(be2, [*prompts, "q0"], params, cache, batch_size=8, stats=stats2)
    assert be2.sent == ["q3", "q4"]
    assert stats2.cached == 4 and stats2.asked == 2
    assert got2[0].text == got2[-1].text == got[0].text
    # Different parameters are a different key.
    be3 = CountingBackend()
    ask_cached(be3, ["q0"], GenerationParams(max_new_tokens=9), cache)
    assert be3.sent == ["q0"]


def test_cache_drops_a_torn_last_line_and_rejects_corruption(tmp_path):
    path = tmp_path / "cache.jsonl"
    ask_cached(CountingBackend(), ["a", "b"], GenerationParams(), RationaleCache(path))
    with path.open("a") as f:
        f.write('{"key": "abc", "prom')  # killed mid-write
    cache = RationaleCache(path)
    assert len(cache) == 2 and cache.skipped_lines == 1
    assert all(json.loads(line) for line in path.read_text().splitlines())
    path.write_text("not json\n" + path.read_text())
    with pytest.raises(Exception, match="unreadable cache line"):
        RationaleCache(path)


def test_cache_stops_at_a_failing_batch_and_keeps_earlier_ones(tmp_path):
    class Dies(CountingBackend):
        def generate(self, prompts, params=None):
            if self.calls == 1:
                raise KeyboardInterrupt
            return super().generate(prompts, params)

    path = tmp_path / "c.jsonl"
    with pytest.raises(KeyboardInterrupt):
        ask_cached(
            Dies(), ["a", "b", "c", "d"], GenerationParams(), RationaleCache(path), batch_size=2
        )
    again = CountingBackend()
    ask_cached(again, ["a", "b", "c", "d"], GenerationParams(), RationaleCache(path), batch_size=2)
    assert again.sent == ["c", "d"]


# -- replay --------------------------------------------------------------------------------


def _cqa_examples():
    return [
        Example(
            "1",
            "Where do fish live?",
            "water",
            ["tree", "water", "sky", "car", "desk"],
            rationale="Fish breathe with gills in water.",
            rationale_label="water",
        ),
        Example(
            "2",
            "What is cold?",
            "ice",
            ["fire", "sun", "ice", "lava", "oven"],
            rationale="Ice is frozen water.",
            rationale_label="sun",
        ),
    ]


def test_replay_answers_recorded_examples_and_refuses_others():
    task = get_task("cqa")
    exs = _cqa_examples()
    rb = ReplayBackend(task, exs)
    shots = fewshot_examples(task, 2)
    prompts = [server_prompt(task, task.input_text(ex), chat=False, shots=shots) for ex in exs]
    out = rb.generate(prompts, GenerationParams())
    assert out[0].text == "Fish breathe with gills in water. So the answer is (b) water."
    # It answers as the recording model did, even where that model was wrong.
    assert out[1].text.endswith("So the answer is (b) sun.")
    perturbed = task.input_text(exs[0]).replace("fish", "cats")
    with pytest.raises(BackendError, match="no record"):
        rb.generate([server_prompt(task, perturbed, chat=False, shots=shots)])
    chat_prompt = server_prompt(task, task.input_text(exs[0]), chat=True, shots=shots)
    assert rb.generate([chat_prompt])[0].text == out[0].text
    with pytest.raises(BackendError, match="no examples"):
        ReplayBackend(task, [Example("x", "q", "a", ["a", "b"])])


# -- decoders ------------------------------------------------------------------------------


def _perturbation():
    units = [
        UnitDraw("Maria", "Olga", "word", 3.0, "name"),
        UnitDraw("paid", "spent", "word", 9.0),
        UnitDraw("1,250", "1,310", "number", 3.0, "number"),
        UnitDraw("rent", "rent", "word", 9.0),
    ]
    return Perturbation(
        "p",
        "Maria paid 1,250 rent",
        "Olga spent 1,310 rent",
        units,
        {"Maria": "Olga", "paid": "spent", "1,250": "1,310", "rent": "rent"},
        15.0,
    )


def test_inverse_map_restores_stand_ins_with_their_casing():
    p = _perturbation()
    text = "OLGA spent 1,310 on rent. olga's total is 1,310 plus 0. Spent wisely, 11,310."
    assert inverse_map(text, p) == (
        "MARIA paid 1,250 on rent. maria's total is 1,250 plus 0. Paid wisely, 11,310."
    )


def test_split_conclusion():
    assert split_conclusion("A. B. So the answer is (c) x.") == ("A. B.", "So the answer is (c) x.")
    assert split_conclusion("no marker here") == ("no marker here", "")
    # arithmetic written inside the conclusion is reasoning: the body keeps it
    assert split_conclusion("She spent 12 and 30. So the answer is 12 + 30 = 42 EUR.") == (
        "She spent 12 and 30. 12 + 30 = 42.",
        "So the answer is 12 + 30 = 42 EUR.",
    )
    body, tail = split_conclusion("The answer is 3. Wait, so the answer is 4.")
    assert tail == "so the answer is 4." and body == "The answer is 3. Wait,"


def test_make_decoder_and_requirements():
    item = DecodeItem(Example("1", "q", "1"), "orig", "pert", "Olga spent", _perturbation())
    assert make_decoder("identity").decode([item]) == ["Olga spent"]
    assert make_decoder("inverse-map").decode([item]) == ["Maria paid"]
    with pytest.raises(ConfigError, match="stand-in map"):
        make_decoder("inverse-map").decode([DecodeItem(item.example, "o", "p", "r", None)])
    with pytest.raises(ConfigError, match="client's model"):
        make_decoder("icl")
    with pytest.raises(ConfigError, match="encoder-decoder"):
        make_decoder("trained")
    with pytest.raises(ConfigError, match="unknown decoder"):
        make_decoder("magic")


def test_icl_decoder_prompts_the_local_model_with_both_versions():
    be = CountingBackend(chat=True)
    item = DecodeItem(Example("1", "q", "1"), "ORIGINAL Q", "PERTURBED Q", "reasoning", None)
    out = ICLDecoder(be).decode([item])
    assert len(out) == 1
    msg = be.sent[0][0]["content"]
    assert "ORIGINAL Q" in msg and "PERTURBED Q" in msg and "reasoning" in msg
