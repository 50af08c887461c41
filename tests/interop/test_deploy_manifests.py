"""The Kubernetes manifests in deploy/kubernetes (issue 9, item 2).

- every overlay (and the base and rotation kustomizations on their own) renders with
  ``kubectl kustomize`` (kustomize v5, scripts/install-kubectl.sh);
- every rendered document, and every plain manifest under deploy/kubernetes, passes
  kubernetes-validate in strict mode (unknown fields refused) against Kubernetes 1.34 and
  the newest version the pinned package ships; a kind without a schema is a failure;
- what an operator relies on, checked on the rendered output: the sidecar is an init
  container with ``restartPolicy: Always`` started before anything that calls it; every
  container is hardened (non-root, read-only root filesystem, no privilege escalation, all
  capabilities dropped, seccomp RuntimeDefault) and has requests and a memory limit; the
  probes hit paths the metrics listener serves (read from src/api/http.rs) on a port that
  listener binds on the pod IP; the Vault login token is a projected, audience-bound token
  mounted into the sidecar only; the Unix socket's path in the env is on the volume both
  containers mount; every file or directory a setting names is on a mounted volume
  (writable ones on a writable volume); every environment variable (inline or from the
  ConfigMap) is one Aegis reads (src/config); the NetworkPolicy selects the pods, opens
  the metrics port to the monitoring namespace only and lets the pod reach Vault and DNS;
- mutations: a broken manifest is refused by the validator, a broken kustomization by
  kustomize, and each operator check fails on a manifest broken in the way it looks for;
- the production caller policy with the real binary and a real OpenBao: the model
  server's uid signs over the socket with the ``VAULT_ADDR=unix://...`` its container is
  given (the ``bao`` CLI run as that uid), other uids are refused, and the verify-model
  init container's token reads the key over TCP but cannot sign.

kubectl and kubernetes-validate come from scripts/install-kubectl.sh (.venv); a missing
tool fails the run, it is never skipped.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import requests
import yaml

from conftest import REPO, aegis_path, bao_path, clean_env, running_bao, running_sidecar

K8S = REPO / "deploy/kubernetes"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# Kustomizations rendered on their own too (the overlays include them).
KUSTOMIZATIONS = [f"overlays/{o}" for o in OVERLAYS] + ["base", "rotation", "sync"]
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
POD_KINDS = {"Deployment", "CronJob"}
AEGIS_IMAGE = "ghcr.io/example/aegis"
# Kubernetes versions validated against: the oldest supported here, and the newest the pinned
# kubernetes-validate ships (checked to be at least 1.37 below, so a downgrade is noticed).
OLDEST_K8S = "1.34.0"


def _tool(name: str) -> str:
    path = REPO / ".venv/bin" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing: run bash scripts/install-kubectl.sh", pytrace=False)
    return str(path)


def _validate_module():
    try:
        import kubernetes_validate
    except ImportError as e:
        pytest.fail(f"kubernetes-validate is not installed ({e}): run bash scripts/install-kubectl.sh", pytrace=False)
    return kubernetes_validate


def k8s_versions() -> List[str]:
    kv = _validate_module()
    latest = kv.latest_version()
    assert tuple(int(x) for x in latest.split(".")[:2]) >= (1, 37), f"kubernetes-validate ships only up to {latest}"
    return [OLDEST_K8S, latest]


def kustomize(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("kubectl"), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


_RENDERED: Dict[str, List[dict]] = {}


def rendered(name: str) -> List[dict]:
    """The documents ``kubectl kustomize deploy/kubernetes/<name>`` prints (rendered once)."""
    if name not in _RENDERED:
        out = kustomize(K8S / name)
        assert out.returncode == 0, f"kubectl kustomize {name}: {out.stderr}"
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        assert docs, f"kubectl kustomize {name} rendered nothing"
        _RENDERED[name] = docs
    return copy.deepcopy(_RENDERED[name])


def plain_manifests() -> List[Path]:
    """Every YAML under deploy/kubernetes that is a Kubernetes object (not a kustomization)."""
    files = []
    for path in sorted(K8S.rglob("*.y*ml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if docs and all(d.get("kind") in KUSTOMIZE_KINDS for d in docs):
            continue
        files.append(path)
    return files


# ---------------------------------------------------------------------------------------------
# What the source says: environment variable names, probe routes, the image's user.
# ---------------------------------------------------------------------------------------------


def config_env_names() -> set:
    """Every upper-case string literal of src/config: the variables Aegis reads."""
    names = set()
    for path in (REPO / "src/config").rglob("*.rs"):
        names |= set(re.findall(r'"([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])"', path.read_text()))
    assert {"VAULT_ADDR", "AEGIS_LISTEN_UNIX", "AEGIS_METRICS_LISTEN"} <= names, sorted(names)
    return names


def probe_routes() -> set:
    """The paths the metrics listener serves: ``PROBE_PATHS`` in src/api/http.rs, which
    ``fn probes()`` routes."""
    src = (REPO / "src/api/http.rs").read_text()
    paths = re.search(r"\nconst PROBE_PATHS: \[&str; \d+\] = \[([^\]]*)\];", src)
    assert paths, "const PROBE_PATHS not found in src/api/http.rs"
    routes = set(re.findall(r'"([^"]+)"', paths.group(1)))
    assert {"/healthz", "/readyz"} <= routes, routes
    assert re.search(r"\nfn probes\(\)[^{]*\{\s*let \[[^\]]*\] = PROBE_PATHS;", src), "fn probes() no longer routes PROBE_PATHS"
    assert "fn admin_router" in src and "probes().with_state" in src, "the metrics listener no longer serves probes()"
    return routes


def image_user() -> Tuple[int, int]:
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (REPO / "Dockerfile").read_text(), re.M)
    assert len(users) == 1, f"the Dockerfile must have one numeric USER uid:gid line, found {users}"
    return int(users[0][0]), int(users[0][1])


# ---------------------------------------------------------------------------------------------
# Reading rendered manifests.
# ---------------------------------------------------------------------------------------------


def find(docs: List[dict], kind: str, name: Optional[str] = None) -> List[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def pod_templates(docs: List[dict]) -> Iterator[Tuple[str, dict]]:
    for d in docs:
        if d["kind"] == "Deployment":
            yield f"Deployment/{d['metadata']['name']}", d["spec"]["template"]
        elif d["kind"] == "CronJob":
            yield f"CronJob/{d['metadata']['name']}", d["spec"]["jobTemplate"]["spec"]["template"]


def containers(pod: dict) -> List[dict]:
    spec = pod["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def is_aegis(c: dict) -> bool:
    return c["image"].split("@")[0].rsplit(":", 1)[0] == AEGIS_IMAGE


def model_server(docs: List[dict]) -> Tuple[dict, dict]:
    deployments = find(docs, "Deployment", "model-server")
    assert len(deployments) == 1, [d["metadata"]["name"] for d in find(docs, "Deployment")]
    return deployments[0], deployments[0]["spec"]["template"]


def sidecar(pod: dict) -> dict:
    found = [c for c in pod["spec"].get("initContainers", []) if c["name"] == "aegis"]
    assert len(found) == 1, "no init container named aegis"
    return found[0]


def effective_env(c: dict, docs: List[dict]) -> Dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env."""
    env: Dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{c['name']}: only ConfigMap envFrom is expected: {source}"
        name = source["configMapRef"]["name"]
        maps = find(docs, "ConfigMap", name)
        assert len(maps) == 1, f"{c['name']}: envFrom ConfigMap {name} is not in the rendered output"
        env.update(maps[0].get("data", {}))
    for e in c.get("env", []):
        assert "value" in e, f"{c['name']}: {e['name']} has no literal value"
        env[e["name"]] = e["value"]
    return env


