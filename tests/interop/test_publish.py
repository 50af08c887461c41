"""Published keys against real verifiers: after a rotation, signatures of the retired but
still valid version verify from the keys `aegis keys publish` and the sidecar's
`/v1/aegis/keys/{key}/jwks.json` publish, although Vault itself no longer returns that
version's public key.

- Python `cryptography` loads every block of the PEM bundle and verifies a Transit
  signature by the retired version with the block its comment names (ed25519, ECDSA P-256).
- `jwcrypto` loads the sidecar's JWK Set and verifies a compact JWS signed by Transit with
  the retired version, picking the key by the JWS header's `kid` (`{key}:v1`).
- `model_signing verify key` verifies a model signed by the now-retired version with that
  version's PEM taken from the published bundle (and refuses it with the current one).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws

from conftest import aegis_path, clean_env, running_sidecar
from test_model_signing import describe, make_model, upstream_verify

KEYS = {"pub-ed25519": "ed25519", "pub-ecdsa-p256": "ecdsa-p256"}
MODEL_KEY = "pub-ecdsa-p256"
MESSAGE = b"signed by version 1"
GUARD = {"X-Vault-Request": "true"}
JOSE_ALG = {"ed25519": "EdDSA", "ecdsa-p256": "ES256"}
BLOCK = re.compile(r'# key "([^"]+)" version (\d+) \(kid "[^"]+"\): ([^\n]*)\n(-----BEGIN PUBLIC KEY-----\n.*?-----END PUBLIC KEY-----\n)', re.S)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def aegis(addr: str, *args, token: str | None = None) -> subprocess.CompletedProcess:
    env = clean_env(VAULT_ADDR=addr, AEGIS_LOG_FORMAT="text")
    if token:
        env["VAULT_TOKEN"] = token
    return subprocess.run([aegis_path(), *map(str, args)], env=env, capture_output=True, text=True, timeout=120)


def transit_sign(bao, key: str, data: bytes, **options) -> bytes:
    """Transit's signature over `data` with the key's latest version (v1 here), decoded."""
    r = bao.api("POST", f"transit/sign/{key}", json={"input": base64.b64encode(data).decode(), **options})
    assert r.status_code == 200, r.text
    signature = r.json()["data"]["signature"]
    assert signature.startswith("vault:v1:"), signature
    text = signature.removeprefix("vault:v1:")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) if options.get("marshaling_algorithm") == "jws" else base64.b64decode(text)


def compact_jws(bao, key: str, kind: str) -> str:
    """A compact JWS over MESSAGE signed by Transit: EdDSA over the signing input, or ES256
    with Transit's `jws` marshaling (r || s)."""
    header = b64u(json.dumps({"alg": JOSE_ALG[kind], "kid": f"{key}:v1"}).encode())
    signing_input = f"{header}.{b64u(MESSAGE)}".encode()
    options = {} if kind == "ed25519" else {"hash_algorithm": "sha2-256", "marshaling_algorithm": "jws"}
    return f"{signing_input.decode()}.{b64u(transit_sign(bao, key, signing_input, **options))}"


@pytest.fixture(scope="module")
def rotated(bao, tmp_path_factory):
    """Each key of KEYS signed by v1 (a message, a JWS, and for MODEL_KEY a model), then
    rotated with a one-hour window: v1 is retired but valid, v2 signs."""
    signed = {}
    model_dir = tmp_path_factory.mktemp("model")
    model, model_sig = make_model(model_dir), model_dir / "model.sig"
    for key, kind in KEYS.items():
        r = bao.api("POST", f"transit/keys/{key}", json={"type": kind})
        assert r.status_code in (200, 204), r.text
        options = {} if kind == "ed25519" else {"hash_algorithm": "sha2-256"}
        signed[key] = (transit_sign(bao, key, MESSAGE, **options), compact_jws(bao, key, kind))
        if key == MODEL_KEY:
            done = aegis(bao.addr, "model", "sign", "--key", key, "--signature", model_sig, model, token=bao.root_token)
            assert done.returncode == 0, describe(done)
        done = aegis(bao.addr, "rotate", "--key", key, "--force", "--grace", "1h", token=bao.root_token)
        assert done.returncode == 0, describe(done)
        # Vault itself no longer returns v1.
        assert list(bao.api("GET", f"transit/keys/{key}").json()["data"]["keys"]) == ["2"]
    return signed, model, model_sig


