"""``fedcot demo``: the whole FedCoT pipeline on the embedded defaults.

A client holds generated private records (names, e-mails, phone numbers, IBANs, amounts) and
the small model ``smollm2-135m-instruct``; the "server" is ``gemma3-270m`` in the same
process. The demo perturbs the records (adaptive mechanism), asks the server for
chain-of-thought rationales about the perturbed records, maps the stand-ins back, trains the
client model on label + rationale, and reports accuracy before and after, the ε spent, and a
check that no sensitive span of the private data reached the server.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from fedcot.config import DemoConfig
from fedcot.privacy.attacks import verbatim_leakage
from fedcot.privacy.units import split_units

if TYPE_CHECKING:
    from fedcot.privacy.perturb import PerturbConfig


def distill_config(cfg: DemoConfig) -> Any:
    """The ``fedcot distill`` configuration the demo runs."""
    from fedcot.cot.config import DistillConfig

    privacy = cfg.privacy.model_dump()
    return DistillConfig.model_validate(
        {
            "task": "private-records",
            "data": "synthetic",
            "train_limit": cfg.records,
            "test_limit": cfg.test_records,
            "student": cfg.student.model_dump(),
            "server": cfg.teacher.model_dump(),
            "strategy": privacy.pop("strategy"),
            "privacy": privacy,
            "generation": cfg.generation.model_dump(),
            "eval_generation": cfg.eval_generation.model_dump(),
            "train": {
                "max_steps": cfg.train_steps,
                "batch_size": 4,
                "alpha": cfg.alpha,
                "learning_rate": 5e-4,
                "logging_steps": 2,
                "eval_each_epoch": False,
            },
            "seed": cfg.seed,
            "output_dir": str(cfg.output_dir),
        }
    )


def run_demo(
    cfg: DemoConfig, console: Console | None = None, *, resume: bool = False
) -> dict[str, Any]:
    """Run the demo and return its summary (also written to ``output_dir/summary.json``)."""
    from fedcot.cot.client import run_distill
    from fedcot.data.synthetic import generate_private_records

    console = console or Console()
    t0 = time.perf_counter()
    console.rule("[bold]fedcot demo")
    console.print(
        "A client holds private records and a small model. It wants a large model's reasoning "
        "without the server ever reading the records.\n"
    )
    dcfg = distill_config(cfg)
    if cfg.output_dir.exists() and not resume:
        shutil.rmtree(cfg.output_dir)  # a demo starts afresh unless asked to resume

    records = generate_private_records(cfg.records, seed=cfg.seed)
    kinds: Counter[str] = Counter(s["kind"] for r in records for s in r.meta.get("spans", []))
    console.print(
        f"[bold]Private data[/]: {len(records)} generated training records "
        f"({sum(kinds.values())} sensitive spans: "
        + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        + f"), {cfg.test_records} held out for testing"
    )
    console.print(Panel(records[0].question, title="record 0 (stays on the client)", expand=False))
    console.print(
        f"[bold]Pipeline[/]: perturb ({_strategy_line(dcfg.privacy)}) → {cfg.teacher.model} "
        f"writes rationales → inverse-map decoding → {cfg.student.model} learns label + "
        f"rationale (α = {cfg.alpha:g}, {cfg.train_steps} LoRA steps)\n"
    )
    result = run_distill(dcfg, resume=resume, console=console)

    # What did the server receive? Exactly the prompts in the response cache. Each record's
    # spans are checked against the prompt about that record (short values such as an age
    # of 34 also occur in the public worked examples, or as another unit's stand-in).
    from fedcot.cot.client import perturbed_input
    from fedcot.data.tasks import get_task
    from fedcot.models.backends.replay import example_block

    task = get_task("private-records")
    cache_rows = [
        json.loads(line)
        for line in (cfg.output_dir / "server_cache.jsonl").read_text().splitlines()
        if line.strip()
    ]
    received = {example_block(r["prompt"]) for r in cache_rows}
    pert_rows = [
        json.loads(line)
        for line in (cfg.output_dir / "client_private" / "perturbations.jsonl")
        .read_text()
        .splitlines()
    ]
    leaked = total = coincidences = 0
    for r, p in zip(records, pert_rows):
        block = perturbed_input(task, r, p["text"])
        if block not in received:
            raise RuntimeError(f"the server never received the prompt of record {r.id}")
        # Stand-ins the mechanism drew for *other* units ("3120" → "44") can equal a short
        # span ("44", an age) by chance; that is not the original passing through.
        # … or a token inside another entity's stand-in ("31" in a surrogate "+31 …" phone).
        drawn = {
            v.text
            for u in p["units"]
            if u["output"] != u["original"] and u["kind"] != "name-part"
            for v in split_units(u["output"])
        }
        for sp in r.meta["spans"]:
            total += 1
            if verbatim_leakage(r.question, block, [sp])[0]:
                if sp["text"] in drawn or _drawn_onto_itself(p["units"], sp):
                    coincidences += 1
                else:
                    leaked += 1
    example = cache_rows[0]
    shown = example["prompt"] if isinstance(example["prompt"], str) else example["prompt"][-1]
    console.print(
        Panel(str(shown).rsplit("\n\n", 1)[-1], title="record 0 as the server saw it", expand=False)
    )
    console.print(Panel(example["text"].strip(), title="the server's rationale", expand=False))

    ledger = result.privacy.get("ledger", {})
    table = Table(title="fedcot demo report", show_header=False)
    table.add_column("")
    table.add_column("")
    for name, r in (("accuracy before", result.before), ("accuracy after", result.after)):
        if r:
            table.add_row(
                name,
                f"{100 * r['accuracy']:.1f} % ({r['correct']}/{r['n']}; 95 % CI "
                f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f} %)",
            )
    table.add_row(
        "rationales",
        f"{result.rationales.get('requested', 0)} asked, "
        f"{result.rationales.get('agree_with_gold', 0)} reach the gold answer after decoding",
    )
    if ledger:
        table.add_row("privacy spent", _ledger_line(ledger))
    table.add_row(
        "leak check",
        f"{leaked} of {total} sensitive spans appear verbatim in the prompt the server "
        "received about their record"
        + (" ✓" if leaked == 0 else " ✗")
        + (
            f" ({coincidences} more are a stand-in drawn for another value, or a draw that "
            "landed on its own value)"
            if coincidences
            else ""
        ),
    )
    table.add_row("time", f"{time.perf_counter() - t0:.0f} s")
    console.print(table)

    summary: dict[str, Any] = {
        "records": len(records),
        "test_records": cfg.test_records,
        "sensitive_spans": dict(kinds),
        "student": cfg.student.model,
        "teacher": cfg.teacher.model,
        "before": result.before,
        "after": result.after,
        "rationales": result.rationales,
        "privacy": {"config": cfg.privacy.model_dump(mode="json"), "ledger": ledger},
        "server_received": {
            "prompts": len(cache_rows),
            "leaked_spans": leaked,
            "coincident_stand_ins": coincidences,
            "spans": total,
        },
        "timings": result.timings,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (cfg.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"run folder: {cfg.output_dir}  ({summary['seconds']} s)")
    return summary


def _strategy_line(privacy: PerturbConfig) -> str:
    if privacy.strategy == "adaptive":
        return (
            "adaptive: typed surrogates drawn independently of each value, numbers by metric "
            f"DP at ε = {privacy.epsilon:g} per 10 years or factor of 10, other words "
            + (
                "kept"
                if privacy.base == "keep"
                else f"{privacy.base} at ε_N = {privacy.eps_normal:g}"
            )
        )
    return f"{privacy.strategy}, ε = {privacy.epsilon:g} per unit"


def _ledger_line(ledger: dict[str, Any]) -> str:
    disclosed = ledger.get("disclosed_types", {})
    metric = ledger.get("metric_by_kind", {})
    parts = []
    if disclosed:
        parts.append(
            f"{sum(disclosed.values())} values replaced by independent surrogates (types "
            "disclosed: " + ", ".join(f"{k} {v}" for k, v in disclosed.items()) + ")"
        )
    if metric:
        parts.append(
            "numbers by metric DP: "
            + ", ".join(f"{k} {v['draws']}× ε {v['epsilon_sum'] / max(v['draws'], 1):g} per "
                        f"{v['per']}" for k, v in metric.items())
        )  # fmt: skip
    if ledger.get("ldp_per_prompt_max", 0):
        parts.append(f"ε-LDP up to {ledger['ldp_per_prompt_max']:.1f} per record")
    return "; ".join(parts) + f"; randomness: {ledger.get('randomness', '?')}"


def _drawn_onto_itself(units: list[dict[str, Any]], span: dict[str, Any]) -> bool:
    """The span was replaced by a draw that happened to equal it (a month name drawn again,
    a number the metric-DP mechanism drew onto its own value): a draw with the probability
    the mechanism gives it, not a value passed through."""
    return any(
        u["output"] == u["original"] and u["start"] < span["end"] and span["start"] < u["end"]
        for u in units
        if u["kind"] != "name-part"
    )
