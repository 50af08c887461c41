"""The metric contract of the Aegis sidecar's ``GET /metrics`` and the names the deploy files use.

``CONTRACT`` lists every metric the sidecar (and the model-verification init containers, over
OTLP) exports, with its type and labels; ``LABEL_VALUES`` the bounded values of the enumerated
labels. ``referenced_metric_names()`` returns the base names (``_bucket``/``_sum``/``_count``
stripped from histograms) that deploy/prometheus/aegis-alerts.yaml and
deploy/grafana/aegis-dashboard.json query, so that a live test can scrape a running sidecar
and check that every one of them exists, e.g. with prometheus_client's parser::

    from prometheus_client.parser import text_string_to_metric_families
    from monitoring_names import OPTIONAL_METRICS, base_names_of_samples, referenced_metric_names

    samples = [s.name for f in text_string_to_metric_families(body) for s in f.samples]
    missing = referenced_metric_names() - OPTIONAL_METRICS - base_names_of_samples(samples)
    assert not missing, missing

(Compare sample names, not family names: prometheus_client strips ``_total`` from counter
families.) Standard library only: no YAML parser is needed, the metric names are
read from the rules file's non-comment text and from the dashboard's queries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Set, Tuple

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "deploy/prometheus/aegis-alerts.yaml"
RULES_TEST_FILE = REPO / "deploy/prometheus/aegis-alerts.test.yaml"
DASHBOARD_FILE = REPO / "deploy/grafana/aegis-dashboard.json"

COUNTER = "counter"
HISTOGRAM = "histogram"
GAUGE = "gauge"

# name -> (type, labels exported by the sidecar; Prometheus adds job, instance, namespace, pod).
CONTRACT: Dict[str, Tuple[str, FrozenSet[str]]] = {
    "aegis_requests_total": (COUNTER, frozenset({"operation", "key", "outcome"})),
    "aegis_verify_results_total": (COUNTER, frozenset({"key", "result"})),
    "aegis_vault_requests_total": (COUNTER, frozenset({"endpoint", "status"})),
    "aegis_vault_auth_failures_total": (COUNTER, frozenset({"method"})),
    "aegis_keyset_refreshes_total": (COUNTER, frozenset({"outcome"})),
    "aegis_model_verify_failures_total": (COUNTER, frozenset({"key", "reason"})),
    "aegis_request_duration_seconds": (HISTOGRAM, frozenset({"operation"})),
    "aegis_vault_request_duration_seconds": (HISTOGRAM, frozenset({"endpoint"})),
    "aegis_sign_batch_size": (HISTOGRAM, frozenset()),
    "aegis_ready": (GAUGE, frozenset()),
    "aegis_vault_authenticated": (GAUGE, frozenset()),
    "aegis_vault_token_ttl_seconds": (GAUGE, frozenset()),
    "aegis_key_latest_version": (GAUGE, frozenset({"key"})),
    "aegis_key_oldest_valid_version": (GAUGE, frozenset({"key"})),
    "aegis_key_age_seconds": (GAUGE, frozenset({"key"})),
    "aegis_key_rotation_period_seconds": (GAUGE, frozenset({"key"})),
    "aegis_keyset_age_seconds": (GAUGE, frozenset({"key"})),
    "aegis_keyset_max_age_seconds": (GAUGE, frozenset({"key"})),
    "aegis_keyset_refresh_interval_seconds": (GAUGE, frozenset({"key"})),
    "aegis_keyset_watch_age_seconds": (GAUGE, frozenset()),
    "aegis_keyset_watch_interval_seconds": (GAUGE, frozenset()),
    "aegis_build_info": (GAUGE, frozenset({"version"})),
    "aegis_retention_record_refused_total": (COUNTER, frozenset({"key", "reason"})),
    "aegis_retention_record_trusted": (GAUGE, frozenset({"key"})),
    "aegis_audit_events_dropped_total": (COUNTER, frozenset({"reason"})),
    "aegis_audit_refused_signs_total": (COUNTER, frozenset()),
    "aegis_sync_rounds_total": (COUNTER, frozenset({"outcome"})),
    "aegis_sync_writes_total": (COUNTER, frozenset({"kind", "action"})),
    "aegis_sync_errors_total": (COUNTER, frozenset({"stage"})),
    "aegis_sync_last_success_timestamp_seconds": (GAUGE, frozenset()),
}
CONTRACT_NAMES: FrozenSet[str] = frozenset(CONTRACT)

# Not exported by the sidecar itself: pushed over OTLP by the model-verification init
# containers, and absent where none runs. A scrape of the sidecar need not contain them.
OPTIONAL_METRICS: FrozenSet[str] = frozenset({
    "aegis_model_verify_failures_total",
    # `aegis sync`'s, exported by the sync job (OTLP or its own /metrics), not the sidecar.
    "aegis_sync_rounds_total",
    "aegis_sync_writes_total",
    "aegis_sync_errors_total",
    "aegis_sync_last_success_timestamp_seconds",
})

# The bounded values of the enumerated labels (key, version and status are open:
# key is an allowlisted name or "_other"; status an HTTP status code or "unreachable").
LABEL_VALUES: Dict[str, FrozenSet[str]] = {
    "operation": frozenset({"sign", "verify", "read_key", "list_keys", "other"}),
    "outcome": frozenset({"ok", "client_error", "vault_error", "unavailable", "internal_error"}),
    "result": frozenset({"valid", "invalid", "retired", "revoked", "unknown_version", "too_new"}),
    "endpoint": frozenset({
        "sign", "verify", "read_key", "list_keys", "rotate", "config", "login", "renew",
        "lookup_self", "kv_read", "kv_write", "kv_list", "health", "other",
    }),
    "method": frozenset({"token", "approle", "kubernetes", "jwt", "cert"}),
    "kind": frozenset({"secret", "configmap", "deployment", "statefulset"}),
    "action": frozenset({"create", "update", "delete", "restart"}),
    "stage": frozenset({"vault", "kubernetes", "mapping", "audit"}),
}
# "outcome" has two vocabularies: requests (ok|client_error|...) and key set refreshes (ok|error).
OUTCOME_VALUES: Dict[str, FrozenSet[str]] = {
    "aegis_requests_total": frozenset({"ok", "client_error", "vault_error", "unavailable", "internal_error"}),
    "aegis_keyset_refreshes_total": frozenset({"ok", "error"}),
    "aegis_sync_rounds_total": frozenset({"ok", "failed", "aborted"}),
}
# "reason" too: audit drops and retention record refusals (model verification's is open).
REASON_VALUES: Dict[str, FrozenSet[str]] = {
    "aegis_audit_events_dropped_total": frozenset({"queue_full", "writer_stopped"}),
    "aegis_retention_record_refused_total": frozenset({
        "unendorsed", "bad_signature", "superseded", "key_mismatch", "wrong_key",
        "undecodable", "disappeared",
    }),
}
# Labels whose vocabulary depends on the metric.
PER_METRIC_VALUES: Dict[str, Dict[str, FrozenSet[str]]] = {
    "outcome": OUTCOME_VALUES,
    "reason": REASON_VALUES,
}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# A metric-name token: aegis_ followed by name characters (not part of a longer identifier).
_NAME_RE = re.compile(r"(?<![A-Za-z0-9_:])aegis_[A-Za-z0-9_:]*[A-Za-z0-9_]")
# name{label op "value", ...}
_SELECTOR_RE = re.compile(r"(?<![A-Za-z0-9_:])(aegis_[A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def base_name(name: str) -> str:
    """``name`` without a histogram suffix, when the rest is a histogram of the contract."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if CONTRACT.get(stem, ("", None))[0] == HISTOGRAM:
                return stem
    return name


