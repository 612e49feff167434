"""The FedCoT client: perturb → ask the server → decode → multi-task training → evaluate.

``run_distill(cfg)`` is what ``fedcot distill --config run.toml`` runs. Every stage writes its
output into the run folder (:class:`RunFolder`), so a run that is interrupted resumes where it
stopped: the perturbations are reloaded (the same stand-ins, no new privacy cost), the server
is asked only for prompts missing from the response cache, training continues from its last
checkpoint.

What leaves the client is exactly the list of server prompts: the public few-shot template
around each perturbed example. ``server_cache.jsonl`` holds every prompt sent and every
answer, so it is also the audit record of what the server saw.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from fedcot.config import dump_config
from fedcot.cot.cache import AskStats, RationaleCache, ask_cached
from fedcot.cot.config import DistillConfig
from fedcot.cot.decoders import DecodeItem, make_decoder, split_conclusion
from fedcot.cot.templates import fewshot_examples, server_prompt
from fedcot.data.tasks import Example, Task, get_task
from fedcot.errors import ConfigError
from fedcot.evaluation import EvalResult, evaluate
from fedcot.models.backends.base import Backend
from fedcot.privacy.accountant import PrivacyAccountant
from fedcot.privacy.perturb import Perturbation, Perturber, UnitDraw
from fedcot.progress import progress_bar
from fedcot.runs import check_run_config, package_versions, write_json

__all__ = ["DistillResult", "RunFolder", "load_examples", "run_distill"]

_UNAVAILABLE = "[unavailable]"  # what the encoder-decoder returns when it cannot encode


# --------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------


class RunFolder:
    """The files of one run (see docs/fedcot.md for the layout)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # layout
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def cache(self) -> Path:
        return self.path / "server_cache.jsonl"

    @property
    def private(self) -> Path:
        """Client-only files (stand-in maps, decoded rationales): never sent anywhere."""
        return self.path / "client_private"

    @property
    def perturbations(self) -> Path:
        return self.private / "perturbations.jsonl"

    @property
    def rationales(self) -> Path:
        return self.private / "rationales.jsonl"

    @property
    def ledger(self) -> Path:
        return self.path / "privacy_ledger.json"

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def state(self) -> Path:
        return self.path / "state.json"

    def open(self, cfg: DistillConfig, *, resume: bool) -> None:
        """Create the folder (or check that a resumed one belongs to the same config)."""
        text = dump_config(cfg)
        check_run_config(self.config, text, resume=resume)
        self.path.mkdir(parents=True, exist_ok=True)
        self.private.mkdir(exist_ok=True)
        self.config.write_text(text, encoding="utf-8")

    def load_state(self) -> dict[str, Any]:
        if self.state.exists():
            return json.loads(self.state.read_text(encoding="utf-8"))
        return {}

    def save_state(self, state: dict[str, Any]) -> None:
        write_json(self.state, state)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def load_examples(cfg: DistillConfig, task: Task) -> tuple[list[Example], list[Example]]:
    """The private training examples (with any recorded rationales) and the test examples."""
    if cfg.data == "synthetic":
        from fedcot.data.synthetic import generate_private_records

        if task.name != "private-records":
            raise ConfigError(
                "data = 'synthetic' generates private records",
                hint="set task = 'private-records'",
            )
        n_train = cfg.train_limit or 64
        n_test = cfg.test_limit or 32
        records = generate_private_records(n_train + n_test, seed=cfg.seed)
        return records[:n_train], records[n_train:]
    from fedcot.data.loaders import load_dataset

    train = load_dataset(cfg.data, task, cfg.train_split, limit=cfg.train_limit)
    test = load_dataset(cfg.data, task, cfg.test_split, limit=cfg.test_limit, rationales=False)
    return train, test


def _without_rationale(ex: Example) -> Example:
    return Example(**{**ex.to_dict(), "rationale": None, "rationale_label": None})


# --------------------------------------------------------------------------------------
# What gets perturbed: the example's own text, not the template's field labels
# --------------------------------------------------------------------------------------


def _fields(ex: Example) -> list[str]:
    out = [] if ex.premise is None else [ex.premise]
    return [*out, ex.question, *ex.choices]


