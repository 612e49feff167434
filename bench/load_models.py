"""Load time (first = GGUF conversion, then cached) and peak memory of the embedded models.

Each load runs in a fresh interpreter so the peak memory is that load's alone. The first load
uses an empty FEDCOT_HOME so it includes the GGUF de-quantisation.
"""

from __future__ import annotations

import json
import sys
import tempfile

from _common import run_child, write_section

CHILD = r"""
import json, resource, time
t0 = time.perf_counter()
from fedcot.models.registry import load_model
import torch, transformers  # import cost is reported apart from the load
from transformers import AutoModelForCausalLM, AutoTokenizer
t_import = time.perf_counter() - t0
t1 = time.perf_counter()
model, tok = load_model({name!r})
t_load = time.perf_counter() - t1
n = sum(p.numel() for p in model.parameters())
del model, tok
t2 = time.perf_counter()
model, tok = load_model({name!r})  # again in the same process: no first-use imports
t_warm = time.perf_counter() - t2
print(json.dumps({{"import_s": t_import, "load_s": t_load, "warm_s": t_warm, "params": n,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for name in MODELS:
            env = {"FEDCOT_HOME": home, "HF_HUB_OFFLINE": "1", "FEDCOT_PROGRESS": "0"}
            first = json.loads(run_child(CHILD.format(name=name), env).strip().splitlines()[-1])
            cached = [
                json.loads(run_child(CHILD.format(name=name), env).strip().splitlines()[-1])
                for _ in range(3)
            ]
            best = min(cached, key=lambda r: r["load_s"])
            rows.append((name, first, best))
            print(name, first, best, file=sys.stderr)
    body = [
        "| model | params | first load (convert GGUF → cache) | peak RSS "
        "| cached load, fresh process (best of 3) | cached load, warm process | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, first, best in rows:
        body.append(
            f"| {name} | {first['params'] / 1e6:.0f} M | {first['load_s']:.1f} s | "
            f"{first['peak_mib']:.0f} MiB | {best['load_s']:.2f} s | {best['warm_s']:.2f} s | "
            f"{best['peak_mib']:.0f} MiB |"
        )
    body.append("")
    body.append(
        "Load time excludes `import torch, transformers` (about "
        f"{rows[0][2]['import_s']:.1f} s in a fresh interpreter) but includes transformers' "
        "first-use imports of the model and tokenizer classes; the warm column is a second "
        "load in the same process (model + tokenizer). Weights are float32 on CPU. Peak RSS "
        "of a fresh-process load includes both loads' transient copies."
    )
    write_section("load", "Embedded model load time and memory", "\n".join(body))


if __name__ == "__main__":
    main()
