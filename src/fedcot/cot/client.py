"""The FedCoT client: perturb → ask the server → decode → multi-task training → evaluate.

``run_fedcot(cfg)`` is what ``fedcot distill --config run.toml`` runs. Every stage writes its
output into the run folder (:class:`RunFolder`), so a run that is interrupted resumes where it
stopped: the perturbations are reloaded (the same stand-ins, no new privacy cost), the server
is asked only for prompts missing from the response cache, training continues from its last
checkpoint.

What leaves the client is exactly the list of server prompts: the public few-shot template
around each perturbed example. ``server_cache.jsonl`` holds every prompt sent and every
answer, so it is also the audit record of what the server saw.
"""

from __future__ import annotations

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
from fedcot.cot.config import FedCoTConfig
from fedcot.cot.decoders import DecodeItem, make_decoder, split_conclusion
from fedcot.cot.encoder_decoder import EncoderDecoder
from fedcot.cot.templates import fewshot_examples, server_prompt
from fedcot.data.loaders import load_dataset
from fedcot.data.synthetic import generate_private_records
from fedcot.data.tasks import Example, Task, get_task, has_answer_marker
from fedcot.errors import ConfigError
from fedcot.evaluation import evaluate, wilson_interval
from fedcot.models.backends.base import Backend
from fedcot.models.backends.transformers import TransformersBackend
from fedcot.models.registry import load_model
from fedcot.privacy.accountant import PrivacyAccountant
from fedcot.privacy.perturb import Perturbation, Perturber, UnitDraw
from fedcot.progress import progress_bar
from fedcot.runs import RunFolder as BaseRunFolder
from fedcot.runs import package_versions, read_json, read_jsonl, write_json, write_jsonl
from fedcot.train.multitask import multitask_items, train_multitask

__all__ = ["FedCoTResult", "RunFolder", "fidelity_summary", "load_examples", "run_fedcot"]

_UNAVAILABLE = "[unavailable]"  # what the encoder-decoder returns when it cannot encode


# --------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------


class RunFolder(BaseRunFolder):
    """The files of one FedCoT run (see docs/fedcot.md for the layout)."""

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


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def load_examples(cfg: FedCoTConfig, task: Task) -> tuple[list[Example], list[Example]]:
    """The private training examples (with any recorded rationales) and the test examples."""
    if cfg.data == "synthetic":
        if task.name != "private-records":
            raise ConfigError(
                "data = 'synthetic' generates private records",
                hint="set task = 'private-records'",
            )
        n_train = cfg.train_limit or 64
        n_test = cfg.test_limit or 32
        records = generate_private_records(n_train + n_test, seed=cfg.seed)
        return records[:n_train], records[n_train:]
    mapping = cfg.fields or None
    train = load_dataset(cfg.data, task, cfg.train_split, limit=cfg.train_limit, mapping=mapping)
    test = load_dataset(
        cfg.data, task, cfg.test_split, limit=cfg.test_limit, mapping=mapping, rationales=False
    )
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
    cfg: FedCoTConfig,
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
class FedCoTResult:
    """What :func:`run_fedcot` measured; also written to ``metrics.json``."""

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


def _eval_method(cfg: FedCoTConfig, task: Task, ex: Example) -> str:
    if cfg.eval_cot:
        return "generate"
    if cfg.eval_method != "auto":
        return cfg.eval_method
    return "likelihood" if task.candidates(ex) else "generate"


def build_server(cfg: FedCoTConfig, task: Task, train: Sequence[Example]) -> Backend:
    """The server backend a config names (the replay teacher is built from ``train``)."""
    if cfg.server.kind == "replay":
        from fedcot.models.backends.replay import ReplayBackend  # lazy: the server's kind decides

        return ReplayBackend(task, train, name=f"replay:{cfg.task}")
    return cfg.server.build()


