#!/usr/bin/env python3
"""Side-by-side benchmark (not a test): OpenBao direct, `bao proxy`, and Aegis, in one run.

Starts a real OpenBao dev server, `bao proxy` (token_file auto-auth: the peer a user would
otherwise put beside a model server) and `aegis serve` (release build), all on loopback,
then drives each with the same load tool (wrk, from Debian) at the same concurrency:

  - sign requests/s, p50, p99: OpenBao direct, via bao proxy, via Aegis;
  - verify requests/s, p50, p99: OpenBao direct, via Aegis;
  - for ed25519, ecdsa-p256 and rsa-2048;
  - Aegis RSS idle and its peak under load (VmHWM), bao proxy's for comparison;
  - Aegis's time from process start to ready (Vault already answering).

Prints a table with the ratios Aegis/direct (and Aegis/proxy for sign) and writes JSON.
No timing is asserted: the figures are for README and the issue notes. `--smoke` runs for
seconds (CI runs it so the script cannot rot).

    .venv/bin/python scripts/bench.py [--smoke] [--duration 5] [--json bench.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv/bin"
KEY_TYPES = ["ed25519", "ecdsa-p256", "rsa-2048"]
CONCURRENCY = [1, 16, 64, 256]

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="seconds, not minutes: one key type, c=1 and 16")
    ap.add_argument("--duration", type=int, default=5, help="whole seconds per measurement (default 5)")
    ap.add_argument("--json", type=Path, default=REPO / "target/bench.json", help="where to write the results")
    ap.add_argument("--aegis", type=Path, default=REPO / "target/release/aegis", help="the aegis binary (release)")
    ap.add_argument("--keys", default=",".join(KEY_TYPES), help="key types to measure (comma-separated)")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="connection counts (comma-separated)")
    args = ap.parse_args()
    key_types = KEY_TYPES[:1] if args.smoke else args.keys.split(",")
    concurrency = [1, 16] if args.smoke else [int(c) for c in args.concurrency.split(",")]
    duration = 1 if args.smoke else args.duration
    for tool in (VENV_BIN / "bao", VENV_BIN / "wrk", args.aegis):
        if not os.access(tool, os.X_OK):
            sys.exit(f"bench: {tool} is missing (scripts/install-tools.sh, scripts/install-wrk.sh, cargo build --release)")

    work = Path(tempfile.mkdtemp(prefix="aegis-bench-"))
    procs = []

    def start(name: str, argv: list, env=None) -> subprocess.Popen:
        log = open(work / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        procs.append(p)
        return p

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

        aegis_env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "AEGIS_", "OTEL_"))}
        aegis_env.update(VAULT_ADDR=bao_addr, VAULT_TOKEN=token, AEGIS_LISTEN_ADDR=f"127.0.0.1:{aegis_port}",
                         AEGIS_KEYS=",".join(keys.values()), AEGIS_LOG_FORMAT="json", RUST_LOG="warn")
        aegis_addr = f"http://127.0.0.1:{aegis_port}"
        started = time.monotonic()
        aegis = start("aegis", [str(args.aegis), "serve"], env=aegis_env)
        ready_at = wait_until("aegis /readyz", lambda: status_ok(f"{aegis_addr}/readyz"), aegis, poll=0.001)
        time.sleep(1.0)
        results = {
            "machine": machine(),
            "duration_s": duration,
            "aegis_ready_ms": round((ready_at - started) * 1000, 1),
            "aegis_rss_idle_kib": rss_kib(aegis.pid, "VmRSS"),
            "runs": [],
        }
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        targets = {
            "sign": [("direct", bao_addr, token), ("bao-proxy", proxy_addr, ""), ("aegis", aegis_addr, "")],
            "verify": [("direct", bao_addr, token), ("aegis", aegis_addr, "")],
        }
        message = base64.b64encode(b"model response to sign: " + b"x" * 200).decode()
        for kt, name in keys.items():
            signature = http("POST", f"{bao_addr}/v1/transit/sign/{name}", {"input": message}, token)["data"]["signature"]
            bodies = {"sign": {"input": message}, "verify": {"input": message, "signature": signature}}
            for op in ("sign", "verify"):
                for c in concurrency:
                    for target, base, tok in targets[op]:
                        r = wrk(f"{base}/v1/transit/{op}/{name}", bodies[op], tok, c, duration, script)
                        r.update(key_type=kt, op=op, concurrency=c, target=target)
                        results["runs"].append(r)
                        print(f"  {kt:10} {op:6} c={c:<3} {target:9} {r['rps']:>9.0f}/s  p50 {r['p50_us']/1000:.3f} ms  p99 {r['p99_us']/1000:.3f} ms"
                              + (f"  ({r['warning']})" if "warning" in r else ""), flush=True)
        results["aegis_rss_peak_kib"] = rss_kib(aegis.pid, "VmHWM")
        results["bao_proxy_rss_peak_kib"] = rss_kib(proxy.pid, "VmHWM")
        report(results)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.json}")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict) -> None:
    runs = results["runs"]

    def find(kt, op, c, target):
        return next((r for r in runs if (r["key_type"], r["op"], r["concurrency"], r["target"]) == (kt, op, c, target)), None)

    m = results["machine"]
    print(f"\nmachine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['date']}, {results['duration_s']} s per run")
    print("| key | op | c | direct /s | bao proxy /s | aegis /s | aegis/direct | aegis/proxy | p50 direct | p50 proxy | p50 aegis | p99 aegis |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kt in dict.fromkeys(r["key_type"] for r in runs):
        for op in ("sign", "verify"):
            for c in dict.fromkeys(r["concurrency"] for r in runs):
                d, p, a = find(kt, op, c, "direct"), find(kt, op, c, "bao-proxy"), find(kt, op, c, "aegis")
                if not (d and a):
                    continue
                ms = lambda r: f"{r['p50_us']/1000:.3f}" if r else "-"  # noqa: E731
                print(f"| {kt} | {op} | {c} | {d['rps']:.0f} | {p['rps']:.0f} | " if p else f"| {kt} | {op} | {c} | {d['rps']:.0f} | - | ", end="")
                print(f"{a['rps']:.0f} | {a['rps']/d['rps']:.2f}x | " + (f"{a['rps']/p['rps']:.2f}x" if p else "-")
                      + f" | {ms(d)} | {ms(p)} | {ms(a)} | {a['p99_us']/1000:.3f} |")
    print(f"\naegis: ready {results['aegis_ready_ms']} ms after start (Vault up); RSS idle {results['aegis_rss_idle_kib']/1024:.1f} MiB, "
          f"peak under load {results['aegis_rss_peak_kib']/1024:.1f} MiB; bao proxy peak {results['bao_proxy_rss_peak_kib']/1024:.1f} MiB")


if __name__ == "__main__":
    main()
