"""The ``fedcot`` command line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcot.config import DemoConfig, EvalConfig, dump_config, load_config
from fedcot.cot.client import run_fedcot
from fedcot.cot.config import FedCoTConfig
from fedcot.data import get_task, load_dataset
from fedcot.data.loaders import parse_field_flags, read_text_rows
from fedcot.demo import run_demo
from fedcot.errors import DataError, FedcotError
from fedcot.evaluation import evaluate
from fedcot.federation.flower_local import LocalFederation, threads_per_node
from fedcot.mkt import run_mkt
from fedcot.mkt.config import MKTConfig
from fedcot.mkt.engine import accuracy_table
from fedcot.models.backends import make_backend
from fedcot.models.registry import EMBEDDED, list_models, prepare
from fedcot.privacy.annotated import from_records
from fedcot.privacy.evaluate import (
    load_space_and_encoder,
    load_texts,
    parse_epsilons,
    parse_mechanisms,
    privacy_grid,
    report_rows,
)
from fedcot.privacy.perturb import PerturbConfig, Perturber
from fedcot.privacy.threats import run_threats, threat_table
from fedcot.progress import progress_bar
from fedcot.runs import RunFolder, check_run_config, read_json, write_jsonl
from fedcot.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="fedcot",
    help=(
        "Privacy-preserving knowledge transfer between a server LLM and client SLMs.\n\n"
        "Start with 'fedcot demo' (runs on the embedded models, no arguments needed), "
        "'fedcot models list' and 'fedcot eval --help'."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="List and prepare the embedded and local models.", no_args_is_help=True
)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML or YAML config file.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in output_dir.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field: --set generation.max_new_tokens=64."),
]
FieldOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--field",
        help="Read a data field from a column (repeatable): --field question=query. Keys: "
        "question, label, choices, premise (passage, context), rationale, id.",
    ),
]


def _field_values(items: list[str] | None) -> dict[str, str]:
    """``--field`` flags as config values: ``{"fields.question": "query"}``."""
    return {f"fields.{k}": v for k, v in parse_field_flags(items or []).items()}


def friendly_errors(fn: F) -> F:
    """Turn fedcot errors into a red message with a hint and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FedcotError as exc:
            # Messages hold user text and "pip install 'fedcot[hf]'": brackets are not markup.
            err.print(f"[bold red]error:[/] {escape(exc.message)}")
            if exc.hint:
                err.print(f"[yellow]hint:[/] {escape(exc.hint)}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out.print(f"fedcot {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """fedcot command line."""


# -- models --------------------------------------------------------------------------------


@models_app.command("list")
@friendly_errors
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the embedded models and what is converted in the cache."""
    rows = list_models()
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in rows]))
        return
    table = Table(title="fedcot models")
    for col in ("name", "kind", "installed", "prepared", "chat", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.name,
            r.kind,
            "yes" if r.installed else "[red]no[/]",
            "yes" if r.prepared else "no",
            "yes" if r.chat else "no",
            r.description,
        )
    out.print(table)
    out.print("Any local transformers folder or .gguf file works wherever a model name does.")


@models_app.command("prepare")
@friendly_errors
def models_prepare(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Embedded names, .gguf files or folders (default: all embedded)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Convert again even when cached.")] = False,
) -> None:
    """Convert GGUF models to cached float32 transformers checkpoints (done once)."""
    import time

    for name in names or list(EMBEDDED):
        t0 = time.perf_counter()
        err.print(f"preparing [bold]{name}[/] ...")
        folder = prepare(name, force=force)
        out.print(f"{name}: {folder} ({time.perf_counter() - t0:.1f} s)")


# -- eval ----------------------------------------------------------------------------------


@app.command("eval")
@friendly_errors
def eval_cmd(
    config: ConfigOpt = None,
    model: Annotated[str | None, typer.Option(help="Model name, .gguf file or folder.")] = None,
    backend: Annotated[str | None, typer.Option(help="transformers | openai | llamacpp.")] = None,
    server: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL (implies --backend openai).")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="cqa, svamp, gsm8k, esnli, anli1, rte, or a kind.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Datasets root, a dataset folder, a .jsonl/.csv/.tsv file or hf:NAME."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split to score.")] = None,
    limit: Annotated[int | None, typer.Option(help="Score only the first N examples.")] = None,
    method: Annotated[
        str | None, typer.Option(help="generate (parse answers) | likelihood (score choices).")
    ] = None,
    fewshot: Annotated[int | None, typer.Option(help="Few-shot examples from train.")] = None,
    cot: Annotated[bool | None, typer.Option("--cot/--no-cot", help="Chain of thought.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generation length.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts per forward pass.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Per-example predictions (JSONL).")
    ] = None,
    fields: FieldOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Score a model on a task: accuracy with a 95 % interval and per-example predictions."""
    cfg = load_config(
        EvalConfig,
        config,
        overrides or [],
        {
            "model.model": model,
            "model.kind": "openai" if server else backend,
            "model.base_url": server,
            "model.batch_size": batch_size,
            "task": task,
            "data": data,
            "split": split,
            "limit": limit,
            "method": method,
            "fewshot": fewshot,
            "cot": cot,
            "generation.max_new_tokens": max_new_tokens,
            "output": str(output) if output else None,
            **_field_values(fields),
        },
    )
    task_obj = get_task(cfg.task, answer_style=cfg.answer_style)
    examples = load_dataset(
        cfg.data, task_obj, cfg.split, limit=cfg.limit, mapping=cfg.fields, rationales=False
    )
    shots = []
    if cfg.fewshot:
        shots = _fewshot_pool(cfg.data, task_obj, cfg.split, cfg.fields)[: cfg.fewshot]
    err.print(f"loading [bold]{cfg.model.model}[/] ({cfg.model.kind}) ...")
    be = cfg.model.build()
    result = evaluate(
        be,
        task_obj,
        examples,
        method=cfg.method,
        params=cfg.generation,
        chat=cfg.chat,
        fewshot=shots,
        cot=cfg.cot,
    )
    _print_result(result)
    if cfg.output:
        path = result.write_predictions(cfg.output)
        cfg.output.with_suffix(".summary.json").write_text(json.dumps(result.summary(), indent=2))
        out.print(f"predictions: {path}")


def _fewshot_pool(data: str, task: Any, split: str, fields: dict[str, str]) -> list[Any]:
    for candidate in ("train", "valid", "val"):
        if candidate == split:
            continue
        try:
            return load_dataset(data, task, candidate, limit=64, mapping=fields, rationales=True)
        except DataError:
            try:
                return load_dataset(
                    data, task, candidate, limit=64, mapping=fields, rationales=False
                )
            except DataError:
                continue
    raise FedcotError(
        f"no split other than '{split}' to draw few-shot examples from",
        hint="use --fewshot 0",
    )


def _print_result(result: Any) -> None:
    out.print(result.table())
    if result.truncated:
        err.print(
            f"[yellow]warning: {result.truncated} of {result.n} generation(s) hit the "
            "max_new_tokens cap; those without a stated answer count as unparsed "
            "(raise --max-new-tokens)[/]"
        )


# -- demo ----------------------------------------------------------------------------------


@app.command("demo")
@friendly_errors
def demo_cmd(
    config: ConfigOpt = None,
    records: Annotated[int | None, typer.Option(help="Private records to train on.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted demo run.")
    ] = False,
    overrides: SetOpt = None,
) -> None:
    """Run the whole FedCoT pipeline on the embedded defaults (no arguments needed)."""
    cfg = load_config(
        DemoConfig,
        config,
        overrides or [],
        {"records": records, "output_dir": str(output_dir) if output_dir else None},
    )
    run_demo(cfg, console=out, resume=resume)


# -- distill -------------------------------------------------------------------------------


@app.command("distill")
@friendly_errors
def distill_cmd(
    config: ConfigOpt = None,
    task: Annotated[str | None, typer.Option(help="cqa, esnli, ... or private-records.")] = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset source, or 'synthetic' (private records).")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="exponential | adaptive | encoder-decoder | none.")
    ] = None,
    epsilon: Annotated[float | None, typer.Option(help="ε per unit (privacy.epsilon).")] = None,
    decoder: Annotated[
        str | None, typer.Option(help="inverse-map | icl | trained | identity.")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL of the server LLM (kind openai)."),
    ] = None,
    server_model: Annotated[
        str | None, typer.Option(help="Server model name (or embedded model, in-process).")
    ] = None,
    student: Annotated[str | None, typer.Option(help="The client's model.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Weight of the rationale loss.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    stage: Annotated[
        str | None,
        typer.Option(help="all | rationales (stop after decoding; reports rationale fidelity)."),
    ] = None,
    resume: ResumeOpt = False,
    fields: FieldOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Run FedCoT on a client: perturb → server rationales → decode → multi-task training."""
    cfg = load_config(
        FedCoTConfig,
        config,
        overrides or [],
        {
            "task": task,
            "data": data,
            "strategy": strategy,
            "privacy.epsilon": epsilon,
            "decoder": decoder,
            "server.kind": "openai" if server else None,
            "server.base_url": server,
            "server.model": server_model,
            "student.model": student,
            "train.alpha": alpha,
            "output_dir": str(output_dir) if output_dir else None,
            **_field_values(fields),
            "stage": stage,
        },
    )
    result = run_fedcot(cfg, resume=resume, console=out)
    table = Table(title=f"fedcot distill · {cfg.task} · {cfg.strategy}")
    for col in ("", "accuracy", "95 % CI", "n"):
        table.add_column(col, justify="right")
    r = result.rationales
    if r.get("requested"):
        low, high = r["fidelity_ci"]
        table.add_row(
            "rationale fidelity",
            f"{100 * r['fidelity']:.1f} %",
            f"{100 * low:.1f} – {100 * high:.1f} %",
            str(r["requested"]),
        )
    for name, acc in (("before", result.before), ("after", result.after)):
        if acc:
            table.add_row(
                f"student {name}",
                f"{100 * acc['accuracy']:.1f} %",
                f"{100 * acc['ci_low']:.1f} – {100 * acc['ci_high']:.1f} %",
                str(acc["n"]),
            )
    out.print(table)
    out.print(f"run folder: {result.run_dir}")


# -- mkt -----------------------------------------------------------------------------------


MKTTask = Annotated[str | None, typer.Option(help="rte, cqa, esnli, ...")]
MKTData = Annotated[str | None, typer.Option(help="Dataset source.")]
MKTRounds = Annotated[int | None, typer.Option(help="Number of rounds.")]
MKTMode = Annotated[str | None, typer.Option(help="mutual | one-way | standalone (the baseline).")]
MKTTopK = Annotated[int | None, typer.Option(help="Logits sent per token.")]
MKTOut = Annotated[Path | None, typer.Option(help="Run folder.")]


def _mkt_config(
    config: Path | None,
    overrides: list[str] | None,
    task: str | None,
    data: str | None,
    rounds: int | None,
    mode: str | None,
    top_k: int | None,
    output_dir: Path | None,
    fields: list[str] | None = None,
) -> Any:
    return load_config(
        MKTConfig,
        config,
        overrides or [],
        {
            "task": task,
            "data": data,
            "rounds": rounds,
            "mode": mode,
            "top_k": top_k,
            "output_dir": str(output_dir) if output_dir else None,
            **_field_values(fields),
        },
    )


def _print_mkt(cfg: Any, metrics: dict[str, Any], folder: Path, engine: str = "") -> None:
    acc = accuracy_table(metrics)
    table = Table(title=f"fedcot mkt{engine} · {cfg.task} · {cfg.scenario} · {cfg.mode}")
    table.add_column("party")
    rounds_done = sorted(int(r) for r in metrics["rounds"])
    for r in rounds_done:
        table.add_column("before" if r == 0 else f"round {r}", justify="right")
    for name in cfg.party_names():
        row = acc.get(name, {})
        table.add_row(name, *(f"{100 * row[r]:.1f} %" if r in row else "—" for r in rounds_done))
    out.print(table)
    for events in metrics.get("dropouts", {}).values():
        for e in events:  # drop-outs, and clients that rejoined or restored an older round
            if e["phase"] == "rejoin":
                out.print(f"[yellow]round {e['round']}: {e['party']} rejoined")
            elif e["phase"] == "restore":
                out.print(f"[yellow]round {e['round']}: {e['party']} {e['reason']}")
            else:
                out.print(
                    f"[yellow]round {e['round']}: {e['party']} dropped at {e['phase']}: "
                    f"{e['reason']}"
                )
    out.print(f"run folder: {folder}")


@app.command("mkt")
@friendly_errors
def mkt_cmd(
    config: ConfigOpt = None,
    task: MKTTask = None,
    data: MKTData = None,
    rounds: MKTRounds = None,
    mode: MKTMode = None,
    top_k: MKTTopK = None,
    output_dir: MKTOut = None,
    resume: ResumeOpt = False,
    fields: FieldOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Run FedMKT: a server LLM and client SLMs teach each other through top-K logits."""
    cfg = _mkt_config(config, overrides, task, data, rounds, mode, top_k, output_dir, fields)
    result = run_mkt(cfg, resume=resume, console=err)
    _print_mkt(cfg, result.metrics, result.output_dir)


# -- flower --------------------------------------------------------------------------------

flower_app = typer.Typer(
    help="FedMKT over Flower: write the Flower App, or run a whole federation on this machine.",
    no_args_is_help=True,
)
app.add_typer(flower_app, name="flower")

# Defaults of the Flower run config: RUN_CONFIG_DEFAULTS in fedcot.federation.flower.
ReplyTimeout = Annotated[
    float | None,
    typer.Option(help="Seconds the server waits for a phase's replies, then drops [1800]."),
]
HelloTimeout = Annotated[
    float | None, typer.Option(help="Seconds to wait for a SuperNode's greeting [120].")
]
MinClients = Annotated[
    int | None, typer.Option(help="Clients needed to start (0: all of the config) [0].")
]
WaitClients = Annotated[float | None, typer.Option(help="Seconds to wait for them [300].")]


@flower_app.command("app")
@friendly_errors
def flower_app_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder to write the Flower App into.")],
    config: ConfigOpt = None,
    task: MKTTask = None,
    data: MKTData = None,
    rounds: MKTRounds = None,
    mode: MKTMode = None,
    top_k: MKTTopK = None,
    output_dir: MKTOut = None,
    reply_timeout: ReplyTimeout = None,
    hello_timeout: HelloTimeout = None,
    min_clients: MinClients = None,
    wait_clients: WaitClients = None,
    overrides: SetOpt = None,
) -> None:
    """Write a Flower App (pyproject.toml) that runs this FedMKT config with `flwr run`."""
    from fedcot.federation.flower import write_flower_app  # lazy: imports flwr

    cfg = _mkt_config(config, overrides, task, data, rounds, mode, top_k, output_dir)
    path = write_flower_app(
        folder,
        cfg,
        reply_timeout=reply_timeout,
        hello_timeout=hello_timeout,
        min_clients=min_clients,
        wait_clients=wait_clients,
    )
    names = cfg.party_names()[1:]
    out.print(f"wrote {path}")
    out.print("next (docs/deploy.md has the TLS and SuperNode-authentication setup):")
    out.print("  server:  flower-superlink --disable-runtime-dependency-installation …")
    for n in names:
        out.print(
            f"  {n}: flower-supernode --superlink HOST:PORT "
            f'--node-config \'party="{n}" data="/path/to/datasets"\' …'
        )
    out.print(f"  then:    flwr run {folder} <connection> --stream")


@flower_app.command("local")
@friendly_errors
def flower_local_cmd(
    config: ConfigOpt = None,
    task: MKTTask = None,
    data: MKTData = None,
    rounds: MKTRounds = None,
    mode: MKTMode = None,
    top_k: MKTTopK = None,
    output_dir: MKTOut = None,
    resume: ResumeOpt = False,
    reply_timeout: ReplyTimeout = None,
    hello_timeout: HelloTimeout = None,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="TLS with a throw-away CA and SuperNode authentication, as in a real "
            "deployment (off: plain HTTP on loopback).",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds the whole run may take.")] = 86400.0,
    overrides: SetOpt = None,
) -> None:
    """Run FedMKT over Flower on this machine: a SuperLink and one SuperNode per client on
    127.0.0.1 (real processes), then `flwr run`."""

    from fedcot.federation.flower import absolute_paths, write_flower_app  # lazy: imports flwr

    cfg = absolute_paths(
        _mkt_config(config, overrides, task, data, rounds, mode, top_k, output_dir)
    )
    folder = Path(cfg.output_dir)
    check_run_config(folder / "config.yaml", dump_config(cfg), resume=resume)
    work = folder / "flower"
    app_dir = write_flower_app(
        work / "app", cfg, reply_timeout=reply_timeout, hello_timeout=hello_timeout
    ).parent
    with LocalFederation(work, secure=secure) as fed:
        fed.start_superlink()
        clients = cfg.party_names()[1:]
        for name in clients:
            fed.start_supernode(name, work / "clients", threads=threads_per_node(len(clients)))
        mode_s = "TLS + SuperNode auth" if secure else "plain HTTP on loopback"
        err.print(f"SuperLink on {fed.address} ({mode_s}); logs in {fed.logs}")
        res = fed.run(app_dir, {"resume": True} if resume else None, timeout=timeout, echo=True)
    run = RunFolder(folder)
    done = run.load_state().get("completed_round", 0)
    if res.returncode != 0 or done < cfg.rounds:
        raise FedcotError(
            f"the Flower run ended after {done} of {cfg.rounds} rounds (flwr exit code "
            f"{res.returncode})",
            hint=f"see the log above and {work / 'logs'}; --resume continues the run",
        )
    _print_mkt(cfg, read_json(run.metrics), folder, " over Flower")


# -- perturb -------------------------------------------------------------------------------


@app.command("perturb")
@friendly_errors
def perturb_cmd(
    text: Annotated[str | None, typer.Argument(help="Text to perturb (or use --input).")] = None,
    input_path: Annotated[
        Path | None, typer.Option("--input", "-i", help="JSONL (one object a line) or .txt.")
    ] = None,
    field: Annotated[str, typer.Option(help="JSONL field that holds the text.")] = "text",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Perturbed JSONL (id, text, epsilon).")
    ] = None,
    ledger: Annotated[
        Path | None, typer.Option(help="Privacy ledger JSON (default: next to --output).")
    ] = None,
    private_map: Annotated[
        Path | None,
        typer.Option(help="Also write the private original→stand-in maps (keep it local!)."),
    ] = None,
    bad_rows: Annotated[
        str, typer.Option(help="A row without text: 'stop' (the default) or 'skip' (counted).")
    ] = "stop",
    config: ConfigOpt = None,
    strategy: Annotated[
        str | None, typer.Option(help="adaptive | exponential | topk | rantext | none.")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="ε per unit (adaptive: ε of the metric-DP numbers).")
    ] = None,
    epsilon_normal: Annotated[
        float | None, typer.Option(help="adaptive with --set base=…: ε_N of other words.")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Output-set size of top-K.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Reproducible draws (experiments only: replayable).")
    ] = None,
    terms: Annotated[
        list[str] | None, typer.Option("--term", help="Always-sensitive term (repeatable).")
    ] = None,
    overrides: SetOpt = None,
) -> None:
    """Privatise text: perturbed JSONL plus a privacy ledger (strict JSON)."""
    import warnings

    if bad_rows not in ("stop", "skip"):
        raise FedcotError(f"--bad-rows must be 'stop' or 'skip', not {bad_rows!r}")
    cfg = load_config(
        PerturbConfig,
        config,
        overrides or [],
        {
            "strategy": strategy,
            "epsilon": epsilon,
            "epsilon_normal": epsilon_normal,
            "top_k": top_k,
            "seed": seed,
            "terms": terms,
        },
    )
    ids, texts, skipped = _read_texts(text, input_path, field, skip_bad=bad_rows == "skip")
    err.print(f"perturbing {len(texts)} text(s) with [bold]{cfg.strategy}[/] ...")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        perturber = Perturber.from_config(cfg)
    for w in caught:
        err.print(f"[yellow]warning: {escape(str(w.message))}[/]")
    results = []
    with progress_bar(len(texts), "perturb") as advance:
        for s in range(0, len(texts), 256):
            results.extend(perturber.perturb(texts[s : s + 256], ids[s : s + 256]))
            advance(min(256, len(texts) - s))
    _write_perturbed(results, output, input_path, ledger, private_map, perturber, cfg, skipped)


