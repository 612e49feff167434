"""Training speed of the multi-task trainer: tokens per second, padding, share of matmul rate.

SmolLM2-135M-Instruct + LoRA (the TrainConfig defaults: r 16, all linear layers), α = 0.5,
on a fixed set of CQA training examples with their PaLM rationales (each example a group of
a label and a rationale sequence), float32 on CPU. Measured from outside the library, so the
same script times any version of it:

- seconds inside training steps (forward, backward, optimizer step; a callback from step
  begin to step end), and the non-pad input tokens and target tokens of the batches
  (recorded by a hook on the model's forward); padding = the share of the padded batches' cells
  that are padding; forwards per step;
- the machine's float32 matmul rate (1024×1024 ``torch.matmul``, one second) and the share
  of it that training reaches at ≈ 4·N + 6·N_LoRA FLOPs per token (N: the weights of every
  linear layer, LM head included; frozen weights pay forward and input gradient, 4·N; LoRA
  weights also their weight gradient).

Before / after a change, run it once against each version of the code; the second run
writes the section of docs/benchmarks.md::

    git worktree add /tmp/before HEAD
    PYTHONPATH=/tmp/before/src python bench/train_speed.py --label before \\
        --json bench/out/train_speed_before.json
    python bench/train_speed.py --label after --before bench/out/train_speed_before.json

``--results FILE`` reports a run saved earlier (``--json``) instead of training again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, write_section

MODEL = "smollm2-135m-instruct"


def flops_per_token(model) -> float:
    """4·N for frozen and 6·N for trained weights of every nn.Linear (see the docstring)."""
    import torch

    return sum(
        (6.0 if m.weight.requires_grad else 4.0) * m.weight.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    )


def matmul_gflops(seconds: float = 1.0, size: int = 1024) -> float:
    """float32 matmul rate of this machine (GFLOP/s)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        n += 1
    return 2.0 * size**3 * n / (time.perf_counter() - t0) / 1e9