@pytest.fixture(scope="module")
def publish_sidecar(bao, rotated):
    with running_sidecar(bao, AEGIS_KEYS=",".join(KEYS)) as sidecar:
        yield sidecar


def bundle_blocks(bundle: str) -> dict:
    """{version: (window comment, PEM block)} of a published bundle."""
    blocks = {int(v): (window, pem) for _, v, window, pem in BLOCK.findall(bundle)}
    assert len(blocks) == bundle.count("-----BEGIN PUBLIC KEY-----"), bundle
    return blocks


@pytest.mark.parametrize("key", sorted(KEYS))
def test_cryptography_verifies_the_retired_version_from_the_pem_bundle(bao, rotated, key):
    signed, _, _ = rotated
    out = aegis(bao.addr, "keys", "publish", "--key", key, "--format", "pem", token=bao.root_token)
    assert out.returncode == 0, describe(out)
    blocks = bundle_blocks(out.stdout)
    assert sorted(blocks) == [1, 2], out.stdout
    assert blocks[2][0] == "current" and blocks[1][0].startswith("retired, verifies until "), out.stdout
    # Every block loads; the whole bundle loads too (as its first block, the signing version).
    keys = {v: serialization.load_pem_public_key(pem.encode()) for v, (_, pem) in blocks.items()}
    first = serialization.load_pem_public_key(out.stdout.encode())
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert first.public_bytes(*raw) == keys[2].public_bytes(*raw)

    signature, _ = signed[key]
    if KEYS[key] == "ed25519":
        keys[1].verify(signature, MESSAGE)
    else:
        keys[1].verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(Exception):
        if KEYS[key] == "ed25519":
            keys[2].verify(signature, MESSAGE)
        else:
            keys[2].verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("key", sorted(KEYS))
def test_jwcrypto_verifies_a_jws_of_the_retired_version_by_kid(bao, rotated, publish_sidecar, key):
    signed, _, _ = rotated
    r = requests.get(f"{publish_sidecar.addr}/v1/aegis/keys/{key}/jwks.json", headers=GUARD, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/jwk-set+json"
    # The sidecar's set is the CLI's.
    cli = aegis(bao.addr, "keys", "publish", "--key", key, token=bao.root_token)
    assert cli.returncode == 0 and json.loads(cli.stdout) == r.json(), describe(cli)
    keyset = jwk.JWKSet.from_json(r.text)
    assert sorted(k.get("kid") for k in keyset) == [f"{key}:v1", f"{key}:v2"]
    windows = {k["kid"]: k.get("aegis_retire_after") for k in r.json()["keys"]}
    assert windows[f"{key}:v2"] is None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", windows[f"{key}:v1"]), windows

    _, token = signed[key]
    verified = jws.JWS()
    verified.deserialize(token, key=keyset)
    assert verified.payload == MESSAGE
    assert verified.jose_header["kid"] == f"{key}:v1"
    # The current version's key does not verify it.
    with pytest.raises(jws.InvalidJWSSignature):
        jws.JWS().deserialize(token, key=keyset.get_key(f"{key}:v2"))


def test_model_signing_verifies_a_model_of_the_retired_version_with_its_published_pem(bao, rotated, tmp_path):
    _, model, model_sig = rotated
    out = aegis(bao.addr, "keys", "export", "--key", MODEL_KEY, token=bao.root_token)
    assert out.returncode == 0, describe(out)
    blocks = bundle_blocks(out.stdout)
    retired, current = tmp_path / "v1.pem", tmp_path / "v2.pem"
    retired.write_text(blocks[1][1])
    current.write_text(blocks[2][1])
    ok = upstream_verify(model, model_sig, retired)
    assert ok.returncode == 0, describe(ok)
    refused = upstream_verify(model, model_sig, current)
    assert refused.returncode != 0, describe(refused)