def base_names_of_samples(sample_names) -> Set[str]:
    """Base names of exposition sample names (``x_bucket`` -> ``x`` for histograms of the
    contract, ``x_total_created`` -> ``x_total`` for its counters)."""
    out = set()
    for name in sample_names:
        if name.endswith("_created") and CONTRACT.get(name[: -len("_created")], ("", None))[0] == COUNTER:
            name = name[: -len("_created")]
        out.add(base_name(name))
    return out


def names_in(text: str) -> Set[str]:
    """Every aegis_* metric name in a PromQL expression (or any text), as base names."""
    return {base_name(m) for m in _NAME_RE.findall(text)}


def _strip_yaml_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def rules_text() -> str:
    """The alert rules file without its comment lines (rules, expressions and annotations)."""
    return _strip_yaml_comments(RULES_FILE.read_text())


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def iter_panels(panels: List[dict]) -> Iterator[dict]:
    """All panels, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def dashboard_exprs(dashboard: dict) -> List[Tuple[str, str]]:
    """(where, PromQL expression) of every panel target, with the dashboard's variables in it."""
    out = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr is not None:
                out.append((f"panel {panel.get('id')} '{panel.get('title')}' target {target.get('refId')}", expr))
    return out


_LABEL_VALUES_RE = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)
_QUERY_RESULT_RE = re.compile(r"^\s*query_result\((.*)\)\s*$", re.S)


