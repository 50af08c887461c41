"""Fixtures for the client interoperability tests.

A real OpenBao dev server (``bao server -dev``) with Transit and one key of each signing
type, and ``aegis serve`` in front of it with an allowlist. Both are real processes on
free loopback ports; nothing is mocked. Missing tools fail the run, they are never skipped.

Environment:
  AEGIS_BAO  the ``bao`` binary (default: <repo>/.venv/bin/bao, see scripts/install-tools.sh)
  AEGIS_BIN  the ``aegis`` binary (default: <repo>/target/debug/aegis, see ``cargo build``)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]

# Ports other services on shared machines use; never pick them.
_RESERVED_PORTS = range(18200, 18401)

# (name, Transit type) of the keys created in OpenBao and allowlisted in the sidecar.
KEYS = [
    ("k-ed25519", "ed25519"),
    ("k-ecdsa-p256", "ecdsa-p256"),
    ("k-ecdsa-p384", "ecdsa-p384"),
    ("k-rsa-2048", "rsa-2048"),
]
# A key that exists in OpenBao but is NOT in the sidecar's AEGIS_KEYS.
FORBIDDEN_KEY = ("k-not-allowlisted", "ed25519")

STARTUP_TIMEOUT = 30.0


def _executable(env_name: str, default: Path, hint: str) -> str:
    path = Path(os.environ.get(env_name) or default)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing or not executable ({env_name}); {hint}", pytrace=False)
    return str(path)


def bao_path() -> str:
    return _executable("AEGIS_BAO", REPO / ".venv/bin/bao", "run: bash scripts/install-tools.sh")


def aegis_path() -> str:
    return _executable("AEGIS_BIN", REPO / "target/debug/aegis", "run: cargo build")


def free_port() -> int:
    """A currently free loopback port outside the reserved range."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _RESERVED_PORTS:
            return port
    raise RuntimeError("no free loopback port found")


def clean_env(**extra: str) -> dict:
    """The process environment without any Vault/OpenBao/Aegis settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "BAO_", "AEGIS_"))
    }
    env.update(extra)
    return env


class Proc:
    """A child process whose output goes to a temporary file (read back for error messages)."""

    def __init__(self, name: str, argv: list, env: dict, cwd: Optional[str] = None):
        self.name = name
        self.argv = argv
        self.stopped = False
        self.log = tempfile.NamedTemporaryFile(prefix=f"aegis-interop-{name}-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def describe(self) -> str:
        tail = self.output()[-4000:]
        return f"{self.name} ({' '.join(self.argv)}), exit status {self.popen.poll()}; output:\n{tail}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self, timeout: float) -> int:
        """SIGTERM, as Kubernetes stops a pod; returns the exit status (fails after ``timeout``)."""
        self.stopped = True
        self.popen.terminate()
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout} s of SIGTERM: {self.describe()}", pytrace=False)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def wait_for(what: str, check: Callable[[], bool], proc: Proc, timeout: float = STARTUP_TIMEOUT) -> None:
    """Polls ``check`` until it is true; fails at once if ``proc`` exits, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if not proc.alive():
            pytest.fail(f"{proc.name} exited while waiting for {what}: {proc.describe()}", pytrace=False)
        try:
            if check():
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: {proc.describe()}", pytrace=False)
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class Bao:
    addr: str
    root_token: str
    path: str
    pid: int = 0  # the server process, for tests that pause it (SIGSTOP) to hold calls in flight

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(
            method,
            f"{self.addr}/v1/{path}",
            headers={"X-Vault-Token": self.root_token},
            timeout=30,
            **kwargs,
        )


@dataclass
class Sidecar:
    addr: str
    proc: Proc


@contextlib.contextmanager
def running_bao(*extra_args: str) -> Iterator[Bao]:
    """A real OpenBao dev server (``extra_args`` added to its command line) with Transit and
    the keys in KEYS + FORBIDDEN_KEY."""
    path = bao_path()
    port = free_port()
    token = "root-" + secrets.token_hex(16)
    proc = Proc(
        "bao",
        [
            path,
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
            *extra_args,
        ],
        env=clean_env(),
    )
    server = Bao(addr=f"http://127.0.0.1:{port}", root_token=token, path=path, pid=proc.popen.pid)
    try:
        wait_for(
            "OpenBao /v1/sys/health",
            lambda: requests.get(f"{server.addr}/v1/sys/health", timeout=2).status_code == 200,
            proc,
        )
        r = server.api("POST", "sys/mounts/transit", json={"type": "transit"})
        assert r.status_code in (200, 204), f"enable transit: {r.status_code} {r.text}"
        for name, kind in KEYS + [FORBIDDEN_KEY]:
            r = server.api("POST", f"transit/keys/{name}", json={"type": kind})
            assert r.status_code in (200, 204), f"create key {name} ({kind}): {r.status_code} {r.text}"
        yield server
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def bao() -> Bao:
    """The session's OpenBao dev server (see ``running_bao``)."""
    with running_bao() as server:
        yield server


@contextlib.contextmanager
def running_sidecar(bao: Bao, token: Optional[str] = None, **env: str) -> Iterator[Sidecar]:
    """``aegis serve`` against ``bao`` (with ``token``, default the root token), allowlisting
    the names in KEYS, ready before it is yielded; ``env`` adds or overrides settings (a
    setting given as None is left unset, e.g. ``AEGIS_KEYS=None`` for no allowlist)."""
    binary = aegis_path()
    port = free_port()
    settings = dict(
        VAULT_ADDR=bao.addr,
        VAULT_TOKEN=token or bao.root_token,
        AEGIS_LISTEN_ADDR=f"127.0.0.1:{port}",
        AEGIS_KEYS=",".join(name for name, _ in KEYS),
        AEGIS_LOG_FORMAT="text",
        NO_COLOR="1",
    )
    settings.update(env)
    settings = {k: v for k, v in settings.items() if v is not None}
    proc = Proc("aegis serve", [binary, "serve"], env=clean_env(**settings))
    sidecar = Sidecar(addr=f"http://127.0.0.1:{port}", proc=proc)
    try:
        wait_for(
            "aegis /readyz",
            lambda: requests.get(f"{sidecar.addr}/readyz", timeout=2).status_code == 200,
            proc,
        )
        yield sidecar
        if not proc.alive() and not proc.stopped:
            pytest.fail(f"aegis exited unexpectedly during the tests: {proc.describe()}", pytrace=False)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def _sidecar_session(bao: Bao) -> Sidecar:
    """``aegis serve`` against the dev server, allowlisting exactly the names in KEYS."""
    with running_sidecar(bao) as sidecar:
        yield sidecar


@pytest.fixture
def sidecar(_sidecar_session: Sidecar) -> Sidecar:
    """The running sidecar; the test fails if aegis is not alive afterwards."""
    proc = _sidecar_session.proc
    if not proc.alive():
        pytest.fail(f"aegis is not running: {proc.describe()}", pytrace=False)
    yield _sidecar_session
    if not proc.alive():
        pytest.fail(f"aegis exited unexpectedly during this test: {proc.describe()}", pytrace=False)
