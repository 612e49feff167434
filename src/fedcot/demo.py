"""``fedcot demo``: the main job on the embedded defaults.

Today it generates a small private dataset, evaluates the embedded client SLM zero-shot on
it, perturbs the records with the privacy layer (checking that no sensitive span survives),
and lays out the FedCoT stages that follow (server rationales → decode → multi-task
training).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from fedcot.config import DemoConfig
from fedcot.data import get_task
from fedcot.data.loaders import write_jsonl
from fedcot.data.synthetic import generate_private_records
from fedcot.evaluation import evaluate
from fedcot.privacy.attacks import verbatim_leakage
from fedcot.privacy.perturb import Perturber


def write_jsonl_rows(rows: Iterable[dict[str, object]], path: Path) -> Path:
    """Write dicts as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict[str, object]:
    """Run the demo and return its summary (also written to ``output_dir/summary.json``)."""
    console = console or Console()
    t0 = time.perf_counter()
    console.rule("[bold]fedcot demo")
    console.print(
        "A client holds private records and a small model. It wants a large model's reasoning "
        "without the server ever reading the records.\n"
    )

    # 1. The private data.
    task = get_task("private-records")
    records = generate_private_records(cfg.records, seed=cfg.seed)
    data_path = write_jsonl(records, cfg.output_dir / "private_records.jsonl")
    kinds: Counter[str] = Counter(s["kind"] for r in records for s in r.meta.get("spans", []))
    console.print(
        f"[bold]1. Private data[/]: {len(records)} generated records "
        f"({sum(kinds.values())} sensitive spans: "
        + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        + f") → {data_path}"
    )
    console.print(Panel(records[0].question, title="record 0", expand=False))

    # 2. The client's model, zero-shot.
    console.print(f"[bold]2. Client SLM[/]: loading {cfg.student.model} ...")
    student = cfg.student.build()
    result = evaluate(student, task, records, params=cfg.generation)
    result.write_predictions(cfg.output_dir / "zero_shot_predictions.jsonl")
    console.print(result.table(f"zero-shot {cfg.student.model} on the private records"))

    # 3. Perturb: what the server would receive.
    pcfg = cfg.privacy
    console.print(
        f"[bold]3. Perturb[/]: {pcfg.strategy} mechanism, ε_S = {pcfg.eps_sensitive:g} for "
        f"sensitive units, ε_N = {pcfg.eps_normal:g} for the rest"
    )
    perturber = Perturber.from_config(pcfg)
    perturbed = perturber.perturb([r.question for r in records], [r.id for r in records])
    write_jsonl_rows((p.public() for p in perturbed), cfg.output_dir / "perturbed_records.jsonl")
    perturber.accountant.save(cfg.output_dir / "privacy_ledger.json")
    console.print(Panel(perturbed[0].text, title="record 0 as the server sees it", expand=False))
    leaks = [
        verbatim_leakage(r.question, p.text, r.meta["spans"]) for r, p in zip(records, perturbed)
    ]
    leaked, spans = sum(a for a, _ in leaks), sum(b for _, b in leaks)
    ledger = perturber.accountant.summary()
    console.print(
        f"sensitive spans left verbatim: {leaked} of {spans}; ε per record: max "
        f"{ledger['per_prompt_max']:.0f}, mean {ledger['per_prompt_mean']:.0f} "
        f"(sequential composition over {ledger['draws']} draws; see docs/privacy.md)"
    )

    # 4. What the FedCoT stages will do with this data.
    plan = Table(title="FedCoT stages after this one", show_lines=True)
    plan.add_column("stage")
    plan.add_column("what happens")
    plan.add_row(
        "rationales",
        f"the server LLM ({cfg.teacher.model}) writes step-by-step reasoning for the "
        "perturbed questions",
    )
    plan.add_row("decode", "the client maps the stand-ins back: a rationale for its real record")
    plan.add_row(
        "train",
        f"{cfg.student.model} learns label and rationale together "
        "(α·L_rationale + (1−α)·L_label), then is evaluated again",
    )
    console.print(plan)

    summary: dict[str, object] = {
        "records": len(records),
        "sensitive_spans": dict(kinds),
        "student": cfg.student.model,
        "zero_shot": result.summary(),
        "privacy": {"config": pcfg.model_dump(mode="json"), "ledger": ledger},
        "verbatim_sensitive_spans": {"leaked": leaked, "total": spans},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (cfg.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"run folder: {cfg.output_dir}  ({summary['seconds']} s)")
    return summary