def _write_perturbed(
    results: list[Any],
    output: Path | None,
    input_path: Path | None,
    ledger: Path | None,
    private_map: Path | None,
    perturber: Any,
    cfg: Any,
    skipped: list[str],
) -> None:
    """Perturbed rows, the ledger and the private map, each as strict UTF-8 JSON."""
    if output is None and input_path is None:
        for r in results:
            out.print(r.text, markup=False, highlight=False)
    else:
        target = output or input_path.with_suffix(".perturbed.jsonl")  # type: ignore[union-attr]
        write_jsonl(target, [r.public() for r in results], strict=True)
        out.print(f"perturbed: {target}")
        ledger = ledger or target.with_suffix(".ledger.json")
    if ledger is not None:
        extra = {"config": cfg.model_dump(mode="json"), "skipped_rows": skipped}
        perturber.accountant.save(ledger, extra)
        out.print(f"ledger: {ledger}")
    if private_map is not None:
        write_jsonl(private_map, [{"id": r.id, "mapping": r.mapping} for r in results], strict=True)
        err.print(f"[yellow]private map (never send it): {private_map}[/]")
    if skipped:
        err.print(f"[yellow]skipped {len(skipped)} bad row(s): {', '.join(skipped[:10])}[/]")
    summary = perturber.accountant.summary()
    if cfg.strategy != "none":
        disclosed = sum(summary["disclosed_types"].values())
        err.print(
            f"ε-LDP per prompt: max {summary['ldp_per_prompt_max']:.1f}; "
            f"{disclosed} value(s) replaced by independent surrogates (type disclosed); "
            f"randomness: {summary['randomness']}"
        )


