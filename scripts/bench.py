#!/usr/bin/env python3
"""Side-by-side benchmark (not a test): OpenBao direct, `bao proxy`, and Aegis, in one run.

Starts a real OpenBao dev server, `bao proxy` (token_file auto-auth: the peer a user would
otherwise put beside a model server) and `aegis serve` (release build), all on loopback,
then drives each with the same load tool (wrk, from Debian) at the same concurrency:

  - sign requests/s, p50, p99: OpenBao direct, via bao proxy, via Aegis;
  - verify requests/s, p50, p99: OpenBao direct, via Aegis;
  - for ed25519, ecdsa-p256 and rsa-2048;
  - CPU per request of each process (Aegis, the OpenBao server, bao proxy) at each point:
    utime+stime from /proc/PID/stat before and after the point, over the requests wrk
    completed; for OpenBao that is CPU per signature (one per caller's request on every
    path: a batch Aegis sends carries one item per caller);
  - Aegis's sign batch sizes at each point (items per Transit call, the delta of
    aegis_sign_batch_size's _sum and _count on /metrics over the point);
  - the crypto floor: the verify primitive alone (aws-lc-rs, in-process, per key type)
    and aegis::crypto's verify on the same inputs, from examples/crypto_floor.rs built
    with the profile of the benched binary, in the same run;
  - Aegis RSS idle and its peak under load (VmHWM), bao proxy's for comparison;
  - Aegis's time from process start to ready (Vault already answering);
  - a memory run: a fresh `aegis serve` per case (one sign with a body just under
    AEGIS_MAX_BODY_BYTES; N such signs in parallel), answers counted by status, peak RSS
    (VmHWM) against the pod's memory limit in deploy/kubernetes.

Prints tables, then the issue's figures each as a ratio from this one run, and writes
JSON. No timing is asserted: the figures are for README and the issue notes. `--smoke`
runs for seconds (CI runs it on a debug build so the script cannot rot).

    .venv/bin/python scripts/bench.py [--smoke] [--duration 5] [--json bench.json]
"""

from __future__ import annotations

