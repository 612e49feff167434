"""Zero-shot accuracy of the embedded models on CQA, SVAMP and e-SNLI (shared/datasets).

``generate``: greedy answer, parsed by the task. ``likelihood``: the answer candidate with the
highest log-likelihood (CQA, e-SNLI only). 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
import sys

from fedcot.data import get_task, load_dataset
from fedcot.evaluation import evaluate
from fedcot.models.backends import GenerationParams
from fedcot.models.backends.transformers import TransformersBackend

from _common import ROOT, SHARED, write_section

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
TASKS = ["cqa", "svamp", "esnli"]
CHANCE = {"cqa": "20 %", "svamp": "-", "esnli": "33 %"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Rows accumulate across runs (keyed by model, task, method), so one model can be re-run.
    store = out_dir / "zeroshot_rows.json"
    kept = json.loads(store.read_text()) if store.is_file() else []
    rows = {(r["model"], r["task"], r["method"]): r for r in kept}
    for name in args.models.split(","):
        be = TransformersBackend.from_pretrained(name, batch_size=8)
        for tname in args.tasks.split(","):
            task = get_task(tname)
            exs = load_dataset(SHARED, task, "test", limit=args.limit, rationales=False)
            methods = ["generate"] + (["likelihood"] if task.candidates(exs[0]) else [])
            for method in methods:
                res = evaluate(
                    be, task, exs, method=method, params=GenerationParams(max_new_tokens=32)
                )
                res.write_predictions(out_dir / f"zeroshot_{name}_{tname}_{method}.jsonl")
                rows[(res.model, res.task, res.method)] = res.summary()
                store.write_text(json.dumps(list(rows.values()), indent=1))
                print(json.dumps(res.summary()), file=sys.stderr)
    body = [
        "| model | task | method | n | accuracy | 95 % CI | unparsed | chance | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = {m: i for i, m in enumerate(MODELS)}
    for r in sorted(rows.values(), key=lambda r: (order.get(r["model"], 9), r["task"])):
        body.append(
            f"| {r['model']} | {r['task']} | {r['method']} | {r['n']} | "
            f"{100 * r['accuracy']:.1f} % | {100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f} % | "
            f"{r['unparsed']} | {CHANCE[r['task']]} | {r['seconds']:.0f} |"
        )
    body.append("")
    body.append(
        f"First {args.limit} items of each `test` split. SmolLM2 gets its chat template, Gemma "
        "(a base model) a plain `...\\nAnswer:` prompt; greedy, 32 new tokens. Predictions: "
        "`bench/out/zeroshot_*.jsonl` (not committed). Rows accumulate across runs in "
        "`bench/out/zeroshot_rows.json`: the SmolLM2 rows come from `python bench/zero_shot.py "
        "--limit 200` earlier the same day, the Gemma rows from the command above."
    )
    write_section("zeroshot", "Zero-shot accuracy of the embedded models", "\n".join(body))


if __name__ == "__main__":
    main()
