#!/usr/bin/env python3
"""Fleet benchmark (not a test): N real `aegis serve` sidecars on one 3-node OpenBao raft cluster.

Everything is real and on loopback: three `bao server` processes with integrated storage
(initialised, unsealed, joined), each with a file audit device declared in its config file
(OpenBao 2.7 enables audit devices only that way), and N `aegis serve` processes, each with
its own AppRole secret_id and the same K keys (default 200 sidecars, 5 ed25519 keys).
What reaches Vault is counted from the nodes' own audit logs, never from Aegis's counters;
Vault CPU is utime+stime from /proc of the three server processes.

Phases, in one run:
  steady      Vault requests/s per sidecar (against what the default intervals predict),
              split by node and by endpoint, Vault CPU per second of fleet time and audit
              log growth, over --steady seconds of an idle fleet;
  revoke      `aegis retire --now` of a key's signing version: time until each sidecar
              refuses a signature of it (p50, p99, max over the fleet);
  rotate      a plain `aegis rotate --force`: time until each sidecar's GET keys/K shows
              the new latest_version;
  outage      the whole cluster stopped for --outage seconds, restarted and unsealed:
              verify failures during it (verify is local: expected 0), time until every
              sidecar signs again, and the herd factor: Vault requests/s in the first
              --herd-window seconds after recovery (the probes' own signs excluded)
              against the steady rate;
  leader      the same with only the active node killed;
  memory      VmRSS per sidecar and in total;
  unit costs  Vault CPU per AppRole login, per key read, per KV read, per listing of the
              records' metadata and per sign, measured by this script against the active
              node, and a model extrapolating the steady fleet cost (CPU, audit volume, a
              fleet-wide re-login) to 1 000 and 10 000 sidecars.

Prints a table and writes JSON. `--smoke` (20 sidecars, short phases) is what CI runs: it
checks that the run works and that revocation and rotation reached every sidecar, and
exits non-zero otherwise; no timing is checked.

    .venv/bin/python scripts/fleet.py [--smoke] [--sidecars 200] [--json target/fleet.json]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv/bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MESSAGE = base64.b64encode(b"fleet benchmark message").decode()


# ---------------------------------------------------------------------------- helpers

def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def call(method: str, url: str, body=None, token: str = "", timeout: float = 10.0) -> tuple[int, dict]:
    """One request; (status, JSON body). Transport failures are status 0."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("X-Vault-Request", "true")
    if token:
        req.add_header("X-Vault-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else {})
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text) if text else {}
        except ValueError:
            return e.code, {"errors": [text.decode(errors="replace")]}
    except (OSError, ValueError):
        return 0, {}


def ok(method: str, url: str, body=None, token: str = "") -> dict:
    status, reply = call(method, url, body, token)
    if status not in (200, 204):
        sys.exit(f"fleet: {method} {url}: {status} {reply}")
    return reply


