"""In-process generation with a transformers causal LM (CPU by default).

Prompts are batched with left padding, sorted by length so a batch wastes little padding;
stop strings end a sequence as soon as its decoded text contains one; greedy or sampled
decoding, seeded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from fedcot.models.backends.base import (
    Backend,
    Completion,
    GenerationParams,
    Prompt,
    TopKLogprobs,
    apply_stop,
    is_chat,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ProgressFn = Callable[[int], None]


def _batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), size):
        yield list(order[i : i + size])


class TransformersBackend(Backend):
    """Generate with an in-process transformers model.

    Build it from a loaded model and tokenizer, or with :meth:`from_pretrained` from an
    embedded model name, a GGUF file or a transformers folder.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str | None = None,
        batch_size: int = 8,
        max_input_tokens: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = name or getattr(model.config, "_name_or_path", None) or "transformers"
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._progress: ProgressFn | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> TransformersBackend:
        """Load an embedded model name, a ``.gguf`` file or a transformers folder."""
        from fedcot.models.registry import load_model

        model, tokenizer = load_model(name_or_path)
        kwargs.setdefault("name", str(name_or_path))
        return cls(model, tokenizer, **kwargs)

    @property
    def supports_chat(self) -> bool:
        return getattr(self.tokenizer, "chat_template", None) is not None

    def set_progress(self, fn: ProgressFn | None) -> None:
        """Call ``fn(n)`` after each batch with the number of prompts it finished."""
        self._progress = fn

    # -- prompts ---------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> tuple[str, bool]:
        """Prompt → (text, whether the tokenizer should add its special tokens)."""
        if is_chat(prompt):
            if not self.supports_chat:
                raise ValueError(
                    f"{self.model_name} has no chat template; send plain-text prompts "
                    "(tasks build them with chat=False)"
                )
            text = self.tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=True
            )
            return str(text), False  # the template already holds BOS and role markers
        return str(prompt), True

    def _encode(self, texts: Sequence[tuple[str, bool]], *, side: str) -> dict[str, torch.Tensor]:
        import torch

        rows = [self.tokenizer(t, add_special_tokens=special)["input_ids"] for t, special in texts]
        if self.max_input_tokens is not None:
            rows = [r[-self.max_input_tokens :] for r in rows]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if side == "left":
                ids[i, width - len(r) :] = torch.tensor(r)
                mask[i, width - len(r) :] = 1
            else:
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # -- generation ------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Completion]:
        import torch

        params = params or GenerationParams()
        rendered = [self.render(p) for p in prompts]
        # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
        lengths = [len(t) for t, _ in rendered]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        out: list[Completion | None] = [None] * len(prompts)
        rng = torch.random.fork_rng() if params.seed is not None else nullcontext()
        with rng, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for batch in _batches(order, self.batch_size):
                for i, c in zip(batch, self._generate_batch([rendered[i] for i in batch], params)):
                    out[i] = c
                if self._progress is not None:
                    self._progress(len(batch))
        return [c for c in out if c is not None]

    def _generate_batch(
        self, texts: Sequence[tuple[str, bool]], params: GenerationParams
    ) -> list[Completion]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        enc = self._encode(texts, side="left")
        prompt_len = enc["input_ids"].shape[1]
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        tokenizer = self.tokenizer
        stops = params.stop
        tail = max((len(s) for s in stops), default=0) + 16

        class _StopOnStrings(StoppingCriteria):
            # Decodes only the generated part, and only a short tail of it, each step.
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
                done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
                gen = input_ids[:, prompt_len:]
                for r in range(gen.shape[0]):
                    text = tokenizer.decode(gen[r, -tail:], skip_special_tokens=True)
                    done[r] = any(s in text for s in stops)
                return done

        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            kwargs["top_k"] = params.top_k if params.top_k > 0 else None
        if stops:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings()])
        gen_config = self.model.generation_config
        # Neutralise sampling defaults shipped in the checkpoint so params alone decide.
        saved = {k: getattr(gen_config, k, None) for k in ("temperature", "top_p", "top_k")}
        for k in saved:
            setattr(gen_config, k, None)
        try:
            seqs = self.model.generate(**enc, **kwargs)
        finally:
            for k, v in saved.items():
                setattr(gen_config, k, v)
        eos_ids = _eos_ids(self.model, tokenizer)
        results = []
        for r in range(seqs.shape[0]):
            new = seqs[r, prompt_len:].tolist()
            n_gen = len(new)
            hit_eos = False
            for j, t in enumerate(new):
                if t in eos_ids:
                    n_gen, hit_eos = j, True
                    break
            text = tokenizer.decode(new[:n_gen], skip_special_tokens=True)
            text, cut = apply_stop(text, stops)
            finish = "stop" if (hit_eos or cut or n_gen < params.max_new_tokens) else "length"
            results.append(
                Completion(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=int(prompt_tokens[r]),
                    completion_tokens=n_gen,
                )
            )
        return results

    # -- scoring ---------------------------------------------------------------------------
    def _forward_logprobs(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        logits = self.model(**enc).logits.float()
        return torch.log_softmax(logits, dim=-1)

    def topk_logprobs(self, texts: Sequence[str], k: int) -> list[TopKLogprobs]:
        """Top-K next-token log-probabilities at each position (entry i predicts token i+1)."""
        import torch

        if k < 1:
            raise ValueError("k must be >= 1")
        results: list[TopKLogprobs] = []
        with torch.inference_mode():
            for batch in _batches(range(len(texts)), self.batch_size):
                enc = self._encode([(texts[i], True) for i in batch], side="right")
                logp = self._forward_logprobs(enc)
                vals, ids = logp.topk(k, dim=-1)
                for row, _ in enumerate(batch):
                    n = int(enc["attention_mask"][row].sum())
                    results.append(
                        TopKLogprobs(
                            token_ids=enc["input_ids"][row, :n].tolist(),
                            topk_ids=ids[row, :n].tolist(),
                            topk_logprobs=vals[row, :n].tolist(),
                        )
                    )
        return results

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation given its prompt.

        Used to score fixed answer candidates (multiple choice, NLI labels) without parsing
        free text. The continuation's tokens are those of ``render(prompt) + continuation``
        past the prompt's tokens.
        """
        import torch

        encoded: list[tuple[list[int], int]] = []
        for prompt, cont in requests:
            text, special = self.render(prompt)
            ctx = self.tokenizer(text, add_special_tokens=special)["input_ids"]
            full = self.tokenizer(text + cont, add_special_tokens=special)["input_ids"]
            # Tokens can merge across the boundary; count from the first differing token.
            start = next(
                (j for j, (a, b) in enumerate(zip(ctx, full)) if a != b), min(len(ctx), len(full))
            )
            start = max(1, min(start, len(full) - 1))
            encoded.append((full, start))
        scores: list[float] = [0.0] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(encoded[i][0]))
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for batch in _batches(order, self.batch_size):
                width = max(len(encoded[i][0]) for i in batch)
                # Left padding puts every continuation at the end, so the model only has to
                # project the last K positions onto the (possibly huge) vocabulary.
                keep = max(len(encoded[i][0]) - encoded[i][1] for i in batch) + 1
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, i in enumerate(batch):
                    seq = encoded[i][0]
                    ids[r, width - len(seq) :] = torch.tensor(seq)
                    mask[r, width - len(seq) :] = 1
                positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
                logits = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    logits_to_keep=keep,
                ).logits.float()
                logp = torch.log_softmax(logits, dim=-1)  # (batch, keep, vocab)
                for r, i in enumerate(batch):
                    seq, start = encoded[i]
                    n_cont = len(seq) - start
                    targets = torch.tensor(seq[start:])
                    rows = logp[r, keep - n_cont - 1 : keep - 1]
                    scores[i] = float(rows.gather(1, targets[:, None]).sum())
                if self._progress is not None:
                    self._progress(len(batch))
        return scores

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids
