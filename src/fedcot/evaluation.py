"""Evaluation: batched generation (or candidate scoring), answer parsing, accuracy with a
confidence interval, per-example predictions.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.table import Table

from fedcot.data.arithmetic import calculate
from fedcot.data.tasks import COT_MAX_NEW_TOKENS, Example, Task, has_answer_marker
from fedcot.errors import ConfigError
from fedcot.models.backends.base import Backend, GenerationParams
from fedcot.progress import progress_bar


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95 %)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Prediction:
    """One scored example."""

    id: str
    gold: str
    prediction: str | None
    correct: bool
    output: str
    finish_reason: str | None = None
    scores: list[float] | None = None
    calculated: str | None = None  # the output with its arithmetic redone (calculator on)


@dataclass
class EvalResult:
    """Accuracy of a model on a task, with its 95 % Wilson interval."""

    task: str
    model: str
    method: str
    n: int
    correct: int
    unparsed: int
    accuracy: float
    ci_low: float
    ci_high: float
    seconds: float
    truncated: int = 0  # generations that hit max_new_tokens (counted as unparsed)
    predictions: list[Prediction] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-example predictions."""
        d = asdict(self)
        d.pop("predictions")
        return d

    def table(self, title: str | None = None) -> Table:
        """A one-row rich table: n, accuracy, 95 % interval, unparsed, seconds."""
        table = Table(title=title or f"{self.model} on {self.task} ({self.method})")
        for col in ("n", "accuracy", "95 % CI", "unparsed", "seconds"):
            table.add_column(col, justify="right")
        table.add_row(
            str(self.n),
            f"{100 * self.accuracy:.1f} %",
            f"{100 * self.ci_low:.1f} – {100 * self.ci_high:.1f} %",
            str(self.unparsed),
            f"{self.seconds:.1f}",
        )
        return table

    def write_predictions(self, path: str | Path) -> Path:
        """Write one JSON object per example (JSONL)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("w", encoding="utf-8") as f:
            for pred in self.predictions:
                f.write(json.dumps(asdict(pred), ensure_ascii=False) + "\n")
        return p


def evaluate(
    backend: Backend,
    task: Task,
    examples: Sequence[Example],
    *,
    method: Literal["generate", "likelihood"] = "generate",
    params: GenerationParams | None = None,
    chat: bool | None = None,
    fewshot: Sequence[Example] = (),
    cot: bool = False,
    calculator: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Score ``backend`` on ``examples``.

    ``generate``: greedy (by default) generation, then the task's answer parser; with
    ``calculator`` every ``a op b = c`` step of the output gets its exact result before
    parsing (:func:`fedcot.data.arithmetic.calculate`: the model's plan, exact arithmetic).
    ``likelihood``: the candidate answer with the highest log-likelihood (tasks with a fixed
    answer set only; needs a backend with ``loglikelihood``, i.e. the in-process one).
    """
    if not examples:
        raise ConfigError("no examples to evaluate", hint="check --data, --split and --limit")
    use_chat = backend.supports_chat if chat is None else chat
    if use_chat and not backend.supports_chat:
        raise ConfigError(
            f"{backend.model_name} has no chat template", hint="drop --chat (plain prompts)"
        )
    params = params or GenerationParams(max_new_tokens=COT_MAX_NEW_TOKENS if cot else 32)
    if not cot and not use_chat:
        # Plain completion: stop where the task's answer block ends.
        params = params.model_copy(update={"stop": tuple(params.stop) + tuple(task.stop)})
    prompts = [task.prompt(ex, chat=use_chat, fewshot=fewshot, cot=cot) for ex in examples]
    t0 = time.perf_counter()
    if method == "generate":
        preds = _by_generation(backend, task, examples, prompts, params, progress, calculator)
    elif method == "likelihood":
        preds = _by_likelihood(backend, task, examples, prompts, progress)
    else:
        raise ConfigError(f"unknown method '{method}'", hint="use 'generate' or 'likelihood'")
    seconds = time.perf_counter() - t0
    correct = sum(p.correct for p in preds)
    lo, hi = wilson_interval(correct, len(preds))
    return EvalResult(
        task=task.name,
        model=backend.model_name,
        method=method,
        n=len(preds),
        correct=correct,
        unparsed=sum(p.prediction is None for p in preds),
        accuracy=correct / len(preds),
        ci_low=lo,
        ci_high=hi,
        seconds=round(seconds, 2),
        truncated=sum(p.finish_reason == "length" for p in preds),
        predictions=preds,
    )


