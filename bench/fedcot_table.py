"""FedCoT benchmark: does training on rationales help the student, and what does privacy cost?

Rows (the same training budget for every row unless it says otherwise):

- zero-shot: the student before training, measured by the first seed's ``label`` run;
- ``label``: label-only LoRA training (α = 0), S steps;
- ``label2x``: label-only with the compute of multi-task (2·S steps: a multi-task step runs
  two sequences per example);
- ``palm``: multi-task with the datasets' recorded PaLM rationales (replay teacher,
  non-private);
- ``gemma-none`` / ``gemma-exp`` / ``gemma-adaptive``: FedCoT with the local teacher
  gemma3-270m at strategy none, exponential ε = 3 and adaptive ε = 3 (inverse-map decoding);
- ``qwen-none`` / ``qwen-exp`` / ``qwen-adaptive``: the same with qwen2.5-coder-0.5b-instruct.

``--task private-records`` runs the demo's setting (``fedcot demo`` defaults: 32 generated
records, 48 held out, 24 steps, α = 0.9 with the agreement filter): label rows are scored by
their bare answer, rationale rows by their chain of thought with exact arithmetic; the
``palm`` row there serves the records' own worked steps.

Each run is a ``fedcot distill`` run folder under ``bench/out/fedcot/<task>/``; finished runs
are skipped, so the script can be stopped and started again. ``--report-only`` rebuilds the
docs section from the stored runs. Example:

    python bench/fedcot_table.py --task cqa --rows label,label2x,palm --seeds 0,1,2
    python bench/fedcot_table.py --task cqa --rows gemma-none,gemma-exp,gemma-adaptive --seeds 0
    python bench/fedcot_table.py --task private-records \\
        --rows label,label2x,palm,qwen-none,qwen-adaptive
    python bench/fedcot_table.py --throughput --task cqa
    python bench/fedcot_table.py --report-only

``--budget NAME`` keeps the runs of another training budget apart (under
``bench/out/fedcot/<task>@NAME/``, with their own table), e.g. a larger CQA budget:

    python bench/fedcot_table.py --task cqa --budget 600x150 --train 600 --steps 150 \\
        --lr 5e-4 --rows palm,label2x --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import ROOT, SHARED, write_section

OUT = ROOT / "bench" / "out" / "fedcot"
ROWS = (
    "label",
    "label2x",
    "palm",
    "gemma-none",
    "gemma-exp",
    "gemma-adaptive",
    "qwen-none",
    "qwen-exp",
    "qwen-adaptive",
)
TEACHERS = {"gemma": "gemma3-270m", "qwen": "qwen2.5-coder-0.5b-instruct"}
LABELS = {
    "zero": "zero-shot",
    "label": "label-only",
    "label2x": "label-only, 2× steps (compute-matched)",
    "palm": "multi-task, PaLM rationales (replay, non-private)",
    "gemma-none": "FedCoT, gemma3-270m teacher, strategy none (ε = ∞)",
    "gemma-exp": "FedCoT, gemma3-270m, exponential ε = 3, inverse-map",
    "gemma-adaptive": "FedCoT, gemma3-270m, adaptive ε_S = 3 (ε_N = 9), inverse-map",
    "qwen-none": "FedCoT, qwen2.5-coder-0.5b teacher, strategy none (ε = ∞)",
    "qwen-exp": "FedCoT, qwen2.5-coder-0.5b, exponential ε = 3, inverse-map",
    "qwen-adaptive": "FedCoT-A, qwen2.5-coder-0.5b, adaptive defaults, inverse-map",
}
TRAIN_SPLIT = {"cqa": "train", "esnli": "valid"}
SCORING = {
    "cqa": "likelihood scoring of the answer texts.",
    "private-records": (
        "the demo's setting (`fedcot demo` defaults: 32 generated records to train, 48 held "
        "out, 24 steps of 4, lr 5e-4; rationale rows α = 0.9 with the agreement filter). "
        "Label rows and zero-shot are scored by their bare answer; rationale rows by their "
        "chain of thought with its arithmetic redone exactly (the calculator). The "
        "\"PaLM\" row serves the records' own worked steps (the generator's). Teacher "
        "perturbations drawn once (privacy seed 0); the seeds vary training. The exponential "
        "row trains with the filter off (it would keep none of its rationales)."
    ),
}


def _teacher_row(cfg: dict[str, Any], row: str) -> None:
    """Point ``cfg`` at the row's local teacher and strategy."""
    prefix, kind = row.split("-", 1)
    cfg["server"] = {"model": TEACHERS[prefix], "batch_size": 16 if prefix == "gemma" else 8}
    cfg["strategy"] = {"none": "none", "exp": "exponential"}.get(kind, "adaptive")
    # The perturbation (and so the server's answers) is drawn once (an experiment's seed,
    # recorded); the seeds of the table vary training.
    if kind == "none":
        cfg["privacy"] = {}
    elif row == "qwen-adaptive":
        cfg["privacy"] = {"seed": 0}  # FedCoT-A defaults
    else:
        cfg["privacy"] = {"epsilon": 3.0, "seed": 0}


