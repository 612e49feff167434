"""FedMKT rounds: a server LLM and K client SLMs teach each other through top-K logits.

One round (``mode = "mutual"``), every party with its own model, tokenizer and LoRA:

1. each client fine-tunes on its private part (``local_steps``); with ``fedavg`` the
   clients' adapters are then averaged (homogeneous clients only);
2. each client sends a :class:`LogitsMessage`: for every public sample its answer tokens,
   its top-K log-probabilities for each of them and its loss on them;
3. the server aligns every client's tokens to its own (MinED vocabulary map + DP
   alignment), picks per sample the teacher to learn from (DualMinCE: the lowest-loss
   client, only where it beats the server's own loss) and distils into its LoRA with
   λ·L_FT + (1 − λ)·L_KD on the public set (``server_steps``);
4. the server sends its own :class:`LogitsMessage`; each client aligns, selects (the server,
   where it beats the client) and distils (``client_steps``);
5. every party is evaluated on the test set and checkpointed.

``one-way`` skips step 3's distillation (the server only fine-tunes on the public labels);
``standalone`` exchanges nothing and gives every party the same steps on its own data with
λ = 1 (the baseline). The engine runs all parties in one process; the messages are the
typed payloads of :mod:`fedcot.mkt.payloads`, so a network transport carries them as they
are. A run is resumed from the last finished round, and every phase is seeded by (seed,
round, party, phase), so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from fedcot.config import dump_config
from fedcot.data.tasks import Example, Task, get_task
from fedcot.errors import ConfigError
from fedcot.mkt.align import continuation_rows, transfer_rows
from fedcot.mkt.config import MKTConfig
from fedcot.mkt.payloads import AdapterMessage, LogitsMessage, SampleLogits, TensorBlob
from fedcot.mkt.selection import answer_loss, select_targets
from fedcot.progress import progress_bar
from fedcot.runs import check_run_config, package_versions, write_json
from fedcot.train.config import IGNORE_INDEX
from fedcot.train.sparse import SparseRows

if TYPE_CHECKING:
    from fedcot.evaluation import EvalResult

__all__ = ["MKTResult", "Party", "RunFolder", "Vocab", "load_party", "run_mkt"]

PhaseHook = Callable[[int, str, str], None]
"""``hook(round, party, phase)``, called before each phase (tests inject faults with it)."""


# --------------------------------------------------------------------------------------
# A party
# --------------------------------------------------------------------------------------


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
        from fedcot.mkt.vocab_map import token_strings, tokenizer_hash

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
        from fedcot.train.multitask import multitask_items, tokenize_item

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

        from fedcot.train.distill import batch_forward

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

    def save(self, folder: Path) -> None:
        """The adapter as a plain PEFT folder (reloads with ``PeftModel.from_pretrained``)."""
        self.model.save_pretrained(str(folder))

    def load(self, folder: Path) -> None:
        """Restore the adapter saved by :meth:`save`."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors")))

    def evaluate(self, task: Task, test: Sequence[Example], *, progress: bool) -> EvalResult:
        """Accuracy on ``test`` by answer likelihood (plain prompts, as trained)."""
        from fedcot.evaluation import evaluate
        from fedcot.models.backends.transformers import TransformersBackend

        backend = TransformersBackend(self.model, self.tokenizer, name=self.name, batch_size=8)
        return evaluate(backend, task, test, method="likelihood", chat=False, progress=progress)


# --------------------------------------------------------------------------------------
# Steps shared by the in-process engine and the Flower app
# --------------------------------------------------------------------------------------

LOCAL, SERVER_DISTILL, CLIENT_DISTILL = 1, 2, 3
"""Phase numbers in the seeds: every phase is seeded by (seed, round, party index, phase)."""


@dataclass
class MKTResult:
    """What ``run_mkt`` returns: accuracy per party per round and the traffic."""

    output_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, party: str, round_no: int) -> float:
        """Test accuracy of ``party`` after ``round_no`` (0 = before training)."""
        return float(self.metrics["rounds"][str(round_no)][party]["accuracy"])


