"""A whole Flower federation on one machine: a SuperLink and one SuperNode per client on
127.0.0.1, as real processes (``fedcot flower local``, the tests and the benchmark).

This is the deployment engine of Flower exactly as it runs across machines, only with
every process on loopback. By default TLS is off (``--insecure``), which is acceptable on
loopback and nowhere else. With ``secure=True`` it runs the setup of a real deployment
(docs/deploy.md): a private CA signs the SuperLink's certificate, every connection is
TLS, and the SuperLink admits only SuperNodes whose public keys were registered with
``flwr supernode register`` (EC P-384 keys, one per client).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcot.errors import FedcotError, require
from fedcot.procs import Child, stop_group

__all__ = ["FlowerRun", "LocalFederation", "free_port", "threads_per_node"]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    """A console script of this Python environment (flwr's commands live beside python)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FedcotError(
            f"{name} not found next to {sys.executable}",
            hint="install Flower into this environment: pip install 'fedcot[flower]'",
        )
    return str(path)


def threads_per_node(n_nodes: int) -> int:
    """This machine's cores shared out among ``n_nodes`` SuperNodes (at least 1 each)."""
    return max(1, (os.cpu_count() or 1) // max(1, n_nodes))


@dataclass
class FlowerRun:
    """What ``flwr run --stream`` returned."""

    returncode: int
    output: str
    run_id: int | None
    seconds: float


class LocalFederation:
    """Start, kill and stop the Flower processes of a loopback federation.

    ``workdir`` receives the Flower home (``FLWR_HOME``: the CLI's connection file and the
    installed apps) and one log file per process. Use as a context manager: every process
    is stopped on exit.
    """

    def __init__(
        self, workdir: Path, *, secure: bool = False, env: dict[str, str] | None = None
    ) -> None:
        require("flwr", "flower")
        self.workdir = Path(workdir)
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.env["FLWR_HOME"] = str(self.home)
        bindir = str(Path(sys.executable).parent)
        self.env["PATH"] = bindir + os.pathsep + self.env.get("PATH", "")
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.secure = secure
        self.registered: set[str] = set()
        self.pki = self.workdir / "pki"
        if secure:
            make_server_certificate(self.pki, "127.0.0.1")
            link = f'root-certificates = "{self.pki / "ca.crt"}"\n'
        else:
            link = "insecure = true\n"
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n\n'
            f'[superlink.local]\naddress = "{self.address}"\n{link}',
            encoding="utf-8",
        )

    # -- processes -----------------------------------------------------------------------
    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            cwd=self.workdir,
            start_new_session=True,  # its own process group: a kill takes its children too
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until it accepts connections."""
        if self.secure:
            tls = [
                "--ssl-ca-certfile",
                str(self.pki / "ca.crt"),
                "--ssl-certfile",
                str(self.pki / "server.pem"),
                "--ssl-keyfile",
                str(self.pki / "server.key"),
                "--enable-supernode-auth",
            ]
        else:
            tls = ["--insecure"]
        self._spawn(
            "superlink",
            [
                _bin("flower-superlink"),
                *tls,
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise FedcotError(f"the SuperLink exited; see {self.logs / 'superlink.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.2)
        raise FedcotError(f"the SuperLink did not listen within {timeout:g} s")

    def start_supernode(
        self,
        party: str,
        state_dir: Path,
        *,
        data: str | None = None,
        register: bool = True,
        superlink: str | None = None,
        max_retries: int | None = None,
        threads: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start the SuperNode of client ``party``, keeping its checkpoints in ``state_dir``.

        With ``secure``, the node gets its own key pair; ``register=False`` leaves its public
        key unregistered (the SuperLink must then refuse it). ``superlink`` connects it
        through another address (a byte-counting proxy in the benchmark). ``threads`` caps
        the CPU threads of its ClientApps (``OMP_NUM_THREADS``): SuperNodes that share one
        machine must share its cores, or their BLAS threads spin against each other.
        """
        node_config = f'party="{party}" state-dir="{Path(state_dir).resolve()}"'
        if data:
            node_config += f' data="{Path(data).resolve()}"'
        if self.secure:
            key = make_node_key(self.pki, party)
            if register and party not in self.registered:
                reg = self._flwr("supernode", "register", str(key.with_suffix(".pub")), "local")
                if reg.returncode != 0:
                    raise FedcotError(f"flwr supernode register failed:\n{reg.stdout}{reg.stderr}")
                self.registered.add(party)
            auth = [
                "--root-certificates",
                str(self.pki / "ca.crt"),
                "--auth-supernode-private-key",
                str(key),
            ]
        else:
            auth = ["--insecure"]
        retries = ["--max-retries", str(max_retries)] if max_retries is not None else []
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
        return self._spawn(
            party,
            [
                _bin("flower-supernode"),
                *auth,
                *retries,
                "--superlink",
                superlink or self.address,
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                node_config,
            ],
            env,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a process and its children (SIGKILL: a machine that dies); what
        has not ended 30 s later is killed."""
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_group(proc, sig)

    def close(self) -> None:
        """Stop every process: SIGTERM, then SIGKILL for what is still running."""
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------
    def _flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_bin("flwr"), *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def submit(
        self, app_dir: Path, run_config: dict[str, Any] | None = None, *, echo: bool = False
    ) -> Child:
        """``flwr run APP local --stream`` in the background (its output is the run's log)."""
        argv = [_bin("flwr"), "run", str(Path(app_dir).resolve()), "local", "--stream"]
        if run_config:
            import tomli_w

            overrides = self.workdir / f"run-config-{time.time_ns()}.toml"
            overrides.write_text(tomli_w.dumps(run_config), encoding="utf-8")
            argv += ["--run-config", str(overrides)]
        return Child(argv, env=self.env, cwd=self.workdir, echo=echo)

    def run(
        self,
        app_dir: Path,
        run_config: dict[str, Any] | None = None,
        *,
        timeout: float = 3600.0,
        echo: bool = False,
    ) -> FlowerRun:
        """Submit a run and wait until it ends (or ``timeout`` seconds)."""
        t0 = time.monotonic()
        run = self.submit(app_dir, run_config, echo=echo)
        try:
            rc = run.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.stop(signal.SIGKILL)
            tail = run.output()[-4000:]
            raise FedcotError(f"flwr run did not finish within {timeout:g} s:\n{tail}") from None
        out = run.output()
        return FlowerRun(rc, out, run_id_of(out), time.monotonic() - t0)

    def stop_run(self, run_id: int) -> subprocess.CompletedProcess[str]:
        """``flwr stop RUN_ID``: end a run (its ServerApp is stopped)."""
        return self._flwr("stop", str(run_id), "local")


def run_id_of(output: str) -> int | None:
    """The run id that ``flwr run`` printed (``Successfully started run N``)."""
    m = re.search(r"started run (\d+)", output)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------
# Keys and certificates for the secure setup
# --------------------------------------------------------------------------------------


def make_server_certificate(folder: Path, host: str, days: int = 30) -> None:
    """A private CA (``ca.crt``) and a server certificate for ``host`` signed by it
    (``server.pem``, ``server.key``): what ``flower-superlink --ssl-*`` needs.

    For trying TLS on one machine; a real deployment uses its organisation's CA.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedcot local CA"))
        .issuer_name(name("fedcot local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem))
    private = folder / "server.key"
    private.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)


def make_node_key(folder: Path, name: str) -> Path:
    """An EC P-384 key pair in OpenSSH format (``<name>``, ``<name>.pub``), as
    ``ssh-keygen -t ecdsa -b 384`` makes: the SuperNode signs with it, the SuperLink
    admits it once ``flwr supernode register <name>.pub`` was run. Returns the private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        key = ec.generate_private_key(ec.SECP384R1())
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        path.with_suffix(".pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + f" {name}\n".encode()
        )
    return path
