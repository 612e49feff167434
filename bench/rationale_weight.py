"""What the rationale weight α does to a small student scored by its chain of thought.

The demo's student (SmolLM2-135M-Instruct + LoRA) on the demo's private records (32 to
train, 48 held out, 24 steps, batch 4), trained with loss α·L_rationale + (1 − α)·L_label on
the records' own rationales (the generator's worked steps, served by the replay teacher: the
best rationales there can be, so what is measured is the training, not a teacher). Scored
like the demo: the student's chain of thought with its arithmetic redone exactly. For each α:
accuracy before / after with Wilson intervals, how many answers after training are a bare
number (the label task's form, under the step-by-step instruction), and the training seconds.

    python bench/rationale_weight.py --alphas 0.5,0.9,1.0

Runs are kept under bench/out/rationale_weight/alpha-<α>; a finished one is read back.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

from _common import ROOT, write_section

OUT = ROOT / "bench" / "out" / "rationale_weight"
_BARE = re.compile(r"\s*-?[\d.,]+\s*")


def run(alpha: float) -> dict:
    """The finished run for ``alpha`` (trained now unless a finished one is on disk)."""
    from fedcot.config import DemoConfig
    from fedcot.cot.client import run_fedcot
    from fedcot.cot.config import FedCoTConfig
    from fedcot.demo import distill_config

    folder = OUT / f"alpha-{alpha:g}"
    if not (folder / "eval" / "after.json").exists():
        cfg = distill_config(DemoConfig(alpha=alpha, output_dir=folder)).model_dump(mode="json")
        cfg.update(strategy="none", privacy={}, server={"kind": "replay", "model": "palm"})
        t0 = time.perf_counter()
        run_fedcot(FedCoTConfig.model_validate(cfg), progress=False)
        print(f"alpha {alpha:g}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    metrics = json.loads((folder / "metrics.json").read_text())
    outputs = [
        json.loads(line)["output"]
        for line in (folder / "eval" / "after_predictions.jsonl").read_text().splitlines()
    ]
    metrics["bare_after"] = sum(bool(_BARE.fullmatch(o)) for o in outputs)
    return metrics


def _pct(summary: dict) -> str:
    return (
        f"{100 * summary['accuracy']:.1f} % "
        f"[{100 * summary['ci_low']:.1f}, {100 * summary['ci_high']:.1f}]"
    )


def report(results: dict[float, dict]) -> str:
    lines = [
        "| α | before | after | after: bare-number answers | train s |",
        "|---|---|---|---|---|",
    ]
    for alpha, m in sorted(results.items()):
        n = m["after"]["n"]
        lines.append(
            f"| {alpha:g} | {_pct(m['before'])} | {_pct(m['after'])} | "
            f"{m['bare_after']} / {n} | {m['timings']['train']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alphas", default="0.5,0.9,1.0")
    ap.add_argument("--no-docs", action="store_true", help="print, do not write the docs")
    args = ap.parse_args()
    results = {a: run(a) for a in (float(x) for x in args.alphas.split(","))}
    table = report(results)
    print(table)
    if not args.no_docs:
        body = (
            __doc__.split("\n\n")[1]
            + "\n\n"
            + table
            + "\n\nMachine quiet (one job at a time). Accuracy does not depend on load."
        )
        write_section("rationale-weight", "Rationale weight α and a CoT-scored student", body)


if __name__ == "__main__":
    main()
