"""Sign coalescing against a real OpenBao, observed through ``/metrics``
(``aegis_sign_batch_size``: one observation per Transit sign call, its value the items).

- A lone request is one single-mode call (it never waits for company).
- 64 concurrent single requests, one call held in flight at a paused OpenBao while the
  other 63 queue, become exactly 3 calls (1, then 50 and 13 with ``AEGIS_SIGN_MAX_BATCH=50``);
  each caller gets the signature of its own input (checked by OpenBao itself), and a caller
  with bad input gets OpenBao's own single-mode error while the others succeed.
- A caller's batch larger than ``AEGIS_SIGN_MAX_BATCH`` is split and answered in order.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
from pathlib import Path
from typing import Iterator, List

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import KEYS, Bao, Sidecar, running_bao, running_sidecar, wait_for

KEY = KEYS[0][0]  # ed25519
HEADERS = {"X-Vault-Request": "true"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def batch_calls(sidecar: Sidecar) -> tuple:
    """(Transit sign calls, items in them) so far."""
    text = requests.get(f"{sidecar.addr}/metrics", timeout=10).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels or "le" not in s.labels}
    return samples.get("aegis_sign_batch_size_count", 0), samples.get("aegis_sign_batch_size_sum", 0)


def vault_verifies(bao: Bao, data: bytes, signature: str) -> bool:
    r = bao.api("POST", f"transit/verify/{KEY}", json={"input": b64(data), "signature": signature})
    assert r.status_code == 200, r.text
    return r.json()["data"]["valid"]


@pytest.fixture(scope="module")
def coalescing(bao: Bao) -> Iterator[Sidecar]:
    with running_sidecar(bao, AEGIS_SIGN_MAX_IN_FLIGHT="1", AEGIS_SIGN_MAX_BATCH="50") as sidecar:
        yield sidecar


def test_a_lone_request_is_one_single_mode_call(coalescing: Sidecar) -> None:
    calls, items = batch_calls(coalescing)
    r = requests.post(f"{coalescing.addr}/v1/transit/sign/{KEY}", json={"input": b64(b"alone")}, headers=HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    assert set(r.json()["data"]) == {"signature", "key_version"}
    assert batch_calls(coalescing) == (calls + 1, items + 1)


def metric(sidecar: Sidecar, name: str) -> float:
    text = requests.get(f"{sidecar.addr}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def buckets(sidecar: Sidecar) -> dict:
    """``aegis_sign_batch_size``'s cumulative buckets, by ``le``."""
    text = requests.get(f"{sidecar.addr}/metrics", timeout=10).text
    return {float(s.labels["le"]): s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "aegis_sign_batch_size_bucket"}


def stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped (SIGSTOP reaches each on its own)."""
    states = []
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            states.append((t / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:  # a thread that just exited
            pass
    return bool(states) and all(s in ("T", "t") for s in states)


@pytest.fixture
def paused_bao() -> Iterator[Bao]:
    """Its own OpenBao, for a test that pauses it (SIGSTOP) to hold a sign call in flight."""
    with running_bao() as server:
        yield server


def test_concurrent_requests_share_calls_exactly_and_each_gets_its_own_answer(paused_bao: Bao) -> None:
    """With one call in flight per lane and batches of 50: a first caller's call is held at
    a paused OpenBao while 63 more queue (``aegis_sign_queued``); when OpenBao answers, the
    63 go in two calls, 50 + 13. Exactly 3 Transit calls for 64 callers."""
    n = 64
    bad = 17  # this caller sends input that is not base64 (inside the batch of 50)
    inputs = [f"concurrent input {i}".encode() for i in range(n)]
    answers: List[requests.Response] = [None] * n  # type: ignore[list-item]

    def caller(i: int) -> None:
        body = {"input": "not base64!" if i == bad else b64(inputs[i])}
        answers[i] = requests.post(f"{sidecar.addr}/v1/transit/sign/{KEY}", json=body, headers=HEADERS, timeout=120)

    with running_sidecar(
        paused_bao,
        AEGIS_SIGN_MAX_IN_FLIGHT="1",
        AEGIS_SIGN_MAX_BATCH="50",
        AEGIS_VAULT_TIMEOUT="120s",
        AEGIS_VAULT_TOTAL_TIMEOUT="120s",
    ) as sidecar:
        calls, items = batch_calls(sidecar)
        before = buckets(sidecar)
        os.kill(paused_bao.pid, signal.SIGSTOP)
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
        try:
            wait_for("OpenBao stopped", lambda: stopped(paused_bao.pid), sidecar.proc)
            threads[0].start()
            wait_for("the first call in flight", lambda: batch_calls(sidecar) == (calls + 1, items + 1), sidecar.proc)
            for t in threads[1:]:
                t.start()
            wait_for("63 callers queued", lambda: metric(sidecar, "aegis_sign_queued") == n - 1, sidecar.proc)
        finally:
            os.kill(paused_bao.pid, signal.SIGCONT)
        for t in threads:
            t.join()
        assert batch_calls(sidecar) == (calls + 3, items + n)
        assert metric(sidecar, "aegis_sign_queued") == 0
        after = buckets(sidecar)
        # One call of 1, one of 13, one of 50 (cumulative buckets le=1, 8, 16, 32, 64).
        assert {le: after[le] - before.get(le, 0) for le in (1, 8, 16, 32, 64)} == {1: 1, 8: 1, 16: 2, 32: 2, 64: 3}

    direct = paused_bao.api("POST", f"transit/sign/{KEY}", json={"input": "not base64!"})
    assert answers[bad].status_code == direct.status_code == 400, answers[bad].text
    assert answers[bad].json()["errors"] == direct.json()["errors"]
    for i, r in enumerate(answers):
        if i == bad:
            continue
        assert r.status_code == 200, r.text
        signature = r.json()["data"]["signature"]
        assert vault_verifies(paused_bao, inputs[i], signature), f"caller {i} got a signature of another input"
        assert not vault_verifies(paused_bao, inputs[(i + 1) % n], signature)


def test_a_large_caller_batch_is_split_and_answered_in_order(bao: Bao, coalescing: Sidecar) -> None:
    n = 120  # AEGIS_SIGN_MAX_BATCH=50: three calls
    inputs = [f"batch item {i}".encode() for i in range(n)]
    batch = [{"input": b64(data), "reference": f"ref-{i}"} for i, data in enumerate(inputs)]
    calls, items = batch_calls(coalescing)
    r = requests.post(f"{coalescing.addr}/v1/transit/sign/{KEY}", json={"batch_input": batch}, headers=HEADERS, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["data"]["batch_results"]
    assert [x["reference"] for x in results] == [f"ref-{i}" for i in range(n)]
    for data, x in zip(inputs, results):
        assert vault_verifies(bao, data, x["signature"])
    assert batch_calls(coalescing) == (calls + 3, items + n)