def _read_texts(
    text: str | None, path: Path | None, field: str, skip_bad: bool = False
) -> tuple[list[str], list[str], list[str]]:
    """(ids, texts, skipped rows as "file:line (id)") from a TEXT argument or a file."""
    if (text is None) == (path is None):
        raise FedcotError("give either a TEXT argument or --input FILE, not both or neither")
    if text is not None:
        if not text.strip():
            raise DataError("the text is empty", hint="give a non-empty TEXT")
        return ["p0"], [text], []
    assert path is not None
    ids: list[str] = []
    texts: list[str] = []
    skipped: list[str] = []
    for lineno, row in read_text_rows(path, keep_blank=True):
        rid = f"line{lineno}" if isinstance(row, str) else str(row.get("id", f"line{lineno}"))
        value = row if isinstance(row, str) else row.get(field)
        if not isinstance(value, str) or not value.strip():
            where = f"{path}, line {lineno} (id {rid})"
            if skip_bad:
                skipped.append(where)
                continue
            what = "empty text" if isinstance(value, str) else f"no string field '{field}'"
            raise DataError(
                f"{where}: {what}",
                hint="fix the row, pick the field with --field, or pass --bad-rows skip",
            )
        ids.append(rid)
        texts.append(value)
    if not texts:
        raise DataError(f"{path} holds no texts")
    return ids, texts, skipped


