"""``fedcot serve`` under load: N concurrent clients against a tiny random model.

python bench/serve_load.py                     # 32 clients, 60 s, max_tokens 8
python bench/serve_load.py --clients 8 --seconds 20
python bench/serve_load.py --report-only       # rewrite the docs section from the JSON

1. A tiny random 2-layer Llama (tests/tiny_models.py ``make_tiny_lm``) is saved to a temp
   folder and served with ``python -m fedcot serve --max-batch 32 --batch-wait-ms 10``.
2. N asyncio clients send back-to-back ``/v1/completions`` requests, each with a prompt
   used once, greedy, for ``--seconds``; no request is issued after the deadline and the
   ones in flight are awaited.
3. Latency, throughput and failures are recorded; the audit log is checked for every
   prompt sent (lost / duplicated); ``/metrics`` gives the backend calls and their size.
4. The same model in-process (``TransformersBackend.generate``) in batches of the mean
   server batch and of 32 gives the backend-alone throughput.
5. The server is stopped with SIGTERM and must exit with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import httpx

from fedcot.procs import Child

from _common import ROOT, write_section

OUT = ROOT / "bench" / "out" / "serve_load"
STORE = OUT / "serve_load.json"
KEY = "sk-bench-serve-load"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BATCH = 32
BATCH_WAIT_MS = 10
REQUEST_TIMEOUT_S = 30.0
BACKEND_SECONDS = 10.0  # per batch size (two sizes: about 20 s in all)
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "FEDCOT_PROGRESS": "0",
}
os.environ.update({k: ENV[k] for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")})


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def prompt_for(client: int, request: int) -> str:
    return f"client {client} request {request}: the quick brown fox"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_total() -> tuple[int, int]:
    """(all jiffies, idle jiffies) of the machine, from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)