def accuracy_table(metrics: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """party → round → accuracy, from a run's metrics.json."""
    table: dict[str, dict[int, float]] = {}
    for r, row in metrics.get("rounds", {}).items():
        for party, v in row.items():
            table.setdefault(party, {})[int(r)] = float(v["accuracy"])
    return table


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def phase_seed(cfg: MKTConfig, round_no: int, index: int, phase: int) -> int:
    """The seed of one party's phase in one round (index 0 = server, i = client i)."""
    return _seed(cfg.seed, round_no, index, phase)


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
        from fedcot.mkt.vocab_map import token_strings, tokenizer_hash
        from fedcot.models.registry import load_tokenizer

        tok = load_tokenizer(model_name)
        return cls(model_name, tok, token_strings(tok), tokenizer_hash(tok))


def vocab_maps(
    pairs: Sequence[tuple[Any, Any]], *, progress: bool
) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, Any]]:
    """MinED maps for (sender, receiver) pairs of parties or :class:`Vocab` objects.

    Returns the maps keyed by (sender hash, receiver hash) and their quality per direction.
    """
    from fedcot.mkt.vocab_map import build_vocab_map

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
    from fedcot.data.loaders import load_dataset

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

    from fedcot.models.registry import load_model
    from fedcot.train.lora import apply_lora

    names = cfg.party_names()
    if name not in names:
        raise ConfigError(f"no party {name!r} in this run", hint=f"parties: {', '.join(names)}")
    index = names.index(name)
    model_name = cfg.server.model if index == 0 else cfg.clients[index - 1].model
    model, tokenizer = load_model(model_name)
    torch.manual_seed(_seed(cfg.seed, 0, index, 0))  # the LoRA init
    model = apply_lora(model, cfg.train)  # MKTTrainConfig holds the LoRA settings
    model.eval()
    return Party(name, model_name, model, tokenizer, max_length=cfg.train.max_length)


def train_party(
    cfg: MKTConfig,
    party: Party,
    items: Sequence[Any],
    *,
    steps: int,
    lam: float,
    seed: int,
    what: str,
    progress: bool,
) -> dict[str, Any]:
    """``steps`` seeded AdamW steps of λ·L_FT + (1 − λ)·L_KD; returns the log entry."""
    from fedcot.train.distill import KDItem, train_steps

    kd_items = [it if isinstance(it, KDItem) else KDItem(it.input_ids, it.labels) for it in items]
    with progress_bar(steps, f"{party.name}: {what}", enabled=progress) as advance:
        stats = train_steps(
            party.model,
            kd_items,
            steps=steps,
            batch_size=cfg.train.batch_size,
            learning_rate=cfg.train.learning_rate,
            lam=lam,
            seed=seed,
            pad_id=int(party.tokenizer.pad_token_id),
            on_step=lambda s, loss: advance(1),
        )
    return {
        "party": party.name,
        "phase": what,
        "steps": stats.steps,
        "loss": stats.loss,
        "ft": stats.ft_loss,
        "kd": stats.kd_loss,
        "kd_rows": stats.kd_rows,
        "seconds": stats.seconds,
    }


def distil_from(
    cfg: MKTConfig,
    party: Party,
    items: Sequence[PublicItem],
    own_losses: np.ndarray | None,
    messages: Sequence[LogitsMessage],
    maps: dict[tuple[str, str], np.ndarray],
    texts: dict[str, Sequence[str]],
    *,
    steps: int,
    seed: int,
    what: str,
    progress: bool,
) -> dict[str, Any]:
    """Align every teacher's rows to ``party``, select per sample (``cfg.selection``) and
    distil. With no teacher (none sent, or all dropped out) it trains on the labels alone,
    and ``own_losses`` is not needed."""
    if not messages or own_losses is None:
        entry = train_party(
            cfg,
            party,
            items,
            steps=steps,
            lam=1.0,
            seed=seed,
            what="public labels",
            progress=progress,
        )
        return {**entry, "selected": 0, "transferred": 0, "teachers": []}
    teacher_rows = [
        party.targets_from(
            m, items, maps[(m.tokenizer_hash, party.tokenizer_hash)], texts[m.tokenizer_hash]
        )
        for m in messages
    ]
    teacher_loss = np.stack([m.losses() for m in messages])
    picks = select_targets(cfg.selection, own_losses, teacher_loss, teacher_rows, cfg.temperature)
    entry = train_party(
        cfg,
        party,
        _with_targets(items, picks),
        steps=steps,
        lam=cfg.lam,
        seed=seed,
        what=what,
        progress=progress,
    )
    entry["selected"] = sum(p is not None for p in picks)
    entry["transferred"] = _transferred(picks)
    entry["teachers"] = [m.sender for m in messages]
    return entry


def average_adapters(msgs: Sequence[AdapterMessage]) -> dict[str, np.ndarray]:
    """FedAvg: the adapters weighted by each sender's number of private examples."""
    total = sum(m.n_examples for m in msgs)
    return {
        k: sum(m.tensors[k].array() * (m.n_examples / total) for m in msgs) for k in msgs[0].tensors
    }


