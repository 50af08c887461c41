"""The Prometheus alert rules and the Grafana dashboard in deploy/ (issue 5).

- ``promtool check rules`` accepts deploy/prometheus/aegis-alerts.yaml and ``promtool test
  rules`` passes deploy/prometheus/aegis-alerts.test.yaml (each alert fires where it must,
  with exact labels and annotations, and stays silent where it must not);
- every alert of the issue exists, with a severity, a summary, a description and a runbook
  pointing at a section of deploy/prometheus/README.md that names it;
- the dashboard is importable JSON (uid, title, schemaVersion, a Prometheus datasource
  variable that every panel uses) and EVERY query in it is valid PromQL: each panel target
  and variable query, with the dashboard variables replaced by concrete values, becomes a
  recording rule of a temporary rules file that ``promtool check rules`` must accept;
- every metric name and enumerated label value the rules, their tests and the dashboard use
  is in the sidecar's metric contract (tests/interop/monitoring_names.py).

No server is started. promtool comes from scripts/install-promtool.sh (.venv/bin/promtool, or
AEGIS_PROMTOOL); a missing promtool fails the run, it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

import monitoring_names as mn

README_FILE = mn.REPO / "deploy/prometheus/README.md"

REQUIRED_ALERTS = [
    "AegisVaultAuthFailing",
    "AegisNotReady",
    "AegisVerifyInvalidSpike",
    "AegisRetiredOrRevokedSignatureSeen",
    "AegisKeyRotationOverdue",
    "AegisVaultTokenTtlLow",
    "AegisVaultLatencyHigh",
    "AegisModelVerificationFailing",
]

# Grafana's built-in variables and the values the dashboard's own variables take in the check.
BUILTIN_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
}
VARIABLE_SAMPLE_VALUES = {"namespace": "ml", "pod": "model-server-0", "key": "model-sign", "datasource": "prometheus"}

# Non-aegis metrics the deploy files may use.
NON_CONTRACT_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def promtool_path() -> str:
    path = Path(os.environ.get("AEGIS_PROMTOOL") or mn.REPO / ".venv/bin/promtool")
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{path} is missing or not executable (AEGIS_PROMTOOL); run: bash scripts/install-promtool.sh",
            pytrace=False,
        )
    return str(path)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool_path(), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        cwd=mn.REPO,
    )


def alert_blocks() -> dict:
    """alert name -> its text in the rules file (from its ``- alert:`` line to the next rule)."""
    text = mn.rules_text()
    parts = re.split(r"(?m)^\s*- (?:alert|record):\s*", text)[1:]
    blocks = {}
    for part in parts:
        name = part.split("\n", 1)[0].strip()
        assert name not in blocks, f"rule {name} defined twice"
        blocks[name] = part
    return blocks


# --------------------------------------------------------------------------------------- rules


def test_promtool_runs():
    out = promtool("--version")
    assert out.returncode == 0 and "promtool, version" in out.stdout, out.stdout


def test_alert_rules_pass_promtool_check():
    out = promtool("check", "rules", str(mn.RULES_FILE))
    assert out.returncode == 0, f"promtool check rules {mn.RULES_FILE}:\n{out.stdout}"
    assert "SUCCESS" in out.stdout, out.stdout


def test_alert_rules_pass_their_unit_tests():
    out = promtool("test", "rules", str(mn.RULES_TEST_FILE))
    assert out.returncode == 0, f"promtool test rules {mn.RULES_TEST_FILE}:\n{out.stdout}"
    assert "SUCCESS" in out.stdout, out.stdout


def test_unit_tests_can_fail(tmp_path):
    """The unit tests catch a broken rule: with AegisNotReady's condition inverted and the token
    TTL alert's 'no expiry' guard removed, promtool test rules must fail on both."""
    rules = mn.RULES_FILE.read_text()
    broken = rules.replace("aegis_ready == 0", "aegis_ready == 1", 1).replace("< 300 > 0", "< 300", 1)
    assert broken != rules
    (tmp_path / mn.RULES_FILE.name).write_text(broken)
    (tmp_path / mn.RULES_TEST_FILE.name).write_text(mn.RULES_TEST_FILE.read_text())
    out = promtool("test", "rules", str(tmp_path / mn.RULES_TEST_FILE.name))
    assert out.returncode != 0, f"promtool test rules passed with broken rules:\n{out.stdout}"
    assert "AegisNotReady" in out.stdout and "AegisVaultTokenTtlLow" in out.stdout, out.stdout


