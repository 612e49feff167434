"""PDSS's encoder-decoder strategy: the client SLM learns to privatise and to decode.

Instead of a fixed DP mechanism, the client's small LM is fine-tuned on a PUBLIC dataset for
two tasks (one loss each, weighted):

- ``encode``: original example text → a perturbed stand-in. The targets are made by a DP
  mechanism (:class:`~fedcot.privacy.perturb.Perturber`, exponential at ε = 3 by default),
  which keeps the example's whitespace, so the encoder learns to keep the line layout
  (``Question: ...`` / ``Answer choices: ...``) that the server's template expects;
- ``decode``: perturbed text + the server's rationale for it + the original text → the
  server's rationale for the ORIGINAL text. Asking the server about the original is fine
  here because the training data is public.

The trained SLM then encodes the private examples (sampled generation), the stand-ins go to
the server, and the SLM decodes the server's rationales into rationales for the originals.

Privacy: this strategy has NO formal differential-privacy guarantee. The encoder is a learned
model; nothing bounds the ratio of its output probabilities for two different inputs, so the
ε of the mechanism that made its training targets says nothing about what its outputs reveal
about a private example (it may copy names or numbers through, or paraphrase them
recognisably). Its leakage must be measured (the attacks of :mod:`fedcot.privacy.attacks`),
not claimed. Two cheap safeguards are applied: an encoder output that is empty or a verbatim
copy of its input is re-sampled once and otherwise replaced by :data:`UNAVAILABLE`, never by
the original text; callers must not send :data:`UNAVAILABLE` stand-ins to the server.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from fedcot.data.prompts import ChatMessage, Prompt, render_prompt
from fedcot.errors import BackendError, ConfigError
from fedcot.models.backends.base import GenerationParams
from fedcot.models.backends.transformers import TransformersBackend
from fedcot.privacy.perturb import PerturbConfig, Perturber
from fedcot.progress import progress_bar
from fedcot.strict import StrictModel
from fedcot.train import multitask
from fedcot.train.lora import load_trained
from fedcot.train.multitask import SFTItem, TrainConfig

if TYPE_CHECKING:
    from fedcot.data.tasks import Example, Task
    from fedcot.privacy.perturb import Perturbation
    from fedcot.train.multitask import TrainResult

__all__ = [
    "DECODE_KIND",
    "ENCODE_KIND",
    "METADATA_FILE",
    "UNAVAILABLE",
    "AskFn",
    "EncodeStats",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "decode_prompt",
    "encode_prompt",
    "encoder_decoder_items",
]

logger = logging.getLogger(__name__)

ENCODE_KIND = "encode"
DECODE_KIND = "decode"

#: What :meth:`EncoderDecoder.encode` returns when it has no acceptable stand-in.
UNAVAILABLE = "[unavailable]"

#: Metadata written next to the trained adapter by :meth:`EncoderDecoder.fit`.
METADATA_FILE = "encoder_decoder.json"

AskFn = Callable[[list[str]], list[str]]
"""Example texts (``task.input_text`` form) → the server's rationale for each, in order."""

ENCODE_INSTRUCTION = (
    "Rewrite the text below as a privatised stand-in: replace its words, names, places and "
    "numbers with different ones, and keep its layout exactly (the same lines, the same "
    "labels such as 'Question:' and the same punctuation). Reply with the rewritten text only."
)

DECODE_INSTRUCTION = (
    "A privatised stand-in of a text was answered with the rationale below. Write the "
    "rationale for the original text instead: follow the same reasoning, with the details "
    "of the original text."
)


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


def _default_mechanism() -> PerturbConfig:
    return PerturbConfig(strategy="exponential", epsilon=3.0)


def _default_train() -> TrainConfig:
    # Small public sets: a couple of epochs; decode prompts hold two texts and a rationale.
    return TrainConfig(epochs=2, max_length=512, save_total_limit=1)


