"""Baseline: FATE-LLM 2.2.0's InferDPT kit on SmolLM2-135M-Instruct embeddings.

Measures, with ``fate_llm.algo.inferdpt.utils.InferDPTKit`` used as a black box:

1. kit build time and peak RSS (fresh child process per size n);
2. ``kit.perturb`` throughput (tokens/s) on CQA test questions at ε = 1, 3;
3. verbatim leakage of annotated sensitive spans of synthetic private records at
   ε = 1, 3, 6, and the share of tokens that skip the mechanism (not in the kit).

Install the baseline with ``pip install --no-deps fate-llm==2.2.0``; without it the script
prints a message and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

from _fate_common import (
    all_alpha_tokens,
    fate_version,
    kit_key,
    load_fate_utils,
    rank_lowercase,
    rank_primary,
    word_start_tokens,
)

from _common import SHARED, run_child, write_section

BENCH = Path(__file__).resolve().parent
KINDS = ("name", "age", "amount", "email", "phone", "iban", "date", "city", "id")
GIB = 2**30


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def predict_peak(points: list[tuple[int, float]], n: int) -> float:
    """Peak RSS (MiB) at n from the two largest measured sizes, fitting a + b·n²."""
    (n1, p1), (n2, p2) = sorted(points)[-2:]
    b = (p2 - p1) / (n2**2 - n1**2)
    return p1 + b * (n**2 - n1**2)


def build(work: str, n: int, experiments: bool) -> dict:
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r})\n"
        "from _fate_common import child_main\n"
        f"child_main({work!r}, {n}, {experiments}, {mem_available()})\n"
    )
    out = run_child(code, env={"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"})
    return json.loads(out.strip().splitlines()[-1])


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f} %" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few texts")
    ap.add_argument(
        "--no-docs", action="store_true", help="print the section, do not write the docs"
    )
    args = ap.parse_args()

    utils = load_fate_utils()
    if utils is None or not hasattr(utils, "InferDPTKit"):
        print(
            "SKIP: fate_llm (FATE-LLM) is not importable; install it with "
            "`pip install --no-deps fate-llm==2.2.0` to run this baseline.",
            file=sys.stderr,
        )
        return
    del utils

    if args.quick:
        sizes, n_cqa, n_rec = [500, 1000], 30, 20
    else:
        sizes, n_cqa, n_rec = [2000, 5000, 11400], 300, 200
    throughput_eps, leak_eps = [1.0, 3.0], [1.0, 3.0, 6.0]

    from fedcot.data import get_task, load_dataset
    from fedcot.data.synthetic import generate_private_records
    from fedcot.models.registry import load_model

    model, tok = load_model("smollm2-135m-instruct")
    emb_all = model.get_input_embeddings().weight.detach().numpy().copy()
    del model
    gc.collect()
    vocab = tok.get_vocab()
    ranked, rank_how = rank_primary(vocab)
    n_max = max(sizes)
    if len(ranked) < n_max:
        raise SystemExit(f"only {len(ranked)} word tokens, need {n_max}")
    kit_tokens = ranked[:n_max]
    kit_emb = emb_all[[vocab[t] for t in kit_tokens]]

    cqa = [
        ex.question
        for ex in load_dataset(SHARED, get_task("cqa"), "test", limit=n_cqa, rationales=False)
    ]
    records = [
        {"question": ex.question, "spans": ex.meta["spans"]}
        for ex in generate_private_records(n_rec, seed=0)
    ]
    for r in records:  # the annotation must be exact
        assert all(r["question"][s["start"] : s["end"]] == s["text"] for s in r["spans"])
        enc = tok(r["question"], add_special_tokens=False, return_offsets_mapping=True)
        assert enc.tokens() == tok.tokenize(r["question"])

    raw: dict = {
        "fate_llm": fate_version(),
        "quick": args.quick,
        "vocab_rule": rank_how,
        "word_start_tokens": len(ranked),
        "builds": [],
    }
    with tempfile.TemporaryDirectory(prefix="fate_inferdpt_") as work:
        wd = Path(work)
        tok.save_pretrained(str(wd / "tokenizer"))
        import numpy as np

        np.save(wd / "embeddings.npy", kit_emb)
        (wd / "tokens.json").write_text(json.dumps(kit_tokens))
        (wd / "data.json").write_text(
            json.dumps(
                {
                    "cqa": cqa,
                    "records": records,
                    "throughput_eps": throughput_eps,
                    "leak_eps": leak_eps,
                }
            )
        )
        points: list[tuple[int, float]] = []
        exp_n = None
        for i, n in enumerate(sizes):
            last = i == len(sizes) - 1
            if len(points) >= 2:
                pred = predict_peak(points, n)
                avail = mem_available() / 2**20
                print(
                    f"n={n}: predicted peak {pred / 1024:.1f} GiB, available "
                    f"{avail / 1024:.1f} GiB",
                    file=sys.stderr,
                )
                if pred * 1.05 + 768 > avail or pred > 20 * 1024:
                    raw["builds"].append({"n": n, "skipped": True, "predicted_peak_mib": pred})
                    continue
            print(f"building kit n={n}{' + experiments' if last else ''}", file=sys.stderr)
            try:
                res = build(work, n, experiments=last)
            except RuntimeError as err:
                print(f"n={n} failed: {str(err)[-500:]}", file=sys.stderr)
                res = {"n": n, "failed": str(err)[-300:]}
                raw["builds"].append(res)
                continue
            points.append((n, res["peak_rss_mib"]))
            raw["builds"].append({k: v for k, v in res.items() if k != "experiments"})
            if "experiments" in res:
                raw["experiments"] = res["experiments"]
                exp_n = n
            print(json.dumps(raw["builds"][-1]), file=sys.stderr)
        if exp_n is None and points:
            # The largest size did not fit: run the experiments on the largest built size.
            exp_n = points[-1][0]
            res = build(work, exp_n, experiments=True)
            raw["experiments"] = res["experiments"]
        raw["experiments_n"] = exp_n

    # Skip rates under alternative kit vocabularies (set membership, as perturb() looks up).
    def skip_share(keys: set[str], texts: list[str]) -> tuple[int, int]:
        toks = [kit_key(t) for x in texts for t in tok.tokenize(x)]
        return sum(t not in keys for t in toks), len(toks)

    def spans_outside(keys: set[str]) -> tuple[int, int]:
        out = total = 0
        for r in records:
            enc = tok(r["question"], add_special_tokens=False, return_offsets_mapping=True)
            pairs = list(zip(enc.tokens(), enc["offset_mapping"]))
            for sp in r["spans"]:
                over = [t for t, (a, b) in pairs if a < sp["end"] and b > sp["start"]]
                total += 1
                out += all(kit_key(t) not in keys for t in over)
        return out, total

    rules = {
        f"primary (this kit): top {exp_n} word-start tokens": set(ranked[:exp_n]),
        f"lower-case words only, top {exp_n}": set(rank_lowercase(vocab)[:exp_n]),
        f"word-start tokens in token-id order, top {exp_n}": {
            t for t, _ in sorted(word_start_tokens(vocab), key=lambda ti: ti[1])[:exp_n]
        },
        f"all {len(ranked)} word-start alphabetic tokens": set(ranked),
    }
    every_alpha = all_alpha_tokens(vocab)
    rules[f"every alphabetic token, with or without `Ġ` ({len(every_alpha)})"] = set(every_alpha)
    rec_texts = [r["question"] for r in records]
    raw["sensitivity"] = {
        name: {
            "entries": len(keys),
            "cqa_skip": skip_share(keys, cqa),
            "records_skip": skip_share(keys, rec_texts),
            "spans_outside": spans_outside(keys),
        }
        for name, keys in rules.items()
    }

    print(json.dumps(raw, indent=1), file=sys.stderr)
    body = render(raw, records, n_cqa, throughput_eps, leak_eps)
    if args.no_docs:
        print(body)
    else:
        write_section("fate-inferdpt", "FATE-LLM 2.2.0 InferDPT kit (baseline)", body)
    out_dir = BENCH / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"fate_inferdpt{'_quick' if args.quick else ''}.json").write_text(
        json.dumps(raw, indent=1)
    )


def render(raw: dict, records: list[dict], n_cqa: int, t_eps: list, l_eps: list) -> str:
    lines = [
        f"Baseline: `fate_llm.algo.inferdpt.utils.InferDPTKit` from fate-llm {raw['fate_llm']} "
        "(installed with `pip install --no-deps`, used as a black box; no FATE code is copied "
        "into fedcot). Embeddings: SmolLM2-135M-Instruct input embeddings as fedcot loads them "
        "(de-quantised from the embedded Q4_1 GGUF), 576-d float32.",
        "",
        "**Kit vocabulary (exact rule).** Candidates are the SmolLM2 tokens `Ġ` + *w* with *w* "
        f"matching `[A-Za-z]+` (whole words after a space; {raw['word_start_tokens']} tokens), "
        f"ranked by {raw['vocab_rule']}; the kit of size n takes the first n. Case variants "
        "(`Ġthe`, `ĠThe`, `ĠTHE`) are separate entries. Keys are the token strings exactly as "
        "`tokenizer.tokenize()` returns them (`Ġword`), which is what `perturb()` looks up: its "
        "leading-`' '` strip never fires for byte-level BPE, so `word`-style keys would never "
        "hit. Perturbed tokens are kit keys, so `convert_tokens_to_ids`/`decode` keep the "
        "spacing. A word at the very start of a text is tokenised without `Ġ` and skips.",
        "",
        "### Kit build (fresh child process per n)",
        "",
        "| n words | `make_inferdpt_kit_param` s | `InferDPTKit()` s | total s | peak RSS | "
        "RSS before build | n×n similarity table |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in raw["builds"]:
        if b.get("skipped"):
            lines.append(
                f"| {b['n']} | not run | | | ≈ {b['predicted_peak_mib'] / 1024:.1f} GiB "
                "(extrapolated a + b·n²) | | |"
            )
        elif b.get("failed"):
            lines.append(f"| {b['n']} | failed: {b['failed'][-80:]!r} | | | | | |")
        else:
            lines.append(
                f"| {b['n']} | {b['param_s']:.1f} | {b['init_s']:.3f} | {b['build_s']:.1f} | "
                f"{b['peak_rss_mib'] / 1024:.2f} GiB | {b['rss_before_build_mib']:.0f} MiB | "
                f"{b['similarity_table_mib']:.0f} MiB ({b['embedding_dtype']}) |"
            )
    lines += [
        "",
        "Peak RSS is the child's `VmHWM` (interpreter, numpy, tokenizer and inputs "
        "included; `getrusage().ru_maxrss` is in the raw JSON but is not used: on Linux a "
        "spawned child inherits the parent's high-water mark, here the parent holding the "
        "model, so it cannot go below ≈ 0.6 GiB). The similarity matrix has the embeddings' dtype "
        "(float32 here); most of the memory is the per-token sorted lists of n Python `str` and "
        "n Python `float` objects that `create_sorted_embedding_matrix` keeps (2·n² objects).",
    ]
    exp = raw.get("experiments")
    if not exp:
        return "\n".join(lines)
    n = raw["experiments_n"]
    cq = exp["cqa"]
    lines += [
        "",
        f"### Perturbation throughput (kit n = {n}, first {cq['texts']} CQA test questions)",
        "",
        "| ε | tokens | seconds | tokens/s | tokens skipping the mechanism | texts unchanged |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for eps in t_eps:
        r = cq["runs"][str(eps)]
        lines.append(
            f"| {eps:g} | {cq['tokens']} | {r['seconds']:.1f} | {r['tok_per_s']:.0f} | "
            f"{pct(cq['skipped_tokens'], cq['tokens'])} | {r['unchanged_texts']} |"
        )
    rec = exp["records"]
    outside = rec["span_outside_kit"]
    head = "| kind | spans | all tokens outside kit | " + " | ".join(
        f"leaked ε={e:g}" for e in l_eps
    )
    lines += [
        "",
        "Tokens count as `len(tokenizer.tokenize(text))`; `numpy.random.seed(0)` before each "
        "run. A token skips when `kit.token_to_vector_dict.get(token)` is `None`, exactly the "
        "test in `perturb()`; skipped tokens are copied to the output unchanged.",
        "",
        f"### Verbatim leakage ({rec['texts']} synthetic private records, kit n = {n})",
        "",
        f"Tokens skipping the mechanism: {pct(rec['skipped_tokens'], rec['tokens'])} of "
        f"{rec['tokens']}. A span leaks when its exact annotated text is a substring of the "
        "perturbed record (short spans such as a 2-digit age can also match by chance "
        "elsewhere).",
        "",
        head + " |",
        "|---|---:|---:|" + "---:|" * len(l_eps),
    ]
    for kind in (None, *KINDS):
        idx = [
            (i, j)
            for i, r in enumerate(records)
            for j, sp in enumerate(r["spans"])
            if kind is None or sp["kind"] == kind
        ]
        if not idx:
            continue
        cells = [
            pct(sum(rec["runs"][str(e)]["leaked"][i][j] for i, j in idx), len(idx)) for e in l_eps
        ]
        label = "**all**" if kind is None else kind
        lines.append(
            f"| {label} | {len(idx)} | {pct(sum(outside[i][j] for i, j in idx), len(idx))} | "
            + " | ".join(cells)
            + " |"
        )
    # Leakage split by whether the mechanism touched the span at all.
    lines += [
        "",
        "Split by coverage (all kinds):",
        "",
        "| spans | count | " + " | ".join(f"leaked ε={e:g}" for e in l_eps) + " |",
        "|---|---:|" + "---:|" * len(l_eps),
    ]
    for label, want in (("all tokens outside kit", True), ("≥ 1 token in kit", False)):
        idx = [
            (i, j)
            for i, r in enumerate(records)
            for j in range(len(r["spans"]))
            if outside[i][j] == want
        ]
        cells = [
            pct(sum(rec["runs"][str(e)]["leaked"][i][j] for i, j in idx), len(idx)) for e in l_eps
        ]
        lines.append(f"| {label} | {len(idx)} | " + " | ".join(cells) + " |")
    e0 = l_eps[0]
    covered_leaks = [
        (i, j)
        for i, r in enumerate(records)
        for j in range(len(r["spans"]))
        if not outside[i][j] and rec["runs"][str(e0)]["leaked"][i][j]
    ]
    repeated = sum(
        records[i]["question"].count(records[i]["spans"][j]["text"]) > 1 for i, j in covered_leaks
    )
    lines += [
        "",
        "The substring test counts any occurrence of the span text. Of the "
        f"{len(covered_leaks)} spans with kit tokens that leaked at ε={e0:g}, {repeated} have "
        "text that occurs more than once in the record, e.g. a first name that also opens the "
        "record, where it is tokenised without `Ġ` (`Tom`+`Ã¡s`) and skips, while the later "
        "`ĠTom` is in the kit; the others occur once, so the mechanism's draws reproduced them.",
    ]
    lines += [
        "",
        "### Skip rates under other kit vocabularies (same lookup, no kit needed)",
        "",
        "| kit vocabulary | entries | CQA tokens skipping | record tokens skipping | "
        "record spans fully outside |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in raw["sensitivity"].items():
        lines.append(
            f"| {name} | {s['entries']} | {pct(*s['cqa_skip'])} | {pct(*s['records_skip'])} | "
            f"{pct(*s['spans_outside'])} |"
        )
    ex_rec = records[0]["question"]
    lines += [
        "",
        "Example (record 0):",
        "",
        f"- original: `{ex_rec}`",
        *(f"- ε={e:g}: `{rec['runs'][str(e)]['examples'][0]}`" for e in l_eps),
        "",
        "Caveats: numbers were taken on a shared 2-core machine while other jobs were running, "
        "so times are indicative only; memory is per process and not affected. "
        f"Kit sizes beyond the largest measured one are extrapolated only where marked. Sizes: "
        f"{n_cqa} CQA questions, {len(records)} records (`generate_private_records(n, seed=0)`).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