def run_fedcot(
    cfg: FedCoTConfig,
    *,
    resume: bool = False,
    server: Backend | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> FedCoTResult:
    """Run the FedCoT client pipeline as ``cfg`` says (see the module docstring).

    ``server`` overrides ``cfg.server`` (tests pass a spy; benchmarks share one model). With
    ``cfg.stage == "rationales"`` the run stops after decoding (no student training): what
    it reports is the rationale fidelity of the teacher and strategy.
    """
    ctx = _Context.open(cfg, resume, console or Console(quiet=not progress), progress)
    recorded, test = ctx.timed("load_data", lambda: load_examples(cfg, ctx.task))
    train = [_without_rationale(ex) for ex in recorded]  # the client's data has no rationales
    if not train or not test:
        raise ConfigError("no training or test examples", hint="check data and the *_limit fields")
    ctx.console.rule(f"[bold]fedcot distill[/] · {cfg.task} · strategy {cfg.strategy}")
    ctx.console.print(f"{len(train)} private training examples, {len(test)} test examples")
    manifest = _manifest(cfg, ctx.started, len(train), len(test))
    write_json(ctx.run.manifest, manifest)

    before = None
    if cfg.eval_before and cfg.stage == "all":
        before = _evaluate_stage(ctx, ctx.student(), test, "before")
    got = _Rationales(train, {"requested": 0}, {"strategy": cfg.strategy}, {})
    if cfg.needs_server:
        got = _rationale_stage(ctx, recorded, train, server)
    train_info: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    after = None
    if cfg.stage == "all":
        trained, train_info, history = _train_stage(ctx, got.examples, test)
        after = _evaluate_stage(ctx, trained, test, "after")
    out = FedCoTResult(
        before=before,
        after=after,
        rationales=got.info,
        privacy=got.privacy,
        timings=ctx.timings,
        server=got.server,
        train=train_info,
        run_dir=str(ctx.run.path),
    )
    write_json(ctx.run.metrics, out.to_dict())
    if cfg.stage == "all":
        _plots(ctx.run, history, before, after)
    ctx.finish(manifest, got)
    return out


@dataclass
class _Context:
    """What every stage of one run needs: config, run folder, task, console, timings."""

    cfg: FedCoTConfig
    run: RunFolder
    task: Task
    console: Console
    progress: bool
    resume: bool
    state: dict[str, Any]
    timings: dict[str, float]
    _student: Backend | None = None

    @classmethod
    def open(cls, cfg: FedCoTConfig, resume: bool, console: Console, progress: bool) -> _Context:
        run = RunFolder(cfg.output_dir)
        run.open(dump_config(cfg), resume=resume)
        run.private.mkdir(exist_ok=True)
        state = run.load_state()
        state.setdefault("started", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        run.save_state(state)
        task = get_task(cfg.task, answer_style=cfg.answer_style)
        timings = dict(state.get("timings", {}))
        return cls(cfg, run, task, console, progress, resume, state, timings)

    @property
    def started(self) -> str:
        return str(self.state["started"])

    def timed(self, name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        value = fn()
        self.timings[name] = round(time.perf_counter() - t0, 2)
        return value

    def student(self) -> Backend:
        """The client's model, loaded on first use (a rationales-only run may not need it)."""
        if self._student is None:
            self._student = self.timed("load_student", self.cfg.student.build)
        return self._student

    def finish(self, manifest: dict[str, Any], got: _Rationales) -> None:
        manifest.update(
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            stage=self.cfg.stage,
            privacy=got.privacy,
            timings=self.timings,
            rationales=got.info,
        )
        write_json(self.run.manifest, manifest)
        self.state["timings"] = self.timings
        self.state["finished"] = manifest["finished"]
        self.run.save_state(self.state)


@dataclass
class _Rationales:
    """The training examples (with decoded rationales) and what the stage measured."""

    examples: list[Example]
    info: dict[str, Any]
    privacy: dict[str, Any]
    server: dict[str, Any]


def _manifest(cfg: FedCoTConfig, started: str, n_train: int, n_test: int) -> dict[str, Any]:
    return {
        "fedcot_run": "distill",
        "started": started,
        "versions": package_versions(),
        "seeds": {"run": cfg.seed, "privacy": cfg.privacy.seed, "train": cfg.train.seed},
        "privacy_randomness": "OS entropy" if cfg.privacy.seed is None else "seeded (replayable)",
        "task": cfg.task,
        "data": {"source": cfg.data, "train": n_train, "test": n_test},
        "student": cfg.student.model,
        "server": {"kind": cfg.server.kind, "model": cfg.server.model, "url": cfg.server.base_url}
        if cfg.needs_server
        else None,
        "alpha": cfg.train.alpha,
        "strategy": cfg.strategy,
        "decoder": cfg.decoder_name,
    }


def _evaluate_stage(ctx: _Context, backend: Backend, test: list[Example], name: str) -> Any:
    """Score ``backend`` on the test examples (reloaded when a resumed run already did)."""
    done = ctx.run.path / "eval" / f"{name}.json"
    if name == "before" and ctx.resume and done.exists():
        summary = read_json(done)
    else:

        def score() -> dict[str, Any]:
            res = evaluate(
                backend,
                ctx.task,
                test,
                method=_eval_method(ctx.cfg, ctx.task, test[0]),  # type: ignore[arg-type]
                params=ctx.cfg.eval_generation,
                chat=ctx.student().supports_chat,
                cot=ctx.cfg.eval_cot,
                calculator=ctx.cfg.eval_calculator,
                progress=ctx.progress,
            )
            res.write_predictions(ctx.run.path / "eval" / f"{name}_predictions.jsonl")
            write_json(done, res.summary())
            return res.summary()

        summary = ctx.timed(f"eval_{name}", score)
    how = summary["method"] + (", CoT" if ctx.cfg.eval_cot else "")
    how += ", calculator" if ctx.cfg.eval_calculator else ""
    ctx.console.print(f"{name} training: {100 * summary['accuracy']:.1f} % ({how})")
    return summary


def _rationale_stage(
    ctx: _Context, recorded: list[Example], train: list[Example], server: Backend | None
) -> _Rationales:
    """Perturb → ask the server → decode: the training examples with their rationales."""
    cfg, task = ctx.cfg, ctx.task
    srv = server or build_server(cfg, task, recorded)
    asker = _Asker(ctx, srv)
    originals = [task.input_text(ex) for ex in train]
    privacy_info: dict[str, Any] = {"strategy": cfg.strategy}
    perturbations, sent, encdec = ctx.timed(
        "perturb", lambda: _perturb_stage(ctx, train, originals, asker, privacy_info)
    )
    answers = ctx.timed("generate", lambda: _ask_stage(asker, sent))
    decoder = make_decoder(
        cfg.decoder_name,
        student=ctx.student() if cfg.decoder_name == "icl" else None,
        encoder_decoder=encdec,
    )
    items = [
        DecodeItem(ex, o, s, a, p)
        for ex, o, s, a, p in zip(train, originals, sent, answers, perturbations)
    ]
    examples, info = ctx.timed("decode", lambda: _decode_stage(ctx, decoder, items))
    if server is None:
        srv.close()
    return _Rationales(examples, info, privacy_info, {"model": srv.model_name, **asker.info()})


class _Asker:
    """Sends example texts to the server inside the public few-shot template (cached)."""

    def __init__(self, ctx: _Context, srv: Backend) -> None:
        self.ctx, self.srv = ctx, srv
        self.cache = RationaleCache(ctx.run.cache)
        if self.cache.skipped_lines:
            ctx.console.print(f"[yellow]cache: dropped {self.cache.skipped_lines} torn line(s)[/]")
        self.shots = fewshot_examples(ctx.task, ctx.cfg.fewshot)
        self.stats = AskStats()
        params = ctx.cfg.generation
        if not srv.supports_chat:
            # A plain few-shot prompt: the answer ends where the next example would begin.
            params = params.model_copy(update={"stop": (*params.stop, *ctx.task.stop)})
        self.params = params

    def __call__(self, texts: Sequence[str], label: str) -> list[str]:
        chat = self.srv.supports_chat
        prompts = [server_prompt(self.ctx.task, t, chat=chat, shots=self.shots) for t in texts]
        with progress_bar(len(prompts), label, enabled=self.ctx.progress) as advance:
            answers = ask_cached(
                self.srv,
                prompts,
                self.params,
                self.cache,
                batch_size=self.ctx.cfg.server.batch_size,
                progress=advance,
                stats=self.stats,
            )
        return [a.text for a in answers]

    def info(self) -> dict[str, Any]:
        st = self.stats
        return {
            "asked": st.asked,
            "cached": st.cached,
            "server_seconds": round(st.seconds, 2),
            "completion_tokens": st.completion_tokens,
            "tokens_per_second": round(st.completion_tokens / st.seconds, 2)
            if st.seconds > 0
            else None,
        }


def _perturb_stage(
    ctx: _Context,
    train: list[Example],
    originals: list[str],
    asker: _Asker,
    privacy_info: dict[str, Any],
) -> tuple[list[Perturbation | None], list[str], Any]:
    """The perturbations (reloaded on resume), the texts to send, and the encoder-decoder."""
    cfg, task, run = ctx.cfg, ctx.task, ctx.run
    if cfg.strategy == "encoder-decoder":
        encdec, sent = _encoder_decoder(cfg, task, ctx.student(), run, asker, originals, ctx.resume)
        privacy_info["guarantee"] = "none (learned encoder; see docs/fedcot.md)"
        privacy_info["encoder"] = encdec.stats_dict()
        return [None] * len(train), sent, encdec
    fields = [field_text(task, ex) for ex in train]
    if ctx.resume and run.perturbations.exists():
        perturbations = [_perturbation_from_row(r) for r in read_jsonl(run.perturbations)]
        if [p.original for p in perturbations] != fields:
            raise ConfigError(
                f"{run.perturbations} does not match the training data",
                hint="the data changed since the run started; use a new output_dir",
            )
    else:
        perturber = Perturber.from_config(cfg.privacy)
        perturbations = list(perturber.perturb(fields, [ex.id for ex in train]))
        write_jsonl(run.perturbations, [_perturbation_row(p) for p in perturbations])
        if cfg.strategy != "none":
            perturber.accountant.save(run.ledger)
    privacy_info.update(_privacy_summary(cfg, run))
    sent = _to_send(cfg, task, train, originals, perturbations)  # type: ignore[arg-type]
    return list(perturbations), sent, None


def _privacy_summary(cfg: FedCoTConfig, run: RunFolder) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if run.ledger.exists():
        info["ledger"] = PrivacyAccountant.load(run.ledger).summary()
    if cfg.strategy == "none":
        info.update(epsilon=None, guarantee="none (non-private baseline)")
    elif cfg.strategy == "exponential":
        info["epsilon_per_unit"] = cfg.privacy.eps_sensitive
    elif cfg.strategy == "adaptive":
        info.update(number_epsilon=cfg.privacy.eps_sensitive, base=cfg.privacy.base)
    info["randomness"] = (
        "OS entropy"
        if cfg.privacy.seed is None
        else f"seed {cfg.privacy.seed}: reproducible — not for private data"
    )
    return info


def _ask_stage(asker: _Asker, sent: list[str]) -> list[str]:
    """The server's answers (cached); examples the encoder could not encode are not sent."""
    usable = [i for i, t in enumerate(sent) if t != _UNAVAILABLE]
    got = asker([sent[i] for i in usable], "server rationales")
    answers = [""] * len(sent)
    for i, a in zip(usable, got):
        answers[i] = a
    return answers


def _decode_stage(
    ctx: _Context, decoder: Any, items: list[DecodeItem]
) -> tuple[list[Example], dict[str, Any]]:
    """Decode, split each conclusion off, and count the rationale fidelity: the share of
    decoded rationales whose stated answer is the gold one (a rationale without an answer
    marker states none)."""
    cfg, task = ctx.cfg, ctx.task
    rows, examples = [], []
    for it, text in zip(items, decoder.decode(items)):
        body, conclusion = split_conclusion(text)
        # A rationale that states no answer (cut at the token cap, or rambling) has none:
        # the parser's fallbacks would take any number or choice it mentions.
        stated = has_answer_marker(text)
        answer = task.extract_answer(conclusion or text, it.example) if stated else None
        ok = task.is_correct(answer, it.example)
        keep = bool(body) and (ok or not cfg.filter)
        rows.append(
            {
                "id": it.example.id,
                "rationale": body,
                "server_answer": answer,
                "agrees": ok,
                "kept": keep,
                "sent": it.perturbed_text,
                "server_rationale": it.rationale,
            }
        )
        examples.append(Example(**{**it.example.to_dict(), "rationale": body if keep else None}))
    write_jsonl(ctx.run.rationales, rows)
    info = fidelity_summary(rows, cfg.filter)
    ctx.console.print(
        f"rationale fidelity: {info['agree_with_gold']}/{info['requested']} decoded rationales "
        f"reach the gold answer ({100 * info['fidelity']:.1f} %, 95 % CI "
        f"{100 * info['fidelity_ci'][0]:.1f}–{100 * info['fidelity_ci'][1]:.1f} %); "
        f"{info['unparsed']} state no answer; {info['kept']} kept"
        + (" (filter on)" if cfg.filter else "")
    )
    if cfg.filter and rows and not info["kept"] and cfg.stage == "all":  # alpha > 0 here
        raise ConfigError(
            "no decoded rationale reaches the gold answer, and filter = true drops them all",
            hint="set filter = false, use a stronger teacher, or train on labels (alpha = 0)",
        )
    return examples, info


def fidelity_summary(rows: Sequence[dict[str, Any]], filter_on: bool) -> dict[str, Any]:
    """Counts of a decode stage: fidelity (agreeing / requested) with a Wilson interval."""
    n = len(rows)
    agree = sum(1 for r in rows if r["agrees"])
    kept = sum(1 for r in rows if r["kept"])
    return {
        "requested": n,
        "agree_with_gold": agree,
        "fidelity": agree / n if n else 0.0,
        "fidelity_ci": list(wilson_interval(agree, n)) if n else [0.0, 0.0],
        "unparsed": sum(1 for r in rows if r["server_answer"] is None),
        "kept": kept,
        "dropped": n - kept,
        "filter": filter_on,
    }


def _train_stage(
    ctx: _Context, examples: list[Example], test: list[Example]
) -> tuple[Backend, dict[str, Any], list[dict[str, Any]]]:
    """Multi-task LoRA training of the student: the trained model as a backend, what the
    run reports of the training, and its log history (for the plots)."""
    cfg, student = ctx.cfg, ctx.student()
    tokenizer = student.tokenizer  # type: ignore[attr-defined]
    chat = student.supports_chat
    groups = multitask_items(ctx.task, examples, tokenizer, chat=chat, alpha=cfg.train.alpha)
    eval_groups = multitask_items(ctx.task, test[:32], tokenizer, chat=chat, alpha=0.0)
    result = ctx.timed(
        "train",
        lambda: train_multitask(
            student.model,  # type: ignore[attr-defined]
            tokenizer,
            groups,
            cfg.train,
            ctx.run.train_dir,
            eval_groups=eval_groups if cfg.train.eval_each_epoch else None,
            resume=ctx.resume,
            progress=ctx.progress,
        ),
    )
    info = {
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "resumed_from": result.resumed_from,
        "adapter": str(result.adapter_dir),
        "groups": len(groups),
        "with_rationale": sum(1 for g in groups if any(it.kind == "rationale" for it in g)),
    }
    trained = TransformersBackend(
        result.model,
        tokenizer,
        name=f"{cfg.student.model}+fedcot",
        batch_size=cfg.student.batch_size,
    )
    return trained, info, result.log_history


def _encoder_decoder(
    cfg: FedCoTConfig,
    task: Task,
    student: Backend,
    run: RunFolder,
    ask_texts: Any,
    originals: list[str],
    resume: bool,
) -> tuple[Any, list[str]]:
    """PDSS v1: fit the encoder-decoder on public data, then encode the private texts."""
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
        sent = [r["text"] for r in read_jsonl(encoded_path)]
    else:
        sent = encdec.encode(originals, seed=cfg.seed)
        write_jsonl(encoded_path, [{"text": t} for t in sent])
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