def _by_generation(
    backend: Backend,
    task: Task,
    examples: Sequence[Example],
    prompts: Sequence[Any],
    params: GenerationParams,
    progress: bool,
    calculator: bool = False,
) -> list[Prediction]:
    set_progress = getattr(backend, "set_progress", None)
    if progress and set_progress is not None:
        with progress_bar(len(prompts), f"eval {task.name}") as advance:
            set_progress(advance)
            try:
                completions = backend.generate(prompts, params)
            finally:
                set_progress(None)
    else:
        completions = backend.generate(prompts, params)
    out = []
    for ex, c in zip(examples, completions):
        text = calculate(c.text) if calculator else c.text
        pred = _answer_of(task, text, c.finish_reason, ex)
        out.append(
            Prediction(
                id=ex.id,
                gold=ex.label,
                prediction=pred,
                correct=task.is_correct(pred, ex),
                output=c.text,
                finish_reason=c.finish_reason,
                calculated=text if calculator else None,
            )
        )
    return out


def _answer_of(task: Task, text: str, finish_reason: str | None, ex: Example) -> str | None:
    """The parsed answer; a generation cut at max_new_tokens counts only if it already
    stated its answer ("So the answer is …"): otherwise the parser would take whatever
    choice the unfinished reasoning mentioned last."""
    if finish_reason == "length" and not has_answer_marker(text):
        return None
    return task.extract_answer(text, ex)


def _by_likelihood(
    backend: Backend,
    task: Task,
    examples: Sequence[Example],
    prompts: Sequence[Any],
    progress: bool,
) -> list[Prediction]:
    loglik = getattr(backend, "loglikelihood", None)
    if loglik is None:
        raise ConfigError(
            f"the {type(backend).__name__} backend cannot score candidates",
            hint="use --method generate, or the in-process transformers backend",
        )
    requests: list[tuple[Any, str]] = []
    spans: list[tuple[int, int]] = []
    for ex, prompt in zip(examples, prompts):
        cands = task.candidates(ex)
        if not cands:
            raise ConfigError(
                f"task '{task.name}' has no fixed answer set to score",
                hint="use --method generate for open-ended answers (math)",
            )
        # Plain prompts end in "Answer:", so candidates follow a space.
        sep = "" if isinstance(prompt, list) else " "
        spans.append((len(requests), len(requests) + len(cands)))
        requests.extend((prompt, sep + c) for c in cands)
    set_progress = getattr(backend, "set_progress", None)
    if progress and set_progress is not None:
        with progress_bar(len(requests), f"score {task.name}") as advance:
            set_progress(advance)
            try:
                scores = loglik(requests)
            finally:
                set_progress(None)
    else:
        scores = loglik(requests)
    out = []
    for ex, (a, b) in zip(examples, spans):
        s = scores[a:b]
        best = max(range(len(s)), key=s.__getitem__)
        pred = task.candidate_label(ex, best)
        out.append(
            Prediction(
                id=ex.id,
                gold=ex.label,
                prediction=pred,
                correct=task.is_correct(pred, ex),
                output=task.candidates(ex)[best],  # type: ignore[index]
                scores=[round(x, 4) for x in s],
            )
        )
    return out


def paired_difference(
    before: Sequence[bool], after: Sequence[bool], z: float = 1.96
) -> tuple[float, float, float]:
    """Accuracy gain ``after − before`` on the same items, with a 95 % paired interval.

    The interval is the normal one on the per-item differences (−1, 0, +1), which accounts
    for the items both runs got right or wrong; returns (gain, low, high) as fractions.
    """
    if len(before) != len(after):
        raise ValueError("paired accuracies need the same items")
    n = len(before)
    if n == 0:
        return 0.0, -1.0, 1.0
    diffs = [int(a) - int(b) for b, a in zip(before, after)]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    half = z * math.sqrt(var / n)
    return mean, mean - half, mean + half
