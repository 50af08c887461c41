"""Real Vault clients (hvac, the bao CLI, plain HTTP) against the Aegis sidecar.

Every signature made through the sidecar is checked against OpenBao itself and vice
versa, so the sidecar has to be wire-compatible, not just self-consistent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import hvac
import pytest
import requests

from conftest import FORBIDDEN_KEY, KEYS, Proc, aegis_path, bao_path, clean_env, free_port, wait_for

BOGUS_TOKEN = "bogus-caller-token"  # the sidecar must ignore callers' tokens


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flipped(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


def raw_signature(sig: str) -> bytes:
    """The signature bytes of ``vault:v1:<base64>`` (JWS marshaling uses base64url)."""
    prefix, version, body = sig.split(":", 2)
    assert (prefix, version) == ("vault", "v1"), sig
    padded = body + "=" * (-len(body) % 4)
    if "-" in body or "_" in body:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded)


def sidecar_client(sidecar) -> hvac.Client:
    return hvac.Client(url=sidecar.addr, token=BOGUS_TOKEN, timeout=30)


def direct_client(bao) -> hvac.Client:
    return hvac.Client(url=bao.addr, token=bao.root_token, timeout=30)


def _variants(kind: str) -> list:
    if kind == "ed25519":
        return [{}, {"hash_algorithm": "sha2-512"}]
    if kind.startswith("ecdsa-"):
        return [
            {},
            {"hash_algorithm": "sha2-512"},
            {"marshaling_algorithm": "jws"},
            {"hash_algorithm": "sha2-512", "marshaling_algorithm": "jws"},
        ]
    if kind.startswith("rsa-"):
        return [
            {},
            {"hash_algorithm": "sha2-512"},
            {"signature_algorithm": "pkcs1v15"},
            {"hash_algorithm": "sha2-512", "signature_algorithm": "pkcs1v15"},
        ]
    raise AssertionError(kind)


SIGN_CASES = [
    pytest.param(name, kind, opts, id=f"{kind}-" + ("-".join(opts.values()) or "default"))
    for name, kind in KEYS
    for opts in _variants(kind)
]

# Expected raw signature sizes, to prove the requested marshaling / algorithm was applied.
_JWS_SIZE = {"ecdsa-p256": 64, "ecdsa-p384": 96}
_FIXED_SIZE = {"ed25519": 64, "rsa-2048": 256}


def _check_shape(kind: str, opts: dict, sig: str) -> None:
    raw = raw_signature(sig)
    if kind in _FIXED_SIZE:
        assert len(raw) == _FIXED_SIZE[kind], f"{kind} signature of {len(raw)} bytes: {sig}"
    elif opts.get("marshaling_algorithm") == "jws":
        assert len(raw) == _JWS_SIZE[kind], f"JWS {kind} signature of {len(raw)} bytes: {sig}"
    else:
        assert raw[0] == 0x30, f"ASN.1 {kind} signature should be a DER SEQUENCE: {sig}"


def _valid(client: hvac.Client, name: str, data: bytes, sig: str, opts: dict) -> bool:
    r = client.secrets.transit.verify_signed_data(name, hash_input=b64(data), signature=sig, **opts)
    valid = r["data"]["valid"]
    assert isinstance(valid, bool), r
    return valid


@pytest.mark.parametrize("name,kind,opts", SIGN_CASES)
def test_hvac_sign_verify_and_cross_check_with_openbao(bao, sidecar, name, kind, opts):
    side, direct = sidecar_client(sidecar), direct_client(bao)
    data = f"aegis interop {kind} {sorted(opts.items())}".encode() + os.urandom(16)

    # Signed through the sidecar.
    r = side.secrets.transit.sign_data(name, hash_input=b64(data), **opts)
    sig = r["data"]["signature"]
    assert r["data"]["key_version"] == 1, r
    _check_shape(kind, opts, sig)
    assert _valid(side, name, data, sig, opts) is True
    assert _valid(side, name, flipped(data), sig, opts) is False
    assert _valid(direct, name, data, sig, opts) is True, "OpenBao rejects a signature made via the sidecar"
    assert _valid(direct, name, flipped(data), sig, opts) is False

    # Signed by OpenBao directly, verified through the sidecar.
    r = direct.secrets.transit.sign_data(name, hash_input=b64(data), **opts)
    sig_direct = r["data"]["signature"]
    _check_shape(kind, opts, sig_direct)
    assert _valid(side, name, data, sig_direct, opts) is True, "the sidecar rejects OpenBao's signature"
    assert _valid(side, name, flipped(data), sig_direct, opts) is False

    if kind in ("ed25519",) or opts.get("signature_algorithm") == "pkcs1v15":
        # Deterministic schemes: the sidecar must produce OpenBao's exact signature.
        assert sig == sig_direct


@pytest.mark.parametrize("name,kind", [pytest.param(n, k, id=k) for n, k in KEYS])
def test_hvac_batch_sign_then_batch_verify(bao, sidecar, name, kind):
    side, direct = sidecar_client(sidecar), direct_client(bao)
    messages = [f"batch item {i} for {kind}".encode() for i in range(5)]
    refs = [f"ref-{i}" for i in range(5)]

    r = side.secrets.transit.sign_data(
        name, batch_input=[{"input": b64(m), "reference": ref} for m, ref in zip(messages, refs)]
    )
    results = r["data"]["batch_results"]
    assert len(results) == len(messages), r
    sigs = []
    for i, item in enumerate(results):
        assert "error" not in item or not item["error"], f"item {i}: {item}"
        assert item["key_version"] == 1, item
        assert item["reference"] == refs[i], f"batch results out of order: {results}"
        sigs.append(item["signature"])

    # Each signature belongs to the message at the same position (checked by OpenBao).
    for i, (m, s) in enumerate(zip(messages, sigs)):
        assert _valid(direct, name, m, s, {}) is True, f"item {i}"
        assert _valid(direct, name, messages[(i + 1) % len(messages)], s, {}) is False, f"item {i}"

    def batch_verify(pairs):
        resp = side.adapter.post(
            f"/v1/transit/verify/{name}",
            json={
                "batch_input": [
                    {"input": b64(m), "signature": s, "reference": ref}
                    for (m, s), ref in zip(pairs, refs)
                ]
            },
        )
        out = resp["data"]["batch_results"]
        assert len(out) == len(pairs), resp
        assert [item.get("reference") for item in out] == refs[: len(pairs)], out
        return [item.get("valid") for item in out]

    assert batch_verify(list(zip(messages, sigs))) == [True] * 5
    # Swap the signatures of items 1 and 2: exactly those two positions become invalid.
    swapped = list(sigs)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    assert batch_verify(list(zip(messages, swapped))) == [True, False, False, True, True]


def _bao_cli(bao, sidecar, tmp_path: Path, *args: str) -> dict:
    env = clean_env(BAO_ADDR=sidecar.addr, BAO_TOKEN=BOGUS_TOKEN, HOME=str(tmp_path))
    assert "VAULT_ADDR" not in env and "VAULT_TOKEN" not in env
    p = subprocess.run(
        [bao.path, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0, f"bao {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


@pytest.mark.parametrize("name,kind", [pytest.param(n, k, id=k) for n, k in KEYS])
def test_bao_cli_sign_verify_and_read_key(bao, sidecar, tmp_path, name, kind):
    data = f"signed with the bao CLI via aegis ({kind})".encode()

    out = _bao_cli(bao, sidecar, tmp_path, "write", "-format=json", f"transit/sign/{name}", f"input={b64(data)}")
    sig = out["data"]["signature"]
    assert sig.startswith("vault:v1:"), out

    out = _bao_cli(
        bao, sidecar, tmp_path,
        "write", "-format=json", f"transit/verify/{name}", f"input={b64(data)}", f"signature={sig}",
    )
    assert out["data"]["valid"] is True, out
    out = _bao_cli(
        bao, sidecar, tmp_path,
        "write", "-format=json", f"transit/verify/{name}", f"input={b64(flipped(data))}", f"signature={sig}",
    )
    assert out["data"]["valid"] is False, out
    assert _valid(direct_client(bao), name, data, sig, {}) is True

    # Hash algorithm in the path, as the CLI docs show it.
    out = _bao_cli(bao, sidecar, tmp_path, "write", "-format=json", f"transit/sign/{name}/sha2-384", f"input={b64(data)}")
    sig384 = out["data"]["signature"]
    assert _valid(direct_client(bao), name, data, sig384, {"hash_algorithm": "sha2-384"}) is True
    out = _bao_cli(
        bao, sidecar, tmp_path,
        "write", "-format=json", f"transit/verify/{name}/sha2-384", f"input={b64(data)}", f"signature={sig384}",
    )
    assert out["data"]["valid"] is True, out

    out = _bao_cli(bao, sidecar, tmp_path, "read", "-format=json", f"transit/keys/{name}")
    assert out["data"]["name"] == name, out
    assert out["data"]["type"] == kind, out
    keys = out["data"]["keys"]
    assert list(keys) == ["1"], out
    assert keys["1"]["public_key"], out
    upstream = bao.api("GET", f"transit/keys/{name}").json()["data"]["keys"]["1"]["public_key"]
    assert keys["1"]["public_key"] == upstream, "public key differs from OpenBao's"


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "sign/{key}", {"input": b64(b"x")}),
        ("PUT", "sign/{key}/sha2-256", {"input": b64(b"x")}),
        ("POST", "verify/{key}", {"input": b64(b"x"), "signature": "vault:v1:AAAA"}),
        ("GET", "keys/{key}", None),
    ],
    ids=["sign", "sign-hash-in-path", "verify", "read-key"],
)
def test_key_outside_allowlist_is_forbidden(bao, sidecar, method, path, body):
    name = FORBIDDEN_KEY[0]
    # The key exists and works in OpenBao: the 403 must come from the allowlist.
    assert bao.api("GET", f"transit/keys/{name}").status_code == 200
    r = requests.request(
        method,
        f"{sidecar.addr}/v1/transit/{path.format(key=name)}",
        json=body,
        headers={"X-Vault-Token": BOGUS_TOKEN, "X-Vault-Request": "true"},
        timeout=30,
    )
    assert r.status_code == 403, f"{r.status_code} {r.text}"
    assert r.json() == {"errors": ["permission denied"]}, r.text


# Every Vault client sends this; the sidecar's request-forgery guard requires it.
VAULT_HEADERS = {"X-Vault-Request": "true"}

_BANNER_BAO = re.compile(r"^  OpenBao dev server : (http://127\.0\.0\.1:(\d+))", re.MULTILINE)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _kill_leaked_dev_server(port: int) -> None:
    """Cleanup after a failure: kill the one bao process listening on this exact port."""
    needle = f"-dev-listen-address=127.0.0.1:{port}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def test_aegis_dev_smoke(tmp_path):
    bao_bin, aegis_bin = bao_path(), aegis_path()
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    proc = Proc(
        "aegis dev",
        [aegis_bin, "dev", "--listen", f"127.0.0.1:{port}", "--bao", bao_bin],
        env=clean_env(),
        cwd=str(tmp_path),
    )
    bao_port = None
    try:
        wait_for("aegis dev banner", lambda: _BANNER_BAO.search(proc.output()) is not None, proc)
        bao_port = int(_BANNER_BAO.search(proc.output()).group(2))
        wait_for(
            "aegis dev /readyz",
            lambda: requests.get(f"{addr}/readyz", timeout=2).status_code == 200,
            proc,
        )
        assert _accepts_connections(bao_port), "the banner's OpenBao address is not listening"

        data = b"hello from the aegis dev smoke test"
        r = requests.post(f"{addr}/v1/transit/sign/model-sign", json={"input": b64(data)}, headers=VAULT_HEADERS, timeout=30)
        assert r.status_code == 200, r.text
        sig = r.json()["data"]["signature"]
        assert sig.startswith("vault:v1:"), r.text
        for message, expected in [(data, True), (flipped(data), False)]:
            r = requests.post(
                f"{addr}/v1/transit/verify/model-sign",
                json={"input": b64(message), "signature": sig},
                headers=VAULT_HEADERS,
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert r.json()["data"]["valid"] is expected, r.text

        r = requests.get(f"{addr}/v1/transit/keys/model-sign-p256", headers=VAULT_HEADERS, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["type"] == "ecdsa-p256", r.text

        proc.popen.send_signal(signal.SIGINT)
        try:
            code = proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"aegis dev still running 10 s after SIGINT: {proc.describe()}", pytrace=False)
        assert code == 0, f"aegis dev exited with {code} after SIGINT: {proc.describe()}"

        deadline = time.monotonic() + 3
        while _accepts_connections(bao_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _accepts_connections(bao_port), (
            f"the OpenBao dev server on port {bao_port} is still running after aegis dev exited"
        )
    finally:
        proc.stop()
        if bao_port is not None and _accepts_connections(bao_port):
            _kill_leaked_dev_server(bao_port)
