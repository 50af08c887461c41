"""Model verification through the sidecar (`POST /v1/aegis/model/verify`) against a real
OpenBao: models signed with `aegis model sign` through a running `aegis serve`, then
verified by the same sidecar with AEGIS_MODEL_ROOTS set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

import time

from conftest import REPO, aegis_path, clean_env, running_bao, running_sidecar

KEY = "runtime-p256"
PATH = "/v1/aegis/model/verify"
HEADERS = {"X-Vault-Request": "true"}


@pytest.fixture(scope="module")
def key(bao) -> str:
    r = bao.api("POST", f"transit/keys/{KEY}", json={"type": "ecdsa-p256"})
    assert r.status_code in (200, 204), r.text
    return KEY


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple:
    base = tmp_path_factory.mktemp("roots")
    a, b = base / "a", base / "b"
    a.mkdir()
    b.mkdir()
    return a, b


@pytest.fixture(scope="module")
def side(bao, key, roots):
    with running_sidecar(bao, AEGIS_KEYS=key, AEGIS_MODEL_ROOTS=f"{roots[0]}:{roots[1]}") as s:
        yield s


def make_model(parent: Path, name: str = "model") -> Path:
    model = parent / name
    (model / "tok").mkdir(parents=True)
    (model / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    (model / "config.json").write_text('{"layers": 2}')
    (model / "tok" / "vocab.txt").write_text("a\nb\n")
    return model


def sign(addr: str, model: Path, sig: Path, *flags: str) -> None:
    env = clean_env(VAULT_ADDR=addr, AEGIS_LOG_FORMAT="text")
    p = subprocess.run(
        [aegis_path(), "model", "sign", "--key", KEY, "--signature", str(sig), *flags, str(model)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr


def ask(addr: str, body, headers=None) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{addr}{PATH}", data=data, headers={**HEADERS, **(headers or {})}, timeout=60)


def signed_model(side, root: Path, name: str) -> tuple:
    model = make_model(root, name)
    sig = root / f"{name}.sig"
    sign(side.addr, model, sig)
    return model, sig


def test_valid_model(side, roots):
    model, sig = signed_model(side, roots[0], "valid")
    r = ask(side.addr, {"model": str(model), "signature": str(sig), "key": KEY})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["valid"] is True and data["key_version"] == 1
    assert data["model_name"] == "valid" and data["files"] == 3
    assert data["bytes"] == 256 * 4096 + len('{"layers": 2}') + 4


@pytest.mark.parametrize(
    "tamper,field,name",
    [
        ("changed", "changed", "weights.bin"),
        ("added", "added", "tok/extra.txt"),
        ("missing", "missing", "config.json"),
    ],
)
def test_tampered_model_names_exactly_that_file(side, roots, tamper, field, name):
    model, sig = signed_model(side, roots[0], f"tampered-{tamper}")
    if tamper == "changed":
        data = bytearray((model / name).read_bytes())
        data[1000] ^= 1
        (model / name).write_bytes(bytes(data))
    elif tamper == "added":
        (model / name).write_text("new")
    else:
        (model / name).unlink()
    r = ask(side.addr, {"model": str(model), "signature": str(sig), "key": KEY})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["valid"] is False and data["reason"] == "model_mismatch"
    expected = {"changed": [], "added": [], "missing": []}
    expected[field] = [name]
    assert {k: data[k] for k in expected} == expected


def test_a_sharded_blake2_model_is_verified_by_the_bundles_serialization(side, roots):
    model = make_model(roots[0], "sharded")
    sig = roots[0] / "sharded.sig"
    # weights.bin (1 MiB) in 11 shards of 100 000 bytes, each a BLAKE2b-512 digest.
    sign(side.addr, model, sig, "--shard-size", "100000", "--hashing-algorithm", "blake2")
    r = ask(side.addr, {"model": str(model), "signature": str(sig), "key": KEY})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["valid"] is True and r.json()["data"]["files"] == 3, r.text
    data = bytearray((model / "weights.bin").read_bytes())
    data[-1] ^= 1
    (model / "weights.bin").write_bytes(bytes(data))
    r = ask(side.addr, {"model": str(model), "signature": str(sig), "key": KEY})
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert (d["valid"], d["changed"], d["added"], d["missing"]) == (False, ["weights.bin"], [], []), r.text


def test_paths_outside_one_root_are_refused(side, roots, tmp_path):
    model, sig = signed_model(side, roots[0], "confined")
    outside = make_model(tmp_path, "outside")
    (roots[0] / "link-out").symlink_to(outside)
    other_sig = roots[1] / "other.sig"
    other_sig.write_bytes(sig.read_bytes())
    for m, s in [
        (f"{model}/../../{tmp_path.name}/outside", str(sig)),
        (str(roots[0] / "link-out"), str(sig)),
        (str(model), str(other_sig)),
        ("confined", str(sig)),
        (str(outside), str(sig)),
    ]:
        r = ask(side.addr, {"model": m, "signature": s, "key": KEY})
        assert r.status_code == 403, (m, s, r.text)
        assert "AEGIS_MODEL_ROOTS" in r.json()["errors"][0]


def test_symlinks_and_bad_input_are_400(side, roots, tmp_path):
    model, sig = signed_model(side, roots[0], "links")
    body = {"model": str(model), "signature": str(sig), "key": KEY}
    r = ask(side.addr, {**body, "allow_symlinks": True})
    assert r.status_code == 400 and "allow_symlinks" in r.json()["errors"][0], r.text
    for bad in ["/etc/passwd", "../x"]:
        r = ask(side.addr, {**body, "ignore_paths": [bad]})
        assert r.status_code == 400 and "ignore path" in r.json()["errors"][0], r.text
    secret = tmp_path / "secret"
    secret.write_text("outside")
    (model / "leak").symlink_to(secret)
    r = ask(side.addr, body)
    assert r.status_code == 400 and "symbolic link" in r.json()["errors"][0], r.text
    r = ask(side.addr, b"{not json")
    assert r.status_code == 400 and r.json()["errors"], r.text


def test_off_without_roots(bao, key, tmp_path):
    with running_sidecar(bao, AEGIS_KEYS=key) as s:
        r = ask(s.addr, {"model": str(tmp_path), "signature": str(tmp_path / "x"), "key": KEY})
        assert r.status_code == 403 and "AEGIS_MODEL_ROOTS" in r.json()["errors"][0], r.text


def test_verify_permission_does_not_imply_verify_model(bao, key, roots, tmp_path):
    token = tmp_path / "t"
    token.write_text("attacker-token\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[caller]]\nname = "verifier"\ntoken_file = "{token}"\nverify = ["{KEY}"]\n')
    with running_sidecar(bao, AEGIS_KEYS=key, AEGIS_MODEL_ROOTS=str(roots[0]), AEGIS_POLICY_FILE=str(policy)) as s:
        r = ask(s.addr, {"model": str(roots[0]), "signature": str(roots[0] / "x"), "key": KEY},
                {"X-Vault-Token": "attacker-token"})
        assert r.status_code == 403 and "may not verify models" in r.json()["errors"][0], r.text


def test_second_request_at_once_is_429(side, roots):
    model = roots[0] / "big"
    model.mkdir()
    for i in range(8):
        (model / f"w{i}.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    sig = roots[0] / "big.sig"
    sign(side.addr, model, sig)
    body = {"model": str(model), "signature": str(sig), "key": KEY}
    first = []
    t = threading.Thread(target=lambda: first.append(ask(side.addr, body)))
    t.start()
    answers = []
    while t.is_alive() and not any(a.status_code == 429 for a in answers):
        answers.append(ask(side.addr, body))
    t.join()
    # Whichever of the two got the slot first, the other was answered 429 at once.
    answers += first
    busy = [a for a in answers if a.status_code == 429]
    done = [a for a in answers if a.status_code == 200]
    assert busy and done, [a.status_code for a in answers]
    assert busy[0].headers["Retry-After"] == "1"
    assert all(a.json()["data"]["valid"] is True for a in done)


def test_example_refuses_a_changed_adapter(side, roots):
    model, sig = signed_model(side, roots[0], "adapter")
    example = REPO / "examples/model-server/verify_before_load.py"
    env = clean_env(AEGIS_ADDR=side.addr)
    run = lambda: subprocess.run(
        [sys.executable, str(example), "--key", KEY, "--signature", str(sig), str(model)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    ok = run()
    assert ok.returncode == 0 and "valid" in ok.stdout, ok.stderr
    (model / "config.json").write_text("{}")
    bad = run()
    assert bad.returncode == 1 and "config.json" in bad.stderr, bad.stderr


def test_audited_with_the_version_and_refused_paths_not_audited(bao, key, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    audit = tmp_path / "audit.jsonl"
    with running_sidecar(bao, AEGIS_KEYS=key, AEGIS_MODEL_ROOTS=str(root), AEGIS_AUDIT_FILE=str(audit)) as s:
        model, sig = signed_model(s, root, "audited")
        before = audit.read_text() if audit.exists() else ""
        r = ask(s.addr, {"model": str(tmp_path), "signature": str(sig), "key": KEY})
        assert r.status_code == 403, r.text
        r = ask(s.addr, {"model": str(model), "signature": str(sig), "key": KEY})
        assert r.status_code == 200 and r.json()["data"]["valid"] is True, r.text
        deadline = time.monotonic() + 10
        events = []
        while not events and time.monotonic() < deadline:
            lines = audit.read_text()[len(before):].splitlines() if audit.exists() else []
            # Every event since: the 403 left none (nothing was opened, nothing audited).
            events = [e for e in map(json.loads, lines) if e["event"] != "sign"]
            time.sleep(0.05)
    assert len(events) == 1, events
    (e,) = events
    assert (e["event"], e["key"], e["versions"], e["target"]) == ("verify_model", KEY, [1], str(model.resolve())), e
    assert e["result"] == "ok", e


def test_a_version_past_its_retention_window_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    grace = 4.0
    with running_bao() as bao:
        r = bao.api("POST", f"transit/keys/{KEY}", json={"type": "ecdsa-p256"})
        assert r.status_code in (200, 204), r.text
        with running_sidecar(bao, AEGIS_KEYS=KEY) as signer:
            model, sig = signed_model(signer, root, "retired")
        rotated = subprocess.run(
            [aegis_path(), "rotate", "--key", KEY, "--grace", f"{grace:g}s", "--force", "--json"],
            env=clean_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token, AEGIS_LOG_FORMAT="text"),
            capture_output=True, text=True, timeout=60,
        )
        assert rotated.returncode == 0, rotated.stderr
        started = time.monotonic()
        with running_sidecar(bao, AEGIS_KEYS=KEY, AEGIS_MODEL_ROOTS=str(root)) as s:
            body = {"model": str(model), "signature": str(sig), "key": KEY}
            r = ask(s.addr, body)
            assert r.status_code == 200 and r.json()["data"]["key_version"] == 1, r.text
            while r.status_code == 200 and time.monotonic() < started + grace + 10:
                time.sleep(0.1)
                r = ask(s.addr, body)
            assert r.status_code == 400, r.text
            assert "version 1" in r.json()["errors"][0] and "retire" in r.json()["errors"][0], r.text


def small_files(parent: Path, name: str, count: int) -> Path:
    model = parent / name
    model.mkdir()
    for i in range(count):
        (model / f"w{i}.bin").write_bytes(bytes([i]) * 100)
    return model


BOUNDS = dict(AEGIS_MODEL_MAX_SIGNATURE_BYTES="4096", AEGIS_MODEL_MAX_RESOURCES="8")


def test_the_sidecars_bounds_refuse_a_model_before_it_is_hashed(bao, key, tmp_path):
    """Attacker: the model container, which can write into a model root, hands the sidecar a
    signature file or a model larger than AEGIS_MODEL_MAX_SIGNATURE_BYTES and
    AEGIS_MODEL_MAX_RESOURCES allow (what bounds the sidecar's memory). Each is a 400 naming
    the bound; a model within them, up to the byte, still verifies."""
    with running_sidecar(bao, AEGIS_KEYS=key, AEGIS_MODEL_ROOTS=str(tmp_path), **BOUNDS) as s:
        def verify(model: Path, sig: Path) -> requests.Response:
            return ask(s.addr, {"model": str(model), "signature": str(sig), "key": KEY})

        eight = small_files(tmp_path, "eight", 8)
        sign(s.addr, eight, tmp_path / "eight.sig")
        text = (tmp_path / "eight.sig").read_bytes()
        assert len(text) < 4096
        exact, over = tmp_path / "exact.sig", tmp_path / "over.sig"
        exact.write_bytes(text + b" " * (4096 - len(text)))
        over.write_bytes(text + b" " * (4097 - len(text)))
        r = verify(eight, exact)
        assert (r.status_code, r.json()["data"]["valid"], r.json()["data"]["files"]) == (200, True, 8), r.text
        r = verify(eight, over)
        assert r.status_code == 400, r.text
        assert f"{over} is larger than 4096 bytes, the most this verification reads" in r.json()["errors"][0]

        nine = small_files(tmp_path, "nine", 9)
        sign(s.addr, nine, tmp_path / "nine.sig")
        r = verify(nine, tmp_path / "nine.sig")
        assert r.status_code == 400, r.text
        assert "the signature lists 9 resources, more than the 8 this verification hashes" in r.json()["errors"][0]

        # Signed with 8 files, then a ninth written beside them: the walk stops at the bound.
        (eight / "w8.bin").write_bytes(b"planted")
        r = verify(eight, tmp_path / "eight.sig")
        assert r.status_code == 400, r.text
        assert "the model has more than 8 files, more than this verification hashes" in r.json()["errors"][0]


def test_a_caller_holding_the_body_budget_defers_model_verification(bao, key, tmp_path):
    """Attacker: a local caller holding the body budget with a sign upload whose bytes it
    withholds (Content-Length declared). A model verification takes its share of the same
    budget (AEGIS_MODEL_MAX_SIGNATURE_BYTES + 768 bytes per resource: 10 240 bytes here), so
    verifications and sign bodies together never hold more than AEGIS_MAX_BODY_BYTES_IN_FLIGHT.
    With 65 536 of its 75 776 bytes held, the verification (whose body fits) waits its turn
    for 5 s and is then answered 503 with Retry-After; once the caller lets go, it verifies.
    That a waiting verification is served before later requests is a unit test of
    `api::budget`."""
    budget = 65536 + 4096 + 8 * 768
    env = dict(AEGIS_KEYS=key, AEGIS_MODEL_ROOTS=str(tmp_path), AEGIS_MAX_BODY_BYTES="65536",
               AEGIS_MAX_BODY_BYTES_IN_FLIGHT=str(budget), **BOUNDS)
    with running_sidecar(bao, **env) as s:
        model = small_files(tmp_path, "m", 3)
        sign(s.addr, model, tmp_path / "m.sig")
        body = {"model": str(model), "signature": str(tmp_path / "m.sig"), "key": KEY}
        assert ask(s.addr, body).status_code == 200
        host, port = s.addr.removeprefix("http://").split(":")

        def hold() -> socket.socket:
            """A sign upload that declares 65 536 bytes and sends 10."""
            conn = socket.create_connection((host, int(port)))
            conn.sendall(
                f"POST /v1/transit/sign/{KEY} HTTP/1.1\r\nHost: {host}\r\nX-Vault-Request: true\r\n"
                "Content-Type: application/json\r\nContent-Length: 65536\r\n\r\n{\"input\":\"".encode()
            )
            return conn

        holder = hold()
        # Held once a 10 300-byte sign no longer fits beside it (polled: the sidecar takes
        # the bytes when it has read the holder's headers).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            filler = requests.post(f"{s.addr}/v1/transit/sign/{KEY}", headers=HEADERS, timeout=10,
                                   data=b'{"input":"' + b"A" * 10288 + b'"}')
            if filler.status_code != 200:
                break
        assert filler.status_code == 503, filler.text
        r = ask(s.addr, body)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1"
        assert r.json()["errors"] == [f"too many request bytes in flight (the limit is {budget} bytes): retry later"]
        waiting = []
        t = threading.Thread(target=lambda: waiting.append(ask(s.addr, body)))
        t.start()
        holder.close()
        t.join()
        assert (waiting[0].status_code, waiting[0].json()["data"]["valid"]) == (200, True), waiting[0].text