def adapter_message(party: Party, round_no: int, n_examples: int) -> AdapterMessage:
    """A party's LoRA tensors as a typed message."""
    return AdapterMessage(
        round=round_no,
        sender=party.name,
        model=party.model_name,
        n_examples=n_examples,
        tensors={k: TensorBlob.from_array(v) for k, v in party.adapter_state().items()},
    )


def _fedavg(clients: Sequence[Party], weights: Sequence[int], round_no: int) -> int:
    """Average the clients' adapters (weighted by private size); returns bytes sent."""
    msgs = [adapter_message(c, round_no, w) for c, w in zip(clients, weights)]
    msgs = [AdapterMessage.model_validate_json(m.model_dump_json()) for m in msgs]
    avg = average_adapters(msgs)
    for c in clients:
        c.set_adapter_state(avg)
    return sum(m.nbytes() for m in msgs)


def save_adapter(party: Party, folder: Path) -> None:
    """Save ``party``'s adapter to ``folder`` atomically (written beside it, then renamed)."""
    import shutil

    # A name of its own per process: two processes may save the same phase at once (a
    # stopped Flower run's last task and its resumed run); both write identical tensors.
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    party.save(tmp)
    for attempt in range(3):
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
            return
        except OSError:
            if attempt == 2:
                raise


