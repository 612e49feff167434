"""Evaluation: interval, answer scoring, likelihood mode, predictions file."""

from __future__ import annotations

import json

import pytest

from fedcot.data import Example, get_task
from fedcot.errors import ConfigError
from fedcot.evaluation import evaluate, wilson_interval
from fedcot.models.backends.base import Backend, Completion, GenerationParams


class Scripted(Backend):
    """Answers from a table keyed by a substring of the prompt; records what it saw."""

    model_name = "scripted"

    def __init__(self, answers: dict[str, str], chat: bool = True, scores=None) -> None:
        self.answers, self.chat, self.scores = answers, chat, scores
        self.seen: list = []
        self.params: GenerationParams | None = None

    @property
    def supports_chat(self) -> bool:
        return self.chat

    def generate(self, prompts, params=None):
        self.params = params
        self.seen.extend(prompts)
        out = []
        for p in prompts:
            text = p if isinstance(p, str) else p[-1]["content"]
            ans = next(v for k, v in self.answers.items() if k in text)
            out.append(Completion(ans, "stop", 3, 2))
        return out

    def loglikelihood(self, requests):
        self.seen.extend(requests)
        return [self.scores(p, c) for p, c in requests]


CQA = [
    Example("1", "Where do beavers get wood?", "wooded area", ["zoo", "wooded area", "ocean"]),
    Example("2", "What do you drink?", "water", ["water", "sand", "rock"]),
    Example("3", "Which is a fruit?", "apple", ["car", "stone", "apple"]),
]


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and 0.06 < hi < 0.08
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and 0.92 < lo < 0.94


def test_generate_scores_parsed_answers(tmp_path):
    task = get_task("multiple-choice")
    be = Scripted({"beavers": "The answer is (b).", "drink": "sand", "fruit": "I cannot say"})
    res = evaluate(be, task, CQA, progress=False)
    assert (res.n, res.correct, res.unparsed) == (3, 1, 1)
    assert res.accuracy == pytest.approx(1 / 3)
    assert [p.prediction for p in res.predictions] == ["wooded area", "sand", None]
    path = res.write_predictions(tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["correct"] is True and rows[2]["prediction"] is None
    assert "predictions" not in res.summary()


def test_plain_prompts_get_task_stop_strings():
    task = get_task("multiple-choice")
    be = Scripted({"": "(a)"}, chat=False)
    evaluate(be, task, CQA, params=GenerationParams(max_new_tokens=5, stop=["END"]), progress=False)
    assert be.params is not None and "END" in be.params.stop
    assert set(task.stop) <= set(be.params.stop)
    assert all(isinstance(p, str) and p.endswith("Answer:") for p in be.seen)


def test_likelihood_picks_the_best_candidate():
    task = get_task("multiple-choice")

    def score(prompt, cont):  # the gold choice of each example scores highest
        text = prompt[-1]["content"]
        gold = next(ex.label for ex in CQA if ex.question in text)
        return 0.0 if gold in cont else -5.0

    be = Scripted({}, scores=score)
    res = evaluate(be, task, CQA, method="likelihood", progress=False)
    assert res.correct == 3 and res.unparsed == 0
    assert len(be.seen) == 9  # three candidates per example


def test_likelihood_refuses_open_answers_and_errors():
    math = get_task("math")
    ex = [Example("1", "What is 2+2?", "4")]
    with pytest.raises(ConfigError, match="no fixed answer set"):
        evaluate(Scripted({}, scores=lambda p, c: 0.0), math, ex, method="likelihood")
    with pytest.raises(ConfigError, match="no examples"):
        evaluate(Scripted({}), math, [])

    class NoScore(Backend):
        def generate(self, prompts, params=None):
            return []

    with pytest.raises(ConfigError, match="cannot score"):
        evaluate(NoScore(), get_task("multiple-choice"), CQA, method="likelihood")
    with pytest.raises(ConfigError, match="no chat template"):
        evaluate(Scripted({}, chat=False), math, ex, chat=True)


class Truncating(Scripted):
    """Every output hits the token cap."""

    def generate(self, prompts, params=None):
        return [Completion(c.text, "length", 3, 2) for c in super().generate(prompts, params)]


def test_truncated_outputs_without_an_answer_are_unparsed():
    task = get_task("multiple-choice")
    be = Truncating(
        {
            "beavers": "The answer is (b). Then the next question",  # answered, then cut
            "drink": "Not sand, not rock, so it could be water or sand",  # cut mid-thought
            "fruit": "apple",
        }
    )
    res = evaluate(be, task, CQA, progress=False)
    assert [p.prediction for p in res.predictions] == ["wooded area", None, None]
    assert res.truncated == 3 and res.unparsed == 2 and res.correct == 1


def test_cot_gets_a_cot_budget_unless_one_is_given():
    from fedcot.config import EvalConfig
    from fedcot.data.tasks import COT_MAX_NEW_TOKENS

    assert EvalConfig().generation.max_new_tokens == 32
    assert EvalConfig(cot=True).generation.max_new_tokens == COT_MAX_NEW_TOKENS
    given = EvalConfig(cot=True, generation={"max_new_tokens": 64})
    assert given.generation.max_new_tokens == 64
    only_temp = EvalConfig(cot=True, generation={"temperature": 0.5})
    assert only_temp.generation.max_new_tokens == COT_MAX_NEW_TOKENS


def test_paired_difference_counts_only_items_that_changed():
    from fedcot.evaluation import paired_difference

    before = [True] * 10 + [False] * 30
    after = [True] * 10 + [True] * 12 + [False] * 18
    gain, low, high = paired_difference(before, after)
    assert gain == pytest.approx(12 / 40)
    # d has 12 ones and 28 zeros: sd = sqrt(0.3 · 0.7 · 40/39), half-width 1.96 · sd / √40
    half = 1.96 * (0.3 * 0.7 * 40 / 39) ** 0.5 / 40**0.5
    assert (low, high) == pytest.approx((gain - half, gain + half))
    assert paired_difference([True, False], [True, False]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])


def test_calculator_scores_the_plan_with_exact_arithmetic():
    """The same wrong sum is wrong without the calculator and right with it."""
    from fedcot.data.tasks import Example, get_task
    from fedcot.evaluation import evaluate
    from fedcot.models.backends.base import Backend, Completion

    class Adder(Backend):
        model_name = "adder"

        def generate(self, prompts, params=None):
            text = "12 + 19 = 30. So the answer is 30."
            return [Completion(text, "stop", 0, 9) for _ in prompts]

    task, ex = get_task("svamp"), [Example("1", "Add 12 and 19.", "31")]
    plain = evaluate(Adder(), task, ex, cot=True, progress=False)
    helped = evaluate(Adder(), task, ex, cot=True, calculator=True, progress=False)
    assert (plain.correct, helped.correct) == (0, 1)
    assert helped.predictions[0].calculated == "12 + 19 = 31. So the answer is 31."
    assert helped.predictions[0].output == "12 + 19 = 30. So the answer is 30."
