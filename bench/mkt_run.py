"""FedMKT on a real dataset: Gemma-3-270M server, two SmolLM2-135M clients, 2 rounds,
against standalone training with the same steps.

python bench/mkt_run.py --row mutual        # one row at a time (each takes minutes)
python bench/mkt_run.py --row standalone
python bench/mkt_run.py --row one-way
python bench/mkt_run.py --report-only       # rewrite the docs section from bench/out/mkt

Every row uses examples/mkt-rte.toml (overridable with --set key=value) and the same seed,
so the public/private split, the test items and every party's LoRA init are identical across
rows; differences are paired per test item.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from _common import ROOT, SHARED, write_section

OUT = ROOT / "bench" / "out" / "mkt"
ROWS = ("mutual", "one-way", "standalone")


def _run(row: str, task: str, sets: list[str]) -> None:
    from fedcot.config import load_config
    from fedcot.mkt import run_mkt
    from fedcot.mkt.config import MKTConfig

    folder = OUT / f"{task}-{row}"
    if folder.exists():
        shutil.rmtree(folder)
    cfg = load_config(
        MKTConfig,
        ROOT / "examples" / "mkt-rte.toml",
        [f"task={task}", f"data={SHARED}", f"mode={row}", f"output_dir={folder}", *sets],
    )
    t0 = time.perf_counter()
    res = run_mkt(cfg, progress=True)
    wall = time.perf_counter() - t0
    (OUT / f"{task}-{row}.json").write_text(
        json.dumps(
            {
                "row": row,
                "task": task,
                "wall_s": wall,
                "config": json.loads(cfg.model_dump_json()),
                "metrics": res.metrics,
                "manifest": res.manifest,
            },
            indent=2,
        )
    )


def _correct(task: str, row: str, round_no: int, party: str) -> dict[str, bool]:
    path = OUT / f"{task}-{row}" / "eval" / f"round-{round_no}" / f"{party}.jsonl"
    out = {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        out[d["id"]] = bool(d["correct"])
    return out


def _paired(a: dict[str, bool], b: dict[str, bool]) -> str:
    """a − b in points with a 95 % normal interval on the paired differences."""
    from fedcot.evaluation import paired_difference

    ids = sorted(set(a) & set(b))
    mean, low, high = paired_difference([b[i] for i in ids], [a[i] for i in ids])
    return f"{100 * mean:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"


def _pct(m: dict) -> str:
    return f"{100 * m['accuracy']:.1f} % ({100 * m['ci_low']:.1f}–{100 * m['ci_high']:.1f})"


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def report(task: str) -> None:
    runs = {}
    for row in ROWS:
        f = OUT / f"{task}-{row}.json"
        if f.exists():
            runs[row] = json.loads(f.read_text())
    if not runs:
        sys.exit(f"no results in {OUT}; run a row first")
    any_run = next(iter(runs.values()))
    cfg = any_run["config"]
    parties = list(any_run["metrics"]["rounds"]["0"])
    last = cfg["rounds"]
    t = cfg["train"]
    lines = [
        f"{task.upper()} from ../shared/datasets: server `{cfg['server']['model']}`, "
        f"{len(cfg['clients'])} clients `{cfg['clients'][0]['model']}`; "
        f"{cfg['public_size']} public + {len(cfg['clients'])} × {cfg['private_size']} private "
        f"examples of `{cfg['split']}` (seed {cfg['seed']}), {cfg['rounds']} rounds, top-K "
        f"{cfg['top_k']}, {cfg['selection']}, loss per {cfg['loss_unit']}, λ = {cfg['lam']}; "
        f"per round: {t['local_steps']} private steps per client, {t['server_steps']} server "
        f"and {t['client_steps']} client distillation steps, batch {t['batch_size']}, LoRA r "
        f"{t['lora_r']}. Test: {any_run['manifest']['data']['test']} items of `"
        f"{cfg['test_split']}`, answer likelihood. Standalone = the same steps, λ = 1, no "
        "exchange (clients: private data, then the public labels; server: the public labels).",
        "",
        "| party | row | before | after round 1 | after round 2 | vs standalone (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for p in parties:
        for row, data in runs.items():
            rounds = data["metrics"]["rounds"]
            cells = [_pct(rounds[str(r)][p]) if str(r) in rounds else "–" for r in (0, 1, 2)]
            vs = "–"
            if row != "standalone" and "standalone" in runs:
                vs = _paired(_correct(task, row, last, p), _correct(task, "standalone", last, p))
            lines.append(f"| {p} | {row} | " + " | ".join(cells) + f" | {vs} |")
    lines += ["", "Traffic per round (JSON as sent; dense = float32 vocabulary-sized rows):", ""]
    lines += [
        "| row | round | party | sent | dense equivalent | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row, data in runs.items():
        for r, tr in sorted(data["metrics"]["traffic"].items()):
            for party, v in tr.items():
                if not isinstance(v, dict):
                    lines.append(f"| {row} | {r} | {party} | {_kib(v)} | – | – |")
                    continue
                ratio = v["dense_bytes"] / max(v["bytes"], 1)
                note = " (to all clients)" if "per_client_bytes" in v else ""
                lines.append(
                    f"| {row} | {r} | {party}{note} | {_kib(v['bytes'])} | "
                    f"{v['dense_bytes'] / 2**20:,.1f} MiB | {ratio:,.0f}× |"
                )
    lines += [
        "",
        "Wall time and selection (a round's time includes evaluating every party on the test "
        "set; these runs shared the 2 cores with other jobs, so times are upper bounds):",
        "",
    ]
    for row, data in runs.items():
        tm = data["manifest"]["timings"]
        rounds = ", ".join(f"{k} {v:.0f} s" for k, v in tm.items() if k.startswith("round"))
        sel = []
        for r, log in sorted(data["metrics"]["training"].items()):
            for e in log:
                if "selected" in e:
                    sel.append(
                        f"r{r} {e['party']}: {e['selected']}/{cfg['public_size']} samples "
                        f"selected, {e['transferred']} transferred rows"
                    )
        lines.append(
            f"- {row}: {data['wall_s']:.0f} s total (setup {tm.get('setup_s', 0):.0f} s; "
            f"{rounds})" + ("; " + "; ".join(sel) if sel else "")
        )
    write_section(
        f"mkt-{task}", f"FedMKT on {task.upper()}: server + 2 clients, 2 rounds", "\n".join(lines)
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", choices=ROWS)
    ap.add_argument("--task", default="rte")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        if not args.row:
            ap.error("--row is required unless --report-only")
        _run(args.row, args.task, args.sets)
    report(args.task)


if __name__ == "__main__":
    main()
