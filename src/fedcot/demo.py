"""``fedcot demo``: the main job on the embedded defaults.

Today it generates a small private dataset, evaluates the embedded client SLM zero-shot on
it, and lays out the FedCoT stages that follow (perturb → server rationales → decode →
multi-task training).
"""

from __future__ import annotations

import json
import time
from collections import Counter

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from fedcot.config import DemoConfig
from fedcot.data import get_task
from fedcot.data.loaders import write_jsonl
from fedcot.data.synthetic import generate_private_records
from fedcot.evaluation import evaluate


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

    # 3. What the FedCoT stages will do with this data.
    plan = Table(title="FedCoT stages after this one", show_lines=True)
    plan.add_column("stage")
    plan.add_column("what happens")
    plan.add_row(
        "perturb",
        "each word, number and name of a record goes through a differential-privacy "
        "mechanism on the client; only perturbed text leaves the machine",
    )
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
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (cfg.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"run folder: {cfg.output_dir}  ({summary['seconds']} s)")
    return summary
