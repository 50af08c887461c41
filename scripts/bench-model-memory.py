#!/usr/bin/env python3
"""Benchmark (not a test): the sidecar's peak memory while it verifies a model.

A release `aegis serve` runs against a real OpenBao dev server with the defaults plus
AEGIS_MODEL_ROOTS and AEGIS_CACHE_DIR, and the allocator settings the image ships (the
Dockerfile's GLIBC_TUNABLES; --no-image-env: without), a fresh process per case so that
VmHWM (/proc/PID/status) is that case's peak. The models are signed first by `aegis model sign`
against OpenBao directly (not through the measured sidecar):

  shards    one file cut into 16-byte shards, as many as make the largest signature file
            the sidecar reads by default (AEGIS_MODEL_MAX_SIGNATURE_BYTES, 4 MiB)
  files     the most files the sidecar walks by default (AEGIS_MODEL_MAX_RESOURCES,
            16 384), in 256 directories
  added     a one-file model whose directory also holds 16 383 files it does not sign
            (the walk's bound, with a small signature file)

Each case verifies the model twice through POST /v1/aegis/model/verify: cold (no digest
cache yet) and warm (every file from the cache). `--with-load` adds cases: a one-file
model, the shards model and the files model verified while 40 callers keep sending 8 MiB
sign bodies (the body budget full; the verification's own request is sent again while it
is refused with 503). Target: every
peak under the shipped pod's 64 MiB limit. Prints a table; with --json FILE writes it too.
--smoke: small models, no target checked (keeps the script working in scripts/test.sh).

  python3 scripts/bench-model-memory.py [--aegis target/release/aegis] [--with-load]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests/interop"))

import requests  # noqa: E402
from conftest import clean_env, running_bao, running_sidecar  # noqa: E402

LIMIT_MIB = 64
# The sidecar's defaults: AEGIS_MODEL_MAX_RESOURCES, AEGIS_MODEL_MAX_SIGNATURE_BYTES.
MAX_RESOURCES = 8192
MAX_SIGNATURE_BYTES = 2 << 20
KEY = "mem"
HEADERS = {"X-Vault-Request": "true"}


def image_env():
    """The allocator settings the image ships (the Dockerfile's `ENV GLIBC_TUNABLES=`), so
    that what is measured is what runs in the pod."""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV GLIBC_TUNABLES="):
            return {"GLIBC_TUNABLES": line.split("=", 1)[1]}
    sys.exit("the Dockerfile sets no GLIBC_TUNABLES")


def kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def sign(aegis, bao, model, sig, *extra):
    """Signs `model` with Transit key KEY through OpenBao itself; returns the exit and output."""
    env = clean_env(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token)
    p = subprocess.run([aegis, "model", "sign", "--key", KEY, "--signature", str(sig), *extra, str(model)],
                       env=env, capture_output=True, text=True)
    return p.returncode, p.stderr


def shards_model(aegis, bao, root, shards, max_bytes):
    """One file of `shards` 16-byte shards; fewer (by 2 % steps) until its signature file
    is at most `max_bytes`."""
    model, sig = root / "shards", root / "shards.sig"
    model.mkdir()
    weights = model / ("model-00001-of-00001-" + "w" * 24 + ".safetensors")
    while True:
        weights.write_bytes(os.urandom(16 * shards))
        code, err = sign(aegis, bao, model, sig, "--shard-size", "16")
        if code != 0:
            sys.exit(f"sign failed: {err}")
        if sig.stat().st_size <= max_bytes:
            return model, sig, shards
        shards = shards * 98 // 100


def files_model(aegis, bao, root, name, count, signed):
    """`count` 16-byte files in 256 directories, of which the first `signed` are signed
    (the rest are added after signing)."""
    model, sig = root / name, root / f"{name}.sig"
    paths = [model / f"d{i % 256:03}" / f"f{i:05}.bin" for i in range(count)]
    for d in {p.parent for p in paths}:
        d.mkdir(parents=True)
    for p in paths[:signed]:
        p.write_bytes(os.urandom(16))
    code, err = sign(aegis, bao, model, sig)
    if code != 0:
        sys.exit(f"sign failed: {err}")
    for p in paths[signed:]:
        p.write_bytes(os.urandom(16))
    return model, sig


def verify(addr, model, sig):
    """One verification: (status, valid, files added, 503s before it was let in). Under
    sign load the request's own body may find the body budget full (503): it is sent
    again, at most 400 times 50 ms apart."""
    for refused in range(400):
        r = requests.post(f"{addr}/v1/aegis/model/verify", headers=HEADERS, timeout=600,
                          json={"model": str(model), "signature": str(sig), "key": KEY})
        if r.status_code != 503:
            break
        time.sleep(0.05)
    data = r.json().get("data", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
    return r.status_code, data.get("valid"), len(data.get("added", [])), refused


def sign_load(addr, n, body_bytes, stop):
    """`n` callers each sending 8 MiB sign bodies until `stop` is set; their statuses."""
    encoded = (body_bytes - len('{"input":""}') - 64) // 4 * 4
    body = b'{"input":"' + b"eHh4" * (encoded // 4) + b'"}'
    statuses, counting = Counter(), threading.Lock()

    def caller():
        s = requests.Session()
        while not stop.is_set():
            try:
                status = s.post(f"{addr}/v1/transit/sign/{KEY}", data=body, headers=HEADERS, timeout=60).status_code
            except requests.RequestException as e:
                status = type(e).__name__
            with counting:
                statuses[status] += 1

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, statuses


def measure(bao, env, name, model, sig, load=0):
    """A fresh sidecar: its idle RSS, then VmHWM after a cold and a warm verification."""
    cache = Path(tempfile.mkdtemp(prefix="aegis-bench-cache-"))
    os.chmod(cache, 0o700)
    row = {"case": name}
    with running_sidecar(bao, AEGIS_KEYS=KEY, AEGIS_MODEL_ROOTS=str(model.parent), AEGIS_CACHE_DIR=str(cache),
                         **env) as side:
        pid = side.proc.popen.pid
        row["idle_mib"] = kib(pid, "VmRSS") / 1024
        stop = threading.Event()
        threads, statuses = sign_load(side.addr, load, 8 << 20, stop) if load else ([], Counter())
        for run in ("cold", "warm"):
            row[run] = verify(side.addr, model, sig)
            row[f"{run}_peak_mib"] = kib(pid, "VmHWM") / 1024
        stop.set()
        for t in threads:
            t.join()
        if load:
            row["sign_statuses"] = dict(statuses)
    shutil.rmtree(cache, ignore_errors=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--aegis", default=str(REPO / "target/release/aegis"))
    ap.add_argument("--with-load", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", help="run only the cases whose name contains this")
    ap.add_argument("--no-image-env", action="store_true",
                    help="run without the image's GLIBC_TUNABLES (glibc's own defaults)")
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ["AEGIS_BIN"] = args.aegis
    files, shards = (1000, 2000) if args.smoke else (MAX_RESOURCES, MAX_RESOURCES)
    root = Path(tempfile.mkdtemp(prefix="aegis-bench-model-memory-"))
    rows = []
    try:
        with running_bao() as bao:
            bao.api("POST", f"transit/keys/{KEY}", json={"type": "ecdsa-p256"}).raise_for_status()
            cases = []
            for name in ("shards", "files", "added", "one"):
                (root / name).mkdir()
            model, sig, n = shards_model(args.aegis, bao, root / "shards", shards, MAX_SIGNATURE_BYTES)
            cases.append((f"shards ({n} x 16 B, signature {sig.stat().st_size / 2**20:.1f} MiB)", model, sig, 0))
            expect = {cases[-1][0]: (True, 0)}
            model, sig = files_model(args.aegis, bao, root / "files", "m", files, files)
            cases.append((f"files ({files}, signature {sig.stat().st_size / 2**20:.1f} MiB)", model, sig, 0))
            expect[cases[-1][0]] = (True, 0)
            model, sig = files_model(args.aegis, bao, root / "added", "m", files, 1)
            cases.append((f"added ({files - 1} unsigned files, signature {sig.stat().st_size} B)", model, sig, 0))
            expect[cases[-1][0]] = (False, files - 1)
            if args.with_load:
                model, sig = files_model(args.aegis, bao, root / "one", "m", 1, 1)
                cases.append(("one file, 40 callers signing 8 MiB bodies", model, sig, 40))
                expect[cases[-1][0]] = (True, 0)
                for name, model, sig, _ in cases[:2]:
                    cases.append((name + ", 40 callers signing 8 MiB bodies", model, sig, 40))
                    expect[cases[-1][0]] = expect[name]
            for name, model, sig, load in cases:
                if args.only and args.only not in name:
                    continue
                rows.append(measure(bao, {} if args.no_image_env else image_env(), name, model, sig, load))
                r = rows[-1]
                for run in ("cold", "warm"):
                    if r[run][:3] != (200, *expect[name]):
                        sys.exit(f"{name}: the {run} verification answered {r[run][:3]}, expected {(200, *expect[name])}")
                print(f"{name}: idle {r['idle_mib']:.1f} MiB; cold {r['cold']} peak {r['cold_peak_mib']:.1f} MiB;"
                      f" warm {r['warm']} peak {r['warm_peak_mib']:.1f} MiB {r.get('sign_statuses', '')}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n| case | idle (MiB) | peak, cold (MiB) | peak, warm (MiB) |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['idle_mib']:.1f} | {r['cold_peak_mib']:.1f} | {r['warm_peak_mib']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.smoke:
        return
    over = [r["case"] for r in rows if max(r["cold_peak_mib"], r["warm_peak_mib"]) >= LIMIT_MIB]
    if over:
        sys.exit(f"over the {LIMIT_MIB} MiB pod limit: {over}")


if __name__ == "__main__":
    main()
