"""``fedcot demo``: the whole FedCoT pipeline on the embedded defaults.

A client holds generated private records (names, e-mails, phone numbers, IBANs, amounts) and
the small model ``smollm2-135m-instruct``; the "server" is ``qwen2.5-coder-0.5b-instruct``
in the same process. The demo perturbs the records (FedCoT-A: typed surrogates, metric-DP
numbers), asks the server for chain-of-thought rationales about the perturbed records,
decodes them (stand-ins mapped back, arithmetic redone on the real numbers), trains the
client model on label + rationale, and reports:

- one record beside what the server saw, and the server's rationale beside the decoded one;
- rationale fidelity (decoded rationales that reach the gold answer) private vs non-private
  (the same teacher asked about the unperturbed records, a baseline the client alone sees);
- the student's accuracy before and after on held-out records, with intervals and the
  paired gain;
- what was disclosed (the ledger) and a check that no sensitive span reached the server.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from fedcot.config import DemoConfig
from fedcot.cot.client import FedCoTResult, perturbed_input, run_fedcot
from fedcot.cot.config import FedCoTConfig
from fedcot.data.synthetic import generate_private_records
from fedcot.data.tasks import Example, get_task
from fedcot.evaluation import paired_difference
from fedcot.models.backends.replay import example_block
from fedcot.privacy.attacks import verbatim_leakage
from fedcot.privacy.units import split_units
from fedcot.runs import read_jsonl

if TYPE_CHECKING:
    from fedcot.privacy.perturb import PerturbConfig


def distill_config(cfg: DemoConfig, *, non_private: bool = False) -> Any:
    """The ``fedcot distill`` configuration the demo runs (``non_private``: the baseline
    that sends the records as they are and stops after decoding)."""
    privacy = cfg.privacy.model_dump()
    strategy = privacy.pop("strategy")
    out = cfg.output_dir / "non_private" if non_private else cfg.output_dir
    return FedCoTConfig.model_validate(
        {
            "task": "private-records",
            "data": "synthetic",
            "train_limit": cfg.records,
            "test_limit": cfg.test_records,
            "student": cfg.student.model_dump(),
            "server": cfg.teacher.model_dump(),
            "strategy": "none" if non_private else strategy,
            "privacy": {} if non_private else privacy,
            "stage": "rationales" if non_private else "all",
            "filter": cfg.filter,
            "generation": cfg.generation.model_dump(),
            "eval_generation": cfg.eval_generation.model_dump(),
            "eval_cot": cfg.eval_cot,
            "eval_calculator": cfg.eval_cot and cfg.eval_calculator,
            "train": {
                "max_steps": cfg.train_steps,
                "batch_size": 4,
                "alpha": cfg.alpha,
                "learning_rate": cfg.learning_rate,
                "logging_steps": 5,
                "eval_each_epoch": False,
            },
            "seed": cfg.seed,
            "output_dir": str(out),
        }
    )


def run_demo(
    cfg: DemoConfig, console: Console | None = None, *, resume: bool = False
) -> dict[str, Any]:
    """Run the demo and return its summary (also written to ``output_dir/summary.json``)."""
    console = console or Console()
    t0 = time.perf_counter()
    _intro(console, cfg)
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
    server = cfg.teacher.build()  # one teacher for the private run and the baseline
    try:
        result = run_fedcot(dcfg, resume=resume, console=console, server=server)
        console.rule("[bold]baseline: the same teacher on the unperturbed records")
        baseline = run_fedcot(
            distill_config(cfg, non_private=True), resume=resume, console=console, server=server
        )
    finally:
        server.close()
    check = _leak_check(cfg.output_dir, records)
    shown = _show_one_record(console, cfg.output_dir, records)
    summary = _summary(cfg, records, kinds, result, baseline, check, t0)
    console.print(_report_table(summary))
    summary["shown_record"] = shown
    (cfg.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"run folder: {cfg.output_dir}  ({summary['seconds']} s)")
    return summary


def _intro(console: Console, cfg: DemoConfig) -> None:
    console.rule("[bold]fedcot demo")
    console.print(
        "A client holds private records and a small model. It wants a larger model's "
        "reasoning without the server ever reading the records.\n"
    )
    console.print(
        f"[bold]Pipeline[/]: perturb ({_strategy_line(cfg.privacy)}) → {cfg.teacher.model} "
        "writes rationales → decoding (stand-ins mapped back, arithmetic redone on the real "
        f"numbers) → {cfg.student.model} learns label + rationale (α = {cfg.alpha:g}, "
        f"{cfg.train_steps} LoRA steps)\n"
    )


def _leak_check(run: Path, records: list[Example]) -> dict[str, int]:
    """Which sensitive spans of each record appear verbatim in the prompt the server got
    about that record (exactly the prompts in the response cache)."""
    task = get_task("private-records")
    received = {example_block(r["prompt"]) for r in read_jsonl(run / "server_cache.jsonl")}
    leaked = total = coincidences = 0
    for r, p in zip(records, read_jsonl(run / "client_private" / "perturbations.jsonl")):
        block = perturbed_input(task, r, p["text"])
        if block not in received:
            raise RuntimeError(f"the server never received the prompt of record {r.id}")
        # A stand-in drawn for another value can equal a short span by chance ("44", an
        # age), or a token inside another entity's stand-in ("31" in "+31 …"): not a leak.
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
    return {"leaked_spans": leaked, "coincident_stand_ins": coincidences, "spans": total}


def _show_one_record(console: Console, run: Path, records: list[Example]) -> str:
    """A record, what the server saw, the server's rationale and the decoded one (the first
    record whose decoded rationale reaches the gold answer, else the first)."""
    rows = read_jsonl(run / "client_private" / "rationales.jsonl")
    i = next((k for k, r in enumerate(rows) if r["agrees"]), 0)
    row = rows[i]
    console.print(Panel(records[i].question, title=f"record {i} (stays on the client)"))
    console.print(Panel(row["sent"], title=f"record {i} as the server saw it"))
    console.print(Panel(row["server_rationale"].strip(), title="the server's rationale"))
    decoded = row["rationale"] + f" So the answer is {records[i].label}."
    console.print(Panel(decoded, title="decoded for the real record (the student's target)"))
    return records[i].id


def _paired_gain(run: Path) -> tuple[float, float, float] | None:
    before, after = (
        run / "eval" / "before_predictions.jsonl",
        run / "eval" / "after_predictions.jsonl",
    )
    if not (before.exists() and after.exists()):
        return None
    b = [r["correct"] for r in read_jsonl(before)]
    a = [r["correct"] for r in read_jsonl(after)]
    return paired_difference(b, a)


def _summary(
    cfg: DemoConfig,
    records: list[Example],
    kinds: Counter[str],
    result: FedCoTResult,
    baseline: FedCoTResult,
    check: dict[str, int],
    t0: float,
) -> dict[str, Any]:
    ledger = result.privacy.get("ledger", {})
    gain = _paired_gain(cfg.output_dir)
    return {
        "records": len(records),
        "test_records": cfg.test_records,
        "sensitive_spans": dict(kinds),
        "student": cfg.student.model,
        "teacher": cfg.teacher.model,
        "before": result.before,
        "after": result.after,
        "gain": None if gain is None else dict(zip(("mean", "low", "high"), gain)),
        "rationales": result.rationales,
        "rationales_non_private": baseline.rationales,
        "privacy": {"config": cfg.privacy.model_dump(mode="json"), "ledger": ledger},
        "server_received": {"prompts": len(records), **check},
        "timings": result.timings,
        "timings_non_private": baseline.timings,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _report_table(s: dict[str, Any]) -> Table:
    table = Table(title="fedcot demo report", show_header=False)
    table.add_column("")
    table.add_column("")
    for name, key in (("rationale fidelity, private", "rationales"),
                      ("rationale fidelity, non-private", "rationales_non_private")):  # fmt: skip
        r = s[key]
        lo, hi = r["fidelity_ci"]
        table.add_row(
            name,
            f"{_pct(r['fidelity'])} ({r['agree_with_gold']}/{r['requested']} decoded "
            f"rationales reach the gold answer; 95 % CI {_pct(lo)}–{_pct(hi)})",
        )
    for name, r in (("student before", s["before"]), ("student after", s["after"])):
        if r:
            table.add_row(
                name,
                f"{_pct(r['accuracy'])} ({r['correct']}/{r['n']}; 95 % CI "
                f"{_pct(r['ci_low'])}–{_pct(r['ci_high'])})",
            )
    if s["gain"]:
        g = s["gain"]
        table.add_row(
            "gain",
            f"{100 * g['mean']:+.1f} points (paired 95 % CI {100 * g['low']:+.1f} to "
            f"{100 * g['high']:+.1f})",
        )
    if s["privacy"]["ledger"]:
        table.add_row("privacy spent", _ledger_line(s["privacy"]["ledger"]))
    got = s["server_received"]
    table.add_row(
        "leak check",
        f"{got['leaked_spans']} of {got['spans']} sensitive spans appear verbatim in the "
        "prompt the server received about their record"
        + (" ✓" if got["leaked_spans"] == 0 else " ✗")
        + (
            f" ({got['coincident_stand_ins']} more are a stand-in drawn for another value, "
            "or a draw that landed on its own value)"
            if got["coincident_stand_ins"]
            else ""
        ),
    )
    table.add_row("time", f"{s['seconds']:.0f} s")
    return table


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