def variable_exprs(dashboard: dict) -> List[Tuple[str, str]]:
    """(where, PromQL) of the query variables: the selector of label_values(selector, label),
    the query of query_result(query); label_values(label) and label_names() hold none."""
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        query = query or var.get("definition") or ""
        m = _LABEL_VALUES_RE.match(query) or _QUERY_RESULT_RE.match(query)
        if m:
            out.append((f"variable ${var.get('name')}", m.group(1)))
    return out


def referenced_metric_names() -> Set[str]:
    """The aegis_* base metric names used by the alert rules and the Grafana dashboard."""
    names = names_in(rules_text())
    dashboard = load_dashboard()
    for _, expr in dashboard_exprs(dashboard) + variable_exprs(dashboard):
        names |= names_in(expr)
    return names


def selector_label_problems(text: str) -> List[str]:
    """Label matchers on aegis_* selectors whose label is not exported by that metric, or whose
    value (for = and for alternatives of =~ without other regex syntax) is not an allowed value.
    Target labels (job, instance, namespace, pod, ...) and le are not checked."""
    own_labels = set().union(*(labels for _, labels in CONTRACT.values()))
    problems = []
    for name, body in _SELECTOR_RE.findall(text):
        metric = base_name(name)
        if metric not in CONTRACT:
            continue  # reported by the name check
        kind, labels = CONTRACT[metric]
        pos = 0
        body = body.strip()
        while pos < len(body):
            m = _MATCHER_RE.match(body, pos)
            if not m:
                problems.append(f"{name}{{{body}}}: cannot read the matcher at {body[pos:]!r}")
                break
            pos = m.end()
            label, op, value = m.groups()
            if label == "le" and kind == HISTOGRAM:
                continue
            if label not in own_labels:
                continue  # a target label added by Prometheus
            if label not in labels:
                problems.append(f"{name}: has no label {label!r} (contract: {sorted(labels)})")
                continue
            per_metric = PER_METRIC_VALUES.get(label)
            allowed = per_metric.get(metric) if per_metric is not None else LABEL_VALUES.get(label)
            if allowed is None or op in ("!=", "!~"):
                continue
            if op == "=":
                values = [value]
            elif re.fullmatch(r"[A-Za-z0-9_|]+", value):
                values = value.split("|")
            else:
                continue  # a real regex: not checked
            for v in values:
                if v not in allowed:
                    problems.append(f"{name}{{{label}{op}\"{value}\"}}: {v!r} is not one of {sorted(allowed)}")
    return problems