@app.command("privacy-eval")
@friendly_errors
def privacy_eval_cmd(
    data: Annotated[
        str, typer.Option(help="pii | cqa (or another task's test questions) | .jsonl/.txt.")
    ] = "pii",
    limit: Annotated[int, typer.Option(help="Evaluate the first N texts.", min=1)] = 200,
    mechanisms: Annotated[
        str, typer.Option(help="Comma list of exponential, topk, rantext, adaptive.")
    ] = "exponential,topk,rantext,adaptive",
    eps: Annotated[str, typer.Option(help="Comma list of ε values per unit.")] = "0.5,1,2,3,6,10",
    top_k: Annotated[int, typer.Option(help="Output-set size of top-K (and adaptive).")] = 32,
    epsilon_normal_factor: Annotated[
        float, typer.Option(help="adaptive: ε_N = factor × ε for non-sensitive units.")
    ] = 3.0,
    attack_units: Annotated[
        int, typer.Option(help="Units the Bayes attack samples (bounds its time).", min=1)
    ] = 3000,
    max_hypotheses: Annotated[
        int | None,
        typer.Option(help="Attacker's candidates: only the N most frequent (default: all)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (recorded).")] = 0,
    threats: Annotated[
        bool,
        typer.Option(help="Also run the per-value attacks (candidate lists, seed replay)."),
    ] = True,
    contextual: Annotated[
        str | None,
        typer.Option(help="Local model for the contextual attack, e.g. gemma3-270m."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path(
        "runs/privacy-eval"
    ),
) -> None:
    """Attack the privacy mechanisms and measure utility: rows.json, frontier.png, tables.

    With annotated spans (``--data pii`` or an annotated .jsonl) the per-value attacks run
    too: nearest neighbour, Bayes, seed replay and (``--contextual MODEL``) a local LLM,
    each against 10-candidate lists, with OS entropy and with seed 0.
    """
    eps_list = parse_epsilons(eps)
    mechs = parse_mechanisms(mechanisms)
    texts, spans, name = load_texts(data, limit, seed)
    err.print(f"{len(texts)} text(s) from [bold]{name}[/]; loading the embedding space ...")
    space, encoder = load_space_and_encoder(err)
    rows = privacy_grid(
        texts,
        spans,
        mechs,
        eps_list,
        space=space,
        top_k=top_k,
        epsilon_normal_factor=epsilon_normal_factor,
        seed=seed,
        dataset=name,
        attack_units=attack_units,
        max_hypotheses=max_hypotheses,
        encoder=encoder,
    )
    report_rows(rows, out_dir, out)
    if threats and spans is not None:
        _privacy_threats(texts, spans, mechs, eps_list, space, encoder, contextual, out_dir)


def _privacy_threats(
    texts: list[str],
    spans: list[Any],
    mechs: list[str],
    eps_list: list[float],
    space: Any,
    encoder: Any,
    contextual: str | None,
    out_dir: Path,
) -> None:
    """The per-value attacks of fedcot.privacy.threats, per mechanism, ε and randomness."""
    import warnings

    items = from_records(texts, spans)
    backend = None
    if contextual:
        backend = make_backend("transformers", contextual, batch_size=8)
    rows = []
    for m in mechs:
        for e in eps_list:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                base = Perturber.from_config(PerturbConfig(strategy=m, epsilon=e), space)  # type: ignore[arg-type]
            for client_seed in (None, 0):
                rows.append(
                    run_threats(
                        m,
                        e,
                        [i.text for i in items],
                        [i.spans for i in items],
                        base.with_seed,
                        encoder=encoder,
                        seed=client_seed,
                        backend=backend if client_seed is None else None,
                    )
                )
    Console(width=160).print(threat_table(rows))
    path = out_dir / "threats.json"
    path.write_text(json.dumps([r.to_dict() for r in rows], indent=2, allow_nan=False))
    out.print(f"threats: {path}")


# -- serve ---------------------------------------------------------------------------------


@app.command("serve")
@friendly_errors
def serve_cmd(
    config: ConfigOpt = None,
    model: Annotated[
        str | None, typer.Option(help="Model name, .gguf file or transformers folder.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="transformers (default) | llamacpp | openai (a proxy).")
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="The name clients send as 'model' (default: --model).")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1: this machine).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000; 0: a free one).")] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="An accepted API key (repeatable)."),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Environment variable with comma-separated keys (FEDCOT_API_KEYS)."),
    ] = None,
    audit_log: Annotated[
        Path | None, typer.Option(help="JSONL file: one line per request, as received.")
    ] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Prompts per backend call and per request (16).")
    ] = None,
    batch_wait_ms: Annotated[
        float | None, typer.Option(help="How long a batch waits for more requests (10 ms).")
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="Largest request body (1 MiB).")
    ] = None,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="Longest prompt in tokens (4096).")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Cap on max_tokens (512).")] = None,
    log_level: Annotated[
        str | None, typer.Option(help="critical | error | warning | info | debug.")
    ] = None,
    overrides: SetOpt = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions).

    Clients use it as a FedCoT server with --server http://HOST:PORT/v1. SIGTERM or Ctrl+C
    finishes the requests in flight, then exits.
    """
    # lazy: fedcot.serving imports fastapi (slow; `fedcot --help` stays fast)
    from fedcot.serving import ServeConfig, read_api_keys
    from fedcot.serving.launch import load_and_serve

    flags = {
        "model.model": model,
        "model.kind": backend,
        "served_model_name": served_model_name,
        "host": host,
        "port": port,
        "api_key_env": api_key_env,
        "audit_log": str(audit_log) if audit_log else None,
        "ssl_certfile": str(ssl_certfile) if ssl_certfile else None,
        "ssl_keyfile": str(ssl_keyfile) if ssl_keyfile else None,
        "limits.max_batch": max_batch,
        "limits.batch_wait_ms": batch_wait_ms,
        "limits.max_body_bytes": max_body_bytes,
        "limits.max_prompt_tokens": max_prompt_tokens,
        "limits.max_tokens": max_tokens,
        "log_level": log_level,
    }
    cfg = load_config(ServeConfig, config, overrides or [], flags)
    keys = {k for k in (api_key or []) if k} | read_api_keys(
        cfg.api_key_env, required=api_key_env is not None and not api_key
    )
    load_and_serve(cfg, keys, err=err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
