"""OpenSSF Model Signing interoperability: `aegis model sign|verify` against the upstream
`model_signing` 1.1.1 CLI, with Transit ECDSA keys in a real OpenBao behind a real
`aegis serve`.

- A model signed by `aegis model sign` through the sidecar (no token) verifies with
  `model_signing verify key` and the Transit version's PEM, for P-256, P-384 and P-521.
- After one byte changed, a file added or a file removed, both tools refuse it.
- A model signed by `model_signing sign key` with a local key verifies with
  `aegis model verify --public-key`.
- Bad bundles are refused with a clear message and exit 65, never a panic.
- Shard serialization (any shard size) and the blake2 hash, through the library's Python
  API (its CLI offers neither): what upstream signs, Aegis verifies and names the changed
  file; Aegis signs the very statement upstream signs for the same model and options, and
  upstream's API verifies it (blake2 only when told the hashing config: 1.1.1's own guess
  refuses the "blake2b" it writes; its CLI verifies files with SHA-256 only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import REPO, aegis_path, clean_env, running_sidecar

CURVES = {
    "p256": ("ecdsa-p256", ec.SECP256R1()),
    "p384": ("ecdsa-p384", ec.SECP384R1()),
    "p521": ("ecdsa-p521", ec.SECP521R1()),
}
KEY_PREFIX = "oms-"
NOT_ECDSA = KEY_PREFIX + "ed25519"
EXIT_REFUSED = 65
EXIT_DENIED = 77


def model_signing_bin() -> str:
    path = REPO / ".venv/bin/model_signing"
    if not path.is_file():
        pytest.fail(f"{path} is missing; run: bash scripts/install-tools.sh", pytrace=False)
    return str(path)


def run(argv: list, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv],
        env=env or clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def describe(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"


@pytest.fixture(scope="module")
def oms_keys(bao) -> list:
    """Transit ECDSA keys for each curve, and one ed25519 key; their names."""
    keys = [(KEY_PREFIX + k, k) for k, _ in CURVES.values()] + [(NOT_ECDSA, "ed25519")]
    for name, kind in keys:
        r = bao.api("POST", f"transit/keys/{name}", json={"type": kind})
        assert r.status_code in (200, 204), r.text
    return [name for name, _ in keys]


@pytest.fixture(scope="module")
def oms_sidecar(bao, oms_keys):
    """An `aegis serve` allowlisting the model signing keys."""
    with running_sidecar(bao, AEGIS_KEYS=",".join(oms_keys)) as sidecar:
        yield sidecar.addr


def aegis(addr: str, *args, token: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `aegis` binary with VAULT_ADDR=addr (and a token only when given)."""
    env = clean_env(VAULT_ADDR=addr, AEGIS_LOG_FORMAT="text")
    if token:
        env["VAULT_TOKEN"] = token
    return run([aegis_path(), *args], env=env, cwd=cwd)