class EncoderDecoderConfig(StrictModel):
    """The PDSS encoder-decoder strategy (the ``[encoder_decoder]`` table of a run config)."""

    public_data: str = Field(
        "../shared/datasets", description="public dataset source (fedcot.data.loaders)"
    )
    public_task: str | None = Field(None, description="task of the public data; None = the run's")
    public_split: str = "train"
    public_limit: int = Field(64, ge=2, description="public examples used for training")
    mechanism: PerturbConfig = Field(
        default_factory=_default_mechanism,
        description="the DP mechanism that makes the encode targets from the public texts",
    )
    train: TrainConfig = Field(default_factory=_default_train)
    encode_weight: float = Field(
        0.5, gt=0.0, lt=1.0, description="loss weight of encode; decode gets 1 - encode_weight"
    )
    encode_temperature: float = Field(
        0.8, ge=0.0, le=5.0, description="sampling temperature of encoding (0 = greedy)"
    )
    max_new_tokens_encode: int = Field(160, ge=1, le=32768)
    max_new_tokens_decode: int = Field(128, ge=1, le=32768)
    seed: int = Field(0, ge=0, description="seed of encoding (sampling)")

    @model_validator(mode="after")
    def _mechanism_perturbs(self) -> EncoderDecoderConfig:
        if self.mechanism.strategy == "none":
            raise ValueError(
                "mechanism.strategy = 'none' would teach the encoder to copy its input; "
                "use a perturbing strategy such as 'exponential'"
            )
        return self

    @property
    def loss_weights(self) -> dict[str, float]:
        """``{"encode": w, "decode": 1 - w}``."""
        return {ENCODE_KIND: self.encode_weight, DECODE_KIND: 1.0 - self.encode_weight}


# --------------------------------------------------------------------------------------
# Prompts and training items
# --------------------------------------------------------------------------------------


def _chat_or_plain(content: str, plain_tail: str, *, chat: bool) -> Prompt:
    if chat:
        message: ChatMessage = {"role": "user", "content": content}
        return [message]
    # Plain prompts end with a header line; the target follows on the next line.
    return f"{content}\n\n{plain_tail}\n"


def encode_prompt(original: str, *, chat: bool) -> Prompt:
    """The instruction to rewrite ``original`` into a privatised stand-in of the same layout."""
    return _chat_or_plain(
        f"{ENCODE_INSTRUCTION}\n\nText:\n{original}", "Rewritten text:", chat=chat
    )


def decode_prompt(perturbed: str, perturbed_rationale: str, original: str, *, chat: bool) -> Prompt:
    """The instruction to turn the rationale for ``perturbed`` into one for ``original``."""
    content = (
        f"{DECODE_INSTRUCTION}\n\n"
        f"Stand-in text:\n{perturbed}\n\n"
        f"Rationale for the stand-in:\n{perturbed_rationale.strip()}\n\n"
        f"Original text:\n{original}"
    )
    return _chat_or_plain(content, "Rationale for the original text:", chat=chat)


def encoder_decoder_items(
    tokenizer: Any,
    originals: Sequence[str],
    perturbed: Sequence[str],
    original_rationales: Sequence[str],
    perturbed_rationales: Sequence[str],
    *,
    chat: bool,
) -> list[list[SFTItem]]:
    """One group per public example: an ``encode`` item and, when both rationales are
    non-empty, a ``decode`` item.

    encode: prompt :func:`encode_prompt` (original), target = the perturbed text.
    decode: prompt :func:`decode_prompt` (perturbed, its rationale, original), target = the
    rationale for the original.
    """
    n = len(originals)
    if not (len(perturbed) == len(original_rationales) == len(perturbed_rationales) == n):
        raise ValueError("originals, perturbed texts and both rationale lists differ in length")
    groups: list[list[SFTItem]] = []
    for orig, pert, rat_o, rat_p in zip(
        originals, perturbed, original_rationales, perturbed_rationales
    ):
        text, special = render_prompt(tokenizer, encode_prompt(orig, chat=chat))
        group = [SFTItem(text, pert, ENCODE_KIND, special)]
        if rat_o.strip() and rat_p.strip():
            text, special = render_prompt(tokenizer, decode_prompt(pert, rat_p, orig, chat=chat))
            group.append(SFTItem(text, rat_o.strip(), DECODE_KIND, special))
        groups.append(group)
    return groups


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings; wrap a single text in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, not str")
    return out


def _ask_checked(ask: AskFn, texts: list[str], what: str) -> list[str]:
    answers = ask(list(texts))
    if isinstance(answers, str) or len(answers) != len(texts):
        got = "a string" if isinstance(answers, str) else f"{len(answers)} answers"
        raise BackendError(
            f"ask() returned {got} for {len(texts)} {what} texts",
            hint="ask must return one rationale string per text, in order",
        )
    return _check_texts(answers, f"rationales of the {what} texts")


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _find_metadata(adapter_dir: Path) -> dict[str, Any] | None:
    for folder in (adapter_dir, adapter_dir.parent):
        path = folder / METADATA_FILE
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


