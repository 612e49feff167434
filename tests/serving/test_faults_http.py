"""Faults between the FedCoT client and a real ``fedcot serve`` process, over HTTP.

* the server is SIGKILLed in the middle of a run and restarted on the same port: the client
  rides it out with its retries and asks nothing twice that it already has;
* the client is SIGKILLed in the middle of a run: ``--resume`` asks only what is missing;
* no server at all: the client gives up after its retries, in bounded time, with a clear
  message (exit code 2, no traceback).

Everything listens on 127.0.0.1. Ports are OS-assigned (bind port 0, read it, release it) and
then passed to ``fedcot serve --port`` explicitly, since the restart must reuse the same one.
The models are tiny random ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedcot.cot.cache import RationaleCache
from fedcot.procs import stop_group

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-fedcot-faults"
KEY_ENV = "FEDCOT_FAULTS_KEY"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "FEDCOT_PROGRESS": "0",
    "PYTHONUNBUFFERED": "1",
    "COLUMNS": "400",  # rich must not wrap the error message (and its URL)
    KEY_ENV: KEY,
}
DISTILL = [sys.executable, "-m", "fedcot", "distill"]

pytestmark = pytest.mark.network


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(
    cond: Callable[[], bool],
    timeout: float,
    what: str,
    alive: tuple[subprocess.Popen, ...] = (),
    log: Path | None = None,
) -> None:
    """Poll ``cond`` until it holds; fail when it times out or a process in ``alive`` ends."""
    deadline = time.monotonic() + timeout
    problem = f"timed out waiting for {what}"
    while time.monotonic() < deadline:
        if cond():
            return
        ended = [p for p in alive if p.poll() is not None]
        if ended:
            problem = f"waiting for {what}: {ended[0].args[:4]} ended (exit {ended[0].returncode})"
            break
        time.sleep(0.02)
    pytest.fail(problem + ("\n" + log.read_text(errors="replace") if log else ""))


class Server:
    """``python -m fedcot serve`` with the tiny model on a given port, in its own session."""

    def __init__(self, model: Path, port: int, audit: Path, log: Path) -> None:
        self.port, self.audit, self.log = port, audit, log
        self.url = f"http://127.0.0.1:{port}/v1"
        cmd = [
            sys.executable, "-m", "fedcot", "serve",
            "--model", str(model), "--served-model-name", "tiny",
            "--port", str(port), "--api-key", KEY, "--audit-log", str(audit),
            "--max-tokens", "32", "--log-level", "warning",
            # Every request waits 300 ms for company: a run's requests are spread out in time
            # so that a kill lands in the middle of it.
            "--batch-wait-ms", "300",
        ]  # fmt: skip
        with log.open("wb") as f:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self) -> Server:
        """Wait for the line ``fedcot serve: tiny at URL`` (printed once it listens)."""
        _wait_for(
            lambda: f"at {self.url}" in self.log.read_text(errors="replace"),
            120,
            f"fedcot serve on port {self.port}",
            (self.proc,),
            self.log,
        )
        return self

    def metrics(self) -> dict[str, Any]:
        r = httpx.get(
            self.url.removesuffix("/v1") + "/metrics",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        return r.json()

    def kill(self) -> None:
        stop_group(self.proc, signal.SIGKILL)

    def stop(self) -> int:
        """SIGTERM (graceful: it drains), SIGKILL if that hangs; the exit status."""
        return stop_group(self.proc)


@contextlib.contextmanager
def _servers() -> Iterator[list[Server]]:
    """Collects the servers a test starts and stops whatever is still running at the end."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for s in started:
            s.stop()


def _write_config(
    path: Path,
    model: Path,
    url: str,
    out: Path,
    *,
    train_limit: int = 8,
    batch_size: int = 2,
    max_retries: int = 10,
    timeout: float = 5.0,
) -> Path:
    cfg = {
        "task": "private-records",
        "data": "synthetic",
        "train_limit": train_limit,
        "test_limit": 2,
        "strategy": "exponential",
        "eval_before": False,
        "output_dir": str(out),
        "student": {"model": str(model), "batch_size": 4},
        "server": {
            "kind": "openai",
            "base_url": url,
            "model": "tiny",
            "api_key_env": KEY_ENV,
            "batch_size": batch_size,
            "max_concurrency": batch_size,
            "max_retries": max_retries,
            "timeout": timeout,
        },
        "privacy": {"model": str(model), "epsilon": 3.0},
        "generation": {"max_new_tokens": 12},
        "eval_generation": {"max_new_tokens": 4},
        "train": {"max_steps": 1, "batch_size": 2, "lora_r": 4},
    }
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")  # JSON is valid YAML
    return path


