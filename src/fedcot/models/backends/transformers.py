"""In-process generation with a transformers causal LM (CPU by default).

Prompts are batched with left padding, sorted by length so a batch wastes little padding;
stop strings end a sequence as soon as its decoded text contains one; greedy or sampled
decoding, seeded.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from fedcot.models.backends.base import (
    Backend,
    Completion,
    GenerationParams,
    Prompt,
    TopKLogprobs,
    apply_stop,
    is_chat,
    render_prompt,
)
from fedcot.models.registry import load_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ProgressFn = Callable[[int], None]
T = TypeVar("T")

# Continuations scored on a prompt cache run in chunks of rows whose cache copies hold at
# most batch_size * _CACHE_ROW_TOKENS prompt tokens (yet at least batch_size rows) and whose
# padded inputs hold at most _CHUNK_TOKENS tokens (yet at least one row).
_CACHE_ROW_TOKENS = 1024
_CHUNK_TOKENS = 128


def _batches(order: Sequence[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(order), size):
        yield list(order[i : i + size])


def _runs(
    items: Sequence[tuple[int, int, list[int]]], max_rows: int, max_tokens: int
) -> Iterator[list[tuple[int, int, list[int]]]]:
    """Consecutive runs of ``items`` (longest continuation first) of at most ``max_rows``
    rows and, past the first row, at most ``max_tokens`` padded input tokens."""
    run: list[tuple[int, int, list[int]]] = []
    for item in items:
        if run and (len(run) >= max_rows or (len(run) + 1) * (len(run[0][2]) - 1) > max_tokens):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _can_select_rows(cache: Any) -> bool:
    """Whether :func:`_select_cache_rows` can copy ``cache``: a dynamic cache whose layers
    grow by concatenation (full or sliding window attention)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    return isinstance(cache, DynamicCache) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers
    )


@functools.cache
def _cache_name() -> str:
    """What this transformers version calls a model's key/value cache, as an argument and
    as an output field: ``cache`` (5.x) or ``past_key_values`` (4.x, deprecated in 5.x)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _select_cache_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A new key/value cache holding ``rows`` of ``cache`` (repeats allowed).

    ``cache`` itself is left as it was: the copy's layers are new objects whose tensors are
    indexed copies, so running the model on the copy (which appends to, and for sliding
    window layers trims, the copy's tensors) cannot change the original.
    """
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    fork.batch_select_indices(rows)
    return fork


