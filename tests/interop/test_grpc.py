"""The gRPC face with a real Python gRPC client generated from proto/ by grpcio-tools.

Against a real OpenBao and ``aegis serve``: sign (single, batch, digest), verify, read a
key, a WatchKeys update after a Transit rotation and when a retention window closes, the standard health check answering
SERVING, server reflection listing the services, and the guard's and the allowlist's
refusals as gRPC statuses.
"""

from __future__ import annotations

import hashlib
import secrets
import importlib
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import FORBIDDEN_KEY, REPO, aegis_path, clean_env, running_bao, running_sidecar

METADATA = (("x-vault-request", "true"),)
TIMEOUT = 30


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """Python stubs generated from proto/aegis/v1/signer.proto at test time."""
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(REPO / "proto/aegis/v1/signer.proto"),
        ],
        check=True,
    )
    sys.path.insert(0, str(out))
    try:
        yield SimpleNamespace(
            messages=importlib.import_module("aegis.v1.signer_pb2"),
            services=importlib.import_module("aegis.v1.signer_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def grpc_sidecar(tmp_path_factory):
    """A sidecar of its own (its keys get rotated), refreshing every second, also on a
    Unix socket (``sidecar.socket``)."""
    socket_path = tmp_path_factory.mktemp("sock") / "aegis.sock"
    with running_bao() as bao, running_sidecar(
        bao, AEGIS_REFRESH_INTERVAL="1s", AEGIS_LISTEN_UNIX=str(socket_path)
    ) as sidecar:
        sidecar.socket = socket_path
        yield bao, sidecar


@pytest.fixture
def channel(grpc_sidecar):
    _, sidecar = grpc_sidecar
    with grpc.insecure_channel(sidecar.addr.removeprefix("http://")) as ch:
        yield ch


def test_health_serving_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "aegis.v1.Signer"):
        # Health follows readiness within a quarter of a second: poll, with a deadline.
        deadline = time.monotonic() + 10
        while True:
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            if answer.status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, (service, answer)
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "aegis.v1.Signer" in services, services
    assert "grpc.health.v1.Health" in services, services


def test_sign_verify_and_read_key(pb, channel):
    m = pb.messages
    stub = pb.services.SignerStub(channel)
    data = b"signed over gRPC"
    signed = stub.Sign(
        m.SignRequest(key="k-ed25519", items=[m.SignItem(input=data)]), metadata=METADATA, timeout=TIMEOUT
    )
    (result,) = signed.results
    assert result.signature.startswith("vault:v1:") and result.key_version == 1, result
    for message, expected in [(data, True), (data + b"!", False)]:
        verified = stub.Verify(
            m.VerifyRequest(key="k-ed25519", items=[m.VerifyItem(input=message, signature=result.signature)]),
            metadata=METADATA,
            timeout=TIMEOUT,
        )
        assert [r.valid for r in verified.results] == [expected]

    # Batches: one result per item, in order, references echoed.
    inputs = [f"item {i}".encode() for i in range(3)]
    batch = stub.Sign(
        m.SignRequest(
            key="k-ecdsa-p256",
            options=m.SignOptions(hash_algorithm="sha2-384"),
            items=[m.SignItem(input=x, reference=str(i)) for i, x in enumerate(inputs)],
        ),
        metadata=METADATA,
        timeout=TIMEOUT,
    )
    assert [r.reference for r in batch.results] == ["0", "1", "2"], batch
    assert all(r.signature.startswith("vault:v1:") and not r.error for r in batch.results), batch
    checked = stub.Verify(
        m.VerifyRequest(
            key="k-ecdsa-p256",
            options=m.SignOptions(hash_algorithm="sha2-384"),
            items=[
                m.VerifyItem(input=x if i != 1 else b"tampered", signature=r.signature)
                for i, (x, r) in enumerate(zip(inputs, batch.results))
            ],
        ),
        metadata=METADATA,
        timeout=TIMEOUT,
    )
    assert [r.valid for r in checked.results] == [True, False, True]

    # A digest signed with prehashed, verified as a digest.
    digest = hashlib.sha256(b"a model manifest").digest()
    by_digest = stub.SignDigest(
        m.SignDigestRequest(key="k-ecdsa-p256", digest=digest, options=m.SignOptions(hash_algorithm="sha2-256")),
        metadata=METADATA,
        timeout=TIMEOUT,
    )
    verified = stub.Verify(
        m.VerifyRequest(
            key="k-ecdsa-p256",
            options=m.SignOptions(hash_algorithm="sha2-256", prehashed=True),
            items=[m.VerifyItem(input=digest, signature=by_digest.results[0].signature)],
        ),
        metadata=METADATA,
        timeout=TIMEOUT,
    )
    assert verified.results[0].valid

    key = stub.GetKey(m.GetKeyRequest(key="k-ecdsa-p256"), metadata=METADATA, timeout=TIMEOUT)
    assert key.name == "k-ecdsa-p256" and key.type == "ecdsa-p256" and key.latest_version >= 1
    assert key.versions[0].version == 1 and key.versions[0].validity == m.VALID
    assert key.versions[0].public_key.startswith("-----BEGIN PUBLIC KEY-----")


def test_watch_keys_sees_a_rotation(pb, channel, grpc_sidecar):
    bao, _ = grpc_sidecar
    m = pb.messages
    stub = pb.services.SignerStub(channel)
    before = bao.api("GET", "transit/keys/k-rsa-2048").json()["data"]["latest_version"]
    stream = stub.WatchKeys(m.WatchKeysRequest(keys=["k-rsa-2048"]), metadata=METADATA, timeout=TIMEOUT)
    first = next(stream)
    assert [k.latest_version for k in first.keys] == [before], first
    r = bao.api("POST", "transit/keys/k-rsa-2048/rotate")
    assert r.status_code in (200, 204), r.text
    update = next(stream)  # the sidecar's refresh (every second) sees the rotation
    (key,) = update.keys
    assert key.latest_version == before + 1, update
    assert [v.version for v in key.versions] == list(range(1, before + 2))
    assert all(v.validity == m.VALID for v in key.versions)
    stream.cancel()


def test_watch_keys_sees_a_retention_window_close(pb):
    """A retained version's window closing is an update by itself: no Vault change, and
    the sidecar's refresh (default 30 s) does not run in between."""
    m = pb.messages
    grace = 10.0
    with running_bao() as bao:
        rotated = subprocess.run(
            [aegis_path(), "rotate", "--key", "k-ed25519", "--grace", f"{grace:g}s", "--force", "--json"],
            env=clean_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token, AEGIS_LOG_FORMAT="text"),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert rotated.returncode == 0, rotated.stderr
        with running_sidecar(bao) as sidecar, grpc.insecure_channel(sidecar.addr.removeprefix("http://")) as ch:
            stream = pb.services.SignerStub(ch).WatchKeys(
                m.WatchKeysRequest(keys=["k-ed25519"]), metadata=METADATA, timeout=TIMEOUT
            )
            (key,) = next(stream).keys
            assert [(v.version, v.validity) for v in key.versions] == [(1, m.VALID), (2, m.VALID)], key
            # The window closes at the recorded retire_after (the same clock: one machine).
            closes_at = datetime.fromisoformat(key.versions[0].retire_after.replace("Z", "+00:00")).timestamp()
            (key,) = next(stream).keys
            assert time.time() >= closes_at - 0.05, "an update before the window closed"
            assert [(v.version, v.validity) for v in key.versions] == [(1, m.EXPIRED), (2, m.VALID)], key
            assert "retire" in key.versions[0].reason, key
            stream.cancel()


def test_refusals_are_grpc_statuses(pb, channel, grpc_sidecar):
    m = pb.messages
    stub = pb.services.SignerStub(channel)
    request = m.SignRequest(key="k-ed25519", items=[m.SignItem(input=b"x")])
    with pytest.raises(grpc.RpcError) as no_header:
        stub.Sign(request, timeout=TIMEOUT)
    assert no_header.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "X-Vault-Request" in no_header.value.details()
    with pytest.raises(grpc.RpcError) as browser:
        stub.Sign(request, metadata=METADATA + (("origin", "https://attacker.example"),), timeout=TIMEOUT)
    assert browser.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as forbidden:
        stub.GetKey(m.GetKeyRequest(key=FORBIDDEN_KEY[0]), metadata=METADATA, timeout=TIMEOUT)
    assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as empty:
        stub.Sign(m.SignRequest(key="k-ed25519"), metadata=METADATA, timeout=TIMEOUT)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Refusals are client errors in the metrics, as on HTTP.
    _, sidecar = grpc_sidecar
    metrics = requests.get(f"{sidecar.addr}/metrics", timeout=TIMEOUT).text
    assert any(
        line.startswith("aegis_requests_total{")
        and 'operation="sign"' in line
        and 'key="k-ed25519"' in line
        and 'outcome="client_error"' in line
        and float(line.rsplit(" ", 1)[1]) >= 3
        for line in metrics.splitlines()
    ), metrics


def test_a_key_name_vault_has_no_route_for_is_not_found_on_grpc(pb, channel, grpc_sidecar):
    """Over HTTP, ``k%2Ded25519`` is percent-decoded to ``k-ed25519`` as Vault decodes it (one
    key, one bucket); a gRPC key field is not a URL, so that spelling (or any name outside
    Vault's name rule) is NOT_FOUND, never a second name for the same key."""
    m = pb.messages
    stub = pb.services.SignerStub(channel)
    for key in ("k%2Ded25519", "-k", "k/x", "k ed25519"):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Sign(m.SignRequest(key=key, items=[m.SignItem(input=b"x")]), metadata=METADATA, timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, key
        assert refused.value.details() == "unsupported path", key
        with pytest.raises(grpc.RpcError) as read:
            stub.GetKey(m.GetKeyRequest(key=key), metadata=METADATA, timeout=TIMEOUT)
        assert read.value.code() == grpc.StatusCode.NOT_FOUND, key
    _, sidecar = grpc_sidecar
    r = requests.post(
        f"{sidecar.addr}/v1/transit/sign/k%2Ded25519",
        json={"input": "eA=="},
        headers={"X-Vault-Request": "true"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["signature"].startswith("vault:v")


def test_the_unix_socket_serves_grpc_too(pb, grpc_sidecar):
    _, sidecar = grpc_sidecar
    m = pb.messages
    # grpc-core sends the socket path as :authority, which is not a valid authority for
    # HTTP/2 servers such as hyper: name one, as for any Unix-socket gRPC server.
    options = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(f"unix:{sidecar.socket}", options=options) as ch:
        key = pb.services.SignerStub(ch).GetKey(m.GetKeyRequest(key="k-ed25519"), metadata=METADATA, timeout=TIMEOUT)
    assert key.name == "k-ed25519" and key.versions[0].validity == m.VALID


def test_grpc_traceparent_metadata_continues_the_callers_trace(pb):
    """A gRPC caller's ``traceparent`` metadata becomes the parent of the request span, as
    the HTTP header does, and the Vault call is its child."""
    from otlp_receiver import OtlpReceiver

    m = pb.messages
    receiver = OtlpReceiver().start()
    try:
        with running_bao() as bao, running_sidecar(
            bao,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_BSP_SCHEDULE_DELAY="100",
        ) as sidecar, grpc.insecure_channel(sidecar.addr.removeprefix("http://")) as ch:
            trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
            metadata = METADATA + (("traceparent", f"00-{trace_id}-{caller_span}-01"),)
            r = pb.services.SignerStub(ch).Sign(
                m.SignRequest(key="k-ed25519", items=[m.SignItem(input=b"traced")]),
                metadata=metadata,
                timeout=TIMEOUT,
            )
            assert r.results[0].signature.startswith("vault:v1:"), r

            def of_trace():
                return [s for s in receiver.spans() if s.trace_id == trace_id]

            receiver.wait("the gRPC sign span and its Vault call", lambda: {"aegis sign", "vault sign"} <= {s.name for s in of_trace()})
            sign = next(s for s in of_trace() if s.name == "aegis sign")
            assert sign.parent_span_id == caller_span
            assert sign.attributes["outcome"] == "ok" and sign.attributes["key"] == "k-ed25519"
            vault_call = next(s for s in of_trace() if s.name == "vault sign")
            assert vault_call.parent_span_id == sign.span_id
    finally:
        receiver.stop()


def test_verify_model_over_grpc(pb, grpc_sidecar, tmp_path):
    """VerifyModel answers what POST /v1/aegis/model/verify answers (the same code)."""
    from test_model_runtime import KEY, make_model, sign

    bao, _ = grpc_sidecar
    r = bao.api("POST", f"transit/keys/{KEY}", json={"type": "ecdsa-p256"})
    assert r.status_code in (200, 204), r.text
    model = make_model(tmp_path)
    sig = tmp_path / "model.sig"
    with running_sidecar(bao, AEGIS_KEYS=KEY, AEGIS_MODEL_ROOTS=str(tmp_path)) as s:
        sign(s.addr, model, sig)
        m = pb.messages
        with grpc.insecure_channel(s.addr.removeprefix("http://")) as ch:
            stub = pb.services.SignerStub(ch)
            ask = lambda path: stub.VerifyModel(
                m.VerifyModelRequest(key=KEY, model=str(path), signature=str(sig)), metadata=METADATA, timeout=TIMEOUT
            )
            ok = ask(model)
            assert (ok.valid, ok.key_version, ok.model_name, ok.files) == (True, 1, "model", 3), ok
            (model / "config.json").unlink()
            bad = ask(model)
            assert (bad.valid, bad.reason, list(bad.missing), list(bad.changed), list(bad.added)) == (
                False, "model_mismatch", ["config.json"], [], []
            ), bad
            with pytest.raises(grpc.RpcError) as e:
                ask("/etc")
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value