def field_text(task: Task, ex: Example) -> str:
    """The private fields of ``ex`` (premise, question, choices), one per line.

    They are perturbed as one text, so a name that occurs in the question and in a choice
    gets the same stand-in in both. Labels such as "Question:" or "(a)" are the public
    template and stay as they are.
    """
    # Newlines inside a field become spaces so that the fields stay one per line.
    return "\n".join(f.replace("\r", " ").replace("\n", " ") for f in _fields(ex))


def perturbed_input(task: Task, ex: Example, perturbed: str) -> str:
    """``task.input_text`` of ``ex`` with its fields replaced by their perturbed lines."""
    lines = perturbed.split("\n")
    n = len(_fields(ex))
    if len(lines) != n:  # the mechanism keeps whitespace units, so this is a bug if hit
        raise ValueError(f"perturbed text of {ex.id} has {len(lines)} lines, expected {n}")
    premise = None
    if ex.premise is not None:
        premise, lines = lines[0], lines[1:]
    new = Example(id=ex.id, question=lines[0], label=ex.label, choices=lines[1:], premise=premise)
    return task.input_text(new)


def _to_send(
    cfg: DistillConfig,
    task: Task,
    train: Sequence[Example],
    originals: list[str],
    perturbations: Sequence[Perturbation | None],
) -> list[str]:
    """The example texts that go into server prompts."""
    if cfg.strategy == "none":  # nothing changed: send the examples exactly as written
        return list(originals)
    return [perturbed_input(task, ex, p.text) for ex, p in zip(train, perturbations)]  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------
# Perturbations on disk (client-private)
# --------------------------------------------------------------------------------------


def _perturbation_row(p: Perturbation) -> dict[str, Any]:
    return {
        "id": p.id,
        "original": p.original,
        "text": p.text,
        "epsilon": None if math.isinf(p.epsilon) else p.epsilon,
        "mapping": p.mapping,
        "units": [asdict(u) for u in p.units],
    }


def _perturbation_from_row(d: dict[str, Any]) -> Perturbation:
    eps = d.get("epsilon")
    return Perturbation(
        id=d["id"],
        original=d["original"],
        text=d["text"],
        units=[UnitDraw(**u) for u in d.get("units", [])],
        mapping=dict(d.get("mapping", {})),
        epsilon=math.inf if eps is None else float(eps),
    )


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------


@dataclass
class DistillResult:
    """What :func:`run_distill` measured; also written to ``metrics.json``."""

    before: dict[str, Any] | None
    after: dict[str, Any] | None
    rationales: dict[str, Any]
    privacy: dict[str, Any]
    timings: dict[str, float]
    server: dict[str, Any]
    train: dict[str, Any]
    run_dir: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _eval_method(cfg: DistillConfig, task: Task, ex: Example) -> str:
    if cfg.eval_method != "auto":
        return cfg.eval_method
    return "likelihood" if task.candidates(ex) else "generate"


def build_server(cfg: DistillConfig, task: Task, train: Sequence[Example]) -> Backend:
    """The server backend a config names (the replay teacher is built from ``train``)."""
    if cfg.server.kind == "replay":
        from fedcot.models.backends.replay import ReplayBackend

        return ReplayBackend(task, train, name=f"replay:{cfg.task}")
    return cfg.server.build()