def run(groups_n: int, batch_size: int, steps: int) -> dict:
    """Train once; return the measurements."""
    import torch
    from transformers import TrainerCallback

    import fedcot
    import fedcot.train.multitask as mt
    from fedcot.data import get_task, load_dataset
    from fedcot.models.registry import load_model

    task = get_task("cqa")
    exs = [e for e in load_dataset(SHARED / "cqa", task, "train", limit=4 * groups_n)
           if (e.rationale or "").strip()][:groups_n]  # fmt: skip
    model, tok = load_model(MODEL)
    groups = mt.multitask_items(task, exs, tok, chat=True, alpha=0.5)

    targets_of: dict[int, int] = {}  # input_ids data pointer -> target tokens

    class Collator(mt.MultiTaskCollator):
        def __call__(self, groups):
            out = super().__call__(groups)
            targets_of[out["input_ids"].data_ptr()] = int(out["labels"].ne(-100).sum())
            return out

    # (cells, non-pad tokens, target tokens) of each forward: the dataloader collates one
    # batch ahead, so the collator alone would count a batch that is never trained on.
    batches: list[tuple[int, int, int]] = []

    def on_forward(module, args, kwargs, output):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        batches.append((ids.numel(), int(mask.sum()), targets_of.get(ids.data_ptr(), 0)))

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds, self.t0 = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.t0)

    model.register_forward_hook(on_forward, with_kwargs=True)
    mt.MultiTaskCollator = Collator  # train_multitask builds its collator by this name
    clock = StepClock()
    gflops = matmul_gflops()
    cfg = mt.TrainConfig(
        max_steps=steps, batch_size=batch_size, logging_steps=1, save_steps=10_000,
        eval_each_epoch=False, seed=0,
    )  # fmt: skip
    kwargs = {"matmul_gflops": gflops} if hasattr(mt, "measure_matmul_gflops") else {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        res = mt.train_multitask(
            model, tok, groups, cfg, Path(tmp), callbacks=[clock], progress=False, **kwargs
        )
    cells, tokens, targets = (sum(b[i] for b in batches) for i in range(3))
    sec = sum(clock.seconds)
    fpt = flops_per_token(res.model)
    return {
        "fedcot": str(Path(fedcot.__file__).parent),
        "torch_threads": torch.get_num_threads(),
        "groups": len(groups), "sequences": sum(len(g) for g in groups),
        "batch_size": batch_size, "steps": res.steps, "forwards": len(batches),
        "step_seconds": round(sec, 2), "median_step_s": round(sorted(clock.seconds)[steps // 2], 2),
        "train_seconds": res.seconds,
        "tokens": tokens, "target_tokens": targets, "cells": cells,
        "padding_share": round(1 - tokens / cells, 4),
        "tokens_per_second": round(tokens / sec, 1),
        "target_tokens_per_second": round(targets / sec, 1),
        "flops_per_token": fpt, "matmul_gflops": round(gflops, 1),
        "matmul_share": round(tokens / sec * fpt / 1e9 / gflops, 4),
        "library_tokens_per_second": getattr(res, "tokens_per_second", None),
        "library_matmul_share": getattr(res, "matmul_share", None),
        "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }  # fmt: skip


def table(rows: dict[str, dict]) -> str:
    head = (
        "| code | forwards / step | padding | non-pad tokens / s | target tokens / s "
        "| median step (s) | GFLOP/s | matmul rate (GFLOP/s) | share | load (1 min) |\n"
        + "|---" * 10
        + "|\n"
    )
    lines = []
    for label, r in rows.items():
        achieved = r["tokens_per_second"] * r["flops_per_token"] / 1e9
        lines.append(
            f"| {label} | {r['forwards'] / r['steps']:.0f} | {100 * r['padding_share']:.1f} % "
            f"| {r['tokens_per_second']:.0f} | {r['target_tokens_per_second']:.0f} "
            f"| {r['median_step_s']:.2f} | {achieved:.1f} | {r['matmul_gflops']:.1f} "
            f"| {100 * r['matmul_share']:.1f} % "
            f"| {r['load_avg_1min'][0]:.1f} → {r['load_avg_1min'][1]:.1f} |"
        )
    return head + "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", type=int, default=16, help="CQA training examples (groups)")
    p.add_argument("--batch-size", type=int, default=4, help="groups per step")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps")
    p.add_argument("--label", default="after", help="name of this run in the table")
    p.add_argument("--json", type=Path, help="write this run's numbers here")
    p.add_argument("--before", type=Path, help="numbers of an earlier run: write the docs section")
    p.add_argument(
        "--note", default="", help="a sentence for the docs (e.g. how busy the machine was)"
    )
    p.add_argument(
        "--results", type=Path, help="do not train: report this earlier run's numbers instead"
    )
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FEDCOT_PROGRESS", "0")
    if args.results:
        result = json.loads(args.results.read_text())
    else:
        result = run(args.groups, args.batch_size, args.steps)
        out = args.json or ROOT / "bench" / "out" / f"train_speed_{args.label}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if args.before:
        rows = {"before": json.loads(args.before.read_text()), args.label: result}
        print(table(rows))
        if args.note:  # the command line shown in the docs names the note, not its text
            sys.argv = ["'<note below>'" if a == args.note else a for a in sys.argv]
        write_section("train-speed", "Training speed (issue 13, item 7)", body(rows, args))


def body(rows: dict[str, dict], args: argparse.Namespace) -> str:
    r = rows[args.label]
    return f"""
{MODEL} + LoRA (r 16, all linear layers), float32 on CPU, no GPU; {r["groups"]} CQA training
examples with PaLM rationales ({r["sequences"]} sequences: label + rationale), batch size
{r["batch_size"]} groups, {r["steps"]} optimizer steps ({r["tokens"]} non-pad tokens, of which
{r["target_tokens"]} target tokens). Timed: the training steps (forward, backward, optimizer).
*Before* is the code at HEAD, run from a `git worktree` (`PYTHONPATH=/tmp/before/src python
bench/train_speed.py --label before --json bench/out/train_speed_before.json`); *after* is
`python bench/train_speed.py --label after --json bench/out/train_speed_after.json`; the
command above wrote this section from the two saved runs.
Share of the matmul rate: non-pad tokens/s × {r["flops_per_token"] / 1e6:.0f} MFLOP per token
(4·N + 6·N_LoRA over every linear layer, LM head included: frozen weights pay forward and
input gradient, LoRA weights also their weight gradient; attention products left out) against
the machine's float32 1024×1024 `torch.matmul` rate measured in the same process.

{table(rows)}

{args.note}
"""


if __name__ == "__main__":
    main()
