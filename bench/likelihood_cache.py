"""Likelihood scoring with the shared-prompt cache vs whole sequences (same predictions?).

Multiple-choice evaluation scores every candidate answer after the same prompt. The
transformers backend encodes each prompt once and scores the candidates on its KV cache;
the alternative runs every prompt + candidate sequence in full. Both on the same CQA test
questions, alternated, two rounds each.

    python bench/likelihood_cache.py --limit 40
"""

from __future__ import annotations

import argparse
import json
import time

from _common import ROOT, write_section


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    store = ROOT / "bench" / "out" / "likelihood_cache.json"
    if not args.report_only:
        from fedcot.data import get_task, load_dataset
        from fedcot.evaluation import evaluate
        from fedcot.models.backends.transformers import TransformersBackend

        from _common import SHARED

        task = get_task("cqa")
        exs = load_dataset(SHARED, task, "test", limit=args.limit, rationales=False)
        be = TransformersBackend.from_pretrained("smollm2-135m-instruct", batch_size=8)
        cached = be._score_shared_prompts

        def whole(groups, scores):  # every prompt + candidate as one full sequence
            items = [(i, ctx + c, len(ctx)) for ctx, members in groups for i, c in members]
            be._score_sequences(items, scores)

        times: dict[str, list[float]] = {"cached": [], "whole": []}
        preds: dict[str, list] = {}
        evaluate(be, task, exs[:4], method="likelihood", progress=False)  # warm-up
        for _ in range(2):
            for mode in ("whole", "cached"):
                be._score_shared_prompts = cached if mode == "cached" else whole
                t0 = time.perf_counter()
                res = evaluate(be, task, exs, method="likelihood", progress=False)
                times[mode].append(time.perf_counter() - t0)
                preds[mode] = [p.prediction for p in res.predictions]
        store.write_text(
            json.dumps(
                {"n": len(exs), "times": times, "same": preds["cached"] == preds["whole"]},
                indent=2,
            )
        )
    d = json.loads(store.read_text())
    w, c = d["times"]["whole"], d["times"]["cached"]
    body = f"""| path | seconds for {d["n"]} CQA questions × 5 candidates (2 rounds) | per question |
|---|---|---:|
| whole sequences (prompt encoded per candidate) | {w[0]:.1f} / {w[1]:.1f} | {min(w) / d["n"]:.2f} s |
| shared-prompt KV cache | {c[0]:.1f} / {c[1]:.1f} | {min(c) / d["n"]:.2f} s |

Speed-up {min(w) / min(c):.1f}×; identical predictions: {"yes" if d["same"] else "NO"}.
smollm2-135m-instruct, chat prompts, batch 8 prompts."""  # noqa: E501
    write_section("likelihood-cache", "Candidate scoring: shared-prompt cache", body)


if __name__ == "__main__":
    main()
