"""A FedMKT party: a causal LM with a LoRA adapter and its tokenizer, what it knows of the
other parties' tokenizers, and the data of a run (public set, private parts, test set).

Every party tokenises the public set itself (:class:`PublicItem`), computes its top-K logits
on it and turns another party's logits into rows over its own answer tokens
(:meth:`Party.targets_from`, through the MinED vocabulary maps of :func:`vocab_maps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcot.data.loaders import load_dataset
from fedcot.data.tasks import Example, Task
from fedcot.errors import ConfigError
from fedcot.evaluation import EvalResult, evaluate
from fedcot.mkt.align import continuation_rows, transfer_rows
from fedcot.mkt.config import MKTConfig
from fedcot.mkt.payloads import LogitsMessage, SampleLogits
from fedcot.mkt.selection import answer_loss
from fedcot.mkt.vocab_map import build_vocab_map, token_strings, tokenizer_hash
from fedcot.models.backends.transformers import TransformersBackend
from fedcot.models.registry import load_model, load_tokenizer
from fedcot.train.config import IGNORE_INDEX
from fedcot.train.logit_kd import batch_forward
from fedcot.train.lora import apply_lora
from fedcot.train.multitask import multitask_items, tokenize_item
from fedcot.train.sparse import SparseRows

__all__ = [
    "Party",
    "PublicItem",
    "Vocab",
    "load_party",
    "seed_of",
    "split_data",
    "vocab_maps",
]


def seed_of(*parts: int) -> int:
    """One 32-bit seed derived from integers (the run's seed, a round, a party, a phase)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass
class PublicItem:
    """A party's tokenisation of one labelled example (plain prompt + answer + EOS)."""

    example_id: str
    input_ids: list[int]
    labels: list[int]
    target: str
    """The answer text (with its leading space): the continuation every party learns."""

    @property
    def start(self) -> int:
        return next(i for i, lab in enumerate(self.labels) if lab != IGNORE_INDEX)

    @property
    def answer_ids(self) -> list[int]:
        """The answer tokens without the closing EOS (what logits are exchanged for)."""
        return self.input_ids[self.start : -1]


class Party:
    """One participant: a causal LM with a LoRA adapter and its tokenizer."""

    def __init__(
        self,
        name: str,
        model_name: str,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int,
    ) -> None:
        self.name = name
        self.model_name = model_name
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.texts = token_strings(tokenizer)
        self.tokenizer_hash = tokenizer_hash(tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (what a dense logit vector would hold)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    # -- data ------------------------------------------------------------------------------
    def items(self, task: Task, examples: Sequence[Example]) -> list[PublicItem]:
        """Plain prompts for every party, so all tokenise the same answer text."""
        groups = multitask_items(task, examples, self.tokenizer, chat=False, alpha=0.0)
        out = []
        for ex, (item,) in zip(examples, groups):
            t = tokenize_item(item, self.tokenizer, self.max_length)
            out.append(PublicItem(ex.id, t["input_ids"], t["labels"], item.target))
        return out

    # -- logits ------------------------------------------------------------------------------
    def public_logits(
        self, items: Sequence[PublicItem], *, k: int, loss_unit: str, batch_size: int = 8
    ) -> tuple[list[SparseRows], np.ndarray]:
        """Top-K rows for every answer token and the per-sample answer loss."""
        import torch

        rows: list[SparseRows] = []
        losses = np.zeros(len(items), dtype=np.float64)
        pad = int(self.tokenizer.pad_token_id)
        with torch.no_grad():
            for b0 in range(0, len(items), batch_size):
                batch = items[b0 : b0 + batch_size]
                # Logits for the answer tokens (EOS excluded): positions start-1 .. n-3.
                seqs = [it.input_ids[:-1] for it in batch]
                keep = max(len(s) - it.start + 1 for s, it in zip(seqs, batch))
                logits = batch_forward(self.model, seqs, keep, pad)
                for j, (s, it) in enumerate(zip(seqs, batch)):
                    # logits[j] covers the last `keep` positions; a shorter row is padded.
                    pad_cols = max(0, keep - len(s))
                    window = logits[j, pad_cols:]
                    ids = s[len(s) - window.shape[0] :]
                    local_start = it.start - (len(s) - window.shape[0])
                    rows.append(continuation_rows(window, ids, local_start, k))
                    losses[b0 + j] = answer_loss(
                        window, ids, local_start, per=loss_unit, n_chars=len(it.target)
                    )
        return rows, losses

    def message(
        self,
        round_no: int,
        items: Sequence[PublicItem],
        rows: Sequence[SparseRows],
        losses: np.ndarray,
    ) -> LogitsMessage:
        """The typed message carrying this party's public logits."""
        samples = [
            SampleLogits.from_rows(it.example_id, it.answer_ids, r, float(loss))
            for it, r, loss in zip(items, rows, losses)
        ]
        return LogitsMessage(
            round=round_no,
            sender=self.name,
            model=self.model_name,
            tokenizer_hash=self.tokenizer_hash,
            vocab_size=self.vocab_size,
            samples=samples,
        )

    def targets_from(
        self,
        msg: LogitsMessage,
        items: Sequence[PublicItem],
        vocab_map: np.ndarray,
        sender_texts: Sequence[str],
    ) -> list[SparseRows]:
        """A sender's rows turned into rows over this party's answer tokens.

        ``vocab_map`` maps the sender's ids to this party's; ``sender_texts`` are the texts of
        the sender's tokens (tokenizers are public: each party loads the others').
        """
        if len(msg.samples) != len(items):
            raise ValueError(f"{msg.sender} sent {len(msg.samples)} samples, expected {len(items)}")
        out = []
        for s, it in zip(msg.samples, items):
            if s.sample_id != it.example_id:
                raise ValueError(
                    f"{msg.sender} sent sample {s.sample_id}, expected {it.example_id}"
                )
            if any(i >= len(sender_texts) for i in s.token_ids):
                raise ValueError(f"{msg.sender} sent a token id outside its vocabulary")
            own = it.answer_ids
            out.append(
                transfer_rows(
                    [sender_texts[i] for i in s.token_ids],
                    s.rows(),
                    [self.texts[i] for i in own],
                    own,
                    vocab_map,
                )
            )
        return out

    # -- adapter -----------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, np.ndarray]:
        """The trainable LoRA tensors."""
        from peft import get_peft_model_state_dict

        sd = get_peft_model_state_dict(self.model)
        return {k: v.detach().cpu().float().numpy() for k, v in sd.items()}

    def set_adapter_state(self, state: dict[str, np.ndarray]) -> None:
        """Load LoRA tensors (e.g. a FedAvg average)."""
        import torch
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, {k: torch.from_numpy(v) for k, v in state.items()})

    def evaluate(self, task: Task, test: Sequence[Example], *, progress: bool) -> EvalResult:
        """Accuracy on ``test`` by answer likelihood (plain prompts, as trained)."""
        backend = TransformersBackend(self.model, self.tokenizer, name=self.name, batch_size=8)
        return evaluate(backend, task, test, method="likelihood", chat=False, progress=progress)


@dataclass
class Vocab:
    """What a party needs to know of another's tokenizer (tokenizers are public)."""

    model_name: str
    tokenizer: Any
    texts: list[str]
    tokenizer_hash: str

    @classmethod
    def load(cls, model_name: str) -> Vocab:
        """Load only the tokenizer of ``model_name`` (no weights)."""
        tok = load_tokenizer(model_name)
        return cls(model_name, tok, token_strings(tok), tokenizer_hash(tok))


def vocab_maps(
    pairs: Sequence[tuple[Any, Any]], *, progress: bool
) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, Any]]:
    """MinED maps for (sender, receiver) pairs of parties or :class:`Vocab` objects.

    Returns the maps keyed by (sender hash, receiver hash) and their quality per direction.
    """
    maps: dict[tuple[str, str], np.ndarray] = {}
    info: dict[str, Any] = {}
    for src, dst in pairs:
        key = (src.tokenizer_hash, dst.tokenizer_hash)
        if key in maps:
            continue
        vm = build_vocab_map(src.tokenizer, dst.tokenizer, progress=progress)
        maps[key] = vm.ids
        info[f"{src.model_name} -> {dst.model_name}"] = {
            "exact": round(vm.exact_share, 4),
            "within_1": round(vm.within1_share, 4),
        }
    return maps, info


