"""Graceful shutdown of ``aegis serve`` against a real OpenBao (src/server/drain.rs).

Each test has its own OpenBao dev server, paused with SIGSTOP to hold sign calls in
flight. Requests are sent on raw sockets so the test knows they are on the wire, and the
kernel's socket table (/proc/net/tcp) tells when aegis has read them and when a call of
aegis waits unread at OpenBao: nothing sleeps for a guessed time. A response is read to
EOF, so a connection aegis kept open after its request would hang the read and fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Dict, List, Tuple

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import Bao, Sidecar, free_port, running_bao, running_sidecar, wait_for
from test_grpc import METADATA, pb  # noqa: F401  (pb: the stubs fixture)

KEY = "k-ed25519"
# Vault calls held by a paused OpenBao must not time out on a slow machine.
PATIENT_VAULT = dict(AEGIS_VAULT_TIMEOUT="120s", AEGIS_VAULT_TOTAL_TIMEOUT="120s")
ESTABLISHED = "01"


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def tcp_sockets() -> List[Tuple[int, int, str, int]]:
    """(local port, remote port, state, receive queue bytes) of every IPv4 TCP socket."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        rx = int(f[4].split(":")[1], 16)
        rows.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), f[3], rx))
    return rows


def all_read(server_port: int, client_ports: List[int]) -> bool:
    """Whether the server has read everything these clients sent (their requests)."""
    unread = {p: None for p in client_ports}
    for local, remote, state, rx in tcp_sockets():
        if local == server_port and remote in unread and state == ESTABLISHED:
            unread[remote] = rx
    return all(rx == 0 for rx in unread.values())


def call_waiting_at(bao_port: int) -> bool:
    """Whether a request to OpenBao sits unread in its socket (it is paused)."""
    return any(local == bao_port and state == ESTABLISHED and rx > 0 for local, _, state, rx in tcp_sockets())


def stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped (SIGSTOP is delivered to each thread
    on its own; a running one could still answer a request)."""
    tasks = Path(f"/proc/{pid}/task")
    states = []
    for t in tasks.iterdir():
        try:
            states.append((t / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:  # a thread that just exited
            pass
    return bool(states) and all(s in ("T", "t") for s in states)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def unix_refused(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return False
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    finally:
        s.close()


def payload(i: int) -> bytes:
    return f"in-flight sign {i}".encode()


def send_sign(addr: str, data: bytes) -> socket.socket:
    """Sends one HTTP/1.1 sign request (keep-alive, the default) on a new connection."""
    body = json.dumps({"input": base64.b64encode(data).decode()}).encode()
    s = socket.create_connection(("127.0.0.1", port_of(addr)), timeout=120)
    s.sendall(
        (
            f"POST /v1/transit/sign/{KEY} HTTP/1.1\r\nHost: aegis\r\nX-Vault-Request: true\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    return s


def read_response(s: socket.socket) -> Tuple[int, Dict[str, str], dict]:
    """The response, read until aegis closes the connection."""
    chunks = []
    with s:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def hold_in_flight(bao: Bao, sidecar: Sidecar, n: int) -> List[socket.socket]:
    """Pauses OpenBao, sends n signs, and returns once aegis has read them all and one of
    its Vault calls waits at OpenBao."""
    os.kill(bao.pid, signal.SIGSTOP)
    wait_for("OpenBao to be stopped", lambda: stopped(bao.pid), sidecar.proc)
    socks = [send_sign(sidecar.addr, payload(i)) for i in range(n)]
    clients = [s.getsockname()[1] for s in socks]
    wait_for(
        f"aegis to read the {n} sign requests and call the paused OpenBao",
        lambda: all_read(port_of(sidecar.addr), clients) and call_waiting_at(port_of(bao.addr)),
        sidecar.proc,
        timeout=60,
    )
    return socks


def sigterm(sidecar: Sidecar) -> float:
    sidecar.proc.stopped = True  # an expected exit, for running_sidecar
    sidecar.proc.popen.send_signal(signal.SIGTERM)
    return time.monotonic()


def test_in_flight_signs_finish_verify_and_are_audited_after_sigterm(tmp_path: Path) -> None:
    n = 20
    audit = tmp_path / "audit.jsonl"
    unix = str(tmp_path / "aegis.sock")
    metrics_port = free_port()
    with running_bao() as bao, running_sidecar(
        bao,
        AEGIS_SHUTDOWN_GRACE="60s",
        AEGIS_AUDIT_FILE=str(audit),
        AEGIS_LISTEN_UNIX=unix,
        AEGIS_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        **PATIENT_VAULT,
    ) as sidecar:
        # An idle keep-alive connection must not hold the shutdown up.
        idle = requests.Session()
        assert idle.get(f"{sidecar.addr}/healthz", timeout=10).status_code == 200
        try:
            socks = hold_in_flight(bao, sidecar, n)
            sigterm(sidecar)
            wait_for(
                "every listener (TCP, Unix socket, metrics) to refuse new connections",
                lambda: refused(port_of(sidecar.addr)) and unix_refused(unix) and refused(metrics_port),
                sidecar.proc,
            )
            # Still draining: the signs are held by the paused OpenBao.
            assert sidecar.proc.alive(), sidecar.proc.describe()
        finally:
            os.kill(bao.pid, signal.SIGCONT)
        resumed = time.monotonic()
        answers = [read_response(s) for s in socks]
        status = sidecar.proc.popen.wait(timeout=60)
        exited_after = time.monotonic() - resumed
        log = sidecar.proc.output()

        assert status == 0, log
        # Far below the 60 s grace: the idle connection was closed at once.
        assert exited_after < 20, f"exit took {exited_after:.1f} s after OpenBao resumed\n{log}"
        assert "every in-flight request finished" in log, log
        for code, headers, body in answers:
            assert code == 200, (code, body)
            assert headers.get("connection") == "close", headers
            assert body["data"]["signature"].startswith("vault:v1:"), body
        r = bao.api(
            "POST",
            f"transit/verify/{KEY}",
            json={
                "batch_input": [
                    {"input": base64.b64encode(payload(i)).decode(), "signature": body["data"]["signature"]}
                    for i, (_, _, body) in enumerate(answers)
                ]
            },
        )
        assert r.status_code == 200, r.text
        assert [x.get("valid") for x in r.json()["data"]["batch_results"]] == [True] * n, r.text

        events = [json.loads(line) for line in audit.read_text().splitlines()]
        signed = sorted(e["input_sha256"] for e in events if e["event"] == "sign" and e["key"] == KEY and e["result"] == "ok")
        assert signed == sorted(hashlib.sha256(payload(i)).hexdigest() for i in range(n)), events


def test_grace_expiry_cuts_the_requests_still_running_and_exits_0() -> None:
    n = 5
    grace = 1.0
    with running_bao() as bao, running_sidecar(bao, AEGIS_SHUTDOWN_GRACE="1s", **PATIENT_VAULT) as sidecar:
        try:
            socks = hold_in_flight(bao, sidecar, n)
            started = sigterm(sidecar)
            answers = [read_response(s) for s in socks]
            status = sidecar.proc.popen.wait(timeout=30)
            took = time.monotonic() - started
        finally:
            os.kill(bao.pid, signal.SIGCONT)
        log = sidecar.proc.output()
        assert status == 0, log
        # The grace, a second for the cut answers, the audit and telemetry flush: well under 5 s more.
        assert grace <= took < grace + 5, f"exit took {took:.1f} s\n{log}"
        for code, _, body in answers:
            assert code == 503, (code, body)
            assert "shutdown grace period" in body["errors"][0], body
        assert f"cut_requests={n}" in log, log


def test_shutdown_delay_keeps_serving_while_not_ready() -> None:
    metrics_port = free_port()
    with running_bao() as bao, running_sidecar(
        bao, AEGIS_SHUTDOWN_DELAY="5s", AEGIS_METRICS_LISTEN=f"127.0.0.1:{metrics_port}"
    ) as sidecar:
        sigterm(sidecar)
        for addr in (sidecar.addr, f"http://127.0.0.1:{metrics_port}"):
            wait_for(
                f"{addr}/readyz to report shutting down",
                lambda: requests.get(f"{addr}/readyz", timeout=5).status_code == 503,
                sidecar.proc,
            )
            assert "shutting down" in requests.get(f"{addr}/readyz", timeout=5).text
        # Not ready, yet still serving new connections during the delay.
        r = requests.post(
            f"{sidecar.addr}/v1/transit/sign/{KEY}",
            headers={"X-Vault-Request": "true"},
            json={"input": base64.b64encode(b"during the delay").decode()},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert sidecar.proc.popen.wait(timeout=30) == 0, sidecar.proc.output()
        assert refused(port_of(sidecar.addr)) and refused(metrics_port)


def test_grpc_streams_end_with_unavailable_and_do_not_hold_the_exit(pb) -> None:  # noqa: F811
    with running_bao() as bao, running_sidecar(bao, AEGIS_SHUTDOWN_GRACE="60s") as sidecar:
        with grpc.insecure_channel(sidecar.addr.removeprefix("http://")) as channel:
            keys = pb.services.SignerStub(channel).WatchKeys(
                pb.messages.WatchKeysRequest(keys=[KEY]), metadata=METADATA, timeout=60
            )
            assert [k.name for k in next(keys).keys] == [KEY]
            health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
            # Health follows readiness within a quarter of a second: wait for SERVING.
            while next(health).status != health_pb2.HealthCheckResponse.SERVING:
                pass
            started = sigterm(sidecar)
            for stream in (keys, health):
                with pytest.raises(grpc.RpcError) as ended:
                    for _ in stream:
                        pass
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
        assert sidecar.proc.popen.wait(timeout=30) == 0, sidecar.proc.output()
        took = time.monotonic() - started
        # Far below the 60 s grace: open streams do not hold the shutdown up.
        assert took < 20, f"exit took {took:.1f} s\n{sidecar.proc.output()}"