def run_distill(
    cfg: DistillConfig,
    *,
    resume: bool = False,
    server: Backend | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> DistillResult:
    """Run the FedCoT client pipeline as ``cfg`` says (see the module docstring).

    ``server`` overrides ``cfg.server`` (tests pass a spy; benchmarks share one model).
    """
    console = console or Console(quiet=not progress)
    run = RunFolder(cfg.output_dir)
    run.open(cfg, resume=resume)
    state = run.load_state()
    started = state.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    state["started"] = started
    run.save_state(state)
    timings: dict[str, float] = dict(state.get("timings", {}))

    task = get_task(cfg.task, answer_style=cfg.answer_style)
    t0 = time.perf_counter()
    recorded, test = load_examples(cfg, task)
    train = [_without_rationale(ex) for ex in recorded]  # the client's data has no rationales
    if not train or not test:
        raise ConfigError("no training or test examples", hint="check data and the *_limit fields")
    timings["load_data"] = round(time.perf_counter() - t0, 2)
    console.rule(f"[bold]fedcot distill[/] · {cfg.task} · strategy {cfg.strategy}")
    console.print(f"{len(train)} private training examples, {len(test)} test examples")

    manifest: dict[str, Any] = {
        "fedcot_run": "distill",
        "started": started,
        "versions": package_versions(),
        "seeds": {"run": cfg.seed, "privacy": cfg.privacy.seed, "train": cfg.train.seed},
        "privacy_randomness": "OS entropy" if cfg.privacy.seed is None else "seeded (replayable)",
        "task": cfg.task,
        "data": {"source": cfg.data, "train": len(train), "test": len(test)},
        "student": cfg.student.model,
        "server": {"kind": cfg.server.kind, "model": cfg.server.model, "url": cfg.server.base_url}
        if cfg.needs_server
        else None,
        "alpha": cfg.train.alpha,
        "strategy": cfg.strategy,
        "decoder": cfg.decoder_name,
    }
    write_json(run.manifest, manifest)

    # -- the client's model -------------------------------------------------------------
    t0 = time.perf_counter()
    student = cfg.student.build()
    chat = student.supports_chat
    timings["load_student"] = round(time.perf_counter() - t0, 2)
    method = _eval_method(cfg, task, test[0])

    def _evaluate(backend: Backend, name: str) -> EvalResult:
        res = evaluate(
            backend,
            task,
            test,
            method=method,  # type: ignore[arg-type]
            params=cfg.eval_generation,
            chat=chat,
            progress=progress,
        )
        res.write_predictions(run.path / "eval" / f"{name}_predictions.jsonl")
        write_json(run.path / "eval" / f"{name}.json", res.summary())
        return res

    before: dict[str, Any] | None = None
    if cfg.eval_before:
        done = run.path / "eval" / "before.json"
        if resume and done.exists():
            before = json.loads(done.read_text())
        else:
            t0 = time.perf_counter()
            before = _evaluate(student, "before").summary()
            timings["eval_before"] = round(time.perf_counter() - t0, 2)
        console.print(f"before training: {100 * before['accuracy']:.1f} % ({method})")

    # -- rationales (skipped for label-only training) -----------------------------------
    rationale_info: dict[str, Any] = {"requested": 0}
    privacy_info: dict[str, Any] = {"strategy": cfg.strategy}
    server_info: dict[str, Any] = {}
    training_examples = train
    encdec = None
    if cfg.needs_server:
        srv = server or build_server(cfg, task, recorded)
        server_info["model"] = srv.model_name
        cache = RationaleCache(run.cache)
        if cache.skipped_lines:
            console.print(f"[yellow]cache: dropped {cache.skipped_lines} torn line(s)[/]")
        shots = fewshot_examples(task, cfg.fewshot)
        originals = [task.input_text(ex) for ex in train]
        stats = AskStats()
        params = cfg.generation
        if not srv.supports_chat:
            # A plain few-shot prompt: the answer ends where the next example would begin.
            params = params.model_copy(update={"stop": (*params.stop, *task.stop)})

        def ask_texts(texts: Sequence[str], label: str) -> list[str]:
            prompts = [server_prompt(task, t, chat=srv.supports_chat, shots=shots) for t in texts]
            with progress_bar(len(prompts), label, enabled=progress) as advance:
                answers = ask_cached(
                    srv,
                    prompts,
                    params,
                    cache,
                    batch_size=cfg.server.batch_size,
                    progress=advance,
                    stats=stats,
                )
            return [a.text for a in answers]

        # 1. Perturb.
        t0 = time.perf_counter()
        perturbations: list[Perturbation | None]
        if cfg.strategy == "encoder-decoder":
            encdec, sent = _encoder_decoder(cfg, task, student, run, ask_texts, originals, resume)
            perturbations = [None] * len(train)
            privacy_info["guarantee"] = "none (learned encoder; see docs/fedcot.md)"
            privacy_info["encoder"] = encdec.stats_dict()
        elif resume and run.perturbations.exists():
            perturbations = [_perturbation_from_row(r) for r in _read_jsonl(run.perturbations)]
            fields = [field_text(task, ex) for ex in train]
            if [p.original for p in perturbations] != fields:  # type: ignore[union-attr]
                raise ConfigError(
                    f"{run.perturbations} does not match the training data",
                    hint="the data changed since the run started; use a new output_dir",
                )
            sent = _to_send(cfg, task, train, originals, perturbations)
        else:
            perturber = Perturber.from_config(cfg.privacy)
            fields = [field_text(task, ex) for ex in train]
            perturbations = list(perturber.perturb(fields, [ex.id for ex in train]))
            sent = _to_send(cfg, task, train, originals, perturbations)
            _write_jsonl(run.perturbations, [_perturbation_row(p) for p in perturbations])  # type: ignore[arg-type]
            if cfg.strategy != "none":
                perturber.accountant.save(run.ledger)
        if run.ledger.exists():
            privacy_info["ledger"] = PrivacyAccountant.load(run.ledger).summary()
        if cfg.strategy == "none":
            privacy_info["epsilon"] = None
            privacy_info["guarantee"] = "none (non-private baseline)"
        elif cfg.strategy == "exponential":
            privacy_info["epsilon_per_unit"] = cfg.privacy.eps_sensitive
        elif cfg.strategy == "adaptive":
            privacy_info["number_epsilon"] = cfg.privacy.eps_sensitive
            privacy_info["base"] = cfg.privacy.base
        privacy_info["randomness"] = (
            "OS entropy"
            if cfg.privacy.seed is None
            else f"seed {cfg.privacy.seed}: reproducible — not for private data"
        )
        timings["perturb"] = round(time.perf_counter() - t0, 2)

        # 2. Ask the server (cached). Examples the encoder could not encode are not sent.
        t0 = time.perf_counter()
        usable = [i for i, t in enumerate(sent) if t != _UNAVAILABLE]
        got = ask_texts([sent[i] for i in usable], "server rationales")
        answers = [""] * len(sent)
        for i, a in zip(usable, got):
            answers[i] = a
        timings["generate"] = round(time.perf_counter() - t0, 2)
        server_info.update(
            asked=stats.asked,
            cached=stats.cached,
            server_seconds=round(stats.seconds, 2),
            completion_tokens=stats.completion_tokens,
            tokens_per_second=round(stats.completion_tokens / stats.seconds, 2)
            if stats.seconds > 0
            else None,
        )

        # 3. Decode (+ optional filter).
        t0 = time.perf_counter()
        decoder = make_decoder(cfg.decoder_name, student=student, encoder_decoder=encdec)
        items = [
            DecodeItem(ex, o, s, a, p)
            for ex, o, s, a, p in zip(train, originals, sent, answers, perturbations)
        ]
        decoded = decoder.decode(items)
        rows, training_examples = [], []
        kept = agree = 0
        for ex, text in zip(train, decoded):
            body, conclusion = split_conclusion(text)
            server_answer = task.extract_answer(conclusion or text, ex)
            ok = task.is_correct(server_answer, ex)
            agree += ok
            keep = bool(body) and (ok or not cfg.filter)
            kept += keep
            rows.append(
                {
                    "id": ex.id,
                    "rationale": body,
                    "server_answer": server_answer,
                    "agrees": ok,
                    "kept": keep,
                }
            )
            training_examples.append(
                Example(**{**ex.to_dict(), "rationale": body if keep else None})
            )
        _write_jsonl(run.rationales, rows)
        timings["decode"] = round(time.perf_counter() - t0, 2)
        rationale_info = {
            "requested": len(train),
            "agree_with_gold": agree,
            "kept": kept,
            "dropped": len(train) - kept,
            "filter": cfg.filter,
        }
        console.print(
            f"rationales: {len(train)} asked, {agree} reach the gold answer, {kept} kept"
            + (" (filter on)" if cfg.filter else "")
        )
        if server is None:
            srv.close()

    # -- train -------------------------------------------------------------------------
    from fedcot.train.multitask import multitask_items, train_multitask

    t0 = time.perf_counter()
    tokenizer = student.tokenizer  # type: ignore[attr-defined]
    groups = multitask_items(task, training_examples, tokenizer, chat=chat, alpha=cfg.train.alpha)
    eval_groups = multitask_items(task, test[:32], tokenizer, chat=chat, alpha=0.0)
    result = train_multitask(
        student.model,  # type: ignore[attr-defined]
        tokenizer,
        groups,
        cfg.train,
        run.train_dir,
        eval_groups=eval_groups if cfg.train.eval_each_epoch else None,
        resume=resume,
        progress=progress,
    )
    timings["train"] = round(time.perf_counter() - t0, 2)
    train_info = {
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "resumed_from": result.resumed_from,
        "adapter": str(result.adapter_dir),
        "groups": len(groups),
        "with_rationale": sum(1 for g in groups if any(it.kind == "rationale" for it in g)),
    }

    # -- evaluate ----------------------------------------------------------------------
    from fedcot.models.backends.transformers import TransformersBackend

    t0 = time.perf_counter()
    trained = TransformersBackend(
        result.model,
        tokenizer,
        name=f"{cfg.student.model}+fedcot",
        batch_size=cfg.student.batch_size,
    )
    after = _evaluate(trained, "after").summary()
    timings["eval_after"] = round(time.perf_counter() - t0, 2)
    console.print(f"after training: {100 * after['accuracy']:.1f} % ({method})")

    out = DistillResult(
        before=before,
        after=after,
        rationales=rationale_info,
        privacy=privacy_info,
        timings=timings,
        server=server_info,
        train=train_info,
        run_dir=str(run.path),
    )
    write_json(run.metrics, out.to_dict())
    _plots(run, result.log_history, before, after)
    manifest.update(
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        privacy=privacy_info,
        timings=timings,
        rationales=rationale_info,
    )
    write_json(run.manifest, manifest)
    state["timings"] = timings
    state["finished"] = manifest["finished"]
    run.save_state(state)
    return out


def _encoder_decoder(
    cfg: DistillConfig,
    task: Task,
    student: Backend,
    run: RunFolder,
    ask_texts: Any,
    originals: list[str],
    resume: bool,
) -> tuple[Any, list[str]]:
    """PDSS v1: fit the encoder-decoder on public data, then encode the private texts."""
    from fedcot.cot.encoder_decoder import EncoderDecoder
    from fedcot.data.loaders import load_dataset
    from fedcot.models.registry import load_model

    ed = cfg.encoder_decoder
    public_task = (
        get_task(ed.public_task, answer_style=cfg.answer_style) if ed.public_task else task
    )
    public = load_dataset(ed.public_data, public_task, ed.public_split, limit=ed.public_limit)
    perturber = Perturber.from_config(ed.mechanism)
    # A separate copy of the client's base model: its LoRA is not the student's.
    model, tokenizer = load_model(cfg.student.model)
    model_dir = run.path / "encoder_decoder"
    encdec = EncoderDecoder.fit(
        model,
        tokenizer,
        public_task,
        public,
        perturber,
        lambda texts: ask_texts(texts, "server (public data)"),
        ed,
        model_dir,
        chat=student.supports_chat,
        resume=resume,
    )
    encoded_path = run.private / "encoded.jsonl"
    if resume and encoded_path.exists():
        sent = [r["text"] for r in _read_jsonl(encoded_path)]
    else:
        sent = encdec.encode(originals, seed=cfg.seed)
        _write_jsonl(encoded_path, [{"text": t} for t in sent])
    return encdec, sent


def _plots(
    run: RunFolder,
    history: list[dict[str, Any]],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Loss curves and accuracy before/after as PNG files in ``plots/``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.plots.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    plotted = 0
    for key in ("loss", "loss_label", "loss_rationale", "eval_loss"):
        pts = [(h["step"], h[key]) for h in history if key in h and "step" in h]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key)
            plotted += 1
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    if plotted:
        ax.legend()
    fig.tight_layout()
    fig.savefig(run.plots / "loss.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 3.5))
    bars = [("before", before), ("after", after)]
    bars = [(n, r) for n, r in bars if r is not None]
    xs = range(len(bars))
    acc = [100 * r["accuracy"] for _, r in bars]
    err = [
        [100 * (r["accuracy"] - r["ci_low"]) for _, r in bars],
        [100 * (r["ci_high"] - r["accuracy"]) for _, r in bars],
    ]
    ax.bar(xs, acc, yerr=err, capsize=6, color=["#999999", "#3a7dc9"][: len(bars)])
    ax.set_xticks(list(xs), [n for n, _ in bars])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("test accuracy (95 % CI)")
    fig.tight_layout()
    fig.savefig(run.plots / "accuracy.png", dpi=110)
    plt.close(fig)