def split_data(
    cfg: MKTConfig, task: Task
) -> tuple[list[Example], list[list[Example]], list[Example]]:
    """(public, private part per client, test): a seeded shuffle of ``cfg.split`` cut into
    1 public + K disjoint private parts."""
    pool = load_dataset(cfg.data, task, cfg.split, mapping=cfg.fields, rationales=False)
    need = cfg.public_size + cfg.private_size * len(cfg.clients)
    if len(pool) < need:
        raise ConfigError(
            f"the {cfg.split!r} split has {len(pool)} examples; the run needs {need} "
            f"({cfg.public_size} public + {len(cfg.clients)} × {cfg.private_size} private)",
            hint="lower public_size / private_size",
        )
    order = np.random.default_rng(cfg.seed).permutation(len(pool))
    picked = [pool[i] for i in order[:need]]
    public = picked[: cfg.public_size]
    private = [
        picked[
            cfg.public_size + c * cfg.private_size : cfg.public_size + (c + 1) * cfg.private_size
        ]
        for c in range(len(cfg.clients))
    ]
    test = load_dataset(
        cfg.data, task, cfg.test_split, limit=cfg.test_limit, mapping=cfg.fields, rationales=False
    )
    return public, private, test


def load_party(cfg: MKTConfig, name: str) -> Party:
    """Load a party's model by its name in ``cfg`` and put a seeded LoRA on it."""
    import torch

    names = cfg.party_names()
    if name not in names:
        raise ConfigError(f"no party {name!r} in this run", hint=f"parties: {', '.join(names)}")
    index = names.index(name)
    model_name = cfg.server.model if index == 0 else cfg.clients[index - 1].model
    model, tokenizer = load_model(model_name)
    torch.manual_seed(seed_of(cfg.seed, 0, index, 0))  # the LoRA init: round 0, phase 0
    model = apply_lora(model, cfg.train)  # MKTTrainConfig holds the LoRA settings
    model.eval()
    return Party(name, model_name, model, tokenizer, max_length=cfg.train.max_length)
