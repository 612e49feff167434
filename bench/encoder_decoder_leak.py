"""How much does the PDSS encoder-decoder strategy leak? (It has no formal DP guarantee.)

The client model (smollm2-135m-instruct) is trained as encoder-decoder on PUBLIC generated
records (seed 99; the encode targets come from the exponential mechanism at ε = 3), then
encodes PRIVATE generated records (seed 0). Measured on what would be sent to the server:

- verbatim span leakage per kind (the attack suite's whole-match test, per record);
- sensitive-unit leakage: the share of a record's sensitive words/numbers that appear in its
  own encoded text;
- the same two numbers for the exponential mechanism at ε = 3 on the same records;
- how often the encoder produced nothing usable (placeholder, not sent).

The server that writes the public rationales is smollm2 itself here (the leakage is a
property of the encoder, not of the teacher).

    python bench/encoder_decoder_leak.py --public 48 --private 100 --steps 30
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from _common import ROOT, write_section

OUT = ROOT / "bench" / "out" / "encoder_decoder"


def _units(text: str) -> Counter:
    from fedcot.privacy.units import split_units

    return Counter(u.text for u in split_units(text) if u.kind in ("word", "number"))


def measure(records, texts) -> dict:
    from fedcot.privacy.attacks import verbatim_leakage
    from fedcot.privacy.units import split_units

    by_kind: Counter = Counter()
    total_kind: Counter = Counter()
    unit_hits = unit_total = 0
    for r, t in zip(records, texts):
        for sp in r.meta["spans"]:
            a, b = verbatim_leakage(r.question, t, [sp])
            by_kind[sp["kind"]] += a
            total_kind[sp["kind"]] += b
        seen = _units(t)
        for sp in r.meta["spans"]:
            for u in split_units(sp["text"]):
                if u.kind in ("word", "number") and len(u.text) >= 2:
                    unit_total += 1
                    unit_hits += seen[u.text] > 0
    return {
        "spans_leaked": sum(by_kind.values()),
        "spans": sum(total_kind.values()),
        "by_kind": {k: [by_kind[k], total_kind[k]] for k in sorted(total_kind)},
        "units_leaked": unit_hits,
        "units": unit_total,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--public", type=int, default=48)
    ap.add_argument("--private", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    result_file = OUT / "result.json"
    if not args.report_only:
        from fedcot.cot.cache import RationaleCache, ask_cached
        from fedcot.cot.encoder_decoder import UNAVAILABLE, EncoderDecoder, EncoderDecoderConfig
        from fedcot.cot.templates import fewshot_examples, server_prompt
        from fedcot.data.synthetic import generate_private_records
        from fedcot.data.tasks import get_task
        from fedcot.models.backends.base import GenerationParams
        from fedcot.models.backends.transformers import TransformersBackend
        from fedcot.models.registry import load_model
        from fedcot.privacy.perturb import PerturbConfig, Perturber

        task = get_task("private-records")
        public = generate_private_records(args.public, seed=99)
        private = generate_private_records(args.private, seed=0)
        server = TransformersBackend.from_pretrained("smollm2-135m-instruct", batch_size=16)
        shots = fewshot_examples(task, 2)
        params = GenerationParams(max_new_tokens=48)
        cache = RationaleCache(OUT / "server_cache.jsonl")

        def ask(texts):
            prompts = [server_prompt(task, t, chat=True, shots=shots) for t in texts]
            return [a.text for a in ask_cached(server, prompts, params, cache, batch_size=16)]

        cfg = EncoderDecoderConfig(
            public_limit=args.public,
            train={"max_steps": args.steps, "batch_size": 4, "learning_rate": 5e-4,
                   "max_length": 384},
        )  # fmt: skip
        model, tok = load_model("smollm2-135m-instruct")
        t0 = time.perf_counter()
        ed = EncoderDecoder.fit(
            model, tok, task, public, None, ask, cfg, OUT / "model", chat=True, progress=False
        )
        fit_s = time.perf_counter() - t0
        originals = [task.input_text(r) for r in private]
        t0 = time.perf_counter()
        encoded = ed.encode(originals)
        enc_s = time.perf_counter() - t0
        sent = [e for e in encoded if e != UNAVAILABLE]
        kept = [r for r, e in zip(private, encoded) if e != UNAVAILABLE]
        mech = Perturber.from_config(PerturbConfig(strategy="exponential", epsilon=3.0))
        perturbed = [p.text for p in mech.perturb(originals)]
        (OUT / "encoded.jsonl").write_text(
            "".join(
                json.dumps({"original": o, "encoded": e}) + "\n" for o, e in zip(originals, encoded)
            )
        )
        result = {
            "public": args.public,
            "private": args.private,
            "steps": args.steps,
            "fit_seconds": round(fit_s, 1),
            "encode_seconds": round(enc_s, 1),
            "unavailable": len(encoded) - len(sent),
            "stats": ed.stats_dict(),
            "encoder": measure(kept, sent),
            "exponential_eps3": measure(private, perturbed),
        }
        result_file.write_text(json.dumps(result, indent=2))
    r = json.loads(result_file.read_text())
    e, x = r["encoder"], r["exponential_eps3"]
    kinds = sorted(set(e["by_kind"]) | set(x["by_kind"]))
    rows = "\n".join(
        f"| {k} | {e['by_kind'].get(k, [0, 0])[0]}/{e['by_kind'].get(k, [0, 0])[1]} | "
        f"{x['by_kind'].get(k, [0, 0])[0]}/{x['by_kind'].get(k, [0, 0])[1]} |"
        for k in kinds
    )

    def pct(d: dict, a: str, b: str) -> str:
        return f"{d[a]}/{d[b]} ({100 * d[a] / max(1, d[b]):.1f} %)"

    body = f"""The encoder-decoder (smollm2-135m-instruct + LoRA, {r["steps"]} steps on \
{r["public"]} public generated records, encode targets from the exponential mechanism at ε = 3; fit
{r["fit_seconds"]} s) encoded {r["private"]} private generated records in
{r["encode_seconds"]} s; {r["unavailable"]} outputs were empty or copies after one re-sample
and were replaced by the placeholder (never sent).

| | encoder-decoder (no formal guarantee) | exponential mechanism, ε = 3 per unit |
|---|---:|---:|
| sensitive spans verbatim in the text sent about their record | \
{pct(e, "spans_leaked", "spans")} | {pct(x, "spans_leaked", "spans")} |
| sensitive words/numbers present in that text | \
{pct(e, "units_leaked", "units")} | {pct(x, "units_leaked", "units")} |

Verbatim spans by kind:

| kind | encoder-decoder | exponential ε = 3 |
|---|---:|---:|
{rows}
"""
    write_section("encdec-leak", "Encoder-decoder strategy: measured leakage", body)


if __name__ == "__main__":
    main()