def make_model(root: Path) -> Path:
    """A small model: a 3 MiB shard, a config, nested files, and git metadata."""
    model = root / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / ".git").mkdir()
    (model / "model-00001.safetensors").write_bytes(bytes(range(256)) * (3 * 4096))
    (model / "config.json").write_text('{"layers": 2}')
    (model / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    (model / "a-b").write_bytes(b"sorted between a/ and b")
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (model / ".gitignore").write_text("*.tmp\n")
    return model


def transit_pem(bao, key: str, version: int) -> str:
    r = bao.api("GET", f"transit/keys/{key}")
    assert r.status_code == 200, r.text
    return r.json()["data"]["keys"][str(version)]["public_key"]


def upstream_verify(model: Path, sig: Path, pem: Path) -> subprocess.CompletedProcess:
    return run([model_signing_bin(), "verify", "key", "--signature", sig, "--public_key", pem, model])


def flip_one_byte(model: Path) -> None:
    shard = model / "model-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))


TAMPERS = {
    "one-byte-changed": flip_one_byte,
    "file-added": lambda m: (m / "tokenizer" / "extra.txt").write_text("new"),
    "file-removed": lambda m: (m / "config.json").unlink(),
}


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_aegis_signed_model_verifies_with_upstream_and_tampering_is_refused(bao, oms_sidecar, tmp_path, curve):
    kind, _ = CURVES[curve]
    key = KEY_PREFIX + kind
    pristine = make_model(tmp_path / "pristine")
    sig = tmp_path / "model.sig"

    signed = aegis(oms_sidecar, "model", "sign", "--key", key, "--signature", sig, pristine)
    assert signed.returncode == 0, describe(signed)

    # The bundle's hint names Transit's PEM of version 1, byte for byte.
    pem_text = transit_pem(bao, key, 1)
    bundle = json.loads(sig.read_text())
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == hashlib.sha256(pem_text.encode()).hexdigest()
    pem = tmp_path / "key.pem"
    pem.write_text(pem_text)
    # `aegis keys export` (through the sidecar) gives the same PEM, after its comment lines.
    exported = aegis(oms_sidecar, "keys", "export", "--key", key, "--format", "pem")
    assert exported.returncode == 0, describe(exported)
    assert exported.stdout.endswith(f'# key "{key}" version 1 (kid "{key}:v1"): current\n{pem_text}'), describe(exported)
    assert exported.stdout.count("-----BEGIN") == 1, describe(exported)

    up = upstream_verify(pristine, sig, pem)
    assert up.returncode == 0, describe(up)
    for how in (["--key", key], ["--public-key", pem]):
        ok = aegis(oms_sidecar, "model", "verify", *how, "--signature", sig, pristine)
        assert ok.returncode == 0, describe(ok)

    for name, tamper in TAMPERS.items():
        model = tmp_path / name / "model"
        shutil.copytree(pristine, model)
        tamper(model)
        up = upstream_verify(model, sig, pem)
        assert up.returncode != 0, f"{name}: model_signing accepted a tampered model: {describe(up)}"
        mine = aegis(oms_sidecar, "model", "verify", "--key", key, "--signature", sig, model)
        assert mine.returncode == EXIT_REFUSED, f"{name}: {describe(mine)}"
        assert "does not match its signature" in mine.stderr, f"{name}: {describe(mine)}"


def local_key_pair(tmp_path: Path, curve) -> tuple:
    private = ec.generate_private_key(curve)
    priv = tmp_path / "private.pem"
    pub = tmp_path / "public.pem"
    priv.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_upstream_signed_model_verifies_offline_with_aegis(tmp_path, curve):
    _, ec_curve = CURVES[curve]
    priv, pub = local_key_pair(tmp_path, ec_curve)
    model = make_model(tmp_path)
    # Upstream's default: the signature inside the model directory (and ignored there).
    sig = model / "model.sig"
    signed = run([model_signing_bin(), "sign", "key", "--private_key", priv, "--signature", sig, model])
    assert signed.returncode == 0, describe(signed)

    # No VAULT_ADDR at all: offline.
    ok = run([aegis_path(), "model", "verify", "--public-key", pub, "--signature", sig, model])
    assert ok.returncode == 0, describe(ok)
    assert "match the signature" in ok.stdout

    flip_one_byte(model)
    bad = run([aegis_path(), "model", "verify", "--public-key", pub, "--signature", sig, model])
    assert bad.returncode == EXIT_REFUSED, describe(bad)
    assert "content changed" in bad.stderr, describe(bad)


def test_signing_directly_against_vault_uses_the_token(bao, oms_keys, tmp_path):
    key = KEY_PREFIX + "ecdsa-p384"
    model = make_model(tmp_path)
    # Inside the model, as upstream's default: the signature file is not hashed.
    sig = model / "model.sig"
    denied = aegis(bao.addr, "model", "sign", "--key", key, "--signature", sig, model)
    assert denied.returncode == EXIT_DENIED, describe(denied)
    assert not sig.exists()
    signed = aegis(bao.addr, "model", "sign", "--key", key, "--signature", sig, model, token=bao.root_token)
    assert signed.returncode == 0, describe(signed)
    verified = aegis(bao.addr, "model", "verify", "--key", key, "--signature", sig, model, token=bao.root_token)
    assert verified.returncode == 0, describe(verified)
    pem = tmp_path / "key.pem"
    pem.write_text(transit_pem(bao, key, 1))
    up = upstream_verify(model, sig, pem)
    assert up.returncode == 0, describe(up)


def _rewrite(sig: Path, out: Path, change) -> Path:
    bundle = json.loads(sig.read_text())
    change(bundle)
    out.write_text(json.dumps(bundle))
    return out


def _truncate(sig: Path, out: Path) -> Path:
    out.write_text(sig.read_text()[:150])
    return out


def _raw_signature(bundle: dict) -> None:
    """Replaces the DER signature by raw r||s (JWS style), which OMS refuses."""
    der = base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"])
    assert der[0] == 0x30
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(b"\x07" * 64).decode()


BAD_BUNDLES = {
    "truncated-json": (_truncate, "invalid JSON"),
    "wrong-payload-type": (
        lambda sig, out: _rewrite(sig, out, lambda b: b["dsseEnvelope"].update(payloadType="application/json")),
        "payloadType",
    ),
    "wrong-hint": (
        lambda sig, out: _rewrite(
            sig, out, lambda b: b["verificationMaterial"]["publicKey"].update(hint=hashlib.sha256(b"other").hexdigest())
        ),
        "no version of key",
    ),
    "non-der-signature": (lambda sig, out: _rewrite(sig, out, _raw_signature), "not an ASN.1 DER"),
    "payload-not-a-statement": (
        lambda sig, out: _rewrite(
            sig, out, lambda b: b["dsseEnvelope"].update(payload=base64.b64encode(b"[1,2]").decode())
        ),
        "signature does not verify",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_bad_bundles_are_refused_with_a_clear_message(oms_sidecar, tmp_path, case):
    key = KEY_PREFIX + "ecdsa-p256"
    model = make_model(tmp_path)
    sig = tmp_path / "model.sig"
    signed = aegis(oms_sidecar, "model", "sign", "--key", key, "--signature", sig, model)
    assert signed.returncode == 0, describe(signed)
    make, expected = BAD_BUNDLES[case]
    bad = make(sig, tmp_path / "bad.sig")
    result = aegis(oms_sidecar, "model", "verify", "--key", key, "--signature", bad, model)
    assert result.returncode == EXIT_REFUSED, describe(result)
    assert expected in result.stderr, describe(result)
    assert "panicked" not in result.stderr, describe(result)


def test_a_key_that_is_not_ecdsa_is_refused(oms_sidecar, tmp_path):
    model = make_model(tmp_path)
    sig = tmp_path / "model.sig"
    for command in ("sign", "verify"):
        if command == "verify":
            signed = aegis(oms_sidecar, "model", "sign", "--key", KEY_PREFIX + "ecdsa-p256", "--signature", sig, model)
            assert signed.returncode == 0, describe(signed)
        out = aegis(oms_sidecar, "model", command, "--key", NOT_ECDSA, "--signature", sig, model)
        assert out.returncode == EXIT_REFUSED and "ecdsa-p256" in out.stderr, f"{command}: {describe(out)}"


def test_keys_export_jwks_matches_the_pem(oms_sidecar, bao):
    key = KEY_PREFIX + "ecdsa-p521"
    out = aegis(oms_sidecar, "keys", "export", "--key", key, "--format", "jwks")
    assert out.returncode == 0, describe(out)
    (jwk,) = json.loads(out.stdout)["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["kid"]) == ("EC", "P-521", "ES512", f"{key}:v1")
    public = serialization.load_pem_public_key(transit_pem(bao, key, 1).encode())
    numbers = public.public_numbers()

    def b64u(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(66, "big")).rstrip(b"=").decode()

    assert (jwk["x"], jwk["y"]) == (b64u(numbers.x), b64u(numbers.y))
    missing = aegis(oms_sidecar, "keys", "export", "--key", key, "--version", "7")
    assert missing.returncode == EXIT_REFUSED and "no public key for version 7" in missing.stderr, describe(missing)


def test_ignore_paths_and_symlinks_as_upstream_reads_them(oms_sidecar, tmp_path):
    key = KEY_PREFIX + "ecdsa-p256"
    model = make_model(tmp_path)
    (model / "README.md").write_text("model card v1")
    sig = tmp_path / "model.sig"
    pem = tmp_path / "key.pem"
    exported = aegis(oms_sidecar, "keys", "export", "--key", key)
    assert exported.returncode == 0, describe(exported)
    pem.write_text(exported.stdout)

    # --ignore-paths resolves against the current directory, as upstream's does.
    signed = aegis(
        oms_sidecar, "model", "sign", "--key", key, "--signature", sig,
        "--ignore-paths", "model/README.md", "model", cwd=tmp_path,
    )
    assert signed.returncode == 0, describe(signed)
    (model / "README.md").write_text("model card v2: not signed, so not checked")
    # Both verifiers take the ignored paths from the signed manifest.
    up = upstream_verify(model, sig, pem)
    assert up.returncode == 0, describe(up)
    mine = aegis(oms_sidecar, "model", "verify", "--key", key, "--signature", sig, model)
    assert mine.returncode == 0, describe(mine)

    # A symbolic link is refused unless allowed; allowed, both tools hash a linked file
    # as its target and do not enter a linked directory.
    (model / "alias.json").symlink_to("config.json")
    (model / "tokenizer-link").symlink_to("tokenizer")
    refused = aegis(oms_sidecar, "model", "sign", "--key", key, "--signature", sig, model)
    assert refused.returncode == EXIT_REFUSED and "--allow-symlinks" in refused.stderr, describe(refused)
    signed = aegis(oms_sidecar, "model", "sign", "--key", key, "--signature", sig, "--allow-symlinks", model)
    assert signed.returncode == 0, describe(signed)
    up = run([model_signing_bin(), "verify", "key", "--signature", sig, "--public_key", pem, "--allow_symlinks", model])
    assert up.returncode == 0, describe(up)
    names = [r["name"] for r in json.loads(base64.b64decode(json.loads(sig.read_text())["dsseEnvelope"]["payload"]))["predicate"]["resources"]]
    assert "alias.json" in names and not any(n.startswith("tokenizer-link") for n in names), names


# Hashing options as the library's Python API takes them: (hashing_algorithm, shard_size),
# shard_size None meaning use_file_serialization.
HASHINGS = {
    "sha256-shards-1000000": ("sha256", 1_000_000),
    "sha256-shards-4097": ("sha256", 4097),
    "sha256-shards-default": ("sha256", 1_000_000_000),
    "blake2-shards-65536": ("blake2", 65_536),
    "blake2-files": ("blake2", None),
}


def upstream_hashing(algorithm: str, shard_size: int | None):
    from model_signing import hashing

    if shard_size is None:
        return hashing.Config().use_file_serialization(hashing_algorithm=algorithm)
    return hashing.Config().use_shard_serialization(hashing_algorithm=algorithm, shard_size=shard_size)


def upstream_sign(model: Path, sig: Path, priv: Path, algorithm: str, shard_size: int | None) -> None:
    from model_signing import signing

    cfg = signing.Config().use_elliptic_key_signer(private_key=priv)
    cfg.set_hashing_config(upstream_hashing(algorithm, shard_size))
    cfg.sign(model, sig)


def aegis_hashing_flags(algorithm: str, shard_size: int | None) -> list:
    flags = ["--hashing-algorithm", algorithm]
    return flags + (["--shard-size", str(shard_size)] if shard_size else [])


def statement(sig: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(sig.read_text())["dsseEnvelope"]["payload"]))


def comparable(st: dict) -> dict:
    """The statement with ignore_paths as a set: upstream writes them in a frozenset's
    order, which changes from run to run. (Its shard_size is a float, 1000000.0, that
    Python compares equal to Aegis's integer.)"""
    serialization = st["predicate"]["serialization"]
    serialization["ignore_paths"] = set(serialization.get("ignore_paths", []))
    return st


@pytest.mark.parametrize("case", sorted(HASHINGS))
def test_upstream_shards_and_blake2_verify_with_aegis_and_a_changed_shard_is_named(tmp_path, case):
    algorithm, shard_size = HASHINGS[case]
    priv, pub = local_key_pair(tmp_path, ec.SECP256R1())
    model = make_model(tmp_path)
    sig = tmp_path / "model.sig"
    upstream_sign(model, sig, priv, algorithm, shard_size)
    serialization_type = statement(sig)["predicate"]["serialization"]
    assert serialization_type["hash_type"] == ("blake2b" if algorithm == "blake2" else "sha256"), serialization_type
    assert serialization_type.get("shard_size") == shard_size, serialization_type

    ok = run([aegis_path(), "model", "verify", "--public-key", pub, "--signature", sig, model])
    assert ok.returncode == 0, describe(ok)
    assert "match the signature" in ok.stdout, describe(ok)

    flip_one_byte(model)
    bad = run([aegis_path(), "model", "verify", "--public-key", pub, "--signature", sig, model])
    assert bad.returncode == EXIT_REFUSED, describe(bad)
    assert bad.stderr.endswith('content changed: "model-00001.safetensors"\n'), describe(bad)


@pytest.mark.parametrize("case", sorted(HASHINGS))
def test_aegis_signs_upstreams_statement_and_upstream_verifies_it(bao, oms_sidecar, tmp_path, case):
    from model_signing import verifying

    algorithm, shard_size = HASHINGS[case]
    key = KEY_PREFIX + "ecdsa-p256"
    model = make_model(tmp_path)
    theirs, mine = tmp_path / "upstream.sig", tmp_path / "aegis.sig"
    priv, _ = local_key_pair(tmp_path, ec.SECP256R1())
    upstream_sign(model, theirs, priv, algorithm, shard_size)
    signed = aegis(oms_sidecar, "model", "sign", "--key", key, "--signature", mine,
                   *aegis_hashing_flags(algorithm, shard_size), model)
    assert signed.returncode == 0, describe(signed)
    # The same model and options: the same in-toto statement, resource for resource.
    assert comparable(statement(mine)) == comparable(statement(theirs))

    pem = tmp_path / "key.pem"
    pem.write_text(transit_pem(bao, key, 1))
    told = verifying.Config().use_elliptic_key_verifier(public_key=pem)
    told.set_hashing_config(upstream_hashing(algorithm, shard_size))
    told.verify(model, mine)
    # Without a hashing config, the library guesses it from the signed serialization (its
    # CLI never does: it always hashes files with SHA-256, so it cannot check these).
    guessing = verifying.Config().use_elliptic_key_verifier(public_key=pem)
    if algorithm == "blake2":
        # model_signing 1.1.1 writes hash_type "blake2b" but its guess only takes "blake2".
        with pytest.raises(ValueError, match="Unsupported hashing method blake2b"):
            guessing.verify(model, mine)
    else:
        guessing.verify(model, mine)

    flip_one_byte(model)
    with pytest.raises(ValueError, match="model-00001.safetensors"):
        told.verify(model, mine)


def test_more_shards_than_the_bound_are_refused_before_hashing(oms_sidecar, tmp_path):
    """A bundle naming more than 65 536 shards (or a sign asked for them) is refused: the
    work and memory per model are bounded whatever a bundle's shard_size says. A sign
    whose signature file would exceed the 16 MiB verification reads is refused too."""
    priv, pub = local_key_pair(tmp_path, ec.SECP256R1())
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(os.urandom(65_537 * 16))
    sig = tmp_path / "model.sig"
    upstream_sign(model, sig, priv, "sha256", 16)
    refused = run([aegis_path(), "model", "verify", "--public-key", pub, "--signature", sig, model])
    assert refused.returncode == EXIT_REFUSED, describe(refused)
    assert "the signature lists 65537 resources, more than the 65536" in refused.stderr, describe(refused)
    mine = tmp_path / "aegis.sig"
    asked = aegis(oms_sidecar, "model", "sign", "--key", KEY_PREFIX + "ecdsa-p256", "--signature", mine,
                  "--shard-size", "16", model)
    assert asked.returncode == EXIT_REFUSED and "more than 65536 shards" in asked.stderr, describe(asked)
    assert not mine.exists()
    # Under the bound but too many to list in a signature file verification would read:
    # refused before Transit is asked, rather than written and then refused by verify.
    (model / "w.bin").unlink()
    (model / ("w" * 200)).write_bytes(os.urandom(60_000 * 16))
    asked = aegis(oms_sidecar, "model", "sign", "--key", KEY_PREFIX + "ecdsa-p256", "--signature", mine,
                  "--shard-size", "16", model)
    assert asked.returncode == EXIT_REFUSED, describe(asked)
    assert "manifest of 60000 resources" in asked.stderr and "larger --shard-size" in asked.stderr, describe(asked)
    assert not mine.exists()