def records_config(row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The demo's distill config for one row (records task)."""
    from fedcot.config import DemoConfig
    from fedcot.demo import distill_config

    demo = DemoConfig(output_dir=OUT / "private-records" / f"{row}-s{seed}")
    cfg = distill_config(demo).model_dump(mode="json")
    cfg["train"]["seed"] = seed  # the records (cfg["seed"]) stay those of seed 0
    cfg["eval_before"] = row == "label" and seed == args.seed_list[0]
    if row.startswith("label"):
        cfg.update(strategy="none", privacy={}, eval_cot=False, eval_calculator=False)
        cfg["train"].update(alpha=0.0, max_steps=demo.train_steps * (2 if row == "label2x" else 1))
    elif row == "palm":
        cfg.update(strategy="none", privacy={}, server={"kind": "replay", "model": "palm"})
    else:
        _teacher_row(cfg, row)
        if row.endswith("-exp"):
            # The agreement filter would keep none of FedCoT-E's rationales (1 of 100 reach
            # the answer at ε = 3), so this row trains on all of them.
            cfg["filter"] = False
    return cfg


def folder_key(task: str, budget: str) -> str:
    """The runs folder of ``task`` at a named training budget (none: the main table's)."""
    return f"{task}@{budget}" if budget else task


def row_config(task: str, row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The distill config of one benchmark row."""
    if task == "private-records":
        return records_config(row, seed, args)
    steps = args.steps * (2 if row == "label2x" else 1)
    cfg: dict[str, Any] = {
        "task": task,
        "data": str(SHARED),
        "train_split": TRAIN_SPLIT[task],
        "test_split": "test",
        "train_limit": args.train,
        "test_limit": args.test,
        "student": {"model": "smollm2-135m-instruct", "batch_size": 16},
        "eval_method": "likelihood",
        "eval_before": row == "label" and seed == args.seed_list[0],
        "train": {
            "alpha": 0.0 if row.startswith("label") else args.alpha,
            "max_steps": steps,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "max_length": 256,
            "logging_steps": 5,
            "eval_each_epoch": False,
            "seed": seed,
        },
        "seed": seed,
        "output_dir": str(OUT / folder_key(task, args.budget) / f"{row}-s{seed}"),
        "generation": {"max_new_tokens": args.max_new_tokens},
    }
    if row in ("label", "label2x"):
        cfg["strategy"] = "none"
    elif row == "palm":
        cfg.update(strategy="none", server={"kind": "replay", "model": "palm"})
    else:
        _teacher_row(cfg, row)
    return cfg


def run_rows(args: argparse.Namespace) -> None:
    from fedcot.cot.client import run_fedcot
    from fedcot.cot.config import FedCoTConfig

    teachers: dict[str, Any] = {}
    for task in args.tasks:
        for row in args.rows:
            for seed in args.seed_list:
                cfg = FedCoTConfig.model_validate(row_config(task, row, seed, args))
                if (cfg.output_dir / "metrics.json").exists():
                    print(f"skip {task} {row} s{seed}: done", file=sys.stderr)
                    continue
                server = None
                prefix = row.split("-", 1)[0]
                if prefix in TEACHERS:
                    # Reuse the seed-0 answers: the same perturbed prompts hit the cache.
                    first = f"{row}-s{args.seed_list[0]}"
                    src = OUT / folder_key(task, args.budget) / first / "server_cache.jsonl"
                    dst = cfg.output_dir / "server_cache.jsonl"
                    if seed != args.seed_list[0] and src.exists() and not dst.exists():
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        dst.write_bytes(src.read_bytes())
                    if prefix not in teachers:
                        from fedcot.models.backends.transformers import TransformersBackend

                        teachers[prefix] = TransformersBackend.from_pretrained(
                            TEACHERS[prefix], batch_size=cfg.server.batch_size
                        )
                    server = teachers[prefix]
                print(f"run {task} {row} s{seed} ...", file=sys.stderr)
                t0 = time.perf_counter()
                resume = cfg.output_dir.exists() and (cfg.output_dir / "config.yaml").exists()
                run_fedcot(cfg, resume=resume, server=server, progress=False)
                print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def throughput(args: argparse.Namespace) -> None:
    """Server tokens/s through the pipeline's cached path vs the raw backend, same prompts."""
    import tempfile

    from fedcot.cot.cache import AskStats, RationaleCache, ask_cached
    from fedcot.models.backends.base import GenerationParams
    from fedcot.models.backends.transformers import TransformersBackend

    task = args.tasks[0]
    cache_file = OUT / task / "gemma-exp-s0" / "server_cache.jsonl"
    prompts = [r.prompt for r in RationaleCache(cache_file).values()][: args.n_throughput]
    be = TransformersBackend.from_pretrained("gemma3-270m", batch_size=16)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    be.generate(prompts[:2], params)  # warm-up
    results = {}
    for attempt in range(2):
        t0 = time.perf_counter()
        comps = be.generate(prompts, params)
        raw_s = time.perf_counter() - t0
        raw_tokens = sum(c.completion_tokens for c in comps)
        with tempfile.TemporaryDirectory() as d:
            stats = AskStats()
            t0 = time.perf_counter()
            ask_cached(
                be, prompts, params, RationaleCache(Path(d) / "c.jsonl"), batch_size=16, stats=stats
            )
            pipe_s = time.perf_counter() - t0
        results[attempt] = {
            "raw_tok_s": raw_tokens / raw_s,
            "pipeline_tok_s": stats.completion_tokens / pipe_s,
            "prompts": len(prompts),
            "tokens": raw_tokens,
        }
    (OUT / task).mkdir(parents=True, exist_ok=True)
    (OUT / task / "throughput.json").write_text(json.dumps(list(results.values()), indent=2))
    print(json.dumps(results, indent=2))


# -- report ------------------------------------------------------------------------------


def _load(task: str) -> dict[tuple[str, int], dict[str, Any]]:
    runs = {}
    for folder in sorted((OUT / task).glob("*-s*")):
        m = folder / "metrics.json"
        if not m.exists():
            continue
        row, seed = folder.name.rsplit("-s", 1)
        metrics = json.loads(m.read_text())
        preds = {}
        for line in (folder / "eval" / "after_predictions.jsonl").read_text().splitlines():
            p = json.loads(line)
            preds[p["id"]] = bool(p["correct"])
        metrics["_preds"] = preds
        before = folder / "eval" / "before_predictions.jsonl"
        if before.exists():
            metrics["_before_preds"] = {
                json.loads(x)["id"]: bool(json.loads(x)["correct"])
                for x in before.read_text().splitlines()
            }
        runs[(row, int(seed))] = metrics
    return runs


def _run_seconds(metrics: dict[str, Any]) -> float:
    """Seconds of a run's stages, without the zero-shot evaluation (the zero-shot row's)."""
    return sum(v for k, v in metrics["timings"].items() if k != "eval_before")


def _epsilon_cell(ledger: dict[str, Any]) -> str:
    """Mean ε-LDP per prompt, and the metric-DP kinds beside it (older ledgers: one key)."""
    ldp = ledger.get("ldp_per_prompt_mean", ledger.get("per_prompt_mean", 0))
    kinds = ledger.get("metric_by_kind") or {}
    metric = ", ".join(
        f"{k} ε {v['epsilon_sum'] / v['draws']:g} per {v['per']}" for k, v in kinds.items()
    )
    return f"{ldp:.0f}" + (f" LDP; metric DP: {metric}" if metric else "")


def _params(task: str) -> dict[str, Any]:
    """The arguments of the last runs of ``task``."""
    for path in (OUT / task / "params.json", OUT / "params.json"):
        if path.exists():
            return json.loads(path.read_text())
    return {}


def _paired(a: dict[str, bool], b: dict[str, bool]) -> tuple[float, float, float]:
    """Mean paired difference a − b (points) with a normal 95 % interval."""
    from fedcot.evaluation import paired_difference

    ids = sorted(set(a) & set(b))
    mean, low, high = paired_difference([b[i] for i in ids], [a[i] for i in ids])
    return 100 * mean, 100 * low, 100 * high


def _budget_line(key: str) -> list[str]:
    """The training budget of a named-budget folder (``cqa@600x150``), as a paragraph."""
    if "@" not in key:
        return []
    p = _params(key)
    return [
        f"Budget `{key.split('@', 1)[1]}`: {p.get('train', '?')} training examples, "
        f"{p.get('steps', '?')} steps of {p.get('batch_size', '?')} (the compute-matched row: "
        f"twice the steps), lr {p.get('lr', '?')}, α = {p.get('alpha', '?')}, "
        f"{p.get('test', '?')} test items (last runs: `python bench/fedcot_table.py "
        f"{p.get('argv', '')}`).",
        "",
    ]


def _task_sections(keys: tuple[str, ...]) -> list[str]:
    """One table (and its rationale and timing rows) per runs folder with stored runs."""
    sections = []
    for key in keys:
        runs = _load(key)
        if not runs:
            continue
        task = key.split("@", 1)[0]
        lines = [f"### {key}", "", *_budget_line(key)]
        cfg0 = next(iter(runs.values()))
        n = cfg0["after"]["n"]
        lines.append(
            "| row | seeds | accuracy per seed | mean | 95 % CI (seed 0) | vs compute-matched "
            "label-only (paired, seed 0) | s per run (mean) |"
        )
        lines.append("|---|---:|---|---:|---:|---|---:|")
        zero = next((m for (r, s), m in runs.items() if m.get("before")), None)
        base = {s: m["_preds"] for (r, s), m in runs.items() if r == "label2x"}
        if zero:
            b = zero["before"]
            diff = ""
            if 0 in base:
                d, lo, hi = _paired(zero["_before_preds"], base[0])
                diff = f"{d:+.1f} ({lo:+.1f} to {hi:+.1f})"
            lines.append(
                f"| {LABELS['zero']} | – | {100 * b['accuracy']:.1f} | {100 * b['accuracy']:.1f} "
                f"| {100 * b['ci_low']:.1f}–{100 * b['ci_high']:.1f} | {diff} | "
                f"{zero['before'].get('seconds', 0):.0f} |"
            )
        for row in ROWS:
            seeds = sorted(s for (r, s) in runs if r == row)
            if not seeds:
                continue
            accs = [100 * runs[(row, s)]["after"]["accuracy"] for s in seeds]
            a0 = runs[(row, seeds[0])]["after"]
            diffs = []
            for s in seeds:
                if s in base and row != "label2x":
                    diffs.append(_paired(runs[(row, s)]["_preds"], base[s]))
            diff = ""
            if diffs:
                d, lo, hi = diffs[0]
                mean_d = statistics.fmean(x[0] for x in diffs)
                diff = f"{d:+.1f} ({lo:+.1f} to {hi:+.1f}); mean of {len(diffs)}: {mean_d:+.1f}"
            lines.append(
                f"| {LABELS[row]} | {len(seeds)} | {', '.join(f'{x:.1f}' for x in accs)} | "
                f"{statistics.fmean(accs):.1f} | "
                f"{100 * a0['ci_low']:.1f}–{100 * a0['ci_high']:.1f} | {diff} | "
                f"{statistics.fmean(_run_seconds(runs[(row, s)]) for s in seeds):.0f} |"
            )
        lines += ["", f"n = {n} test items; accuracy in %; {SCORING.get(task, SCORING['cqa'])}"]
        # Rationale quality and stage timings of the FedCoT rows.
        t_rows = [
            (r, m)
            for (r, s), m in sorted(runs.items())
            if s == 0 and m["rationales"].get("requested")
        ]
        if t_rows:
            lines += [
                "",
                "| row (seed 0) | rationales reaching the gold answer | perturb s | generate s | "
                "decode s | train s | eval s | server tok/s | ε per prompt (mean) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r, m in t_rows:
                t = m["timings"]
                led = m["privacy"].get("ledger") or {}
                eps = _epsilon_cell(led) if led else "∞" if r != "palm" else "–"
                lines.append(
                    f"| {LABELS[r]} | {m['rationales']['agree_with_gold']}/"
                    f"{m['rationales']['requested']} | {t.get('perturb', 0):.1f} | "
                    f"{t.get('generate', 0):.0f} | {t.get('decode', 0):.1f} | "
                    f"{t.get('train', 0):.0f} | {t.get('eval_after', 0):.0f} | "
                    f"{'–' if r == 'palm' else m['server'].get('tokens_per_second') or '–'} | "
                    f"{eps} |"
                )
        tp = OUT / key / "throughput.json"
        if tp.exists():
            rounds = json.loads(tp.read_text())
            raw = statistics.fmean(d["raw_tok_s"] for d in rounds)
            pipe = statistics.fmean(d["pipeline_tok_s"] for d in rounds)
            each = "; ".join(f"{d['raw_tok_s']:.1f} vs {d['pipeline_tok_s']:.1f}" for d in rounds)
            d = rounds[0]
            lines += [
                "",
                f"Server throughput, {d['prompts']} perturbed CQA prompts, gemma3-270m in-process "
                f"(batch 16, {d['tokens']} tokens a round), raw backend vs the pipeline's cached "
                f"path, tok/s per round: {each}; mean {raw:.1f} vs {pipe:.1f} "
                f"({100 * pipe / raw:.0f} %; target ≥ 90 %).",
            ]
        sections.append("\n".join(lines))
    return sections


def report(tasks: Sequence[str] = ("private-records", "cqa", "esnli")) -> None:
    """Rebuild the docs sections of ``tasks`` whose runs are stored here (a section whose
    runs are not on this machine, or were not run now, is left as it is)."""
    records = _task_sections(("private-records",)) if "private-records" in tasks else []
    if records:
        params = _params("private-records")
        body = (
            "Runs accumulate in `bench/out/fedcot/private-records/` (last runs: "
            f"`python bench/fedcot_table.py {params.get('argv', '')}`); `--report-only` "
            "rebuilds this section.\n\n" + "\n\n".join(records)
        )
        title = "FedCoT end to end on the private records: student accuracy over seeds"
        write_section("fedcot-records", title, body)
    keys = [t for t in ("cqa", "esnli") if t in tasks]
    keys += sorted(p.name for t in keys for p in OUT.glob(f"{t}@*") if p.is_dir())
    sections = _task_sections(tuple(keys))
    if not sections:
        return
    params = _params("cqa")
    body = (
        "Runs accumulate in `bench/out/fedcot/` (one `fedcot distill` run folder each; "
        f"last runs: `python bench/fedcot_table.py {params.get('argv', '')}`); "
        "`--report-only` rebuilds this section.\n\n"
        "Student smollm2-135m-instruct with LoRA (r = 16, all linear layers), trained on the "
        f"first {params.get('train', '?')} examples of the split with PaLM rationales (CQA "
        f"`train`, e-SNLI `valid`), {params.get('steps', '?')} steps of "
        f"{params.get('batch_size', '?')} examples (lr {params.get('lr', '?')}), α = "
        f"{params.get('alpha', '?')}; evaluated on the first {params.get('test', '?')} "
        "`test` items by the likelihood of each answer text (the label target is the answer "
        'text alone, e.g. `wooded area`, `answer_style = "text"`). Teacher rationales: up to '
        f"{params.get('max_new_tokens', '?')} new tokens, 2 public few-shot examples.\n\n"
        + "\n\n".join(sections)
    )
    write_section("fedcot", "FedCoT end to end: rationales, privacy, student accuracy", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", default="cqa", help="cqa, esnli (comma-separated)")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--n-throughput", type=int, default=32)
    ap.add_argument("--budget", default="", help="name of a non-default training budget")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.tasks = args.task.split(",")
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in LABELS or r == "zero"]
    if unknown:
        valid = ", ".join(r for r in LABELS if r != "zero")
        ap.error(
            f"unknown row(s) {', '.join(unknown)}; rows are {valid} "
            "(zero-shot comes with the first seed's label run)"
        )
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    os.environ.setdefault("FEDCOT_PROGRESS", "0")
    if not args.report_only:
        OUT.mkdir(parents=True, exist_ok=True)
        keep = {
            k: getattr(args, k)
            for k in ("train", "test", "steps", "batch_size", "lr", "alpha", "max_new_tokens")
        }
        keep["argv"] = " ".join(sys.argv[1:])
        if args.throughput:
            throughput(args)
        else:
            for task in args.tasks:
                folder = OUT / folder_key(task, args.budget)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "params.json").write_text(json.dumps(keep, indent=2))
            run_rows(args)
    if args.report_only:
        report()
    else:
        report(args.tasks)


if __name__ == "__main__":
    main()