def test_required_alerts_have_severity_annotations_and_runbook():
    blocks = alert_blocks()
    missing = [name for name in REQUIRED_ALERTS if name not in blocks]
    assert not missing, f"alerts missing from {mn.RULES_FILE}: {missing}"
    readme = README_FILE.read_text()
    sections = {
        m.group(1).strip(): m.end() for m in re.finditer(r"(?m)^##\s+(.+)$", readme)
    }
    assert "Troubleshooting" in sections and "Rotation" in sections, sorted(sections)
    for name, block in blocks.items():
        assert re.search(r"(?m)^\s+severity:\s*(critical|warning|info)\s*$", block), f"{name}: no severity label"
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"(?m)^\s+{annotation}:\s*\S", block), f"{name}: no {annotation} annotation"
        m = re.search(r'runbook:\s*"deploy/prometheus/README\.md, section (\w+): (\w+)"', block)
        assert m, f"{name}: runbook annotation does not point at a README section"
        section, anchor_name = m.groups()
        assert anchor_name == name, f"{name}: runbook names {anchor_name}"
        assert section in sections, f"{name}: README.md has no section {section!r}"
        # The section (up to the next '## ') explains this alert.
        start = sections[section]
        end = min([pos for pos in sections.values() if pos > start] + [len(readme)])
        assert name in readme[start:end], f"{name}: not described in README.md section {section}"


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    text = mn.RULES_TEST_FILE.read_text()
    # alertname: X, then its exp_alerts: either [] or a list starting with "- exp_labels".
    cases = re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:\s*(\[\]|\n\s*- exp_labels)", text)
    fires = {name for name, exp in cases if exp != "[]"}
    silent = {name for name, exp in cases if exp == "[]"}
    for name in alert_blocks():
        assert name in fires, f"{name}: no unit test where it fires"
        assert name in silent, f"{name}: no unit test where it must not fire"


# ----------------------------------------------------------------------------------- dashboard


def test_dashboard_is_importable_json():
    d = mn.load_dashboard()
    assert d.get("uid") and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]), d.get("uid")
    assert d.get("title")
    assert isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 36, d.get("schemaVersion")
    assert d.get("id") is None, "an exported dashboard for import carries no database id"

    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", ds
    for name in ("namespace", "pod"):
        assert name in variables and variables[name]["type"] == "query", f"no ${name} query variable"
        assert variables[name]["datasource"]["uid"] == "${datasource}", variables[name]

    panels = list(mn.iter_panels(d.get("panels", [])))
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"panel ids: {ids}"
    rows = [p["title"] for p in panels if p.get("type") == "row"]
    for row in ("Overview", "Latency", "Verification", "Keys", "Vault", "Signing"):
        assert row in rows, f"no row {row!r} (rows: {rows})"
    for p in panels:
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('id')} {p.get('title')!r}"
        gp = p.get("gridPos", {})
        assert all(isinstance(gp.get(k), int) for k in "hwxy") and gp["x"] + gp["w"] <= 24, f"{where}: gridPos {gp}"
        assert p.get("datasource", {}).get("uid") == "${datasource}", f"{where}: not on the $datasource variable"
        targets = p.get("targets") or []
        assert targets and all(t.get("expr") for t in targets), f"{where}: no query"
        for t in targets:
            assert t.get("datasource", {}).get("uid") in (None, "${datasource}"), f"{where}: target datasource"
        ref_ids = [t.get("refId") for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), f"{where}: duplicate refIds {ref_ids}"


_VAR_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)(?::[\w]+)?\]\]|\$(\w+)")


def substitute_variables(expr: str, variables: set) -> str:
    """``expr`` with Grafana's variables replaced by concrete values; unknown variables fail."""

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        if name in variables:
            return VARIABLE_SAMPLE_VALUES.get(name, "value")
        raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")

    return _VAR_RE.sub(value, expr)