def poll(what: str, check, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"fleet: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def spread(values: list[float]) -> dict:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values) if values else float("nan")}


# ---------------------------------------------------------------------------- the cluster

class Node:
    def __init__(self, root: Path, i: int, port: int, cluster_port: int):
        self.i, self.port, self.cluster_port = i, port, cluster_port
        self.addr = f"http://127.0.0.1:{port}"
        self.dir = root / f"node{i}"
        (self.dir / "raft").mkdir(parents=True)
        self.audit = self.dir / "audit.log"
        self.config = self.dir / "bao.hcl"
        self.config.write_text(f"""
storage "raft" {{
  path = "{self.dir / 'raft'}"
  node_id = "node{i}"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
audit "file" "fleet" {{
  options {{
    file_path = "audit.log"
  }}
}}
""")
        # The audit table is the cluster's, shared by every node: a relative path, resolved
        # against each node's working directory, gives each node its own log. (An absolute
        # path would make every node write the first node's file.)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.dir / "bao.log", "ab")
        self.proc = subprocess.Popen([str(VENV_BIN / "bao"), "server", f"-config={self.config}"], cwd=self.dir,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        poll(f"node {self.i} listening", lambda: call("GET", f"{self.addr}/v1/sys/seal-status")[0] == 200)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def health(self) -> int:
        return call("GET", f"{self.addr}/v1/sys/health", timeout=2)[0]

    def audit_lines(self) -> int:
        try:
            with open(self.audit, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0


class Cluster:
    def __init__(self, root: Path, n: int = 3):
        ports = free_ports(2 * n)
        self.nodes = [Node(root, i, ports[2 * i], ports[2 * i + 1]) for i in range(n)]
        self.token = self.unseal_key = ""

    def start(self) -> None:
        first = self.nodes[0]
        first.start()
        init = ok("PUT", f"{first.addr}/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
        self.unseal_key, self.token = init["keys"][0], init["root_token"]
        self.unseal(first)
        poll("node 0 active", lambda: first.health() == 200)
        for node in self.nodes[1:]:
            node.start()
            reply = ok("POST", f"{node.addr}/v1/sys/storage/raft/join", {"leader_api_addr": first.addr})
            assert reply.get("joined"), reply
            self.unseal(node)
            poll(f"node {node.i} standby", lambda n=node: n.health() == 429)

    def unseal(self, node: Node) -> None:
        ok("PUT", f"{node.addr}/v1/sys/unseal", {"key": self.unseal_key})

    def restart(self, nodes: list[Node]) -> None:
        for node in nodes:
            node.start()
        for node in nodes:
            self.unseal(node)

    def active(self) -> Node | None:
        return next((n for n in self.nodes if n.proc and n.health() == 200), None)

    def api(self, method: str, path: str, body=None) -> dict:
        node = poll("an active node", self.active)
        return ok(method, f"{node.addr}/v1/{path}", body, self.token)

    def audit_bytes(self) -> int:
        """Bytes in every node's audit log (requests and responses)."""
        return sum(n.audit.stat().st_size for n in self.nodes if n.audit.exists())

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# ---------------------------------------------------------------------------- audit counting

class AuditCursor:
    """Reads what each node's audit log gained since the last mark: requests only."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.offsets = {n.i: 0 for n in cluster.nodes}

    def mark(self) -> None:
        for n in self.cluster.nodes:
            self.offsets[n.i] = n.audit.stat().st_size if n.audit.exists() else 0

    def requests_since_mark(self) -> list[dict]:
        """Request entries since `mark` as {node, path, op, time}. A request a standby forwards
        is audited by it and by the active node under one id: counted once, as node "forwarded"."""
        out: dict[str, dict] = {}
        for n in self.cluster.nodes:
            if not n.audit.exists():
                continue
            with open(n.audit, "rb") as f:
                f.seek(self.offsets[n.i])
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if entry.get("type") != "request":
                        continue
                    req = entry.get("request", {})
                    rid = req.get("id") or f"{n.i}:{len(out)}"
                    if rid in out:
                        out[rid]["node"] = "forwarded"
                        continue
                    out[rid] = {"node": n.i, "path": req.get("path", ""), "op": req.get("operation", ""),
                                "time": entry.get("time", "")}
        return list(out.values())


def endpoint(path: str) -> str:
    """An audit path reduced to its endpoint class (key names and ids removed)."""
    parts = path.split("/")
    if path.startswith("auth/"):
        return "/".join(parts[:3])
    if parts[0] == "transit" and len(parts) >= 2:
        return f"transit/{parts[1]}"
    if len(parts) >= 2 and parts[1] in ("data", "metadata", "detailed-metadata"):
        return f"{parts[0]}/{parts[1]}"
    return "/".join(parts[:2])


def epoch(ts: str) -> float:
    """Audit timestamps are RFC 3339 with nanoseconds; seconds since the epoch."""
    from datetime import datetime
    base, _, frac = ts.rstrip("Z").partition(".")
    return datetime.fromisoformat(base + "+00:00").timestamp() + (float("0." + frac) if frac else 0.0)


def split(requests: list[dict]) -> dict:
    by_node: dict[str, int] = {}
    by_endpoint: dict[str, int] = {}
    for r in requests:
        node = r["node"] if r["node"] == "forwarded" else f"node{r['node']}"
        by_node[node] = by_node.get(node, 0) + 1
        e = f"{r['op']} {endpoint(r['path'])}"
        by_endpoint[e] = by_endpoint.get(e, 0) + 1
    return {"by_node": dict(sorted(by_node.items())),
            "by_endpoint": dict(sorted(by_endpoint.items(), key=lambda kv: -kv[1]))}


# ---------------------------------------------------------------------------- the fleet

# As deploy/vault/aegis-sidecar.hcl, per key, plus the watch's one listing.
SIDECAR_POLICY_BLOCK = """
path "transit/sign/{k}" {{ capabilities = ["update"] }}
path "transit/sign/{k}/+" {{ capabilities = ["update"] }}
path "transit/verify/{k}" {{ capabilities = ["update"] }}
path "transit/keys/{k}" {{ capabilities = ["read"] }}
path "secret/data/aegis/keys/transit/{k}" {{ capabilities = ["read"] }}
path "transit/keys/aegis-retention.{k}" {{ capabilities = ["read"] }}
"""
SIDECAR_POLICY_WATCH = """
path "secret/detailed-metadata/aegis/keys/transit/" { capabilities = ["list"] }
"""
RECORDS_FOLDER = "secret/detailed-metadata/aegis/keys/transit/"
# The sidecars' defaults (src/config, src/keys/watch.rs): the watch lists every 80-100 % of
# 8 s (7.2 s on average); the full refresh comes every 600 s on average.
WATCH_INTERVAL_S, REFRESH_INTERVAL_S = 7.2, 600.0


class Sidecar:
    def __init__(self, i: int, port: int, proc: subprocess.Popen):
        self.i, self.port, self.proc = i, port, proc
        self.addr = f"http://127.0.0.1:{port}"

    def sign(self, key: str, timeout: float = 5.0) -> tuple[int, dict]:
        return call("POST", f"{self.addr}/v1/transit/sign/{key}", {"input": MESSAGE}, timeout=timeout)

    def verify(self, key: str, signature: str) -> tuple[int, dict]:
        return call("POST", f"{self.addr}/v1/transit/verify/{key}", {"input": MESSAGE, "signature": signature}, timeout=5)

    def latest_version(self, key: str) -> int:
        status, reply = call("GET", f"{self.addr}/v1/transit/keys/{key}", timeout=5)
        return reply.get("data", {}).get("latest_version", 0) if status == 200 else 0


def configure_vault(cluster: Cluster, keys: list[str], n: int) -> tuple[str, list[str]]:
    """Transit keys, the KV mount, the sidecar policy, an AppRole role; n secret_ids."""
    cluster.api("POST", "sys/mounts/transit", {"type": "transit"})
    cluster.api("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}})
    for k in keys:
        cluster.api("POST", f"transit/keys/{k}", {"type": "ed25519"})
    policy = "".join(SIDECAR_POLICY_BLOCK.format(k=k) for k in keys) + SIDECAR_POLICY_WATCH
    cluster.api("PUT", "sys/policies/acl/fleet-sidecar", {"policy": policy})
    cluster.api("POST", "sys/auth/approle", {"type": "approle"})
    cluster.api("POST", "auth/approle/role/fleet", {"token_policies": ["fleet-sidecar"], "token_ttl": "1h",
                                                     "token_max_ttl": "4h", "secret_id_num_uses": 0})
    role_id = cluster.api("GET", "auth/approle/role/fleet/role-id")["data"]["role_id"]
    with cf.ThreadPoolExecutor(16) as pool:
        secret_ids = list(pool.map(lambda _: cluster.api("POST", "auth/approle/role/fleet/secret-id")["data"]["secret_id"],
                                   range(n)))
    return role_id, secret_ids


def start_fleet(args, cluster: Cluster, keys: list[str], role_id: str, secret_ids: list[str], work: Path) -> list[Sidecar]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "AEGIS_", "OTEL_"))}
    (work / "role_id").write_text(role_id)
    ports = free_ports(len(secret_ids))
    fleet = []
    for i, (secret_id, port) in enumerate(zip(secret_ids, ports)):
        d = work / f"sidecar{i}"
        d.mkdir()
        (d / "secret_id").write_text(secret_id)
        os.chmod(d / "secret_id", 0o600)
        env = dict(base, AEGIS_VAULT_ADDRS=",".join(n.addr for n in cluster.nodes),
                   AEGIS_AUTH_METHOD="approle", AEGIS_ROLE_ID_FILE=str(work / "role_id"),
                   AEGIS_SECRET_ID_FILE=str(d / "secret_id"), AEGIS_LISTEN_ADDR=f"127.0.0.1:{port}",
                   AEGIS_KEYS=",".join(keys), AEGIS_LOG_FORMAT="json", RUST_LOG="warn")
        log = open(d / "aegis.log", "wb")
        proc = subprocess.Popen([str(args.aegis), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        fleet.append(Sidecar(i, port, proc))
    def all_ready():
        for s in fleet:
            if s.proc.poll() is not None:
                sys.exit(f"fleet: sidecar {s.i} exited with {s.proc.returncode}; see {work}/sidecar{s.i}/aegis.log")
        return all(call("GET", f"{s.addr}/readyz", timeout=2)[0] == 200 for s in fleet)
    poll(f"{len(fleet)} sidecars ready", all_ready, timeout=120, every=0.5)
    return fleet


def on_fleet(fleet: list[Sidecar], fn) -> list:
    with cf.ThreadPoolExecutor(min(64, len(fleet))) as pool:
        return list(pool.map(fn, fleet))


def time_until(fleet: list[Sidecar], started: float, done, timeout: float, every: float = 0.1) -> list[float]:
    """Per sidecar, seconds from `started` until `done(sidecar)` first holds (polled)."""
    def one(s: Sidecar) -> float:
        deadline = started + timeout
        while time.monotonic() < deadline:
            if done(s):
                return time.monotonic() - started
            time.sleep(every)
        return float("inf")
    return on_fleet(fleet, one)


# ---------------------------------------------------------------------------- phases

def steady(cluster: Cluster, cursor: AuditCursor, fleet: list[Sidecar], seconds: float, keys: int) -> dict:
    cursor.mark()
    audit0 = cluster.audit_bytes()
    cpu0, t0 = cpu_seconds(cluster.pids()), time.monotonic()
    time.sleep(seconds)
    cpu1, elapsed = cpu_seconds(cluster.pids()), time.monotonic() - t0
    reqs = cursor.requests_since_mark()
    return {"seconds": round(elapsed, 1), "requests": len(reqs),
            "requests_per_s": len(reqs) / elapsed,
            "requests_per_s_per_sidecar": len(reqs) / elapsed / len(fleet),
            # What the defaults predict: one listing per watch interval, three reads per key
            # (key, endorsement key, record) per full refresh.
            "expected_per_sidecar": 1 / WATCH_INTERVAL_S + 3 * keys / REFRESH_INTERVAL_S,
            "vault_cpu_s_per_s": (cpu1 - cpu0) / elapsed,
            "audit_bytes_per_s": (cluster.audit_bytes() - audit0) / elapsed,
            **split(reqs)}


def revoke(args, cluster: Cluster, fleet: list[Sidecar], key: str, timeout: float) -> dict:
    version = cluster.api("GET", f"transit/keys/{key}")["data"]["latest_version"]
    signature = cluster.api("POST", f"transit/sign/{key}", {"input": MESSAGE, "key_version": version})["data"]["signature"]
    valid = on_fleet(fleet, lambda s: s.verify(key, signature)[1].get("data", {}).get("valid") is True)
    assert all(valid), f"before the revocation, {valid.count(False)} sidecars refused a valid signature"
    started = time.monotonic()
    lifecycle(args, cluster, ["retire", "--key", key, "--version", str(version), "--now", "--reason", "fleet benchmark"])
    done = time.monotonic() - started

    def refuses(s: Sidecar) -> bool:
        status, reply = s.verify(key, signature)
        return status != 200 or reply.get("data", {}).get("valid") is not True
    times = time_until(fleet, started, refuses, timeout)
    return {"key": key, "version": version, "command_s": round(done, 2), "reached": sum(t != float("inf") for t in times),
            "seconds": spread([t for t in times if t != float("inf")])}


def rotate(args, cluster: Cluster, fleet: list[Sidecar], key: str, timeout: float) -> dict:
    before = cluster.api("GET", f"transit/keys/{key}")["data"]["latest_version"]
    started = time.monotonic()
    lifecycle(args, cluster, ["rotate", "--key", key, "--force", "--reason", "fleet benchmark"])
    times = time_until(fleet, started, lambda s: s.latest_version(key) > before, timeout, every=0.25)
    return {"key": key, "from_version": before, "reached": sum(t != float("inf") for t in times),
            "seconds": spread([t for t in times if t != float("inf")])}


def lifecycle(args, cluster: Cluster, argv: list[str]) -> None:
    node = poll("an active node", cluster.active)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "AEGIS_"))}
    env.update(VAULT_ADDR=node.addr, VAULT_TOKEN=cluster.token, RUST_LOG="warn")
    out = subprocess.run([str(args.aegis), *argv], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"fleet: aegis {' '.join(argv)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")


def outage(args, cluster: Cluster, cursor: AuditCursor, fleet: list[Sidecar], nodes: list[Node], key: str,
           signature: str, steady_rate: float) -> dict:
    """Stops `nodes` for --outage seconds while verifying through every sidecar, restarts them."""
    def probe(s: Sidecar) -> tuple[int, int]:
        """(failed, sent) verifies through one sidecar, one a second, while Vault is down."""
        failed = sent = 0
        while time.monotonic() < stop_probe:
            status, reply = s.verify(key, signature)
            sent += 1
            failed += status != 200 or reply.get("data", {}).get("valid") is not True
            time.sleep(1.0)
        return failed, sent
    for node in nodes:
        node.stop()
    stopped = time.monotonic()
    stop_probe = stopped + args.outage
    probes = on_fleet(fleet, probe)
    cursor.mark()
    restarted_wall = time.time()
    restarted = time.monotonic()
    cluster.restart(nodes)
    poll("an active node after the restart", cluster.active, timeout=120)
    vault_back = time.monotonic() - restarted

    def signs(s: Sidecar) -> bool:
        return s.sign(key, timeout=2)[0] == 200
    times = time_until(fleet, restarted, signs, timeout=180, every=0.5)
    window_end = restarted + args.herd_window
    if time.monotonic() < window_end:
        time.sleep(window_end - time.monotonic())
    reqs = [r for r in cursor.requests_since_mark() if epoch(r["time"]) <= restarted_wall + args.herd_window]
    background = [r for r in reqs if endpoint(r["path"]) != "transit/sign"]
    rate = len(background) / args.herd_window
    return {"nodes_stopped": [n.i for n in nodes], "down_s": round(restarted - stopped, 1),
            "verify_failures": sum(f for f, _ in probes), "verify_probes": sum(n for _, n in probes),
            "vault_active_after_s": round(vault_back, 2),
            "signing_again": sum(t != float("inf") for t in times), "seconds_to_sign": spread([t for t in times if t != float("inf")]),
            "herd_requests_per_s": rate, "herd_factor": rate / steady_rate if steady_rate else float("nan"),
            "probe_signs": len(reqs) - len(background), **split(background)}


def unit_costs(cluster: Cluster, role_id: str, secret_id: str, key: str, count: int) -> dict:
    """Vault CPU per operation, each measured alone against the active node."""
    node = poll("an active node", cluster.active)
    kv_path = "secret/data/fleet-unit-cost"
    ok("POST", f"{node.addr}/v1/{kv_path}", {"data": {"x": "1"}}, cluster.token)
    ops = {
        "login": lambda: call("POST", f"{node.addr}/v1/auth/approle/login", {"role_id": role_id, "secret_id": secret_id}),
        "key_read": lambda: call("GET", f"{node.addr}/v1/transit/keys/{key}", token=cluster.token),
        "kv_read": lambda: call("GET", f"{node.addr}/v1/{kv_path}", token=cluster.token),
        "kv_list": lambda: call("LIST", f"{node.addr}/v1/{RECORDS_FOLDER}", token=cluster.token),
        "sign": lambda: call("POST", f"{node.addr}/v1/transit/sign/{key}", {"input": MESSAGE}, cluster.token),
    }
    costs = {}
    for name, op in ops.items():
        pid = [node.proc.pid]
        c0 = cpu_seconds(pid)
        with cf.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: op()[0], range(count)))
        assert statuses.count(200) == count, f"unit cost {name}: {len(statuses) - statuses.count(200)} failed"
        costs[f"{name}_us"] = (cpu_seconds(pid) - c0) / count * 1e6
    return costs


def model(results: dict) -> dict:
    """The steady fleet cost at 1 000 and 10 000 sidecars, from the measured per-sidecar rate
    and audit volume and the unit costs: what each sidecar's polling costs Vault's CPU
    (listings plus full reads at the configured intervals), what the audit devices must
    write, and what a fleet-wide re-login (every token lost at once) costs the active node."""
    s, u, keys = results["steady"], results["unit_costs"], results["keys"]
    per = s["requests_per_s_per_sidecar"]
    poll_cpu_s = (u["kv_list_us"] / WATCH_INTERVAL_S
                  + keys * (2 * u["key_read_us"] + u["kv_read_us"]) / REFRESH_INTERVAL_S) / 1e6
    audit_per_sidecar = s["audit_bytes_per_s"] / results["sidecars"]
    out = {}
    for n in (1_000, 10_000):
        out[str(n)] = {
            "steady_requests_per_s": per * n,
            "steady_vault_cores": poll_cpu_s * n,
            "audit_mib_per_s": audit_per_sidecar * n / 2**20,
            "relogin_all_vault_core_seconds": n * u["login_us"] / 1e6,
        }
    return out


# ---------------------------------------------------------------------------- main

def targets(r: dict) -> list[tuple[str, str, bool]]:
    """Issue 17's targets: (what, measured, met)."""
    per = r["steady"]["requests_per_s_per_sidecar"]
    rev = r["revoke"]["seconds"]["max"] if r["revoke"]["reached"] == r["sidecars"] else float("inf")
    out = [("steady Vault requests/s per sidecar <= 0.2", f"{per:.3f}", per <= 0.2),
           ("revocation reaches every sidecar within 10 s", f"max {rev:.1f} s", rev <= 10.0)]
    for name in ("outage", "leader"):
        o = r[name]
        out.append((f"{name}: herd factor <= 3", f"{o['herd_factor']:.2f}", o["herd_factor"] <= 3.0))
        out.append((f"{name}: no verify failure", str(o["verify_failures"]), o["verify_failures"] == 0))
    return out


def report(r: dict) -> None:
    s = r["steady"]
    print(f"\nfleet: {r['sidecars']} sidecars x {r['keys']} keys on a 3-node OpenBao raft cluster; {r['machine']}")
    print("| figure | value |\n|---|---|")
    print(f"| steady Vault requests/s per sidecar (defaults predict) | {s['requests_per_s_per_sidecar']:.3f} "
          f"({s['expected_per_sidecar']:.3f}) |")
    print(f"| steady Vault requests/s, by node | {s['by_node']} |")
    print(f"| steady Vault requests, by endpoint ({s['seconds']} s) | {s['by_endpoint']} |")
    print(f"| steady Vault CPU per second of fleet time | {s['vault_cpu_s_per_s'] * 1000:.0f} ms/s |")
    print(f"| steady audit log growth, all nodes | {s['audit_bytes_per_s'] / 1024:.0f} KiB/s |")
    for name in ("revoke", "rotate"):
        p = r[name]
        print(f"| {name}: reached / p50 / p99 / max | {p['reached']}/{r['sidecars']}, {p['seconds']['p50']:.1f} s, "
              f"{p['seconds']['p99']:.1f} s, {p['seconds']['max']:.1f} s |")
    for name in ("outage", "leader"):
        o = r.get(name)
        if not o:
            continue
        print(f"| {name}: verify failures during {o['down_s']} s down | {o['verify_failures']} of {o['verify_probes']} |")
        print(f"| {name}: signing again / p50 / max after restart | {o['signing_again']}/{r['sidecars']}, "
              f"{o['seconds_to_sign']['p50']:.1f} s, {o['seconds_to_sign']['max']:.1f} s |")
        print(f"| {name}: herd factor (first {r['herd_window']} s vs steady) | {o['herd_factor']:.1f} "
              f"({o['herd_requests_per_s']:.1f} req/s; {o['by_endpoint']}) |")
    m = r["memory"]
    print(f"| memory per sidecar p50 / max, total | {m['p50_mib']:.1f} / {m['max_mib']:.1f} MiB, {m['total_mib']:.0f} MiB |")
    u = r["unit_costs"]
    print(f"| Vault CPU per login / key read / KV read / records listing / sign | {u['login_us']:.0f} / "
          f"{u['key_read_us']:.0f} / {u['kv_read_us']:.0f} / {u['kv_list_us']:.0f} / {u['sign_us']:.0f} us |")
    for n, f in r["model"].items():
        print(f"| model, {n} sidecars | {f['steady_requests_per_s']:.0f} req/s, {f['steady_vault_cores']:.2f} Vault cores "
              f"steady, {f['audit_mib_per_s']:.1f} MiB/s of audit log; everyone re-logging in costs "
              f"{f['relogin_all_vault_core_seconds']:.1f} core-seconds |")
    print("\n| target | measured | met |\n|---|---|---|")
    for what, measured, met in targets(r):
        print(f"| {what} | {measured} | {'yes' if met else 'NO'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="20 sidecars, short phases; checks that revocation and rotation reach all")
    ap.add_argument("--sidecars", type=int, default=200)
    ap.add_argument("--keys", type=int, default=5)
    ap.add_argument("--steady", type=float, default=120.0,
                    help="seconds of the steady-state window (the full refreshes, every 10 min at a random phase, are sampled: longer is steadier)")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the cluster (or leader) stays down")
    ap.add_argument("--herd-window", type=float, default=30.0, help="seconds after recovery counted for the herd factor")
    ap.add_argument("--propagation-timeout", type=float, default=90.0, help="how long revocation/rotation may take to reach all")
    ap.add_argument("--aegis", type=Path, default=REPO / "target/release/aegis")
    ap.add_argument("--json", type=Path, default=REPO / "target/fleet.json")
    args = ap.parse_args()
    if args.smoke:
        args.sidecars, args.steady, args.outage, args.herd_window = 20, 20.0, 5.0, 10.0
    for tool in (VENV_BIN / "bao", args.aegis):
        if not os.access(tool, os.X_OK):
            sys.exit(f"fleet: {tool} is missing (scripts/install-tools.sh, cargo build --release)")
    work = Path(tempfile.mkdtemp(prefix="aegis-fleet-"))
    cluster = Cluster(work)
    fleet: list[Sidecar] = []
    keep = os.environ.get("FLEET_KEEP") == "1"
    try:
        cluster.start()
        keys = [f"fleet-{i}" for i in range(args.keys)]
        role_id, secret_ids = configure_vault(cluster, keys, args.sidecars)
        t0 = time.monotonic()
        fleet = start_fleet(args, cluster, keys, role_id, secret_ids, work)
        results = {"sidecars": len(fleet), "keys": len(keys), "herd_window": args.herd_window,
                   "machine": f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
                   "fleet_ready_s": round(time.monotonic() - t0, 1)}
        # Let every sidecar's first refresh pass before measuring the steady state.
        time.sleep(min(5.0, args.steady))
        results["steady"] = steady(cluster, AuditCursor(cluster), fleet, args.steady, len(keys))
        print(f"steady: {results['steady']['requests_per_s_per_sidecar']:.3f} Vault requests/s per sidecar", flush=True)
        results["revoke"] = revoke(args, cluster, fleet, keys[0], args.propagation_timeout)
        results["rotate"] = rotate(args, cluster, fleet, keys[1], args.propagation_timeout)
        print(f"revoke reached {results['revoke']['reached']}, rotate reached {results['rotate']['reached']}", flush=True)
        key = keys[2]
        signature = cluster.api("POST", f"transit/sign/{key}", {"input": MESSAGE})["data"]["signature"]
        rate = results["steady"]["requests_per_s"]
        results["outage"] = outage(args, cluster, AuditCursor(cluster), fleet, cluster.nodes, key, signature, rate)
        results["leader"] = outage(args, cluster, AuditCursor(cluster), fleet, [poll("an active node", cluster.active)],
                                   key, signature, rate)
        rss = [rss_kib(s.proc.pid) / 1024 for s in fleet]
        results["memory"] = {"p50_mib": statistics.median(rss), "max_mib": max(rss), "total_mib": sum(rss)}
        results["unit_costs"] = unit_costs(cluster, role_id, secret_ids[0], keys[3], 50 if args.smoke else 500)
        results["model"] = model(results)
        report(results)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.json}")
        missing = [f"{p} reached {results[p]['reached']} of {len(fleet)}" for p in ("revoke", "rotate")
                   if results[p]["reached"] != len(fleet)]
        missing += [f"{p}: {results[p]['signing_again']} of {len(fleet)} signing again" for p in ("outage", "leader")
                    if results[p]["signing_again"] != len(fleet)]
        if missing:
            sys.exit("fleet: " + "; ".join(missing))
    except SystemExit:
        keep = True  # the logs of a failed run are what explains it
        raise
    finally:
        for s in fleet:
            s.proc.terminate()
        for s in fleet:
            try:
                s.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                s.proc.kill()
        cluster.stop()
        if keep:
            print(f"kept {work} (node logs and audit logs, sidecar logs)", file=sys.stderr)
        else:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