def volume(pod: dict, name: str) -> dict:
    found = [v for v in pod["spec"].get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"volume {name}: {len(found)} definitions"
    return found[0]


def mount_of(c: dict, path: str) -> Optional[dict]:
    """The container's volume mount holding ``path`` (the deepest one)."""
    best = None
    for m in c.get("volumeMounts", []):
        root = m["mountPath"].rstrip("/") + "/"
        if (path.rstrip("/") + "/").startswith(root) and (best is None or len(root) > len(best["mountPath"]) + 1):
            best = m
    return best


def named_port(c: dict, port) -> int:
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert len(found) == 1, f"{c['name']}: no port named {port}"
    return found[0]


def listen_port(addr: str) -> Tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def selects(selector: dict, labels: dict) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", f"unsupported selector operator in this test: {expr}"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# The operator checks: each takes rendered documents and raises AssertionError.
# ---------------------------------------------------------------------------------------------


def check_native_sidecar(docs: List[dict]) -> None:
    _, pod = model_server(docs)
    inits = pod["spec"].get("initContainers", [])
    side = sidecar(pod)
    assert side.get("restartPolicy") == "Always", "the aegis init container must have restartPolicy: Always (native sidecar)"
    assert side.get("args") == ["serve"], side.get("args")
    assert inits[0] is side, f"the sidecar must be the first init container, got {[c['name'] for c in inits]}"
    # Only a startup probe makes the next init container (and the model server) wait for it.
    assert "startupProbe" in side, "the sidecar needs a startupProbe: without it later containers start at once"
    assert all(c.get("restartPolicy") != "Always" for c in inits[1:] + pod["spec"]["containers"])
    assert [c["name"] for c in pod["spec"]["containers"]] == ["model-server"]


def check_hardened(docs: List[dict]) -> None:
    uid, gid = image_user()
    for where, pod in pod_templates(docs):
        psc = pod["spec"].get("securityContext", {})
        assert pod["spec"].get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken"
        for c in containers(pod):
            sc = c.get("securityContext", {})
            name = f"{where} container {c['name']}"
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities.drop [ALL]"
            assert "add" not in sc.get("capabilities", {}), f"{name}: adds capabilities"
            assert sc.get("privileged") in (None, False), f"{name}: privileged"
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{name}: seccompProfile RuntimeDefault"
            if is_aegis(c):
                assert sc.get("runAsUser", psc.get("runAsUser")) == uid, f"{name}: runAsUser {uid} (Dockerfile USER)"
                assert sc.get("runAsGroup", psc.get("runAsGroup")) == gid, f"{name}: runAsGroup {gid} (Dockerfile USER)"
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), f"{name}: cpu and memory requests"
            assert "memory" in res.get("limits", {}), f"{name}: a memory limit"


