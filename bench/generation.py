"""Generation throughput (completion tokens per second) of each backend, batch 1 and 8.

Same 8 prompts (CQA test questions), greedy, 64 new tokens, no stop strings.
- transformers: in-process, ``batch_size`` 1 and 8;
- llamacpp: llama-cpp-python on the same GGUF file (sequential; "batch 8" = 8 prompts in one call);
- openai: the HTTP client against llama-cpp-python's OpenAI-compatible server on 127.0.0.1,
  concurrency 1 and 8.
Backends whose optional package is missing are reported as skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from fedcot.data import get_task, load_dataset
from fedcot.models.backends import GenerationParams
from fedcot.models.registry import EMBEDDED

from _common import SHARED, write_section

PARAMS = GenerationParams(max_new_tokens=64)
MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


def prompts_for(chat: bool) -> list:
    """Plain continuation prompts, so every model writes the full budget (chat answers to
    multiple-choice questions stop after a few tokens and would measure prompt processing)."""
    del chat
    task = get_task("cqa")
    exs = load_dataset(SHARED, task, "test", limit=8, rationales=False)
    return [
        f"{task.input_text(ex)}\nExplain your reasoning in detail before answering:\n" for ex in exs
    ]


def measure(backend, prompts) -> tuple[float, int]:
    backend.generate(prompts[:1], GenerationParams(max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    outs = backend.generate(prompts, PARAMS)
    dt = time.perf_counter() - t0
    toks = sum(c.completion_tokens for c in outs)
    return toks / dt, toks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    rows: list[tuple[str, str, str, str]] = []
    for name in MODELS:
        chat = EMBEDDED[name].chat
        prompts = prompts_for(chat)
        from fedcot.models.backends.transformers import TransformersBackend

        be = TransformersBackend.from_pretrained(name)
        for bs in (1, 8):
            be.batch_size = bs
            tps, toks = measure(be, prompts)
            rows.append((name, "transformers", str(bs), f"{tps:.1f} ({toks} tokens)"))
            print(rows[-1], toks, file=sys.stderr)
        del be

        gguf = str(EMBEDDED[name].gguf_path())
        if importlib.util.find_spec("llama_cpp") is None:
            rows.append((name, "llamacpp", "-", "skipped (llama-cpp-python not installed)"))
            continue
        from fedcot.models.backends.llamacpp import LlamaCppBackend

        lb = LlamaCppBackend(gguf, n_ctx=2048, n_threads=os.cpu_count())
        tps, toks = measure(lb, prompts)  # llama.cpp runs prompts one at a time
        rows.append((name, "llamacpp", "1 and 8 (sequential)", f"{tps:.1f} ({toks} tokens)"))
        print(rows[-1], file=sys.stderr)
        lb.close()

        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                gguf,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                str(os.cpu_count()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/v1"
            for _ in range(120):
                try:
                    if httpx.get(url + "/models", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            from fedcot.models.backends.openai import OpenAIBackend

            for conc in (1, 8):
                ob = OpenAIBackend(url, name, max_concurrency=conc, api_key="none", chat=chat)
                tps, _ = measure(ob, prompts)
                rows.append(
                    (name, "openai → llama.cpp server", f"concurrency {conc}", f"{tps:.1f}")
                )
                print(rows[-1], file=sys.stderr)
                ob.close()
        finally:
            server.terminate()
            server.wait(timeout=30)

    body = ["| model | backend | batch | tok/s |", "|---|---|---|---:|"]
    body += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    body.append("")
    body.append(
        "8 CQA test questions as plain continuation prompts (same text for every backend), "
        "greedy, up to 64 new tokens; tok/s = completion tokens / wall time after one warm-up "
        "call. transformers "
        "runs the de-quantised float32 weights; llama.cpp runs the quantised GGUF itself."
    )
    write_section("generation", "Generation throughput per backend", "\n".join(body))
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
