"""Regenerates the fuzz seed corpora and fixtures from a real OpenBao (and the real
`model_signing` and `aegis` binaries): `.venv/bin/python fuzz/make_corpus.py`.

Writes (replacing what is there):
  fixtures/keys/<type>.json      `GET transit/keys/<name>`'s `data`, one key per Transit type
  fixtures/oms/*.pem             the public keys of the OMS bundles below
  corpus/signature/*             `vault:vN:...` strings Transit returned
  corpus/signature_der/*         the same signatures, base64-decoded
  corpus/request_json/*          sign and verify request bodies carrying them
  corpus/public_key/*            key-type byte + public key text; 0x80 + keys `data` JSON
  corpus/oms_bundle/*            bundles by `model_signing sign key` and `aegis model sign`,
                                 and their decoded in-toto statements

The fuzz targets read the same fixtures (fuzz/src/lib.rs), so the seeds verify there.
Needs scripts/install-tools.sh (bao, model_signing) and `cargo build` (target/debug/aegis).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
sys.path.insert(0, str(FUZZ.parent / "tests" / "interop"))

from conftest import REPO, aegis_path, clean_env, running_bao  # noqa: E402

# Same order as KEY_TYPES in fuzz/src/lib.rs: the public_key target's selector byte.
KEY_TYPES = ["ed25519", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa-2048", "rsa-3072", "rsa-4096"]
# Same as MESSAGE in fuzz/src/lib.rs: what every seed signature signs.
MESSAGE = b"aegis fuzz seed"
B64 = base64.b64encode(MESSAGE).decode()


def b64decode_sig(sig: str, jws: bool) -> bytes:
    enc = sig.split(":", 2)[2]
    if jws:
        return base64.urlsafe_b64decode(enc + "=" * (-len(enc) % 4))
    return base64.b64decode(enc)


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def main() -> None:
    corpus = FUZZ / "corpus"
    for d in ("signature", "signature_der", "request_json", "public_key", "oms_bundle"):
        shutil.rmtree(corpus / d, ignore_errors=True)
    shutil.rmtree(FUZZ / "fixtures", ignore_errors=True)

    with running_bao() as bao:

        def api(method: str, path: str, body: dict | None = None) -> dict:
            r = bao.api(method, path, json=body)
            assert r.status_code in (200, 204), f"{method} {path}: {r.status_code} {r.text}"
            return r.json() if r.status_code == 200 else {}

        for kind in KEY_TYPES:
            name = f"fz-{kind}"
            api("POST", f"transit/keys/{name}", {"type": kind})
            # Two versions for the curve and ed25519 keys: keysets with history.
            if kind in ("ed25519", "ecdsa-p256"):
                api("POST", f"transit/keys/{name}/rotate")

            variants: list[tuple[str, dict]] = [("default", {})]
            if kind.startswith("ecdsa"):
                variants += [
                    ("jws", {"marshaling_algorithm": "jws"}),
                    ("sha2-512", {"hash_algorithm": "sha2-512"}),
                    ("sha3-256", {"hash_algorithm": "sha3-256"}),
                ]
            if kind.startswith("rsa"):
                variants += [
                    ("pkcs1v15", {"signature_algorithm": "pkcs1v15"}),
                    ("pss-sha2-384", {"hash_algorithm": "sha2-384"}),
                ]
            if kind in ("ed25519", "ecdsa-p256"):
                variants += [("v1", {"key_version": 1})]
            for label, opts in variants:
                signed = api("POST", f"transit/sign/{name}", {"input": B64, **opts})["data"]["signature"]
                stem = f"{kind}-{label}"
                write(corpus / "signature" / stem, signed)
                write(corpus / "signature_der" / stem, b64decode_sig(signed, opts.get("marshaling_algorithm") == "jws"))
                verify = {"input": B64, "signature": signed, **{k: v for k, v in opts.items() if k != "key_version"}}
                # Vault itself must call every seed valid.
                assert api("POST", f"transit/verify/{name}", verify)["data"]["valid"] is True, (name, verify)
                write(corpus / "request_json" / f"verify-{stem}.json", json.dumps(verify))
                write(corpus / "request_json" / f"sign-{stem}.json", json.dumps({"input": B64, **opts}))
            batch = api(
                "POST",
                f"transit/sign/{name}",
                {"batch_input": [{"input": B64, "reference": "a"}, {"input": "", "reference": "b"}]},
            )["data"]["batch_results"]
            write(
                corpus / "request_json" / f"verify-{kind}-batch.json",
                json.dumps(
                    {
                        "batch_input": [
                            {"input": B64, "signature": batch[0]["signature"], "reference": "a"},
                            {"input": "", "signature": batch[1]["signature"], "reference": "b"},
                            {"input": B64, "signature": "vault:v9:AAAA", "reference": "c"},
                        ]
                    }
                ),
            )

            data = api("GET", f"transit/keys/{name}")["data"]
            write(FUZZ / "fixtures" / "keys" / f"{kind}.json", json.dumps(data, indent=1, sort_keys=True) + "\n")
            selector = bytes([KEY_TYPES.index(kind)])
            for version, entry in sorted(data["keys"].items()):
                write(corpus / "public_key" / f"{kind}-v{version}", selector + entry["public_key"].encode())
            write(corpus / "public_key" / f"keyset-{kind}", b"\x80" + json.dumps(data).encode())

        # HMAC verify bodies: classified and sent to Vault whole by the sidecar.
        write(corpus / "request_json" / "verify-hmac.json", json.dumps({"input": B64, "hmac": "vault:v1:AAAA"}))

        with tempfile.TemporaryDirectory(prefix="fuzz-corpus-") as tmp:
            oms_bundles(Path(tmp), bao, corpus / "oms_bundle")


def oms_bundles(tmp: Path, bao, out: Path) -> None:
    """One bundle from the upstream tool with a local P-256 key, one from `aegis model
    sign` with a Transit P-384 key; their public keys go to fixtures/oms."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    model = tmp / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(bytes(range(256)) * 16)
    (model / "config.json").write_text('{"layers": 2}')
    (model / "sub" / "vocab.txt").write_text("a\nb\n")

    private = ec.generate_private_key(ec.SECP256R1())
    priv = tmp / "private.pem"
    priv.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write(FUZZ / "fixtures" / "oms" / "upstream-p256.pem", pub)
    sig = tmp / "upstream.sig"
    run([str(REPO / ".venv/bin/model_signing"), "sign", "key", "--private_key", str(priv), "--signature", str(sig), str(model)])
    save_bundle(sig, out / "upstream-p256")

    key = "fz-oms-ecdsa-p384"
    r = bao.api("POST", f"transit/keys/{key}", json={"type": "ecdsa-p384"})
    assert r.status_code in (200, 204), r.text
    sig = tmp / "aegis.sig"
    env = clean_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token, AEGIS_LOG_FORMAT="text")
    run([aegis_path(), "model", "sign", "--key", key, "--signature", str(sig), str(model)], env=env)
    save_bundle(sig, out / "aegis-p384")
    pem = bao.api("GET", f"transit/keys/{key}").json()["data"]["keys"]["1"]["public_key"]
    write(FUZZ / "fixtures" / "oms" / "transit-p384.pem", pem)


def save_bundle(sig: Path, stem: Path) -> None:
    text = sig.read_bytes()
    write(stem.with_suffix(".sig"), text)
    payload = base64.b64decode(json.loads(text)["dsseEnvelope"]["payload"])
    write(stem.with_suffix(".statement.json"), payload)


def run(argv: list[str], env: dict | None = None) -> None:
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{argv[0]} failed ({p.returncode}): {p.stderr}"


if __name__ == "__main__":
    main()
