"""Few-shot chain-of-thought templates: what the server is asked.

The client wraps each (perturbed) example in a task-specific template: the task's
chain-of-thought instruction, a few worked examples, then the example. The worked examples
are public (written for this project, about made-up people and everyday facts), so the only
client data in a server prompt is the perturbed example itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedcot.data.prompts import Prompt
from fedcot.data.tasks import NLI_LABELS_2WAY, Example, NLITask, Task
from fedcot.errors import ConfigError

__all__ = ["PUBLIC_SHOTS", "fewshot_examples", "server_prompt"]

_MC = [
    Example(
        id="shot-mc-1",
        question="Where would you put a carton of milk to keep it cold?",
        label="refrigerator",
        choices=["cupboard", "refrigerator", "oven", "mailbox", "garden"],
        rationale=(
            "Milk spoils when it is warm. A refrigerator is the appliance that keeps food "
            "cold. Cupboards, ovens, mailboxes and gardens do not."
        ),
    ),
    Example(
        id="shot-mc-2",
        question="What does a person usually do when they feel tired at night?",
        label="go to sleep",
        choices=["run a race", "cook dinner", "go to sleep", "paint a wall", "buy a car"],
        rationale=(
            "Feeling tired at night is the body asking for rest. The usual response is to go "
            "to sleep, not to start an effortful task."
        ),
    ),
]

_NLI3 = [
    Example(
        id="shot-nli-1",
        premise="A woman in a red coat is walking a dog through a snowy park.",
        question="A person is outside with an animal.",
        label="entailment",
        rationale=(
            "A woman is a person, a dog is an animal, and a park is outside. The premise "
            "states exactly this."
        ),
    ),
    Example(
        id="shot-nli-2",
        premise="Two children are building a sandcastle on the beach.",
        question="The children are sitting in a classroom.",
        label="contradiction",
        rationale=(
            "The children are on the beach building a sandcastle. They cannot be in a "
            "classroom at the same time."
        ),
    ),
    Example(
        id="shot-nli-3",
        premise="A man is playing a guitar on a street corner.",
        question="The man is playing his favourite song.",
        label="neutral",
        rationale=(
            "The premise says the man plays a guitar but not which song. It may or may not "
            "be his favourite."
        ),
    ),
]

_NLI2 = [
    Example(
        id="shot-nli2-1",
        premise="The museum in the old town opens at nine and closes at five every weekday.",
        question="The museum is open on weekdays.",
        label="entailment",
        rationale="The museum opens and closes at set hours every weekday, so it is open then.",
    ),
    Example(
        id="shot-nli2-2",
        premise="Ana sold her bicycle last spring and now walks to work.",
        question="Ana rides her bicycle to work.",
        label="not_entailment",
        rationale="Ana sold her bicycle and walks to work, so she does not ride it there.",
    ),
]

_MATH = [
    Example(
        id="shot-math-1",
        question=(
            "Lena Ortiz, 34, from Riverton paid 820 EUR rent and 95 EUR for electricity in "
            "May. How much did Lena pay in total?"
        ),
        label="915",
        rationale="Lena paid 820 EUR for rent and 95 EUR for electricity. 820 + 95 = 915.",
    ),
    Example(
        id="shot-math-2",
        question=(
            "Tom Berger had 1,400 USD in his account and paid 350 USD for a repair. "
            "How much money was left?"
        ),
        label="1050",
        rationale="The account held 1,400 USD and 350 USD went out. 1,400 - 350 = 1,050.",
    ),
]

_YESNO = [
    Example(
        id="shot-yn-1",
        question="Can a person carry a grand piano up the stairs alone?",
        label="no",
        rationale="A grand piano weighs several hundred kilograms, far too much for one person.",
    ),
    Example(
        id="shot-yn-2",
        question="Is water wet enough to put out a small campfire?",
        label="yes",
        rationale="Water cools the fuel and cuts off air, which is how campfires are put out.",
    ),
]

#: Public worked examples per task kind (``nli2`` for two-way NLI).
PUBLIC_SHOTS: dict[str, list[Example]] = {
    "multiple-choice": _MC,
    "nli": _NLI3,
    "nli2": _NLI2,
    "math": _MATH,
    "yes-no": _YESNO,
}


def fewshot_examples(task: Task, n: int = 2) -> list[Example]:
    """The first ``n`` public worked examples for ``task``'s answer format."""
    if n < 0:
        raise ConfigError("fewshot must be >= 0")
    key = task.kind
    if isinstance(task, NLITask) and task.labels == NLI_LABELS_2WAY:
        key = "nli2"
    shots = PUBLIC_SHOTS.get(key)
    if shots is None:
        raise ConfigError(f"no public few-shot examples for task kind '{task.kind}'")
    if n > len(shots):
        raise ConfigError(
            f"only {len(shots)} public few-shot examples exist for '{key}' (asked for {n})",
            hint=f"set fewshot <= {len(shots)}",
        )
    return [_fit(task, s) for s in shots[:n]]


def _fit(task: Task, shot: Example) -> Example:
    # Multiple-choice tasks with a fixed number of choices get shots with that many.
    n = getattr(task, "num_choices", None)
    if n and shot.choices and len(shot.choices) != n:
        keep = [c for c in shot.choices if c != shot.label][: n - 1]
        choices = sorted([*keep, shot.label], key=shot.choices.index)
        return Example(**{**shot.to_dict(), "choices": choices})
    return shot


def server_prompt(task: Task, text: str, *, chat: bool, shots: Sequence[Example] = ()) -> Prompt:
    """The chain-of-thought prompt for one example given as (perturbed) ``input_text``."""
    return task.prompt_for_text(text, chat=chat, fewshot=shots, cot=True)
