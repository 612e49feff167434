"""FedCoT-A against FedCoT-E: detector recall, false positives, attacks, kept words, speed.

Data: the generated private records (``pii``, 200); the hand-annotated independent set
(tests/privacy/data/pii_independent_*.jsonl, 120 texts; its misses were studied while the detector
was developed, so it is a development set now); the held-out set
(tests/privacy/data/pii_heldout_c.jsonl, 60 texts written afterwards and never used for tuning).

1. Detector unit recall per type on both sets; the share of CQA and e-SNLI units flagged.
2. Per strategy (FedCoT-A at defaults; FedCoT-E ε = 3), each prompt perturbed alone, with OS
   entropy (the default) and with seed 0 (the old default): sensitive word and number units
   reaching the server as they were, and top-1 recovery against 10-candidate lists by the
   nearest-neighbour, Bayes, seed-replay (the attacker assumes seed 0) and contextual
   (Gemma-3-270M scores the candidates) attacks; chance is 1 / list size.
3. Share of non-sensitive words kept; warm perturbation throughput on 300 CQA questions.

    python bench/privacy_threats.py [--targets 300] [--contextual 120] [--skip-contextual]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from _common import ROOT, SHARED, write_section

warnings.simplefilter("ignore", UserWarning)


def datasets() -> dict[str, list]:
    from fedcot.data import generate_private_records
    from fedcot.privacy.annotated import from_records, load_annotated

    recs = generate_private_records(200, 0)
    data = ROOT / "tests" / "privacy" / "data"
    return {
        "generated records": from_records(
            [r.question for r in recs], [r.meta["spans"] for r in recs]
        ),
        "independent set": [
            t for f in sorted(data.glob("pii_independent_*.jsonl")) for t in load_annotated(f)
        ],
        "held-out set": load_annotated(data / "pii_heldout_c.jsonl"),
    }


def recall_section(sets: dict[str, list]) -> str:
    from fedcot.privacy.annotated import detector_recall, flag_rate
    from fedcot.privacy.evaluate import load_texts
    from fedcot.privacy.sensitivity import SensitivityDetector

    det = SensitivityDetector()
    reports = {name: detector_recall(det, items) for name, items in sets.items()}
    kinds = sorted({k for r in reports.values() for k in r.units})
    lines = [
        "| type | " + " | ".join(f"{n}: units, recall, type right" for n in reports) + " |",
        "|---|" + "---|" * len(reports),
    ]
    for k in [*kinds, None]:
        cells = []
        for rep in reports.values():
            n = rep.units[k] if k else sum(rep.units.values())
            cells.append(
                f"{n}, {100 * rep.recall(k):.1f} %, {100 * rep.type_accuracy(k):.1f} %"
                if n
                else "–"
            )
        lines.append(f"| {k or '**all**'} | " + " | ".join(cells) + " |")
    fp = []
    for task in ("cqa", "esnli"):
        texts, _, _ = load_texts(task, limit=300)
        rate, types = flag_rate(det, texts)
        top = ", ".join(f"{t} {c}" for t, c in types.most_common(5))
        fp.append(f"- {task.upper()} (300 test questions): {100 * rate:.2f} % of units ({top})")
    missed = reports["held-out set"].missed
    sample = ", ".join(f"{k}:{u}" for _, k, u in missed[:25])
    return (
        "\n".join(lines)
        + "\n\nUnits flagged on ordinary text (false positives):\n\n"
        + "\n".join(fp)
        + f"\n\nMissed units of the held-out set ({len(missed)}; first 25): {sample}\n"
    )


def threat_section(sets: dict[str, list], targets: int, contextual: int | None) -> tuple[str, list]:
    from fedcot.privacy.perturb import PerturbConfig, Perturber
    from fedcot.privacy.space import EmbeddingSpace
    from fedcot.privacy.threats import run_threats
    from fedcot.privacy.utility import get_encoder

    encoder = get_encoder()
    space = EmbeddingSpace.from_model("smollm2-135m-instruct")
    bases = {
        "FedCoT-A (defaults)": Perturber.from_config(PerturbConfig(), space),
        "FedCoT-E ε = 3": Perturber.from_config(
            PerturbConfig(strategy="exponential", epsilon=3.0), space
        ),
    }
    backend = None
    if contextual:
        from fedcot.models.backends import make_backend

        backend = make_backend("transformers", "gemma3-270m", batch_size=8)
    rows = []
    lines = [
        "| data | strategy | randomness | decoys | targets | chance | missed words / numbers | "
        "repeated in stand-in / numbers drawn equal | NN | Bayes | seed replay | contextual | "
        "non-sensitive words kept | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data, items in sets.items():
        sources = [i.text for i in items]
        spans = [i.spans for i in items]
        for name, base in bases.items():
            for seed, same_layout in ((None, False), (0, False), (None, True)):
                t0 = time.perf_counter()
                use_llm = backend if seed is None else None
                row = run_threats(
                    name, 3.0, sources, spans, base.with_seed, encoder=encoder, seed=seed,
                    max_targets=(contextual if use_llm else targets), backend=use_llm,
                    same_layout=same_layout,
                )  # fmt: skip
                secs = time.perf_counter() - t0
                rows.append({"data": data, **row.to_dict(), "seconds": secs})
                ctx = f"{100 * row.contextual:.1f} %" if row.contextual is not None else "–"
                lines.append(
                    f"| {data} | {name} | {row.seed} | {row.decoys} | {row.targets} "
                    f"| {100 * row.chance:.1f} % "
                    f"| {100 * row.missed_words:.1f} % / {100 * row.missed_numbers:.1f} % "
                    f"| {100 * row.repeated_words:.1f} % / {100 * row.same_numbers:.1f} % "
                    f"| {100 * row.nn:.1f} % | {100 * row.bayes:.1f} % "
                    f"| {100 * (row.replay or 0):.1f} % | {ctx} | {100 * row.kept_words:.1f} % "
                    f"| {secs:.0f} |"
                )
    return "\n".join(lines) + "\n", rows


def speed_section() -> str:
    from fedcot.data import get_task, load_dataset
    from fedcot.privacy.perturb import PerturbConfig, Perturber
    from fedcot.privacy.units import split_units

    qs = [
        e.question
        for e in load_dataset(SHARED, get_task("cqa"), "test", limit=300, rationales=False)
    ]
    n = sum(u.private for q in qs for u in split_units(q))
    p = Perturber.from_config(PerturbConfig())
    times = []
    for _ in range(4):
        t = time.perf_counter()
        p.perturb(qs)
        times.append(time.perf_counter() - t)
    return (
        f"FedCoT-A at defaults on 300 CQA questions ({n} units): cold {n / times[0]:,.0f} "
        f"units/s, warm {n / min(times[1:]):,.0f} units/s (best of 3 passes).\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=300)
    ap.add_argument("--contextual", type=int, default=120)
    ap.add_argument("--skip-contextual", action="store_true")
    ap.add_argument("--quiet-machine", default="yes", help="was the machine otherwise idle?")
    args = ap.parse_args()
    sets = datasets()
    t0 = time.perf_counter()
    recall = recall_section(sets)
    threats, rows = threat_section(
        sets, args.targets, None if args.skip_contextual else args.contextual
    )
    speed = speed_section()
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "privacy_threats.json").write_text(json.dumps(rows, indent=2))
    body = (
        f"Machine otherwise idle: {args.quiet_machine}. "
        f"Whole run {time.perf_counter() - t0:.0f} s.\n\n"
        "### Detector unit recall (any sensitive type) and type accuracy\n\n" + recall
        + "\n### Attacks against 10-candidate lists (top-1; chance = 1 / list size)\n\n"
        "Each prompt perturbed alone. *Missed*: annotated word / number units that no draw "
        "replaced (detector misses: they reach the server as written). *Repeated in "
        "stand-in*: replaced, but the same token is inside the stand-in (an organisation's "
        "kind word such as \"Hospital\", a URL's \"https\", a month name drawn again); "
        "*numbers drawn equal*: the mechanism drew the same value. Seed replay: the attacker "
        "assumes seed 0. *Decoys*: the nine other candidates share the value's type, or "
        "its type and layout (its shape of letters, digits and separators, an "
        "organisation's kind word: what FedCoT-A discloses), so the second kind measures "
        "what leaks beyond the disclosure; numbers are metric-DP, their decoys only share "
        "the type. "
        "Contextual: Gemma-3-270M scores \"The original … was <candidate>\" for each "
        "candidate, on a sub-sample (OS-entropy runs only).\n\n" + threats
        + "\n### Throughput\n\n" + speed
    )  # fmt: skip
    write_section("privacy-threats", "Privacy: FedCoT-A against FedCoT-E (issue 12)", body)
    print(body)


if __name__ == "__main__":
    main()