import argparse
import base64
import http.client as httpclient
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv/bin"
KEY_TYPES = ["ed25519", "ecdsa-p256", "rsa-2048"]
CONCURRENCY = [1, 16, 64, 256]
# The config default at the time of writing (src/config: AEGIS_MAX_BODY_BYTES).
MAX_BODY_BYTES = 8 * 1024 * 1024
MANIFEST = REPO / "deploy/kubernetes/base/deployment.yaml"
# Which check of examples/crypto_floor.rs a default Transit verify of each key type is.
FLOOR_CASE = {"ed25519": "ed25519", "ecdsa-p256": "ecdsa-p256", "rsa-2048": "rsa-2048-pss"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Vault-Request"] = "true"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then wrk.headers["X-Vault-Token"] = token end
done = function(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, token: str = "") -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("X-Vault-Request", "true")
    if token:
        req.add_header("X-Vault-Token", token)
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
    return json.loads(text) if text else {}


def wait_until(what: str, check, proc: subprocess.Popen, timeout: float = 30.0, poll: float = 0.01) -> float:
    """Polls ``check`` until true; returns the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            sys.exit(f"bench: {what}: the process exited with {proc.returncode}")
        try:
            if check():
                return time.monotonic()
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"bench: timed out waiting for {what}")
        time.sleep(poll)


def status_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    """utime + stime of every thread of ``pid`` so far, in clock ticks (/proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # fields 3.. ("state" first): comm may hold spaces
    return int(fields[11]) + int(fields[12])


def batch_totals(aegis_addr: str) -> tuple[float, float]:
    """(sum, count) of aegis_sign_batch_size over every label set, from /metrics."""
    with urllib.request.urlopen(f"{aegis_addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    totals = {"sum": 0.0, "count": 0.0}
    for m in re.finditer(r"^aegis_sign_batch_size_(sum|count)(?:\{[^}]*\})?\s+(\S+)$", text, re.M):
        totals[m.group(1)] += float(m.group(2))
    return totals["sum"], totals["count"]


def wrk(url: str, body: dict, token: str, connections: int, duration: float, script: Path) -> dict:
    threads = 1 if connections == 1 else 2
    env = dict(os.environ, BENCH_BODY=json.dumps(body), BENCH_TOKEN=token)
    out = subprocess.run(
        [str(VENV_BIN / "wrk"), f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "10s", "-s", str(script), url],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    line = next((l for l in out.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        sys.exit(f"bench: wrk printed no summary:\n{out}")
    r = json.loads(line[len("BENCH_JSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    if r["status_errors"] or r["socket_errors"]:
        r["warning"] = f"{r['status_errors']} non-2xx, {r['socket_errors']} socket errors"
    return r


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def pod_memory_limit_mib() -> int:
    """The aegis container's memory limit in the shipped manifest (the first limit there)."""
    m = re.search(r"limits:\s*\n\s*memory:\s*(\d+)Mi", MANIFEST.read_text())
    if m is None:
        sys.exit(f"bench: no memory limit in {MANIFEST}; pass --memory-limit-mib")
    return int(m.group(1))


def crypto_floor(aegis_bin: Path, min_ms: int, prebuilt: Path | None) -> dict:
    """Builds examples/crypto_floor.rs with the benched binary's profile and runs it."""
    if prebuilt is None:
        profile_dir = aegis_bin.resolve().parent
        profile = "dev" if profile_dir.name == "debug" else profile_dir.name
        build = subprocess.run(
            ["cargo", "build", "--locked", "--example", "crypto_floor", "--profile", profile,
             "--target-dir", str(profile_dir.parent)],
            cwd=REPO, capture_output=True, text=True,
        )
        if build.returncode != 0:
            sys.exit(f"bench: cannot build examples/crypto_floor.rs:\n{build.stderr}")
        prebuilt = profile_dir / "examples/crypto_floor"
    out = subprocess.run([str(prebuilt), str(min_ms)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def per_check_ns(entry: dict) -> float:
    """CPU ns per check where the example could read it, else wall ns."""
    return entry["cpu_ns"] if entry.get("cpu_ns") is not None else entry["wall_ns"]


def post_raw(addr: str, path: str, body: bytes) -> tuple[int | str, str]:
    """One POST with a raw body: (status, the start of the answer), or how the connection failed."""
    host, port = addr.removeprefix("http://").split(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "X-Vault-Request": "true", "Content-Length": str(len(body))})
        resp = conn.getresponse()
        return resp.status, resp.read()[:300].decode(errors="replace")
    except (ConnectionError, httpclient.HTTPException, TimeoutError) as e:
        return type(e).__name__, str(e)
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="seconds, not minutes: one key type, c=1 and 16, small memory run")
    ap.add_argument("--duration", type=int, default=5, help="whole seconds per measurement (default 5)")
    ap.add_argument("--json", type=Path, default=REPO / "target/bench.json", help="where to write the results")
    ap.add_argument("--aegis", type=Path, default=REPO / "target/release/aegis", help="the aegis binary (release)")
    ap.add_argument("--keys", default=",".join(KEY_TYPES), help="key types to measure (comma-separated)")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="connection counts (comma-separated)")
    ap.add_argument("--ratio-concurrency", type=int, default=64,
                    help="the point the ratios are taken at (default 64; the highest measured if absent)")
    ap.add_argument("--floor-ms", type=int, default=500, help="milliseconds of checks per crypto floor figure (default 500; smoke: 30)")
    ap.add_argument("--floor-bin", type=Path, help="a built examples/crypto_floor binary (default: cargo builds it)")
    ap.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                    help="AEGIS_MAX_BODY_BYTES for the memory run, passed to aegis (default: the config default, 8 MiB; smoke: 256 KiB)")
    ap.add_argument("--parallel", type=int, default=40, help="signs in parallel in the memory run (default 40; smoke: 8)")
    ap.add_argument("--memory-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra aegis settings for the memory run (e.g. a global in-flight budget); repeatable")
    ap.add_argument("--memory-limit-mib", type=int, help=f"the limit peak RSS is printed against (default: from {MANIFEST.relative_to(REPO)})")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory run")
    args = ap.parse_args()
    key_types = KEY_TYPES[:1] if args.smoke else args.keys.split(",")
    concurrency = [1, 16] if args.smoke else [int(c) for c in args.concurrency.split(",")]
    duration = 1 if args.smoke else args.duration
    if args.smoke:
        args.floor_ms = min(args.floor_ms, 30)
        args.max_body_bytes = min(args.max_body_bytes, 256 * 1024)
        args.parallel = min(args.parallel, 8)
    memory_env = dict(kv.split("=", 1) for kv in args.memory_env)
    for tool in (VENV_BIN / "bao", VENV_BIN / "wrk", args.aegis):
        if not os.access(tool, os.X_OK):
            sys.exit(f"bench: {tool} is missing (scripts/install-tools.sh, scripts/install-wrk.sh, cargo build --release)")

    # First, while nothing else of this run is running.
    floor = crypto_floor(args.aegis, args.floor_ms, args.floor_bin)

    work = Path(tempfile.mkdtemp(prefix="aegis-bench-"))
    procs = []

    def start(name: str, argv: list, env=None) -> subprocess.Popen:
        log = open(work / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        procs.append(p)
        return p

    def stop(p: subprocess.Popen) -> None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    try:
        token = "root-" + secrets.token_hex(8)
        bao_port, proxy_port, aegis_port = free_port(), free_port(), free_port()
        bao_addr = f"http://127.0.0.1:{bao_port}"
        bao = start("bao", [str(VENV_BIN / "bao"), "server", "-dev", "-dev-no-store-token",
                            f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{bao_port}"])
        wait_until("OpenBao", lambda: status_ok(f"{bao_addr}/v1/sys/health"), bao)
        http("POST", f"{bao_addr}/v1/sys/mounts/transit", {"type": "transit"}, token)
        keys = {kt: f"bench-{kt}" for kt in key_types}
        for kt, name in keys.items():
            http("POST", f"{bao_addr}/v1/transit/keys/{name}", {"type": kt}, token)

        (work / "token").write_text(token)
        (work / "proxy.hcl").write_text(f"""
vault {{ address = "{bao_addr}" }}
auto_auth {{
  method "token_file" {{ config {{ token_file_path = "{work / 'token'}" }} }}
}}
api_proxy {{ use_auto_auth_token = "force" }}
listener "tcp" {{
  address = "127.0.0.1:{proxy_port}"
  tls_disable = true
}}
""")
        proxy = start("bao-proxy", [str(VENV_BIN / "bao"), "proxy", f"-config={work / 'proxy.hcl'}"])
        proxy_addr = f"http://127.0.0.1:{proxy_port}"
        wait_until("bao proxy", lambda: status_ok(f"{proxy_addr}/v1/sys/health"), proxy)

        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "AEGIS_", "OTEL_"))}
        base_env.update(VAULT_ADDR=bao_addr, VAULT_TOKEN=token, AEGIS_KEYS=",".join(keys.values()),
                        AEGIS_LOG_FORMAT="json", RUST_LOG="warn")
        aegis_addr = f"http://127.0.0.1:{aegis_port}"
        started = time.monotonic()
        aegis = start("aegis", [str(args.aegis), "serve"], env=dict(base_env, AEGIS_LISTEN_ADDR=f"127.0.0.1:{aegis_port}"))
        ready_at = wait_until("aegis /readyz", lambda: status_ok(f"{aegis_addr}/readyz"), aegis, poll=0.001)
        time.sleep(1.0)
        results = {
            "machine": machine(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "duration_s": duration,
            "clock_ticks_per_s": CLK_TCK,
            "aegis_ready_ms": round((ready_at - started) * 1000, 1),
            "aegis_rss_idle_kib": rss_kib(aegis.pid, "VmRSS"),
            "crypto_floor": floor,
            "runs": [],
        }
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        targets = {
            "sign": [("direct", bao_addr, token), ("bao-proxy", proxy_addr, ""), ("aegis", aegis_addr, "")],
            "verify": [("direct", bao_addr, token), ("aegis", aegis_addr, "")],
        }
        pids = {"aegis": aegis.pid, "bao": bao.pid, "bao-proxy": proxy.pid}
        message = base64.b64encode(b"model response to sign: " + b"x" * 200).decode()
        for kt, name in keys.items():
            signature = http("POST", f"{bao_addr}/v1/transit/sign/{name}", {"input": message}, token)["data"]["signature"]
            bodies = {"sign": {"input": message}, "verify": {"input": message, "signature": signature}}
            for op in ("sign", "verify"):
                for c in concurrency:
                    for target, base, tok in targets[op]:
                        batches = batch_totals(aegis_addr)
                        ticks = {p: cpu_ticks(pid) for p, pid in pids.items()}
                        r = wrk(f"{base}/v1/transit/{op}/{name}", bodies[op], tok, c, duration, script)
                        spent = {p: cpu_ticks(pid) - ticks[p] for p, pid in pids.items()}
                        n = max(r["requests"], 1)
                        r["cpu_us_per_request"] = {p: round(t / CLK_TCK * 1e6 / n, 1) for p, t in spent.items()}
                        r.update(key_type=kt, op=op, concurrency=c, target=target)
                        line = (f"  {kt:10} {op:6} c={c:<3} {target:9} {r['rps']:>9.0f}/s  p50 {r['p50_us']/1000:.3f} ms"
                                f"  p99 {r['p99_us']/1000:.3f} ms  CPU us/req: aegis {r['cpu_us_per_request']['aegis']:.0f}"
                                f" bao {r['cpu_us_per_request']['bao']:.0f} proxy {r['cpu_us_per_request']['bao-proxy']:.0f}")
                        if target == "aegis" and op == "sign":
                            s1, c1 = batch_totals(aegis_addr)
                            calls = c1 - batches[1]
                            r["transit_calls"] = calls
                            r["batch_items_per_call"] = round((s1 - batches[0]) / calls, 2) if calls else None
                            line += f"  batch {r['batch_items_per_call']}"
                        results["runs"].append(r)
                        print(line + (f"  ({r['warning']})" if "warning" in r else ""), flush=True)
        results["aegis_rss_peak_kib"] = rss_kib(aegis.pid, "VmHWM")
        results["bao_proxy_rss_peak_kib"] = rss_kib(proxy.pid, "VmHWM")
        stop(aegis)
        limit = args.memory_limit_mib or pod_memory_limit_mib()
        results["pod_memory_limit_mib"] = limit
        if not args.no_memory:
            results["memory"] = memory_run(args, base_env, memory_env, keys[key_types[0]], limit, start, stop)
        results["summary"] = summary(results, args.ratio_concurrency)
        report(results)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.json}")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                stop(p)
        shutil.rmtree(work, ignore_errors=True)


def memory_run(args, base_env: dict, extra_env: dict, key: str, limit_mib: int, start, stop) -> dict:
    """A fresh aegis per case, so that VmHWM is that case's peak."""
    overhead = len(b'{"input":""}')
    b64_len = (args.max_body_bytes - overhead - 64) // 4 * 4  # just under the limit
    body = b'{"input":"' + b"eHh4" * (b64_len // 4) + b'"}'
    cases = [("one maximal body", 1), (f"{args.parallel} maximal bodies in parallel", args.parallel)]
    out = {"max_body_bytes": args.max_body_bytes, "body_bytes": len(body), "limit_mib": limit_mib,
           "settings": dict(extra_env), "cases": []}
    for name, n in cases:
        port = free_port()
        addr = f"http://127.0.0.1:{port}"
        env = dict(base_env, AEGIS_LISTEN_ADDR=f"127.0.0.1:{port}", AEGIS_KEYS=key,
                   AEGIS_MAX_BODY_BYTES=str(args.max_body_bytes))
        env.update(extra_env)
        p = start(f"aegis-memory-{n}", [str(args.aegis), "serve"], env=env)
        wait_until("aegis /readyz (memory run)", lambda: status_ok(f"{addr}/readyz"), p)
        idle = rss_kib(p.pid, "VmRSS")
        gate = threading.Barrier(n)
        answers: list = [None] * n

        def one(i: int) -> None:
            gate.wait()
            try:
                answers[i] = post_raw(addr, f"/v1/transit/sign/{key}", body)
            except Exception as e:  # counted with the answers, by name
                answers[i] = type(e).__name__, str(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        case = {"case": name, "requests": n, "seconds": round(time.monotonic() - began, 2),
                "statuses": dict(sorted(Counter(str(a[0]) for a in answers).items())),
                # The first answer of each status that is not a signature, as said.
                "answers": {str(st): text for st, text in reversed(answers) if st != 200},
                "rss_idle_kib": idle, "rss_peak_kib": rss_kib(p.pid, "VmHWM")}
        out["cases"].append(case)
        print(f"  memory: {name}: {case['statuses']} in {case['seconds']} s, peak RSS {case['rss_peak_kib']/1024:.1f} MiB"
              f" (limit {limit_mib} MiB)", flush=True)
        stop(p)
    return out


def find(runs: list, kt: str, op: str, c: int, target: str) -> dict | None:
    return next((r for r in runs if (r["key_type"], r["op"], r["concurrency"], r["target"]) == (kt, op, c, target)), None)


def points(runs: list):
    """Each measured point as (key type, op, c, direct, proxy, aegis), in run order; points
    without both a direct and an Aegis run are skipped (the proxy is sign-only)."""
    for kt in dict.fromkeys(r["key_type"] for r in runs):
        for op in ("sign", "verify"):
            for c in dict.fromkeys(r["concurrency"] for r in runs):
                d, p, a = (find(runs, kt, op, c, t) for t in ("direct", "bao-proxy", "aegis"))
                if d and a:
                    yield kt, op, c, d, p, a


def summary(results: dict, want_c: int) -> dict:
    """The issue's figures, each a ratio (or difference) of two measurements of this run."""
    runs = results["runs"]
    measured = sorted({r["concurrency"] for r in runs})
    c = want_c if want_c in measured else measured[-1]
    floor = results["crypto_floor"]
    out = {"ratio_concurrency": c, "per_key": {}}
    for kt in dict.fromkeys(r["key_type"] for r in runs):
        sd, sa = find(runs, kt, "sign", c, "direct"), find(runs, kt, "sign", c, "aegis")
        vd, va = find(runs, kt, "verify", c, "direct"), find(runs, kt, "verify", c, "aegis")
        p1d, p1a, p1p = (find(runs, kt, "sign", 1, t) for t in ("direct", "aegis", "bao-proxy"))
        k = {
            "sign_aegis_over_direct": sa["rps"] / sd["rps"],
            "sign_over_verify_via_aegis": sa["rps"] / va["rps"],
            "verify_aegis_over_direct": va["rps"] / vd["rps"],
            "vault_cpu_per_signature_us": {"direct": sd["cpu_us_per_request"]["bao"], "aegis": sa["cpu_us_per_request"]["bao"]},
            "aegis_cpu_us_per_sign": sa["cpu_us_per_request"]["aegis"],
            "aegis_cpu_us_per_verify": va["cpu_us_per_request"]["aegis"],
            "batch_items_per_call": {r["concurrency"]: r.get("batch_items_per_call") for r in runs
                                     if (r["key_type"], r["op"], r["target"]) == (kt, "sign", "aegis")},
        }
        vault = k["vault_cpu_per_signature_us"]
        k["vault_cpu_per_signature_aegis_over_direct"] = vault["aegis"] / vault["direct"] if vault["direct"] else None
        case = FLOOR_CASE.get(kt)
        if case in floor["floor"]:
            floor_us = per_check_ns(floor["floor"][case]) / 1000
            k["crypto_floor"] = {"check": case, "floor_us": floor_us,
                                 "aegis_crypto_us": per_check_ns(floor["aegis"][case]) / 1000}
            k["aegis_cpu_per_verify_over_floor"] = k["aegis_cpu_us_per_verify"] / floor_us
        if p1d and p1a:
            k["sign_p50_added_at_c1_ms"] = (p1a["p50_us"] - p1d["p50_us"]) / 1000
        if p1d and p1p:
            k["sign_p50_added_at_c1_by_proxy_ms"] = (p1p["p50_us"] - p1d["p50_us"]) / 1000
        out["per_key"][kt] = k
    out["aegis_rss_peak_under_load_mib"] = results["aegis_rss_peak_kib"] / 1024
    return out


def report(results: dict) -> None:
    runs = results["runs"]
    m = results["machine"]
    print(f"\nmachine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['date']}, {results['duration_s']} s per run")
    print(f"command: {results['command']}")
    print("\nThroughput and latency (requests/s; p50/p99 in ms; c = wrk connections):\n")
    print("| key | op | c | direct /s | bao proxy /s | aegis /s | aegis/direct | aegis/proxy | p50 direct | p50 proxy | p50 aegis | p99 aegis |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ms = lambda r: f"{r['p50_us']/1000:.3f}" if r else "-"  # noqa: E731
    for kt, op, c, d, p, a in points(runs):
        print(f"| {kt} | {op} | {c} | {d['rps']:.0f} | " + (f"{p['rps']:.0f}" if p else "-")
              + f" | {a['rps']:.0f} | {a['rps']/d['rps']:.2f}x | " + (f"{a['rps']/p['rps']:.2f}x" if p else "-")
              + f" | {ms(d)} | {ms(p)} | {ms(a)} | {a['p99_us']/1000:.3f} |")

    print("\nCPU per request in us (utime+stime over the point / requests completed; OpenBao's is per signature on sign),"
          "\nand Aegis's batch size (items per Transit sign call):\n")
    print("| key | op | c | OpenBao, direct | OpenBao, via proxy | bao proxy | OpenBao, via aegis | aegis | aegis batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kt, op, c, d, p, a in points(runs):
        cell = lambda r, proc: f"{r['cpu_us_per_request'][proc]:.0f}" if r else "-"  # noqa: E731
        batch = a.get("batch_items_per_call")
        print(f"| {kt} | {op} | {c} | {cell(d, 'bao')} | {cell(p, 'bao')} | {cell(p, 'bao-proxy')} | {cell(a, 'bao')}"
              f" | {cell(a, 'aegis')} | {batch if batch is not None else '-'} |")

    floor = results["crypto_floor"]
    print(f"\nCrypto floor (in-process, {floor['min_ms_per_figure']} ms of checks each, CPU us per check"
          f"{', debug build' if floor['debug_assertions'] else ''}):\n")
    print("| check | aws-lc-rs primitive | aegis::crypto verify | aegis::crypto / primitive |")
    print("|---|---|---|---|")
    for case, entry in floor["floor"].items():
        f_us, a_us = per_check_ns(entry) / 1000, per_check_ns(floor["aegis"][case]) / 1000
        print(f"| {case} | {f_us:.1f} | {a_us:.1f} | {a_us / f_us:.2f}x |")

    s = results["summary"]
    c = s["ratio_concurrency"]
    print(f"\nFigures of issue 16, each from this run (throughput and CPU at c={c}):\n")
    print("| key | sign aegis/direct | sign/verify via aegis | OpenBao CPU/sig via aegis / direct (us) "
          "| aegis CPU/sign us | aegis CPU/verify us | verify CPU / floor | verify aegis/direct | sign p50 added at c=1, ms: aegis (bao proxy) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kt, k in s["per_key"].items():
        v = k["vault_cpu_per_signature_us"]
        ratio = k["vault_cpu_per_signature_aegis_over_direct"]
        over = k.get("aegis_cpu_per_verify_over_floor")
        floor_cell = f"{over:.1f}x ({k['crypto_floor']['floor_us']:.1f} us {k['crypto_floor']['check']})" if over else "-"
        added = k.get("sign_p50_added_at_c1_ms")
        by_proxy = k.get("sign_p50_added_at_c1_by_proxy_ms")
        print(f"| {kt} | {k['sign_aegis_over_direct']:.2f}x | {k['sign_over_verify_via_aegis']:.2f}x"
              f" | {(f'{ratio:.2f}x' if ratio is not None else '-')} ({v['aegis']:.0f} / {v['direct']:.0f})"
              f" | {k['aegis_cpu_us_per_sign']:.0f} | {k['aegis_cpu_us_per_verify']:.0f} | {floor_cell}"
              f" | {k['verify_aegis_over_direct']:.2f}x"
              f" | " + (f"{added:+.3f}" if added is not None else "-") + (f" ({by_proxy:+.3f})" if by_proxy is not None else "") + " |")
    print("\nAegis batch size (items per Transit sign call) by concurrency: " + "; ".join(
        f"{kt}: " + ", ".join(f"c={cc} {b if b is not None else '-'}" for cc, b in k["batch_items_per_call"].items())
        for kt, k in s["per_key"].items()))
    print(f"\naegis: ready {results['aegis_ready_ms']} ms after start (Vault up); RSS idle {results['aegis_rss_idle_kib']/1024:.1f} MiB, "
          f"peak under wrk load {results['aegis_rss_peak_kib']/1024:.1f} MiB (pod limit {results['pod_memory_limit_mib']} MiB); bao proxy peak {results['bao_proxy_rss_peak_kib']/1024:.1f} MiB")
    mem = results.get("memory")
    if mem:
        print(f"\nMemory run (fresh aegis per case; AEGIS_MAX_BODY_BYTES={mem['max_body_bytes']}, sign bodies of {mem['body_bytes']} bytes"
              + (f"; {', '.join(f'{k}={v}' for k, v in mem['settings'].items())}" if mem["settings"] else "") + "):\n")
        print("| case | answers by status | s | RSS idle MiB | RSS peak MiB | peak / pod limit |")
        print("|---|---|---|---|---|---|")
        for case in mem["cases"]:
            statuses = ", ".join(f"{k}: {v}" for k, v in case["statuses"].items())
            print(f"| {case['case']} | {statuses} | {case['seconds']} | {case['rss_idle_kib']/1024:.1f} | {case['rss_peak_kib']/1024:.1f}"
                  f" | {case['rss_peak_kib']/1024/mem['limit_mib']:.2f} of {mem['limit_mib']} MiB |")
        for case in mem["cases"]:
            for st, text in case["answers"].items():
                print(f"\n{case['case']}, {st}: {text.strip()}")


if __name__ == "__main__":
    main()
