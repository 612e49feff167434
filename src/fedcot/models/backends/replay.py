"""A teacher that answers from recorded rationales (benchmarks of the non-private baseline).

The DSS datasets carry rationales a large model (PaLM) wrote for every example. The replay
backend serves them as if that model were the server, so the non-private "multi-task with
the big model's rationales" row can be measured without the big model. It answers only a
prompt whose example is, character for character, one it has a record for, and refuses
anything else with an error: a perturbed prompt has no record, so replay can never stand in
for a server answering private (perturbed) prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedcot.data.tasks import COT_ANSWER_PREFIX, Example, Task
from fedcot.errors import BackendError
from fedcot.models.backends.base import Backend, Completion, GenerationParams, Prompt, is_chat

__all__ = ["ReplayBackend", "example_block"]


def example_block(prompt: Prompt) -> str:
    """The example a few-shot prompt asks about: its last block, without ``"Answer:"``.

    Chat prompts: the last user message after its instruction; plain prompts: the text after
    the last blank line, with the trailing ``"\\nAnswer:"`` removed.
    """
    if is_chat(prompt):
        users = [m["content"] for m in prompt if m.get("role") == "user"]  # type: ignore[union-attr]
        text = users[-1] if users else ""
    else:
        text = str(prompt)
    text = text.rstrip()
    if text.endswith("Answer:"):
        text = text[: -len("Answer:")].rstrip()
    return text.rsplit("\n\n", 1)[-1]


def _key(text: str) -> str:
    # Whitespace is layout (a transport may re-wrap it); every other character must match.
    return " ".join(text.split())


class ReplayBackend(Backend):
    """Serve recorded rationales for exactly the examples they were recorded for."""

    def __init__(self, task: Task, examples: Sequence[Example], *, name: str = "replay") -> None:
        self.model_name = name
        self.task = task
        self._answers: dict[str, str] = {}
        for ex in examples:
            if not (ex.rationale or "").strip():
                continue
            # Answer as the recording model did: its rationale and its own conclusion.
            concluded = ex.rationale_label or ex.label
            shown = Example(**{**ex.to_dict(), "label": concluded})
            try:
                answer = task.answer_text(shown)
            except ValueError:  # the recorded conclusion is not one of the choices
                answer = concluded
            self._answers[_key(task.input_text(ex))] = (
                f"{ex.rationale.strip()} {COT_ANSWER_PREFIX} {answer}."  # type: ignore[union-attr]
            )
        if not self._answers:
            raise BackendError(
                "the replay teacher got no examples with recorded rationales",
                hint="load the split that has rationales (DSS datasets: train/valid)",
            )
        self.requests = 0

    @property
    def supports_chat(self) -> bool:
        return False

    def __len__(self) -> int:
        return len(self._answers)

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Completion]:
        """The recorded rationale for each prompt's example; refuses unknown examples."""
        out = []
        for p in prompts:
            block = example_block(p)
            answer = self._answers.get(_key(block))
            if answer is None:
                raise BackendError(
                    "the replay teacher has no record for this prompt: "
                    f"{block[:80]!r}{'...' if len(block) > 80 else ''}",
                    hint="replay only answers the unperturbed examples it was built from "
                    "(strategy = 'none'); use a real server for private strategies",
                )
            self.requests += 1
            out.append(
                Completion(
                    text=answer,
                    finish_reason="stop",
                    prompt_tokens=len(str(p).split()),
                    completion_tokens=len(answer.split()),
                )
            )
        return out