def check_probes(docs: List[dict]) -> None:
    routes = probe_routes()
    _, pod = model_server(docs)
    side = sidecar(pod)
    env = effective_env(side, docs)
    assert "AEGIS_METRICS_LISTEN" in env, "the probes need the metrics listener (AEGIS_METRICS_LISTEN)"
    host, port = listen_port(env["AEGIS_METRICS_LISTEN"])
    assert host in ("0.0.0.0", "::"), f"kubelet probes the pod IP: AEGIS_METRICS_LISTEN {host} is not reachable"
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert probe in side, f"sidecar: no {probe}"
        get = side[probe]["httpGet"]
        assert get["path"] == path and get["path"] in routes, f"{probe}: {get['path']} (served: {sorted(routes)})"
        assert named_port(side, get["port"]) == port, f"{probe}: port {get['port']} is not the metrics listener's {port}"
    # The Transit API stays on loopback: only this pod's containers can sign.
    api_host, _ = listen_port(env.get("AEGIS_LISTEN_ADDR", "127.0.0.1:8201"))
    assert api_host in ("127.0.0.1", "::1"), f"AEGIS_LISTEN_ADDR {api_host}: the Transit API must stay on loopback"


def check_vault_token(docs: List[dict]) -> None:
    for where, pod in pod_templates(docs):
        for c in containers(pod):
            env = effective_env(c, docs)
            if env.get("AEGIS_AUTH_METHOD") != "kubernetes":
                continue
            jwt = env.get("AEGIS_JWT_FILE")
            assert jwt, f"{where} {c['name']}: kubernetes auth without AEGIS_JWT_FILE"
            m = mount_of(c, jwt)
            assert m, f"{where} {c['name']}: AEGIS_JWT_FILE {jwt} is on no volume"
            sources = volume(pod, m["name"]).get("projected", {}).get("sources", [])
            tokens = [s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s]
            assert len(tokens) == 1, f"{where}: {m['name']} is not a projected service-account token"
            tok = tokens[0]
            assert os.path.relpath(jwt, m["mountPath"]) == tok["path"], f"{where}: {jwt} is not the token's path"
            assert tok.get("audience") == "vault", f"{where}: the token's audience must be vault (the Vault role's)"
            assert 600 <= tok.get("expirationSeconds", 0) <= 86400, f"{where}: expirationSeconds"
            assert "AEGIS_AUTH_ROLE" in env, f"{where} {c['name']}: no AEGIS_AUTH_ROLE"
            # Nobody else in the pod gets the Vault login token.
            for other in containers(pod):
                if other is not c:
                    assert m["name"] not in {x["name"] for x in other.get("volumeMounts", [])}, (
                        f"{where}: {other['name']} mounts the Vault token"
                    )


def check_socket(docs: List[dict]) -> None:
    _, pod = model_server(docs)
    side = sidecar(pod)
    sock = effective_env(side, docs).get("AEGIS_LISTEN_UNIX")
    assert sock, "the sidecar has no AEGIS_LISTEN_UNIX"
    m = mount_of(side, sock)
    assert m and m["mountPath"] == os.path.dirname(sock), f"the socket {sock}: its directory is not a volume mount"
    assert not m.get("readOnly"), "the socket's volume must be writable by the sidecar"
    assert "emptyDir" in volume(pod, m["name"]), "the socket's volume must be an emptyDir"
    (server,) = pod["spec"]["containers"]
    addr = effective_env(server, docs).get("VAULT_ADDR", "")
    assert addr == f"unix://{sock}", f"model-server VAULT_ADDR {addr!r} is not the socket unix://{sock}"
    theirs = mount_of(server, sock)
    assert theirs and theirs["name"] == m["name"] and theirs["mountPath"] == m["mountPath"], (
        f"model-server does not mount volume {m['name']} at {m['mountPath']}"
    )
    # The socket is mode 0660: the model server (another uid) reaches it through the pod's
    # fsGroup, which owns the emptyDir and is a supplementary group of every container.
    psc = pod["spec"].get("securityContext", {})
    assert "fsGroup" in psc, "without fsGroup the model server cannot open the sidecar's 0660 socket"
    uid = server.get("securityContext", {}).get("runAsUser", psc.get("runAsUser"))
    assert uid is not None and uid != image_user()[0], "the model server needs a uid of its own (caller policy)"


