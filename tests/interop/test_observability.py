"""Observability against real peers: an OTLP receiver built from opentelemetry-proto (gRPC and
HTTP/protobuf), OpenBao's own audit log, and prometheus_client's text parser.

- A caller's W3C ``traceparent`` continues into the sidecar's request span, whose children
  include the Vault call, and OpenBao receives a ``traceparent`` of the same trace.
- Metrics are pushed over OTLP under the same names ``GET /metrics`` shows.
- ``/metrics`` parses with prometheus_client; counters move with requests; revoking the
  sidecar's token raises ``aegis_vault_auth_failures_total``; every metric the alert rules
  and the dashboard query exists in a live scrape.
- In a container (no terminal), every log line is JSON, and none holds the token or input.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import KEYS, Bao, aegis_path, clean_env, free_port, running_bao, running_sidecar
from monitoring_names import CONTRACT, OPTIONAL_METRICS, base_names_of_samples, referenced_metric_names
from otlp_receiver import OtlpReceiver

KEY = KEYS[1][0]  # ecdsa-p256
VAULT_HEADERS = {"X-Vault-Request": "true"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def audited_bao() -> Iterator[Tuple[Bao, Path]]:
    """An OpenBao dev server of its own whose file audit device (declared in its config, as
    OpenBao requires) records the ``traceparent`` request header in clear."""
    with tempfile.TemporaryDirectory(prefix="aegis-bao-audit-") as d:
        log = Path(d) / "audit.log"
        config = Path(d) / "audit.hcl"
        config.write_text(f'audit "file" "trace" {{\n  options {{\n    file_path = "{log}"\n  }}\n}}\n')
        with running_bao(f"-config={config}") as server:
            r = server.api("POST", "sys/config/auditing/request-headers/traceparent", json={"hmac": False})
            assert r.status_code in (200, 204), r.text
            yield server, log


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def scrape(addr: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client: (name, labels) -> value."""
    r = requests.get(f"{addr}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_traceparent_continues_into_spans_and_reaches_vault(
    audited_bao: Tuple[Bao, Path], receiver: OtlpReceiver, protocol: str
) -> None:
    bao, vault_audit_log = audited_bao
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    marker = b"aegis-trace-input-" + secrets.token_hex(8).encode()
    with running_sidecar(
        bao,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SERVICE_NAME="aegis-under-test",
        OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=model-pod-1",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="300",
    ) as sidecar:
        trace_id = secrets.token_hex(16)
        caller_span = secrets.token_hex(8)
        headers = dict(VAULT_HEADERS, traceparent=f"00-{trace_id}-{caller_span}-01")
        r = requests.post(
            f"{sidecar.addr}/v1/transit/sign/{KEY}", json={"input": b64(marker)}, headers=headers, timeout=10
        )
        assert r.status_code == 200, r.text
        signature = r.json()["data"]["signature"]
        verify_parent = secrets.token_hex(8)
        r = requests.post(
            f"{sidecar.addr}/v1/transit/verify/{KEY}",
            json={"input": b64(marker), "signature": signature},
            headers=dict(VAULT_HEADERS, traceparent=f"00-{trace_id}-{verify_parent}-01"),
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["data"]["valid"] is True, r.text

        def of_trace():
            return [s for s in receiver.spans() if s.trace_id == trace_id]

        receiver.wait(
            "the sign, verify and Vault spans of the caller's trace",
            lambda: {"aegis sign", "aegis verify", "vault sign"} <= {s.name for s in of_trace()},
        )
        spans = of_trace()
        sign = next(s for s in spans if s.name == "aegis sign")
        assert sign.parent_span_id == caller_span, "the request span continues the caller's span"
        assert sign.attributes["operation"] == "sign"
        assert sign.attributes["key"] == KEY
        assert sign.attributes["key_version"] == 1
        assert sign.attributes["outcome"] == "ok"
        assert sign.transport == ("grpc" if protocol == "grpc" else "http")
        assert sign.resource["service.name"] == "aegis-under-test"
        assert sign.resource["k8s.pod.name"] == "model-pod-1"
        vault_call = next(s for s in spans if s.name == "vault sign")
        assert vault_call.parent_span_id == sign.span_id, "the Vault call is a child of the request"
        assert vault_call.attributes["http.response.status_code"] == 200
        verify = next(s for s in spans if s.name == "aegis verify")
        assert verify.parent_span_id == verify_parent
        assert verify.attributes["outcome"] == "ok"

        # Never the input, in any encoding, in anything exported.
        for body in receiver.received.raw_bodies:
            for form in (marker, b64(marker).encode(), signature.encode()):
                assert form not in body, "an exported span or metric holds the signed input"

        # OpenBao received the Vault call's context: same trace, the Vault span as parent.
        def vault_saw() -> list:
            if not vault_audit_log.exists():
                return []
            seen = []
            for line in vault_audit_log.read_text().splitlines():
                entry = json.loads(line)
                tp = entry.get("request", {}).get("headers", {}).get("traceparent")
                if entry.get("type") == "request" and tp and entry["request"]["path"].startswith("transit/sign/"):
                    seen.extend(tp)
            return seen

        receiver.wait("OpenBao's audit entry with the traceparent", lambda: bool(vault_saw()))
        assert f"00-{trace_id}-{vault_call.span_id}-01" in vault_saw()

        # The same instruments, pushed over OTLP.
        receiver.wait(
            "metrics over OTLP",
            lambda: {"aegis_requests_total", "aegis_request_duration_seconds", "aegis_vault_requests_total"}
            <= set(receiver.metric_names()),
        )


def test_metrics_parse_count_requests_and_see_auth_failures(bao: Bao) -> None:
    r = bao.api("POST", "auth/token/create", json={"policies": ["root"], "ttl": "1h", "renewable": True})
    assert r.status_code == 200, r.text
    token = r.json()["auth"]["client_token"]
    marker = b"aegis-metrics-input-" + secrets.token_hex(8).encode()
    # AEGIS_LOG_FORMAT unset and no terminal: logs are JSON, as in a container.
    with running_sidecar(bao, token=token, AEGIS_LOG_FORMAT="", RUST_LOG="debug") as sidecar:
        before = scrape(sidecar.addr)
        assert value(before, "aegis_ready") == 1
        assert value(before, "aegis_vault_authenticated") == 1
        assert 0 < value(before, "aegis_vault_token_ttl_seconds") <= 3600
        assert value(before, "aegis_key_latest_version", key=KEY) == 1
        assert value(before, "aegis_key_oldest_valid_version", key=KEY) == 1
        assert value(before, "aegis_key_rotation_period_seconds", key=KEY) == 90 * 86400
        assert 0 <= value(before, "aegis_key_age_seconds", key=KEY) < 3600

        url = f"{sidecar.addr}/v1/transit"
        signatures = []
        for _ in range(3):
            r = requests.post(f"{url}/sign/{KEY}", json={"input": b64(marker)}, headers=VAULT_HEADERS, timeout=10)
            assert r.status_code == 200, r.text
            signatures.append(r.json()["data"]["signature"])
        batch = [{"input": b64(marker), "signature": s} for s in signatures] + [
            {"input": b64(b"tampered"), "signature": signatures[0]},
            {"input": b64(marker), "signature": signatures[0].replace("vault:v1:", "vault:v7:")},
        ]
        r = requests.post(f"{url}/verify/{KEY}", json={"batch_input": batch}, headers=VAULT_HEADERS, timeout=10)
        assert r.status_code == 200, r.text
        r = requests.post(f"{url}/sign/no-such-key", json={"input": b64(marker)}, headers=VAULT_HEADERS, timeout=10)
        assert r.status_code == 403, r.text

        after = scrape(sidecar.addr)
        delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
        assert delta("aegis_requests_total", operation="sign", key=KEY, outcome="ok") == 3
        assert delta("aegis_requests_total", operation="verify", key=KEY, outcome="ok") == 1
        assert delta("aegis_requests_total", operation="sign", key="_other", outcome="client_error") == 1
        assert delta("aegis_verify_results_total", key=KEY, result="valid") == 3
        assert delta("aegis_verify_results_total", key=KEY, result="invalid") == 1
        assert delta("aegis_verify_results_total", key=KEY, result="too_new") == 1
        assert delta("aegis_vault_requests_total", endpoint="sign", status="200") == 3
        assert delta("aegis_sign_batch_size_count") == 3
        assert delta("aegis_request_duration_seconds_count", operation="sign") == 4  # with the 403
        assert value(after, "aegis_request_duration_seconds_bucket", operation="sign", le="+Inf") >= 3

        # Every metric the alert rules and the dashboard query is in a live scrape.
        names = {name for name, _ in after}
        missing = referenced_metric_names() - OPTIONAL_METRICS - base_names_of_samples(names)
        assert not missing, f"queried by deploy/ but not exported: {sorted(missing)}"
        missing = set(CONTRACT) - OPTIONAL_METRICS - base_names_of_samples(names)
        assert not missing, f"in the metric contract but not exported: {sorted(missing)}"

        # Revoke the sidecar's token: the next sign finds out and the failure is counted.
        r = bao.api("POST", "auth/token/revoke", json={"token": token})
        assert r.status_code in (200, 204), r.text
        r = requests.post(f"{url}/sign/{KEY}", json={"input": b64(marker)}, headers=VAULT_HEADERS, timeout=10)
        assert r.status_code >= 400, r.text
        revoked = scrape(sidecar.addr)
        assert value(revoked, "aegis_vault_auth_failures_total", method="token") > value(
            after, "aegis_vault_auth_failures_total", method="token"
        )
        assert value(revoked, "aegis_vault_authenticated") == 0
        assert value(revoked, "aegis_ready") == 0

        logs = sidecar.proc.output()
    lines = [line for line in logs.splitlines() if line.strip()]
    assert lines, "aegis wrote no logs"
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"timestamp", "level"} <= set(entry), line
    for secret in (token, marker.decode(), b64(marker)):
        assert secret not in logs, "a token or input reached the logs"