def _key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _complete_lines(path: Path) -> list[str]:
    """The lines of a file that is being appended to, without a torn last line."""
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]


def _cached(cache: Path) -> list[str]:
    """The prompts in a run's ``server_cache.jsonl`` (complete lines only)."""
    return [_key(json.loads(line)["prompt"]) for line in _complete_lines(cache) if line.strip()]


def _audited(audit: Path, start: int = 0) -> list[str]:
    """The prompts a server answered (HTTP 200 on a completion route), from its audit log."""
    out = []
    for line in _complete_lines(audit)[start:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a write cut short by SIGKILL
            continue
        if rec["route"].endswith("/completions") and rec["status"] == 200:
            out.append(_key(rec.get("messages", rec.get("prompt"))))
    return out


def _start_client(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    with log.open("ab") as f:
        return subprocess.Popen(
            [*DISTILL, "--config", str(config), *extra],
            cwd=ROOT,
            env=ENV,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# --------------------------------------------------------------------------------------
# 1. The server dies in the middle of a run and comes back on the same port
# --------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_server_restart_mid_run(tiny_dir, tmp_path):
    # One prompt per request, one request at a time: a single retry sequence rides out the
    # outage (with concurrent requests a batch waits for the slowest of their jittered
    # backoffs), and at most one prompt is in flight when the server dies.
    port, batch, n, first = _free_port(), 1, 6, 2
    url = f"http://127.0.0.1:{port}/v1"
    run = tmp_path / "run"
    cache = run / "server_cache.jsonl"
    audit_a, audit_b = tmp_path / "audit_a.jsonl", tmp_path / "audit_b.jsonl"
    config = _write_config(
        tmp_path / "run.yaml", tiny_dir, url, run, train_limit=n, batch_size=batch
    )
    client_log = tmp_path / "client.log"
    with _servers() as servers:
        servers.append(Server(tiny_dir, port, audit_a, tmp_path / "serve_a.log"))
        # The client loads its models (seconds) while the server loads; should it still be
        # early, its first request is retried like any other.
        client = _start_client(config, client_log)
        try:
            servers[0].wait_ready()
            # Kill the server once its first answers are in the audit log and in the cache.
            _wait_for(
                lambda: len(_audited(audit_a)) >= first and len(_cached(cache)) >= first,
                120,
                "the first answers",
                (client,),
                client_log,
            )
            servers[0].kill()
            at_kill = set(_cached(cache))  # answered and written to the cache before the kill
            assert first <= len(at_kill) < n, "the kill did not land in the middle of the run"
            time.sleep(1.0)
            t_restart = time.monotonic()
            servers.append(Server(tiny_dir, port, audit_b, tmp_path / "serve_b.log"))
            servers[1].wait_ready()
            restart_s = time.monotonic() - t_restart
            # Nobody touches the client: it must retry until the new server answers.
            client.wait(timeout=180)
        finally:
            stop_group(client, signal.SIGKILL)
        assert servers[1].stop() == 0
    out = client_log.read_text(errors="replace")
    assert client.returncode == 0, out
    assert "retrying in" in out, "the client never retried"
    assert "Traceback" not in out

    rows = RationaleCache(cache).values()
    cached = [_key(r.prompt) for r in rows]
    assert len(cached) == len(set(cached)) == n  # every prompt of the run, each once
    assert all(isinstance(r.text, str) and r.finish_reason in ("stop", "length") for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["server"]["asked"] == n and metrics["rationales"]["requested"] == n

    a, b = _audited(audit_a), _audited(audit_b)
    assert b, "the restarted server answered nothing"
    # Every cached answer came from one of the two servers, and they answered nothing else.
    assert set(a) | set(b) == set(cached)
    assert len(b) == len(set(b))  # the restarted server was asked each prompt once
    # Nothing the client had already cached was asked again after the restart.
    assert not at_kill & set(b), (len(at_kill), restart_s)
    # Server A may have answered some prompts that the client never got: the audit line is
    # written just before the response goes out, so a request that was in flight when A died
    # can be in A's log although the client saw a dropped connection and asked B again.
    # That is at most the batch in flight: batch_size prompts (max_concurrency = batch_size,
    # and ask_cached sends the next batch only after this one is cached).
    assert len(set(a) & set(b)) <= batch, (len(a), len(b))


# --------------------------------------------------------------------------------------
# 2. The client dies in the middle of a run; --resume asks only what is missing
# --------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_client_killed_then_resumed(tiny_dir, tmp_path):
    port, n, first = _free_port(), 6, 2
    run = tmp_path / "run"
    cache = run / "server_cache.jsonl"
    audit = tmp_path / "audit.jsonl"
    with _servers() as servers:
        server = Server(tiny_dir, port, audit, tmp_path / "serve.log")
        servers.append(server)
        config = _write_config(
            tmp_path / "run.yaml", tiny_dir, server.url, run, train_limit=n, batch_size=1
        )
        client = _start_client(config, tmp_path / "client.log")  # loads while the server does
        try:
            server.wait_ready()
            _wait_for(
                lambda: len(_cached(cache)) >= first,
                120,
                "the first cached answers",
                (client,),
                tmp_path / "client.log",
            )
        finally:
            stop_group(client, signal.SIGKILL)
        answered = set(_cached(cache))
        assert first <= len(answered) < n, "the kill did not land in the middle of the run"
        # The server may still answer (and audit) the request the dead client left in flight;
        # wait for it so that the audit lines after this point are the resumed run's alone.
        # (in_flight counts the /metrics request asking, hence <= 1.)
        _wait_for(lambda: server.metrics()["in_flight"] <= 1, 30, "an idle server")
        n_before = len(_complete_lines(audit))

        done = subprocess.run(
            [*DISTILL, "--config", str(config), "--resume"],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        after = _audited(audit, n_before)
        assert server.stop() == 0
    assert after, "the resumed run asked nothing"
    assert not set(after) & answered, "the resumed run re-asked prompts it had cached"
    assert len(after) == len(set(after))
    cached = _cached(cache)
    assert len(RationaleCache(cache)) == n and set(cached) == answered | set(after)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["server"]["asked"] == len(after) == n - len(answered)
    assert metrics["server"]["cached"] == len(answered)


# --------------------------------------------------------------------------------------
# 3. No server at all
# --------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_server_down_at_start_fails_cleanly_in_bounded_time(tiny_dir, tmp_path):
    port, retries = _free_port(), 3  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    run = tmp_path / "run"
    config = _write_config(
        tmp_path / "run.yaml", tiny_dir, url, run, batch_size=1, max_retries=retries, timeout=2.0
    )
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*DISTILL, "--config", str(config)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=100)
        t_exit = time.monotonic()
    finally:
        stop_group(proc, signal.SIGKILL)
    reader.join(timeout=10)
    out = "".join(line for _, line in lines)
    flat = " ".join(out.split())

    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    endpoint = f"{url}/chat/completions"
    assert f"error: request to {endpoint} failed after {retries + 1} attempts" in flat, out
    assert "Connection refused" in flat, out
    assert "hint: is the server up and reachable?" in flat, out
    # One warning per failed attempt that is retried, then the error.
    warned = [t for t, line in lines if f"{endpoint}: attempt " in line]
    assert len(warned) == retries, out
    # Connection refused is immediate, so after the first failure only the backoff sleeps
    # remain: at most 0.5 + 1 + 2 s (full jitter below doubling ceilings), plus slack for the
    # process to exit on a loaded machine.
    give_up = t_exit - warned[0]
    assert give_up < sum(0.5 * 2**k for k in range(retries)) + 5.0, give_up
    assert t_exit - t0 < 90  # model loading included
    # The failed run did not pretend to finish.
    assert not (run / "metrics.json").exists()
    assert "finished" not in json.loads((run / "manifest.json").read_text())