# Settings that name a file or directory: (must be writable, names a file in the volume).
PATH_SETTINGS = {
    "VAULT_CACERT": (False, True),
    "AEGIS_JWT_FILE": (False, True),
    "AEGIS_POLICY_FILE": (False, True),
    "AEGIS_VAULT_TOKEN_FILE": (False, True),
    "AEGIS_AUDIT_TOKEN_FILE": (False, True),
    "AEGIS_CACHE_DIR": (True, False),
    "AEGIS_AUDIT_SPOOL_DIR": (True, False),
    "AEGIS_AUDIT_FILE": (True, False),
    "AEGIS_LISTEN_UNIX": (True, False),
}


def check_env(docs: List[dict]) -> None:
    known = config_env_names()
    for where, pod in pod_templates(docs):
        for c in containers(pod):
            env = effective_env(c, docs)
            unknown = sorted(set(env) - known)
            assert not unknown, f"{where} {c['name']}: {unknown} are not read by Aegis (src/config)"
            for name, (writable, is_file) in PATH_SETTINGS.items():
                if name not in env:
                    continue
                path = env[name]
                m = mount_of(c, path)
                assert m, f"{where} {c['name']}: {name}={path} is on no volume (the root filesystem is read-only)"
                vol = volume(pod, m["name"])
                if writable:
                    assert not m.get("readOnly") and not ({"configMap", "secret", "projected"} & set(vol)), (
                        f"{where} {c['name']}: {name}={path} must be on a writable volume"
                    )
                if is_file and "configMap" in vol:
                    maps = find(docs, "ConfigMap", vol["configMap"]["name"])
                    if maps:  # generated here (others, like vault-ca, are the operator's)
                        key = os.path.relpath(path, m["mountPath"])
                        assert key in maps[0].get("data", {}), f"{where}: {name}: no key {key} in {vol['configMap']['name']}"