def test_a_silent_or_absent_receiver_never_fails_a_request(bao: Bao) -> None:
    """Spans go to a gRPC receiver that accepts connections and never answers; metrics to an
    HTTP port where nothing listens. Requests are answered all the same (each within a 2 s
    client timeout, far below the 10 s export timeout a blocked request would wait out), and
    the metrics listener serves the counts."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)
    absent = free_port()
    metrics_port = free_port()
    try:
        with running_sidecar(
            bao,
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}",
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"http://127.0.0.1:{absent}/v1/metrics",
            OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="http/protobuf",
            OTEL_METRIC_EXPORT_INTERVAL="100",
            OTEL_BSP_SCHEDULE_DELAY="10",
            OTEL_BSP_MAX_QUEUE_SIZE="64",
            AEGIS_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        ) as sidecar:
            url = f"{sidecar.addr}/v1/transit"
            for i in range(200):
                data = b64(f"request {i}".encode())
                r = requests.post(f"{url}/sign/{KEY}", json={"input": data}, headers=VAULT_HEADERS, timeout=2)
                assert r.status_code == 200, r.text
                sig = r.json()["data"]["signature"]
                r = requests.post(
                    f"{url}/verify/{KEY}", json={"input": data, "signature": sig}, headers=VAULT_HEADERS, timeout=2
                )
                assert r.status_code == 200 and r.json()["data"]["valid"] is True, r.text
            admin = f"http://127.0.0.1:{metrics_port}"
            samples = scrape(admin)
            assert value(samples, "aegis_requests_total", operation="sign", key=KEY, outcome="ok") == 200
            assert value(samples, "aegis_verify_results_total", key=KEY, result="valid") == 200
            assert requests.get(f"{admin}/readyz", timeout=5).status_code == 200
            r = requests.post(f"{admin}/v1/transit/sign/{KEY}", json={"input": "aGk="}, timeout=5)
            assert r.status_code == 404, "the metrics listener serves no Transit API"
            # SIGTERM: the last export to the silent receiver is abandoned after 3 s; exit 0.
            assert sidecar.proc.terminate(timeout=8) == 0, sidecar.proc.describe()
    finally:
        silent.close()


def test_a_model_that_fails_verification_is_counted_over_otlp(
    sidecar, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """`aegis model verify` in an init container cannot be scraped: its failure is pushed
    over OTLP at exit as aegis_model_verify_failures_total{key, reason}."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x01" * 4096)
    signature = tmp_path / "model.sig"
    env = clean_env(VAULT_ADDR=sidecar.addr, AEGIS_LOG_FORMAT="text")
    aegis = [aegis_path(), "model"]
    signed = subprocess.run(
        [*aegis, "sign", "--key", KEY, "--signature", str(signature), str(model)], env=env, capture_output=True, text=True
    )
    assert signed.returncode == 0, signed.stderr
    (model / "weights.bin").write_bytes(b"\x02" * 4096)
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    refused = subprocess.run(
        [*aegis, "verify", "--key", KEY, "--signature", str(signature), str(model)], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 65, refused.stderr
    assert "aegis_model_verify_failures_total" in receiver.metric_names(), receiver.metric_names()