def _left_padded(seqs: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of ``seqs`` left padded with ``pad`` to the longest."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return ids, mask


def _score_first_tokens(
    first: torch.Tensor,
    batch: Sequence[tuple[list[int], list[tuple[int, list[int]]]]],
    scores: list[float],
) -> tuple[list[tuple[int, int, list[int]]], int]:
    """Set each request's score to the log-probability of its first continuation token.

    ``first[r]``: the next-token log-probabilities after prompt ``r`` of ``batch``. Returns
    the ``(prompt row, request, continuation ids)`` of the continuations longer than one
    token, and the number of requests.
    """
    rest: list[tuple[int, int, list[int]]] = []
    n_requests = 0
    for r, (_, members) in enumerate(batch):
        for i, cont in members:
            scores[i] = float(first[r, cont[0]])
            n_requests += 1
            if len(cont) > 1:
                rest.append((r, i, cont))
    return rest, n_requests


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
        if is_chat(prompt) and not self.supports_chat:
            raise ValueError(
                f"{self.model_name} has no chat template; send plain-text prompts "
                "(tasks build them with chat=False)"
            )
        return render_prompt(self.tokenizer, prompt)

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

        Requests that share a prompt (the candidates of one question) run the prompt through
        the model once and score every candidate on top of its key/value cache; a prompt with
        a single request, or a continuation whose first token merges with the prompt's last
        one, is scored on the whole sequence instead. ``batch_size`` prompts (or sequences)
        go through the model at a time.
        """
        import torch

        prompt_ids: dict[tuple[str, bool], list[int]] = {}
        shared: dict[tuple[str, bool], list[tuple[int, list[int]]]] = {}
        whole: list[tuple[int, list[int], int]] = []  # (request, full sequence, first scored)
        for i, (prompt, cont) in enumerate(requests):
            key = self.render(prompt)
            text, special = key
            ctx = prompt_ids.get(key)
            if ctx is None:
                ctx = prompt_ids[key] = self.tokenizer(text, add_special_tokens=special)[
                    "input_ids"
                ]
            full = self.tokenizer(text + cont, add_special_tokens=special)["input_ids"]
            # Tokens can merge across the boundary; count from the first differing token.
            start = next(
                (j for j, (a, b) in enumerate(zip(ctx, full)) if a != b), min(len(ctx), len(full))
            )
            if start == len(ctx) >= 1 and len(full) > start:
                shared.setdefault(key, []).append((i, full[start:]))
            else:
                whole.append((i, full, max(1, min(start, len(full) - 1))))
        groups: list[tuple[list[int], list[tuple[int, list[int]]]]] = []
        for key, members in shared.items():
            ctx = prompt_ids[key]
            if len(members) > 1:
                groups.append((ctx, members))
            else:  # a lone continuation gains nothing from a cache
                ((i, cont_ids),) = members
                whole.append((i, ctx + cont_ids, len(ctx)))
        scores: list[float] = [0.0] * len(requests)
        with torch.inference_mode():
            self._score_shared_prompts(groups, scores)
            self._score_sequences(whole, scores)
        return scores

    def _score_sequences(
        self, items: Sequence[tuple[int, list[int], int]], scores: list[float]
    ) -> None:
        """Score ``(request, token ids, first scored position)`` items on whole sequences."""
        import torch

        if not items:
            return
        order = sorted(range(len(items)), key=lambda k: -len(items[k][1]))
        pad = self.tokenizer.pad_token_id
        for batch in _batches(order, self.batch_size):
            rows = [items[k] for k in batch]
            width = max(len(seq) for _, seq, _ in rows)
            # Left padding puts every continuation at the end, so the model only has to
            # project the last K positions onto the (possibly huge) vocabulary.
            keep = max(len(seq) - start for _, seq, start in rows) + 1
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, (_, seq, _) in enumerate(rows):
                ids[r, width - len(seq) :] = torch.tensor(seq)
                mask[r, width - len(seq) :] = 1
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                logits_to_keep=keep,
                use_cache=False,
            ).logits.float()
            logp = torch.log_softmax(logits, dim=-1)  # (batch, keep, vocab)
            for r, (i, seq, start) in enumerate(rows):
                n_cont = len(seq) - start
                targets = torch.tensor(seq[start:])
                picked = logp[r, keep - n_cont - 1 : keep - 1]
                scores[i] = float(picked.gather(1, targets[:, None]).sum())
            if self._progress is not None:
                self._progress(len(rows))

    def _score_shared_prompts(
        self,
        groups: Sequence[tuple[list[int], list[tuple[int, list[int]]]]],
        scores: list[float],
    ) -> None:
        """Score ``(prompt ids, [(request, continuation ids), ...])`` groups.

        Each batch of prompts (left padded) runs once with a key/value cache; its last
        position gives every continuation's first token. The remaining tokens run on top of
        a per-row copy of that cache: continuation rows are right padded after their
        prompt, so each row's real tokens stay contiguous and its positions continue from
        its prompt's length (see ``_CACHE_ROW_TOKENS`` and ``_CHUNK_TOKENS`` for how many
        rows share a forward pass).
        """
        if not groups:
            return
        order = sorted(range(len(groups)), key=lambda g: -len(groups[g][0]))
        for b, batch in enumerate(_batches(order, self.batch_size)):
            n_requests = self._score_prompt_batch([groups[g] for g in batch], scores)
            if n_requests is None:
                # An unusual cache (static, quantised, linear attention): score this batch and
                # the ones after it on whole sequences.
                items = [
                    (i, groups[g][0] + cont, len(groups[g][0]))
                    for g in order[b * self.batch_size :]
                    for i, cont in groups[g][1]
                ]
                self._score_sequences(items, scores)
                return
            if self._progress is not None:
                self._progress(n_requests)

    def _score_prompt_batch(
        self,
        batch: Sequence[tuple[list[int], list[tuple[int, list[int]]]]],
        scores: list[float],
    ) -> int | None:
        """Score one batch of :meth:`_score_shared_prompts` groups on their prompts' cache.

        Returns the number of requests scored, or None (nothing scored) when the model's
        cache is one that :func:`_select_cache_rows` cannot copy.
        """
        import torch

        pad = self.tokenizer.pad_token_id
        ids, mask = _left_padded([prompt for prompt, _ in batch], pad)
        width = ids.shape[1]
        lengths = mask.sum(dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = getattr(out, _cache_name())
        if not _can_select_rows(cache):
            return None
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (batch, vocab)
        rest, n_requests = _score_first_tokens(first, batch, scores)
        # Longest first, so a chunk pads little. Several rows share a forward pass (tiny
        # passes use the CPU poorly) while their padded inputs and cache copies stay small.
        rest.sort(key=lambda item: -len(item[2]))
        max_rows = max(self.batch_size, self.batch_size * _CACHE_ROW_TOKENS // width)
        for chunk in _runs(rest, max_rows, _CHUNK_TOKENS):
            self._score_continuation_chunk(chunk, cache, mask, lengths, scores)
        return n_requests

    def _score_continuation_chunk(
        self,
        chunk: Sequence[tuple[int, int, list[int]]],
        cache: Any,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        scores: list[float],
    ) -> None:
        """Add the log-probabilities of the tokens after the first of ``(prompt row,
        request, continuation ids)`` rows, run on a copy of their prompts' cache rows."""
        import torch

        pad = self.tokenizer.pad_token_id
        # Feed all but the last token; position k predicts token k + 1.
        span = max(len(cont) for _, _, cont in chunk) - 1
        cont_ids = torch.full((len(chunk), span), pad, dtype=torch.long)
        cont_mask = torch.zeros_like(cont_ids)
        for k, (_, _, cont) in enumerate(chunk):
            cont_ids[k, : len(cont) - 1] = torch.tensor(cont[:-1])
            cont_mask[k, : len(cont) - 1] = 1
        rows = torch.tensor([r for r, _, _ in chunk], dtype=torch.long)
        logits = self.model(
            input_ids=cont_ids,
            attention_mask=torch.cat([mask[rows], cont_mask], dim=1),
            position_ids=lengths[rows, None] + torch.arange(span)[None, :],
            use_cache=True,
            **{_cache_name(): _select_cache_rows(cache, rows)},
        ).logits.float()
        logp = torch.log_softmax(logits, dim=-1)  # (chunk, span, vocab)
        for k, (_, i, cont) in enumerate(chunk):
            targets = torch.tensor(cont[1:])
            picked = logp[k, : len(cont) - 1].gather(1, targets[:, None])
            scores[i] += float(picked.sum())

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