def check_network_policy(docs: List[dict]) -> None:
    _, pod = model_server(docs)
    labels = pod["metadata"]["labels"]
    side = sidecar(pod)
    env = effective_env(side, docs)
    _, metrics_port = listen_port(env["AEGIS_METRICS_LISTEN"])
    vault_port = int(re.match(r"https?://[^/:]+:(\d+)", env["VAULT_ADDR"]).group(1))
    policies = [p for p in find(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
    assert len(policies) == 1, f"{len(policies)} NetworkPolicies select the model-server pods"
    spec = policies[0]["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}, spec["policyTypes"]
    all_cs = containers(pod)
    for rule in spec.get("ingress", []):
        for p in rule.get("ports", []):
            number = next(named_port(c, p["port"]) for c in all_cs if isinstance(p["port"], int) or any(
                q.get("name") == p["port"] for q in c.get("ports", [])))
            assert number != 8201, "the Transit API port must not be opened"
            if number == metrics_port:
                froms = rule.get("from", [])
                assert froms and all(
                    f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring"
                    for f in froms
                ), f"the metrics port is open beyond the monitoring namespace: {rule}"
    egress_ports = {(p.get("protocol", "TCP"), p["port"]) for r in spec.get("egress", []) for p in r.get("ports", [])}
    assert ("UDP", 53) in egress_ports, "no egress to DNS"
    assert ("TCP", vault_port) in egress_ports, f"no egress to Vault's port {vault_port}"


def check_rotation(docs: List[dict]) -> None:
    jobs = find(docs, "CronJob")
    for job in jobs:
        fields = job["spec"]["schedule"].split()
        assert len(fields) == 5 and "$" not in job["spec"]["schedule"], f"{job['metadata']['name']}: schedule"
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        assert job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def check_sync(docs: List[dict]) -> None:
    """The sync job's Role names exactly the objects its sync file writes and restarts, with
    the verbs server-side apply needs, and nothing cluster-wide; it reads that file."""
    jobs = find(docs, "CronJob", "aegis-sync")
    if not jobs:
        return
    pod = jobs[0]["spec"]["jobTemplate"]["spec"]["template"]
    c = containers(pod)[0]
    args = c["args"]
    path = args[args.index("--file") + 1]
    m = mount_of(c, path)
    assert m, f"--file {path} is on no volume"
    maps = find(docs, "ConfigMap", volume(pod, m["name"])["configMap"]["name"])
    assert len(maps) == 1, "the sync file's ConfigMap is not rendered"
    sync = tomllib.loads(maps[0]["data"][os.path.relpath(path, m["mountPath"])])
    secrets = {s["name"] for s in sync.get("secret", [])}
    configmaps = {p["name"] for p in sync.get("public_keys", [])}
    restarts = {r.split("/", 1)[1] for e in sync.get("secret", []) + sync.get("public_keys", []) for r in e.get("restart", [])}
    deletes = any(e.get("on_delete", sync.get("on_delete", "keep")) == "delete" for e in sync.get("secret", []))
    assert sync["namespace"] == jobs[0]["metadata"].get("namespace", sync["namespace"]), "the sync file writes into another namespace"
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    roles = find(docs, "Role", "aegis-sync")
    assert len(roles) == 1
    granted = {(r["apiGroups"][0], r["resources"][0]): (set(r["resourceNames"]), set(r["verbs"])) for r in roles[0]["rules"]}
    assert all(len(r["apiGroups"]) == 1 and len(r["resources"]) == 1 for r in roles[0]["rules"]), roles[0]["rules"]
    assert granted == {
        ("", "secrets"): (secrets, {"get", "patch", "create"} | ({"delete"} if deletes else set())),
        ("", "configmaps"): (configmaps, {"get", "patch", "create"}),
        ("apps", "deployments"): (restarts, {"get", "patch"}),
    }, granted
    binding = find(docs, "RoleBinding", "aegis-sync")[0]
    assert binding["roleRef"]["name"] == "aegis-sync"
    assert binding["subjects"][0]["name"] == pod["spec"]["serviceAccountName"]


def check_disruption(docs: List[dict]) -> None:
    deployment, pod = model_server(docs)
    for pdb in find(docs, "PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"], pod["metadata"]["labels"]), "the PDB selects no model-server pod"
        # A budget that a single replica can never satisfy blocks every node drain.
        assert deployment["spec"]["replicas"] > pdb["spec"].get("maxUnavailable", 0) >= 1, (
            f"replicas {deployment['spec']['replicas']} with PDB {pdb['spec']}: the budget is unsatisfiable or empty"
        )


CHECKS = [
    check_native_sidecar,
    check_hardened,
    check_probes,
    check_vault_token,
    check_socket,
    check_env,
    check_network_policy,
    check_rotation,
    check_sync,
    check_disruption,
]


# ---------------------------------------------------------------------------------------------
# The tests.
# ---------------------------------------------------------------------------------------------


def test_the_tools_are_the_pinned_ones():
    out = subprocess.run([_tool("kubectl"), "version", "--client", "-o", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    version = json.loads(out.stdout)
    assert version["kustomizeVersion"].startswith("v5."), version
    assert _validate_module().__version__ == "1.37.0"
    assert OVERLAYS == ["dev", "production"], OVERLAYS


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(name):
    kv = _validate_module()
    docs = rendered(name)
    for version in k8s_versions():
        for d in docs:
            what = f"{name}: {d.get('kind')}/{d.get('metadata', {}).get('name')} against {version}"
            try:
                kv.validate(d, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{what}: {'.'.join(map(str, e.path))}: {e.message}", pytrace=False)
            except kv.SchemaNotFoundError as e:
                pytest.fail(f"{what}: {e.message}", pytrace=False)


def test_plain_manifests_validate_strictly():
    kv = _validate_module()
    files = plain_manifests()
    names = {p.relative_to(K8S).as_posix() for p in files}
    assert {"base/deployment.yaml", "rotation/rotation-cronjob.yaml", "overlays/production/pdb.yaml"} <= names, names
    count = 0
    for path in files:
        for d in yaml.safe_load_all(path.read_text()):
            if not d:
                continue
            for version in k8s_versions():
                try:
                    kv.validate(d, version, strict=True)
                except (kv.ValidationError, kv.SchemaNotFoundError) as e:
                    pytest.fail(f"{path.relative_to(REPO)} against {version}: {getattr(e, 'message', e)}", pytrace=False)
            count += 1
    assert count >= 8, count


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_operator_checks(overlay, check):
    check(rendered(f"overlays/{overlay}"))


def test_overlays_differ_where_they_should():
    dev, prod = rendered("overlays/dev"), rendered("overlays/production")
    for docs, namespace in ((dev, "ml-dev"), (prod, "ml")):
        assert {d["metadata"].get("namespace") for d in docs} == {namespace}
        _, pod = model_server(docs)
        names = [c["name"] for c in pod["spec"]["initContainers"]]
        assert names == ["aegis", "verify-model"], f"verify-model must come after the sidecar: {names}"
    # Production: replicas, a PDB, digests, the rotation jobs and the caller policy.
    deployment, pod = model_server(prod)
    assert deployment["spec"]["replicas"] >= 2 and find(prod, "PodDisruptionBudget")
    assert all("@sha256:" in c["image"] for c in containers(pod)), "production pins images by digest"
    assert {j["metadata"]["name"] for j in find(prod, "CronJob")} == {"aegis-rotate-model-sign", "aegis-keys-status", "aegis-sync"}
    assert "AEGIS_POLICY_FILE" in effective_env(sidecar(pod), prod)
    assert not find(dev, "CronJob") and not find(dev, "PodDisruptionBudget")
    assert "AEGIS_POLICY_FILE" not in effective_env(sidecar(model_server(dev)[1]), dev)


def production_policy() -> Tuple[dict, str, dict]:
    """(parsed policy, its text, the rendered production pod) as the sidecar would read them."""
    docs = rendered("overlays/production")
    _, pod = model_server(docs)
    side = sidecar(pod)
    path = effective_env(side, docs)["AEGIS_POLICY_FILE"]
    m = mount_of(side, path)
    (cm,) = find(docs, "ConfigMap", volume(pod, m["name"])["configMap"]["name"])
    text = cm["data"][os.path.relpath(path, m["mountPath"])]
    return tomllib.loads(text), text, pod


def test_the_production_policy_matches_the_pod():
    policy, _, pod = production_policy()
    callers = {c["name"]: c for c in policy["caller"]}
    side = sidecar(pod)
    (server,) = pod["spec"]["containers"]
    assert callers["model-server"]["uids"] == [server["securityContext"]["runAsUser"]]
    verify = next(c for c in pod["spec"]["initContainers"] if c["name"] == "verify-model")
    token_file = callers["verify-model"]["token_file"]
    assert "sign" not in callers["verify-model"], "verify-model must not be able to sign"
    env = {e["name"]: e["value"] for e in verify["env"]}
    assert env["AEGIS_VAULT_TOKEN_FILE"] == token_file
    for c in (side, verify):
        m = mount_of(c, token_file)
        assert m and "secret" in volume(pod, m["name"]), f"{c['name']} does not mount the callers' token Secret"


# ---------------------------------------------------------------------------------------------
# Mutations: the validator, kustomize and every check can fail.
# ---------------------------------------------------------------------------------------------


def _sidecar_of(docs):
    return sidecar(model_server(docs)[1])


def _server_of(docs):
    return model_server(docs)[1]["spec"]["containers"][0]


def _set_env(c, name, value):
    for e in c["env"]:
        if e["name"] == name:
            e["value"] = value
            return
    c["env"].append({"name": name, "value": value})


def _unwrap_sidecar(docs):
    """The sidecar as an ordinary container: no longer a native sidecar."""
    pod = model_server(docs)[1]
    side = pod["spec"]["initContainers"].pop(0)
    side.pop("restartPolicy")
    pod["spec"]["containers"].append(side)


MUTATIONS = {
    "sidecar not native": (check_native_sidecar, lambda d: _sidecar_of(d).pop("restartPolicy")),
    "sidecar as a container": (check_native_sidecar, _unwrap_sidecar),
    "verify before the sidecar": (
        check_native_sidecar,
        lambda d: model_server(d)[1]["spec"]["initContainers"].reverse(),
    ),
    "writable root": (check_hardened, lambda d: _server_of(d)["securityContext"].update(readOnlyRootFilesystem=False)),
    "capability kept": (check_hardened, lambda d: _sidecar_of(d)["securityContext"]["capabilities"].update(drop=["NET_RAW"])),
    "escalation": (check_hardened, lambda d: _sidecar_of(d)["securityContext"].update(allowPrivilegeEscalation=True)),
    "root uid": (check_hardened, lambda d: _sidecar_of(d)["securityContext"].update(runAsUser=0)),
    "no memory limit": (check_hardened, lambda d: _sidecar_of(d)["resources"].pop("limits")),
    "probe path not served": (check_probes, lambda d: _sidecar_of(d)["livenessProbe"]["httpGet"].update(path="/health")),
    "probe on loopback": (check_probes, lambda d: _set_env(_sidecar_of(d), "AEGIS_METRICS_LISTEN", "127.0.0.1:9464")),
    "probe wrong port": (check_probes, lambda d: _sidecar_of(d)["readinessProbe"]["httpGet"].update(port=8201)),
    "api beyond loopback": (check_probes, lambda d: _set_env(_sidecar_of(d), "AEGIS_LISTEN_ADDR", "0.0.0.0:8201")),
    "token audience": (
        check_vault_token,
        lambda d: volume(model_server(d)[1], "vault-sa-token")["projected"]["sources"][0]["serviceAccountToken"].update(
            audience="https://kubernetes.default.svc"
        ),
    ),
    "token path": (check_vault_token, lambda d: _set_env(_sidecar_of(d), "AEGIS_JWT_FILE", "/var/run/secrets/vault-sa/jwt")),
    "token shared": (
        check_vault_token,
        lambda d: _server_of(d)["volumeMounts"].append({"name": "vault-sa-token", "mountPath": "/t", "readOnly": True}),
    ),
    "socket elsewhere": (check_socket, lambda d: _set_env(_sidecar_of(d), "AEGIS_LISTEN_UNIX", "/tmp/aegis.sock")),
    "socket not mounted by the server": (
        check_socket,
        lambda d: _server_of(d).update(volumeMounts=[m for m in _server_of(d)["volumeMounts"] if m["name"] != "aegis-socket"]),
    ),
    "server dials another path": (check_socket, lambda d: _set_env(_server_of(d), "VAULT_ADDR", "unix:///run/aegis/other.sock")),
    "misspelt variable": (check_env, lambda d: _set_env(_sidecar_of(d), "AEGIS_CACHEDIR", "/var/cache/aegis")),
    "cache on the root filesystem": (check_env, lambda d: _set_env(_sidecar_of(d), "AEGIS_CACHE_DIR", "/var/lib/aegis")),
    "metrics open to all": (
        check_network_policy,
        lambda d: find(d, "NetworkPolicy", "model-server")[0]["spec"]["ingress"][1].pop("from"),
    ),
    "no dns": (check_network_policy, lambda d: find(d, "NetworkPolicy", "model-server")[0]["spec"]["egress"].pop()),
    "unset schedule": (check_rotation, lambda d: find(d, "CronJob")[0]["spec"].update(schedule="${ROTATION_SCHEDULE}")),
    "sync role names another secret": (
        check_sync,
        lambda d: find(d, "Role", "aegis-sync")[0]["rules"][0]["resourceNames"].append("other-secret"),
    ),
    "sync role may list": (check_sync, lambda d: find(d, "Role", "aegis-sync")[0]["rules"][0]["verbs"].append("list")),
    "sync role lacks create": (check_sync, lambda d: find(d, "Role", "aegis-sync")[0]["rules"][1]["verbs"].remove("create")),
    "budget blocks drains": (check_disruption, lambda d: model_server(d)[0]["spec"].update(replicas=1)),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_check_catches_its_mutation(mutation):
    check, mutate = MUTATIONS[mutation]
    docs = rendered("overlays/production")
    check(docs)  # passes as shipped
    mutate(docs)
    with pytest.raises(AssertionError):
        check(docs)


def test_the_validator_refuses_broken_manifests():
    kv = _validate_module()
    version = k8s_versions()[-1]
    deployment = model_server(rendered("overlays/production"))[0]
    kv.validate(copy.deepcopy(deployment), version, strict=True)
    broken = []
    d = copy.deepcopy(deployment)  # a misspelt field: only strict mode sees it
    d["spec"]["template"]["spec"]["initContainers"][0]["restartpolicy"] = d["spec"]["template"]["spec"][
        "initContainers"
    ][0].pop("restartPolicy")
    broken.append(("misspelt field", d))
    d = copy.deepcopy(deployment)
    d["spec"]["replicas"] = "three"
    broken.append(("wrong type", d))
    d = copy.deepcopy(deployment)
    del d["spec"]["template"]["spec"]["containers"][0]["name"]
    broken.append(("missing required field", d))
    d = copy.deepcopy(deployment)
    d["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["typ"] = "RuntimeDefault"
    broken.append(("unknown nested field", d))
    for what, doc in broken:
        with pytest.raises(kv.ValidationError):
            kv.validate(doc, version, strict=True)
            pytest.fail(f"{what} was accepted")
    with pytest.raises(kv.SchemaNotFoundError):
        kv.validate({"apiVersion": "example.com/v1", "kind": "Sidecar", "metadata": {"name": "x"}}, version, strict=True)


def test_kustomize_refuses_a_broken_kustomization(tmp_path):
    target = tmp_path / "k"
    shutil.copytree(K8S, target)
    assert kustomize(target / "overlays/production").returncode == 0
    (target / "base/networkpolicy.yaml").unlink()
    out = kustomize(target / "overlays/production")
    assert out.returncode != 0 and "networkpolicy.yaml" in out.stderr, out.stderr
    # A JSON patch on a path that is not there fails too: production's patches of
    # initContainers/1 need the verify-model component.
    shutil.rmtree(target)
    shutil.copytree(K8S, target)
    prod = target / "overlays/production/kustomization.yaml"
    text = prod.read_text()
    assert text.count("components:\n  - ../../components/model-verify\n") == 1
    prod.write_text(text.replace("components:\n  - ../../components/model-verify\n", ""))
    out = kustomize(target / "overlays/production")
    assert out.returncode != 0 and "initContainers/1" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------------
# The production caller policy against the real binary and a real OpenBao.
# ---------------------------------------------------------------------------------------------

KEY = "model-sign"


def _as_user(uid: int, gid: int, groups: List[int], argv: List[str], env: dict) -> subprocess.CompletedProcess:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run a client as another uid"
    return subprocess.run(
        [setpriv, f"--reuid={uid}", f"--regid={gid}", f"--groups={','.join(map(str, groups))}", "--", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory other uids can traverse (pytest's own tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="aegis-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def own_bao():
    """An OpenBao of this module's own: the key it adds stays out of the session's server."""
    with running_bao() as server:
        yield server


def test_production_policy_with_the_real_sidecar(own_bao, shared_tmp):
    assert os.geteuid() == 0, "this test runs clients as other uids (setpriv): run it as root, as CI does"
    tmp_path, bao = shared_tmp, own_bao
    r = bao.api("POST", f"transit/keys/{KEY}", json={"type": "ecdsa-p256"})
    assert r.status_code in (200, 204), r.text
    policy, text, pod = production_policy()
    side = sidecar(pod)
    (server,) = pod["spec"]["containers"]
    server_uid = server["securityContext"]["runAsUser"]
    server_gid = server["securityContext"]["runAsGroup"]
    fs_group = pod["spec"]["securityContext"]["fsGroup"]

    # The token file the policy names lives in a Secret volume in the pod; here, in a file.
    token = base64.b64encode(os.urandom(32)).decode()
    token_path = tmp_path / "verify-model.token"
    token_path.write_text(token + "\n")
    token_file = next(c["token_file"] for c in policy["caller"] if c["name"] == "verify-model")
    assert text.count(f'"{token_file}"') == 1
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(text.replace(f'"{token_file}"', json.dumps(str(token_path))))

    # The socket directory as the pod's fsGroup makes the emptyDir: group-owned, setgid.
    sock_dir = tmp_path / "run"
    sock_dir.mkdir()
    os.chown(sock_dir, 0, fs_group)
    os.chmod(sock_dir, 0o2770)
    sock = sock_dir / os.path.basename(effective_env(side, rendered("overlays/production"))["AEGIS_LISTEN_UNIX"])
    home = tmp_path / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)

    with running_sidecar(bao, AEGIS_KEYS=KEY, AEGIS_POLICY_FILE=str(policy_path), AEGIS_LISTEN_UNIX=str(sock)) as s:
        assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o660 and sock.stat().st_gid == fs_group

        # The model server's container: its uid, its fsGroup, VAULT_ADDR=unix://<socket>.
        client_env = clean_env(VAULT_ADDR=f"unix://{sock}", HOME=str(home))
        sign = [bao_path(), "write", "-format=json", f"transit/sign/{KEY}", "input=" + base64.b64encode(b"weights").decode()]
        out = _as_user(server_uid, server_gid, [fs_group], sign, client_env)
        assert out.returncode == 0, f"the model server's uid could not sign over the socket: {out.stderr}"
        assert json.loads(out.stdout)["data"]["signature"].startswith("vault:v1:")
        # Another uid in the same group reaches the socket but is not in the policy.
        out = _as_user(server_uid + 1, server_uid + 1, [fs_group], sign, client_env)
        assert out.returncode != 0 and "403" in out.stderr, out.stderr
        # Outside the group the socket cannot even be opened.
        out = _as_user(server_uid, server_gid, [server_gid], sign, client_env)
        assert out.returncode != 0 and "permission denied" in out.stderr.lower(), out.stderr

        # The verify-model init container: over TCP with its token; reads the key, cannot sign.
        verify_env = clean_env(VAULT_ADDR=s.addr, AEGIS_VAULT_TOKEN_FILE=str(token_path))
        export = [aegis_path(), "keys", "export", "--key", KEY]
        out = subprocess.run(export, env=verify_env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "BEGIN PUBLIC KEY" in out.stdout, out.stderr
        out = subprocess.run(export, env=clean_env(VAULT_ADDR=s.addr), capture_output=True, text=True, timeout=60)
        assert out.returncode != 0, "the key was read over TCP without the caller's token"
        r = requests.post(
            f"{s.addr}/v1/transit/sign/{KEY}",
            headers={"X-Vault-Token": token, "X-Vault-Request": "true"},
            json={"input": base64.b64encode(b"weights").decode()},
            timeout=30,
        )
        assert r.status_code == 403 and r.json()["errors"], r.text