@dataclass
class _PublicTrainingSet:
    """The encode / decode training items made from the public examples, and their making."""

    examples: list[Example]
    """The public examples used (the first ``cfg.public_limit``)."""
    perturber: Perturber
    """The mechanism that made the encode targets."""
    perturbations: list[Perturbation]
    """One per example: its perturbed text (the encode target) and its ε."""
    groups: list[list[SFTItem]]
    """One group per example (:func:`encoder_decoder_items`)."""
    n_decode: int
    """Decode items among the groups."""
    dropped: list[str]
    """Ids of the examples without a decode item (an empty server rationale)."""


def _public_examples(public_examples: Sequence[Example], limit: int) -> list[Example]:
    """The first ``limit`` public examples; at least 2 are needed."""
    examples = list(public_examples)[:limit]
    if len(examples) < 2:
        raise ConfigError(
            f"the encoder-decoder needs at least 2 public examples, got {len(examples)}",
            hint="point encoder_decoder.public_data to a larger public dataset",
        )
    return examples


def _encode_target_perturber(perturber: Perturber | None, cfg: EncoderDecoderConfig) -> Perturber:
    """``perturber``, or one built from ``cfg.mechanism``; it must perturb."""
    perturber = perturber or Perturber.from_config(cfg.mechanism)
    if perturber.strategy == "none":
        raise ConfigError(
            "the perturber of the encode targets does not perturb (strategy 'none')",
            hint="use a perturbing mechanism such as 'exponential'",
        )
    return perturber


def _public_training_set(
    tokenizer: Any,
    task: Task,
    public_examples: Sequence[Example],
    perturber: Perturber | None,
    ask: AskFn,
    cfg: EncoderDecoderConfig,
    *,
    chat: bool,
) -> _PublicTrainingSet:
    """Perturb the public texts, ask the server about originals and stand-ins, make items.

    ``ask`` is called twice: with the original texts, then with the perturbed ones. Errors
    when no example got a decode item; warns about those that got none.
    """
    examples = _public_examples(public_examples, cfg.public_limit)
    perturber = _encode_target_perturber(perturber, cfg)
    originals = [task.input_text(ex) for ex in examples]
    perturbations = perturber.perturb(originals, [f"public/{ex.id}" for ex in examples])
    perturbed = [p.text for p in perturbations]
    rat_orig = _ask_checked(ask, originals, "original")
    rat_pert = _ask_checked(ask, perturbed, "perturbed")
    groups = encoder_decoder_items(tokenizer, originals, perturbed, rat_orig, rat_pert, chat=chat)
    n_decode = sum(len(g) - 1 for g in groups)
    if n_decode == 0:
        raise BackendError(
            "the server returned no usable rationale for the public examples",
            hint="check the server (the ask function) and its responses cache",
        )
    dropped = [ex.id for ex, g in zip(examples, groups) if len(g) == 1]
    if dropped:
        logger.warning("%d public examples got an empty rationale: encode only", len(dropped))
    return _PublicTrainingSet(examples, perturber, perturbations, groups, n_decode, dropped)


def _fit_metadata(
    task: Task,
    public: _PublicTrainingSet,
    cfg: EncoderDecoderConfig,
    result: TrainResult,
    out: Path,
    *,
    chat: bool,
) -> dict[str, Any]:
    """The contents of ``encoder_decoder.json`` (:data:`METADATA_FILE`) after training."""
    perturber, perturbations = public.perturber, public.perturbations
    mean_eps = sum(p.epsilon for p in perturbations) / len(perturbations)
    return {
        "strategy": "pdss-encoder-decoder",
        "formal_dp_guarantee": False,
        "note": (
            "no formal DP guarantee: the mechanism's epsilon describes only how the "
            "public encode targets were made, not the trained encoder's outputs"
        ),
        "task": task.name,
        "chat": chat,
        "n_public": len(public.examples),
        "n_decode_items": public.n_decode,
        "no_rationale_ids": public.dropped,
        "mechanism": {
            "strategy": perturber.strategy,
            "epsilon": perturber.eps_s,
            "epsilon_normal": perturber.eps_n,
            "mean_prompt_epsilon": mean_eps,
        },
        "loss_weights": cfg.loss_weights,
        "steps": result.steps,
        "seconds": result.seconds,
        "resumed_from": result.resumed_from,
        "adapter_dir": os.path.relpath(result.adapter_dir, out),
        "config": cfg.model_dump(mode="json"),
    }