def busy_pct(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Share of all cores busy between two ``cpu_total`` readings, in %."""
    return 100.0 * (1 - (b[1] - a[1]) / max(1, b[0] - a[0]))


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def procs_snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds so far) of every process."""
    snap: dict[int, tuple[str, float]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                text = (d / "stat").read_text()
                comm = text[text.index("(") + 1 : text.rindex(")")]
                fields = text.rsplit(")", 1)[1].split()
                snap[int(d.name)] = (comm, (int(fields[11]) + int(fields[12])) / _TCK)
    return snap


_TCK = os.sysconf("SC_CLK_TCK")


def other_cpu(before: dict, after: dict, wall: float, ours: set[int]) -> list[dict]:
    """Processes other than ``ours`` that used over 2 % of a core between two snapshots."""
    rows = []
    for pid, (comm, cpu) in after.items():
        if pid in ours:
            continue
        used = cpu - before.get(pid, (comm, 0.0))[1]
        if used / wall > 0.02:
            rows.append({"pid": pid, "comm": comm, "cpu_s": used, "core_pct": 100 * used / wall})
    return sorted(rows, key=lambda r: -r["cpu_s"])


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def save_tiny_model(folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_tiny_lm

    model, tok = make_tiny_lm(seed=1, chat=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


# --------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------


class Server:
    def __init__(self, model_dir: Path, audit: Path, port: int) -> None:
        self.cmd = [
            sys.executable, "-m", "fedcot", "serve",
            "--model", str(model_dir), "--served-model-name", "tiny",
            "--port", str(port), "--api-key", KEY, "--audit-log", str(audit),
            "--max-batch", str(MAX_BATCH), "--batch-wait-ms", str(BATCH_WAIT_MS),
            "--log-level", "warning",
        ]  # fmt: skip
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + "/v1"
        self.audit = audit
        t0 = time.perf_counter()
        self.child = Child(self.cmd, env=ENV, cwd=ROOT)
        self.proc, self.lines = self.child.proc, self.child.lines
        self._wait_healthy(timeout=120)
        self.startup_s = time.perf_counter() - t0

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.root + "/health", timeout=5).status_code == 200:
                    return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("fedcot serve did not become healthy:\n" + "".join(self.lines))

    def metrics(self) -> dict:
        r = httpx.get(self.root + "/metrics", headers=AUTH, timeout=10)
        r.raise_for_status()
        return r.json()

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM (SIGKILL after ``timeout``); (exit status, seconds to exit)."""
        t0 = time.perf_counter()
        rc = self.child.stop(timeout=timeout)
        return rc, time.perf_counter() - t0

    def kill(self) -> None:
        self.child.stop(signal.SIGKILL)


# --------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------


async def _load(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    sent: list[str] = []
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    completion_tokens = 0
    prompt_tokens = 0
    finish: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)

    async with httpx.AsyncClient(base_url=url, headers=AUTH, limits=limits, timeout=timeout) as ac:
        t_start = time.perf_counter()
        deadline = t_start + seconds

        async def client(c: int) -> None:
            nonlocal completion_tokens, prompt_tokens
            i = 0
            while time.perf_counter() < deadline:
                prompt = prompt_for(c, i)
                i += 1
                sent.append(prompt)
                body = {
                    "model": "tiny",
                    "prompt": prompt,
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                t0 = time.perf_counter()
                try:
                    r = await ac.post("/completions", json=body)
                except Exception as exc:  # counted, the client goes on
                    exceptions[type(exc).__name__] += 1
                    continue
                dt = time.perf_counter() - t0
                statuses[str(r.status_code)] += 1
                if r.status_code == 200:
                    latencies.append(dt)
                    d = r.json()
                    completion_tokens += d["usage"]["completion_tokens"]
                    prompt_tokens += d["usage"]["prompt_tokens"]
                    finish[d["choices"][0]["finish_reason"]] += 1

        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - t_start

    served = statuses.get("200", 0)
    return {
        "wall_s": wall,
        "sent": len(sent),
        "served": served,
        "failed": len(sent) - served,
        "failed_by_status": {k: v for k, v in statuses.items() if k != "200"},
        "failed_by_exception": dict(exceptions),
        "latency_s": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None,
            "mean": sum(latencies) / len(latencies) if latencies else None,
        },
        "requests_per_s": served / wall,
        "completion_tokens": completion_tokens,
        "prompt_tokens": prompt_tokens,
        "completion_tokens_per_s": completion_tokens / wall,
        "finish_reasons": dict(finish),
        "prompts": sent,
    }


def audit_check(audit: Path, sent: list[str]) -> dict:
    recs = [json.loads(x) for x in audit.read_text(encoding="ascii").splitlines() if x.strip()]
    comp = [r for r in recs if r.get("route") == "/v1/completions"]
    seen = Counter(r.get("prompt") for r in comp)
    sent_set = set(sent)
    return {
        "records": len(recs),
        "completion_records": len(comp),
        "completion_records_200": sum(1 for r in comp if r.get("status") == 200),
        "sent_unique": len(sent_set),
        "sent_duplicates": len(sent) - len(sent_set),
        "lost": sum(1 for p in sent_set if seen[p] == 0),
        "duplicated": sum(1 for p in sent_set if seen[p] > 1),
        "unexpected": sum(n for p, n in seen.items() if p not in sent_set),
    }


# --------------------------------------------------------------------------------------
# Backend alone
# --------------------------------------------------------------------------------------


def backend_alone(model_dir: Path, sizes: list[int], seconds: float, max_tokens: int) -> list:
    from fedcot.models.backends.base import GenerationParams
    from fedcot.models.backends.transformers import TransformersBackend

    params = GenerationParams(max_new_tokens=max_tokens, temperature=0)
    rows = []
    for b in sizes:
        be = TransformersBackend.from_pretrained(str(model_dir), batch_size=b)
        be.generate([prompt_for(999, 0)], params)  # warm-up
        n = calls = toks = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            prompts = [prompt_for(1000 + calls, i) for i in range(b)]
            out = be.generate(prompts, params)
            n += len(out)
            toks += sum(c.completion_tokens for c in out)
            calls += 1
        dt = time.perf_counter() - t0
        rows.append(
            {
                "batch": b,
                "calls": calls,
                "prompts": n,
                "seconds": dt,
                "prompts_per_s": n / dt,
                "completion_tokens_per_s": toks / dt,
                "ms_per_call": 1000 * dt / calls,
            }
        )
        print(f"backend alone, batch {b}: {n / dt:.1f} prompts/s ({calls} calls)", flush=True)
    return rows


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    loadavg_start = os.getloadavg()
    snap0, tot0 = procs_snapshot(), cpu_total()
    time.sleep(2.0)
    snap1, tot1 = procs_snapshot(), cpu_total()
    busy_before = busy_pct(tot0, tot1)
    others_before = other_cpu(snap0, snap1, 2.0, {os.getpid()})
    print(
        f"load average {loadavg_start}, CPU busy in the 2 s before start {busy_before:.0f} %, "
        f"other processes: {others_before}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="fedcot-serve-load-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir = tmp / "model"
        save_tiny_model(model_dir)
        audit = tmp / "audit.jsonl"
        server = Server(model_dir, audit, free_port())
        print(f"server healthy after {server.startup_s:.1f} s at {server.url}", flush=True)
        try:
            # Warm-up (not counted in the load numbers; its prompts are checked in the audit).
            warm = [f"warm-up {i}: the quick brown fox" for i in range(4)]
            for p in warm:
                r = httpx.post(
                    server.url + "/completions",
                    json={"model": "tiny", "prompt": p, "max_tokens": args.max_tokens},
                    headers=AUTH,
                    timeout=REQUEST_TIMEOUT_S,
                )
                r.raise_for_status()
            m0 = server.metrics()
            srv_cpu0, cli_cpu0 = proc_cpu_s(server.proc.pid), self_cpu_s()
            snap0, tot0 = procs_snapshot(), cpu_total()
            print(f"{args.clients} clients for {args.seconds:.0f} s ...", flush=True)
            load = asyncio.run(_load(server.url, args.clients, args.seconds, args.max_tokens))
            srv_cpu1, cli_cpu1 = proc_cpu_s(server.proc.pid), self_cpu_s()
            snap1, tot1 = procs_snapshot(), cpu_total()
            busy_during = busy_pct(tot0, tot1)
            others_during = other_cpu(snap0, snap1, load["wall_s"], {os.getpid(), server.proc.pid})
            m1 = server.metrics()
            loadavg_end = os.getloadavg()
        finally:
            rc, stop_s = server.terminate()
        stopped_line = any("fedcot serve: stopped" in x for x in server.lines)
        print(f"server exit status {rc} after {stop_s:.2f} s", flush=True)
        sent = load.pop("prompts")
        audit_res = audit_check(audit, warm + sent)
        batches = m1["batches"] - m0["batches"]
        prompts_in_batches = m1["prompts"] - m0["prompts"]
        mean_batch = prompts_in_batches / batches if batches else 0.0
        metrics = {
            "before": m0,
            "after": m1,
            "batches": batches,
            "prompts": prompts_in_batches,
            "mean_prompts_per_batch": mean_batch,
            "requests": m1["requests"] - m0["requests"],
            "errors": m1["errors"] - m0["errors"],
            "backend_errors": m1["backend_errors"] - m0["backend_errors"],
            "largest_batch": m1["largest_batch"],
        }
        sizes = sorted({max(1, round(mean_batch)), MAX_BATCH})
        alone = backend_alone(model_dir, sizes, BACKEND_SECONDS, args.max_tokens)
    load_wall = load["wall_s"]
    data = {
        "argv": sys.argv[1:],
        "clients": args.clients,
        "seconds": args.seconds,
        "max_tokens": args.max_tokens,
        "max_batch": MAX_BATCH,
        "batch_wait_ms": BATCH_WAIT_MS,
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "cores": os.cpu_count(),
        "loadavg_start": list(loadavg_start),
        "loadavg_end": list(loadavg_end),
        "cpu_busy_before_pct": busy_before,
        "other_processes_before": others_before,
        "cpu_busy_during_pct": busy_during,
        "other_processes_during": others_during,
        "server_startup_s": server.startup_s,
        "load": load,
        "cpu_s": {
            "server": None if srv_cpu0 is None or srv_cpu1 is None else srv_cpu1 - srv_cpu0,
            "clients": cli_cpu1 - cli_cpu0,
            "wall": load_wall,
        },
        "audit": audit_res,
        "metrics": metrics,
        "backend_alone": alone,
        "shutdown": {"exit_status": rc, "seconds": stop_s, "stopped_line": stopped_line},
        "server_output_tail": "".join(server.lines)[-3000:],
    }
    STORE.write_text(json.dumps(data, indent=2))
    return data


def fmt_ms(x: float | None) -> str:
    return "–" if x is None else f"{1000 * x:.0f} ms"


def report(d: dict) -> None:
    ld, au, me, cpu = d["load"], d["audit"], d["metrics"], d["cpu_s"]
    alone = {r["batch"]: r for r in d["backend_alone"]}
    mean_b = me["mean_prompts_per_batch"]
    b_mean = max(1, round(mean_b))
    share = {b: ld["requests_per_s"] / r["prompts_per_s"] for b, r in alone.items()}
    fails = {**ld["failed_by_status"], **ld["failed_by_exception"]}
    fail_txt = ", ".join(f"{k}: {v}" for k, v in fails.items()) or "none"
    sd = d["shutdown"]
    lat = {k: fmt_ms(v) for k, v in ld["latency_s"].items()}
    rows = [
        (
            "requests sent / served (200) / failed",
            f"{ld['sent']} / {ld['served']} / {ld['failed']} ({fail_txt})",
        ),
        (
            "latency p50 / p90 / p99 (max)",
            f"{lat['p50']} / {lat['p90']} / {lat['p99']} ({lat['max']})",
        ),
        (
            "throughput",
            f"{ld['requests_per_s']:.1f} requests/s, "
            f"{ld['completion_tokens_per_s']:.0f} generated tokens/s "
            f"({ld['completion_tokens']} tokens in {ld['wall_s']:.1f} s)",
        ),
        (
            "audit log: lost / duplicated prompts",
            f"{au['lost']} / {au['duplicated']} of {au['sent_unique']} sent "
            f"({au['completion_records']} completion records, {au['unexpected']} unexpected)",
        ),
        (
            "`/metrics`: backend calls, mean prompts per call",
            f"{me['batches']} calls, {mean_b:.1f} prompts per call (largest {me['largest_batch']})",
        ),
    ]
    for b in sorted(alone):
        r = alone[b]
        label = f"mean batch {b}" if b == b_mean and b != d["max_batch"] else f"batch {b}"
        if b == b_mean and b == d["max_batch"]:
            label = f"batch {b} (= mean batch)"
        rows.append(
            (
                f"backend alone, {label}",
                f"{r['prompts_per_s']:.1f} prompts/s ({r['ms_per_call']:.0f} ms per call); "
                f"server reaches {100 * share[b]:.0f} %",
            )
        )
    rows.append(
        (
            "SIGTERM",
            f"exit status {sd['exit_status']} after {sd['seconds']:.1f} s"
            + (" ('fedcot serve: stopped' printed)" if sd["stopped_line"] else ""),
        )
    )
    table = "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    la = d["loadavg_start"]

    def others(rows: list[dict]) -> str:
        if not rows:
            return "none above 2 % of a core"
        return ", ".join(f"{r['comm']} ({r['core_pct']:.0f} % of a core)" for r in rows[:5])

    sizes = ", ".join(str(b) for b in sorted(alone))
    setup = (
        "Setup: a tiny random 2-layer Llama (hidden size 32, 400-token BPE vocabulary; "
        "`make_tiny_lm` of `tests/tiny_models.py`) saved as a transformers folder and served "
        f"by `python -m fedcot serve --max-batch {d['max_batch']} "
        f"--batch-wait-ms {d['batch_wait_ms']}` with an API key and an audit log. "
        f"{d['clients']} asyncio clients (one `httpx.AsyncClient`, one keep-alive connection "
        f"each) in one process on the same {d['cores']}-core machine sent back-to-back "
        f"`/v1/completions` requests for {d['seconds']:.0f} s, each with its own prompt "
        f'("client 7 request 123: the quick brown fox"), `max_tokens` {d["max_tokens"]}, '
        f"temperature 0, a {d['request_timeout_s']:.0f} s timeout per request; after the "
        "deadline no request was issued and those in flight were awaited (throughput is over "
        "that whole time, drain included). 4 warm-up requests before the run are not in the "
        "numbers (their prompts are checked in the audit log too). Backend alone: "
        "`TransformersBackend.generate` on the same folder in the benchmark process, "
        f"batches of {sizes} prompts for about {BACKEND_SECONDS:.0f} s each, after the server "
        f"had stopped. Load average at start {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} "
        "(1 / 5 / 15 min, trailing averages that include whatever ran in the minutes before); "
        f"in the 2 s before, {d['cpu_busy_before_pct']:.0f} % of the CPU "
        f"was busy, other processes: {others(d['other_processes_before'])}; during the run, "
        f"other processes: {others(d['other_processes_during'])}."
    )
    wall = cpu["wall"]
    srv = cpu["server"]
    srv_txt = (
        ""
        if srv is None
        else f"the server process used {srv:.0f} CPU-s ({srv / wall:.2f} cores on average), "
    )
    busy_txt = ""
    if b_mean in alone and me["batches"]:
        est = me["batches"] * alone[b_mean]["ms_per_call"] / 1000
        busy_txt = (
            f"At the backend-alone time per call of {b_mean} prompts, the server's "
            f"{me['batches']} backend calls account for about {est:.0f} s of the "
            f"{wall:.0f} s (an estimate)"
            + (
                ": most of the server's time goes to the rest of the request path. "
                if est < 0.5 * wall
                else ". "
            )
        )
    notes = (
        "Notes: the model is so small that a forward pass costs little, so these numbers "
        "measure the serving path (HTTP, JSON, one fsynced audit-log line per request, "
        "micro-batching, tokenisation), not a model. Clients and server share the "
        f"{d['cores']} cores ({d['cpu_busy_during_pct']:.0f} % busy during the run): "
        f"{srv_txt}the client process {cpu['clients']:.0f} CPU-s "
        f"({cpu['clients'] / wall:.2f} cores) in {wall:.0f} s of wall time; a server with the "
        "machine to itself would do somewhat better. "
        + busy_txt
        + "The backend-alone figure has no HTTP, "
        "no clients and no audit log, so the share of it that the server reaches is the cost "
        "of serving a model this cheap; with a real model the backend call takes longer and "
        "the share should be higher (not measured here). Text generated from random weights "
        "is meaningless; finish reasons: "
        + ", ".join(f"{k} {v}" for k, v in ld["finish_reasons"].items())
        + "."
    )

    def fill(t: str) -> str:
        return textwrap.fill(t, width=92, break_long_words=False, break_on_hyphens=False)

    body = f"{table}\n\n{fill(setup)}\n\n{fill(notes)}\n"
    write_section(
        "serve-load", f"`fedcot serve` under load: {d['clients']} concurrent clients", body
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not args.report_only:
        run(args)
    data = json.loads(STORE.read_text())
    sys.argv[1:] = data.get("argv", [])  # the docs name the command that measured them
    report(data)


if __name__ == "__main__":
    main()
