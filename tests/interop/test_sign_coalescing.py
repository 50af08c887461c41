"""Sign coalescing against a real OpenBao, observed through ``/metrics``
(``aegis_sign_batch_size``: one observation per Transit sign call, its value the items).

- A lone request is one single-mode call (it never waits for company).
- 64 concurrent single requests become fewer calls; each caller gets the signature of its
  own input (checked by OpenBao itself), and a caller with bad input gets OpenBao's own
  single-mode error while the others succeed.
- A caller's batch larger than ``AEGIS_SIGN_MAX_BATCH`` is split and answered in order.
"""

from __future__ import annotations

import base64
import threading
from typing import Iterator, List

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import KEYS, Bao, Sidecar, running_sidecar

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


def test_concurrent_requests_share_calls_and_each_gets_its_own_answer(bao: Bao, coalescing: Sidecar) -> None:
    n = 64
    bad = 17  # this caller sends input that is not base64
    inputs = [f"concurrent input {i}".encode() for i in range(n)]
    answers: List[requests.Response] = [None] * n  # type: ignore[list-item]
    start = threading.Barrier(n)

    def caller(i: int) -> None:
        body = {"input": "not base64!" if i == bad else b64(inputs[i])}
        with requests.Session() as s:
            start.wait()
            answers[i] = s.post(f"{coalescing.addr}/v1/transit/sign/{KEY}", json=body, headers=HEADERS, timeout=30)

    calls, items = batch_calls(coalescing)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after_calls, after_items = batch_calls(coalescing)

    direct = bao.api("POST", f"transit/sign/{KEY}", json={"input": "not base64!"})
    assert answers[bad].status_code == direct.status_code == 400, answers[bad].text
    assert answers[bad].json()["errors"] == direct.json()["errors"]
    for i, r in enumerate(answers):
        if i == bad:
            continue
        assert r.status_code == 200, r.text
        signature = r.json()["data"]["signature"]
        assert vault_verifies(bao, inputs[i], signature), f"caller {i} got a signature of another input"
        assert not vault_verifies(bao, inputs[(i + 1) % n], signature)
    # Every item went to Vault (the bad one too, or once more alone if the batch was refused
    # whole), in fewer calls than requests.
    assert after_items - items >= n
    assert after_calls - calls < n, (after_calls - calls, after_items - items)


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