def _plot(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted(int(r) for r in metrics["rounds"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    parties: list[str] = []
    for r in rounds:
        parties += [p for p in metrics["rounds"][str(r)] if p not in parties]
    for p in parties:
        pts = [(r, metrics["rounds"][str(r)][p]) for r in rounds if p in metrics["rounds"][str(r)]]
        ax.plot([r for r, _ in pts], [100 * v["accuracy"] for _, v in pts], marker="o", label=p)
    ax.set_xlabel("round (0 = before)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(rounds)
    ax.set_title("FedMKT: accuracy per party")
    if parties:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class RunFolder:
    """The server's run folder: config guard, state, metrics, checkpoints and manifest.

    ``config.yaml`` (a resume must use the same config), ``state.json`` (the last finished
    round and timings), ``metrics.json`` (accuracy per party per round, training log,
    traffic), ``rounds/round-N/<party>/`` (adapters), ``eval/round-N/<party>.jsonl``,
    ``plots/accuracy.png`` and ``manifest.json``.
    """

    def __init__(self, cfg: MKTConfig, *, resume: bool) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        cfg_text = dump_config(cfg)
        cfg_file = self.out / "config.yaml"
        check_run_config(cfg_file, cfg_text, resume=resume)
        self.out.mkdir(parents=True, exist_ok=True)
        cfg_file.write_text(cfg_text, encoding="utf-8")
        self.state_file = self.out / "state.json"
        self.metrics_file = self.out / "metrics.json"
        state: dict[str, Any] = (
            json.loads(self.state_file.read_text(encoding="utf-8"))
            if self.state_file.exists()
            else {}
        )
        self.metrics: dict[str, Any] = (
            json.loads(self.metrics_file.read_text(encoding="utf-8"))
            if self.metrics_file.exists() and state
            else {"rounds": {}, "traffic": {}, "training": {}}
        )
        self.done = int(state.get("completed_round", 0))
        self.timings: dict[str, float] = dict(state.get("timings", {}))

    def checkpoint_dir(self, round_no: int) -> Path:
        return self.out / "rounds" / f"round-{round_no}"

    def record_eval(self, round_no: int, party: str, result: Any) -> dict[str, Any]:
        """Store one party's evaluation (an ``EvalResult`` or its summary dict)."""
        if not isinstance(result, dict):
            result.write_predictions(self.out / "eval" / f"round-{round_no}" / f"{party}.jsonl")
            result = result.summary()
        self.metrics["rounds"].setdefault(str(round_no), {})[party] = result
        return result

    def save_metrics(self) -> None:
        write_json(self.metrics_file, self.metrics)

    def finish_round(
        self,
        round_no: int,
        parties: Sequence[Party],
        log: list[dict[str, Any]],
        traffic: dict[str, Any],
        seconds: float,
        **extra: Any,
    ) -> None:
        """Checkpoint ``parties`` atomically, then record the round as finished."""
        import shutil

        folder = self.checkpoint_dir(round_no)
        tmp = folder.with_name(f".{folder.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for p in parties:
            p.save(tmp / p.name)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        self.metrics["training"][str(round_no)] = log
        self.metrics["traffic"][str(round_no)] = traffic
        for key, value in extra.items():
            self.metrics.setdefault(key, {})[str(round_no)] = value
        self.timings[f"round_{round_no}_s"] = round(seconds, 2)
        self.save_metrics()
        write_json(self.state_file, {"completed_round": round_no, "timings": self.timings})
        self.done = round_no

    def finish(self, manifest: dict[str, Any]) -> MKTResult:
        """Plot, write manifest.json and return the result."""
        _plot(self.metrics, self.out / "plots" / "accuracy.png")
        manifest = {**manifest, "timings": self.timings, "versions": package_versions("rapidfuzz")}
        write_json(self.out / "manifest.json", manifest)
        return MKTResult(self.out, self.metrics, manifest)


def manifest_base(
    cfg: MKTConfig,
    parties: dict[str, dict[str, Any]],
    public: Sequence[Example],
    private_sizes: Sequence[int],
    n_test: int,
    map_info: dict[str, Any],
    engine: str,
) -> dict[str, Any]:
    """The manifest fields both engines write."""
    return {
        "fedcot_command": "mkt",
        "engine": engine,
        "task": cfg.task,
        "scenario": cfg.scenario,
        "mode": cfg.mode,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "parties": parties,
        "data": {
            "public": len(public),
            "private": list(private_sizes),
            "test": n_test,
            "public_ids": [e.id for e in public],
        },
        "vocab_maps": map_info,
    }


def party_info(party: Party, role: str) -> dict[str, Any]:
    """A party's manifest entry."""
    return {
        "model": party.model_name,
        "tokenizer_hash": party.tokenizer_hash,
        "vocab_size": party.vocab_size,
        "role": role,
    }


# --------------------------------------------------------------------------------------
# The in-process engine
# --------------------------------------------------------------------------------------


def run_mkt(
    cfg: MKTConfig,
    *,
    resume: bool = False,
    console: Console | None = None,
    progress: bool = True,
    hook: PhaseHook | None = None,
) -> MKTResult:
    """Run (or resume) FedMKT rounds as configured, every party in this process; see the
    module docstring and :class:`RunFolder` for what the run folder holds."""
    con = console or Console(stderr=True, quiet=not progress)
    task = get_task(cfg.task, answer_style="text")
    run = RunFolder(cfg, resume=resume)
    done = run.done

    def phase(round_no: int, party: str, name: str) -> None:
        if hook is not None:
            hook(round_no, party, name)

    # -- set up ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    public, private, test = split_data(cfg, task)
    names = cfg.party_names()
    con.log(
        f"FedMKT · {cfg.task} · {cfg.scenario} · mode {cfg.mode} · {len(public)} public, "
        f"{len(cfg.clients)} × {cfg.private_size} private, {len(test)} test"
    )
    server = load_party(cfg, names[0])
    clients = [load_party(cfg, n) for n in names[1:]]
    parties = [server, *clients]
    texts = {p.tokenizer_hash: p.texts for p in parties}
    pairs: list[tuple[Party, Party]] = []
    if cfg.mode != "standalone":
        for c in clients:
            pairs += [(server, c)] if cfg.mode == "one-way" else [(c, server), (server, c)]
    maps, map_info = vocab_maps(pairs, progress=progress)
    public_items = {p.name: p.items(task, public) for p in parties}
    private_items = [c.items(task, part) for c, part in zip(clients, private)]
    run.timings.setdefault("setup_s", round(time.perf_counter() - t0, 2))

    def train(party: Party, items: Sequence[Any], steps: int, lam: float, seed: int, what: str):
        return train_party(
            cfg, party, items, steps=steps, lam=lam, seed=seed, what=what, progress=progress
        )

    def evaluate_all(round_no: int) -> None:
        row = {}
        for p in parties:
            res = p.evaluate(task, test, progress=progress)
            row[p.name] = run.record_eval(round_no, p.name, res)
        con.log(
            f"round {round_no}: "
            + ", ".join(f"{n} {100 * r['accuracy']:.1f} %" for n, r in row.items())
        )

    # -- resume / before -------------------------------------------------------------------
    if done:
        folder = run.checkpoint_dir(done)
        for p in parties:
            p.load(folder / p.name)
        con.log(f"resuming after round {done} of {cfg.rounds}")
    elif "0" not in run.metrics["rounds"]:
        evaluate_all(0)
        run.save_metrics()

    # -- rounds ----------------------------------------------------------------------------
    for r in range(done + 1, cfg.rounds + 1):
        tr0 = time.perf_counter()
        log: list[dict[str, Any]] = []
        traffic: dict[str, Any] = {}
        # 1. clients learn their private data
        for i, c in enumerate(clients, start=1):
            phase(r, c.name, "local")
            log.append(
                train(
                    c,
                    private_items[i - 1],
                    cfg.train.local_steps,
                    1.0,
                    phase_seed(cfg, r, i, LOCAL),
                    "private data",
                )
            )
        if cfg.fedavg and cfg.mode != "standalone":
            phase(r, "clients", "fedavg")
            traffic["fedavg_bytes"] = _fedavg(clients, [len(p) for p in private], r)

        if cfg.mode == "standalone":
            for i, c in enumerate(clients, start=1):
                phase(r, c.name, "distill")
                log.append(
                    train(
                        c,
                        public_items[c.name],
                        cfg.train.client_steps,
                        1.0,
                        phase_seed(cfg, r, i, CLIENT_DISTILL),
                        "public labels",
                    )
                )
            phase(r, server.name, "distill")
            log.append(
                train(
                    server,
                    public_items[server.name],
                    cfg.train.server_steps,
                    1.0,
                    phase_seed(cfg, r, 0, SERVER_DISTILL),
                    "public labels",
                )
            )
        else:
            # 2. clients → server: top-K logits and losses on the public set
            sent: list[LogitsMessage] = []
            own: dict[str, np.ndarray] = {}
            for c in clients:
                phase(r, c.name, "logits")
                rows, losses = c.public_logits(
                    public_items[c.name], k=cfg.top_k, loss_unit=cfg.loss_unit
                )
                own[c.name] = losses
                msg = c.message(r, public_items[c.name], rows, losses)
                if cfg.mode == "mutual":
                    # What crosses the wire: serialised, then validated on arrival.
                    raw = msg.model_dump_json()
                    traffic[c.name] = {"bytes": len(raw), "dense_bytes": msg.dense_nbytes()}
                    sent.append(LogitsMessage.model_validate_json(raw))
            # 3. the server learns from the clients
            phase(r, server.name, "distill")
            s_items = public_items[server.name]
            if cfg.mode == "mutual":
                _, s_loss = server.public_logits(s_items, k=cfg.top_k, loss_unit=cfg.loss_unit)
                entry = distil_from(
                    cfg,
                    server,
                    s_items,
                    s_loss,
                    sent,
                    maps,
                    texts,
                    steps=cfg.train.server_steps,
                    seed=phase_seed(cfg, r, 0, SERVER_DISTILL),
                    what="distil from clients",
                    progress=progress,
                )
            else:
                entry = train(
                    server,
                    s_items,
                    cfg.train.server_steps,
                    1.0,
                    phase_seed(cfg, r, 0, SERVER_DISTILL),
                    "public labels",
                )
            log.append(entry)
            # 4. server → clients
            phase(r, server.name, "logits")
            s_rows, s_loss = server.public_logits(s_items, k=cfg.top_k, loss_unit=cfg.loss_unit)
            smsg = server.message(r, s_items, s_rows, s_loss)
            raw = smsg.model_dump_json()
            traffic[server.name] = {
                "bytes": len(raw) * len(clients),
                "dense_bytes": smsg.dense_nbytes() * len(clients),
                "per_client_bytes": len(raw),
            }
            smsg = LogitsMessage.model_validate_json(raw)
            for i, c in enumerate(clients, start=1):
                phase(r, c.name, "distill")
                log.append(
                    distil_from(
                        cfg,
                        c,
                        public_items[c.name],
                        own[c.name],
                        [smsg],
                        maps,
                        texts,
                        steps=cfg.train.client_steps,
                        seed=phase_seed(cfg, r, i, CLIENT_DISTILL),
                        what="distil from server",
                        progress=progress,
                    )
                )
        # 5. evaluate, checkpoint
        if cfg.eval_each_round or r == cfg.rounds:
            phase(r, "all", "evaluate")
            evaluate_all(r)
        run.finish_round(r, parties, log, traffic, time.perf_counter() - tr0)
        con.log(f"round {r}/{cfg.rounds} done in {run.timings[f'round_{r}_s']:.0f} s")

    manifest = manifest_base(
        cfg,
        {p.name: party_info(p, "server" if p is server else "client") for p in parties},
        public,
        [len(x) for x in private],
        len(test),
        map_info,
        "in-process",
    )
    return run.finish(manifest)


def _transferred(picks: Sequence[SparseRows | None]) -> int:
    """Rows that carry a teacher's distribution (not a one-hot fallback)."""
    return sum(int(np.asarray(p.transferred).sum()) for p in picks if p is not None)


def _with_targets(items: Sequence[PublicItem], picks: Sequence[SparseRows | None]) -> list[Any]:
    from fedcot.train.distill import KDItem

    return [KDItem(it.input_ids, it.labels, p) for it, p in zip(items, picks)]