# --------------------------------------------------------------------------------------
# The trained encoder-decoder
# --------------------------------------------------------------------------------------


@dataclass
class EncodeStats:
    """Counts of :meth:`EncoderDecoder.encode` / :meth:`~EncoderDecoder.decode` (cumulative)."""

    encoded: int = 0
    """Texts encoded."""
    empty: int = 0
    """Generations (first tries and re-samples) that were empty."""
    copies: int = 0
    """Generations that copied the original text verbatim."""
    resampled: int = 0
    """Texts whose first generation was rejected and that were sampled again."""
    unavailable: int = 0
    """Texts that got :data:`UNAVAILABLE` (both tries rejected)."""
    decoded: int = 0
    """Rationales decoded."""
    decode_empty: int = 0
    """Decoded rationales that came out empty."""


class EncoderDecoder:
    """The trained PDSS encoder-decoder around the client SLM.

    Build it with :meth:`fit` (trains on public data) or :meth:`load` (a saved adapter);
    the constructor wraps an already trained model. ``chat`` picks chat prompts (the
    tokenizer's template) or plain ones; it must match how the model was trained.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        chat: bool,
        batch_size: int = 8,
        cfg: EncoderDecoderConfig | None = None,
    ) -> None:
        model.eval()  # LoRA dropout off: greedy decoding is reproducible
        self.model = model
        self.tokenizer = tokenizer
        self.chat = chat
        self.cfg = cfg or EncoderDecoderConfig()
        self.backend: TransformersBackend = TransformersBackend(
            model, tokenizer, name="encoder-decoder", batch_size=batch_size
        )
        if chat and not self.backend.supports_chat:
            raise ConfigError(
                "chat = true, but the tokenizer has no chat template",
                hint="use chat = false (plain prompts) for this model",
            )
        self.stats = EncodeStats()
        #: Set by :meth:`fit`: the trainer's result (steps, log history, adapter folder).
        self.train_result: TrainResult | None = None
        #: Set by :meth:`fit` and :meth:`load`: the contents of ``encoder_decoder.json``.
        self.metadata: dict[str, Any] = {}

    # -- training ----------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        model: Any,
        tokenizer: Any,
        task: Task,
        public_examples: Sequence[Example],
        perturber: Perturber | None,
        ask: AskFn,
        cfg: EncoderDecoderConfig | None,
        output_dir: str | os.PathLike[str],
        *,
        chat: bool,
        batch_size: int = 8,
        resume: bool = False,
        progress: bool = True,
    ) -> EncoderDecoder:
        """Train the encoder-decoder on public examples and return it.

        The first ``cfg.public_limit`` examples are used. ``perturber`` makes the encode
        targets (None: built from ``cfg.mechanism``). ``ask`` is called exactly twice: with
        the original texts, then with their perturbed texts; both lists are in
        ``task.input_text`` form. Examples for which the server returned an empty rationale
        get no decode item. The adapter lands in ``output_dir/adapter`` and the metadata in
        ``output_dir/encoder_decoder.json``. ``model`` is wrapped (LoRA) in place.
        """
        cfg = cfg or EncoderDecoderConfig()
        public = _public_training_set(
            tokenizer, task, public_examples, perturber, ask, cfg, chat=chat
        )
        out = Path(output_dir)
        result = multitask.train_multitask(  # via the module: tests patch it there
            model,
            tokenizer,
            public.groups,
            cfg.train,
            out,
            loss_weights=cfg.loss_weights,
            resume=resume,
            progress=progress,
        )
        metadata = _fit_metadata(task, public, cfg, result, out, chat=chat)
        out.mkdir(parents=True, exist_ok=True)
        (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        ed = cls(result.model, tokenizer, chat=chat, batch_size=batch_size, cfg=cfg)
        ed.train_result = result
        ed.metadata = metadata
        return ed

    @classmethod
    def load(
        cls,
        base: str | os.PathLike[str] | None,
        adapter_dir: str | os.PathLike[str],
        *,
        chat: bool | None = None,
        batch_size: int = 8,
        cfg: EncoderDecoderConfig | None = None,
    ) -> EncoderDecoder:
        """Reload a trained encoder-decoder: ``base`` model + the ``adapter`` folder of
        :meth:`fit`. ``chat`` and ``cfg`` default to what ``encoder_decoder.json`` (next to
        or above the adapter) recorded."""
        folder = Path(adapter_dir)
        model, tokenizer = load_trained(base, folder)
        meta = _find_metadata(folder) or {}
        if cfg is None and "config" in meta:
            cfg = EncoderDecoderConfig.model_validate(meta["config"])
        if chat is None:
            chat = bool(meta.get("chat", getattr(tokenizer, "chat_template", None) is not None))
        ed = cls(model, tokenizer, chat=chat, batch_size=batch_size, cfg=cfg)
        ed.metadata = meta
        return ed

    # -- use ---------------------------------------------------------------------------
    def _generate(self, prompts: list[Prompt], params: GenerationParams, label: str) -> list[str]:
        if not prompts:
            return []
        if not label:
            return [c.text for c in self.backend.generate(prompts, params)]
        with progress_bar(len(prompts), label) as advance:
            self.backend.set_progress(advance)
            try:
                return [c.text for c in self.backend.generate(prompts, params)]
            finally:
                self.backend.set_progress(None)

    def _accept(self, output: str, original: str) -> str | None:
        text = output.strip()
        if not text:
            self.stats.empty += 1
            return None
        if _same_text(text, original):
            self.stats.copies += 1
            return None
        return text

    def encode(
        self, texts: Sequence[str], *, seed: int | None = None, progress: bool = False
    ) -> list[str]:
        """Privatised stand-ins of ``texts`` (sampled at ``cfg.encode_temperature``).

        Seeded (``seed``, default ``cfg.seed``): the same texts, batch size and seed give
        the same stand-ins. An empty output or a verbatim copy of the input is sampled once
        more (another seed); if that fails too the stand-in is :data:`UNAVAILABLE` (counted
        in :attr:`stats`), never the original text.
        """
        texts = _check_texts(texts, "texts")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ConfigError(f"text {i} is empty", hint="drop empty texts before encoding")
        seed = self.cfg.seed if seed is None else seed
        params = GenerationParams(
            max_new_tokens=self.cfg.max_new_tokens_encode,
            temperature=self.cfg.encode_temperature,
            seed=seed,
        )
        prompts = [encode_prompt(t, chat=self.chat) for t in texts]
        label = "encode" if progress else ""
        first = self._generate(prompts, params, label)
        out = [self._accept(o, t) for o, t in zip(first, texts)]
        retry = [i for i, o in enumerate(out) if o is None]
        if retry:
            self.stats.resampled += len(retry)
            # A seed no plain `seed + k` schedule of the caller reuses.
            params = params.model_copy(update={"seed": (seed * 7919 + 104729) % 2**31})
            again = self._generate([prompts[i] for i in retry], params, "")
            for i, o in zip(retry, again):
                out[i] = self._accept(o, texts[i])
        n_bad = sum(o is None for o in out)
        final = [UNAVAILABLE if o is None else o for o in out]
        self.stats.unavailable += n_bad
        self.stats.encoded += len(texts)
        if n_bad:
            logger.warning("%d of %d texts have no acceptable stand-in", n_bad, len(texts))
        return final

    def decode(
        self,
        perturbed: Sequence[str],
        perturbed_rationales: Sequence[str],
        originals: Sequence[str],
        *,
        progress: bool = False,
    ) -> list[str]:
        """Rationales for ``originals`` from the server's rationales for their stand-ins
        (greedy). An empty result is returned as ``""`` (counted in :attr:`stats`)."""
        perturbed = _check_texts(perturbed, "perturbed")
        perturbed_rationales = _check_texts(perturbed_rationales, "perturbed_rationales")
        originals = _check_texts(originals, "originals")
        if not len(perturbed) == len(perturbed_rationales) == len(originals):
            raise ValueError("perturbed, perturbed_rationales and originals differ in length")
        params = GenerationParams(max_new_tokens=self.cfg.max_new_tokens_decode)
        prompts = [
            decode_prompt(p, r, o, chat=self.chat)
            for p, r, o in zip(perturbed, perturbed_rationales, originals)
        ]
        out = [t.strip() for t in self._generate(prompts, params, "decode" if progress else "")]
        self.stats.decoded += len(out)
        self.stats.decode_empty += sum(not t for t in out)
        return out

    def stats_dict(self) -> dict[str, int]:
        """:attr:`stats` as a plain dict (for manifests)."""
        return asdict(self.stats)