def check_promql(exprs: List[Tuple[str, str]], tmp_path: Path) -> Tuple[bool, str]:
    """Runs ``promtool check rules`` on a rules file with one recording rule per expression.
    Returns (ok, report naming the offending expressions)."""
    rules = [{"record": f"aegis_dashboard:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.rules.json"  # JSON is YAML: promtool reads it as is
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=2))
    out = promtool("check", "rules", str(path))
    if out.returncode == 0:
        return True, out.stdout
    report = [out.stdout]
    for i, (where, expr) in enumerate(exprs):
        if re.search(rf'"aegis_dashboard:expr_{i}"|rule {i + 1}\b', out.stdout):
            report.append(f"  {where}: {expr}")
    return False, "\n".join(report)


def dashboard_queries() -> List[Tuple[str, str]]:
    d = mn.load_dashboard()
    variables = {v["name"] for v in d.get("templating", {}).get("list", [])}
    exprs = mn.dashboard_exprs(d) + mn.variable_exprs(d)
    return [(where, substitute_variables(expr, variables)) for where, expr in exprs]


def test_every_dashboard_query_is_valid_promql(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 20, f"only {len(queries)} queries found in the dashboard"
    assert len(mn.variable_exprs(mn.load_dashboard())) >= 2, "namespace/pod variable queries not read"
    ok, report = check_promql(queries, tmp_path)
    assert ok, f"promtool rejects dashboard queries:\n{report}"
    assert f"SUCCESS: {len(queries)} rules found" in report, report


def test_promql_check_rejects_a_broken_query(tmp_path):
    """The dashboard check can fail: an unbalanced and a misspelt query are rejected."""
    for bad in (
        'sum(rate(aegis_requests_total{namespace=~"ml"}[5m])',
        'histogram_quantil(0.99, sum by (le) (rate(aegis_request_duration_seconds_bucket[5m])))',
    ):
        ok, report = check_promql([("good", "sum(aegis_ready)"), ("bad", bad)], tmp_path)
        assert not ok and "bad: " in report, report
    with pytest.raises(AssertionError, match="unknown dashboard variable"):
        substitute_variables('aegis_ready{pod=~"$podd"}', {"pod"})


# ------------------------------------------------------------------------------ metric contract


def test_rules_and_dashboard_use_only_contract_metrics():
    names = mn.referenced_metric_names()
    unknown = sorted(names - mn.CONTRACT_NAMES)
    assert not unknown, f"metric names not in the sidecar's contract: {unknown}"
    # The dashboard and the alerts together show every metric of the contract.
    unused = sorted(mn.CONTRACT_NAMES - names)
    assert not unused, f"contract metrics neither alerted on nor on the dashboard: {unused}"
    # Only known non-aegis metrics appear in the alert expressions.
    exprs = "\n".join(re.findall(r"(?ms)^\s+expr: \|\n(.*?)(?=^\s+(?:for|labels):)", mn.rules_text()))
    assert exprs.count("aegis_") >= 10, "alert expressions not read"
    for name in set(re.findall(r"(?<![\w:$.])([A-Za-z_:][\w:]*)\s*(?:\{|\[| offset|\)|$|==)", exprs)):
        if name.startswith("aegis_") or name in NON_CONTRACT_METRICS:
            continue
        assert name in PROMQL_WORDS, f"alert expression uses an unknown metric or word {name!r}"


PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "rate", "increase", "histogram_quantile", "max_over_time",
    "le", "job", "instance", "namespace", "pod", "key", "endpoint", "method", "outcome", "result", "reason",
}


def test_unit_test_series_are_contract_metrics():
    text = mn.RULES_TEST_FILE.read_text()
    series = re.findall(r"series:\s*'([A-Za-z_:][\w:]*)\{", text)
    assert len(series) >= 20, "input series not read"
    unknown = sorted({mn.base_name(s) for s in series} - mn.CONTRACT_NAMES - NON_CONTRACT_METRICS)
    assert not unknown, f"unit tests feed metrics not in the contract: {unknown}"
    problems = mn.selector_label_problems(text)
    assert not problems, "\n".join(problems)


def test_label_matchers_use_contract_labels_and_values():
    problems = mn.selector_label_problems(mn.rules_text())
    for where, expr in mn.dashboard_exprs(mn.load_dashboard()):
        problems += [f"{where}: {p}" for p in mn.selector_label_problems(expr)]
    assert not problems, "\n".join(problems)
    # The check itself notices a wrong value and a label the metric does not have.
    assert mn.selector_label_problems('aegis_verify_results_total{result="revoke"}')
    assert mn.selector_label_problems('aegis_ready{key="model-sign"}')
