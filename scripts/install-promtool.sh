#!/usr/bin/env bash
# Installs promtool (Prometheus rule checker and rule unit-test runner) into ./.venv/bin at the
# repository root (idempotent). There is no Go toolchain here and the network only reaches
# package registries, so promtool comes from Debian's `prometheus` package, unpacked by
# scripts/fetch-deb.sh (nothing is installed system-wide).
# Only promtool is kept; the Prometheus server binary in the same package is not installed.
# Every failure stops the script with a non-zero status and a message; nothing is skipped.
#
# Used by tests/interop/test_monitoring_rules.py (promtool check rules / promtool test rules on
# deploy/prometheus/aegis-alerts.yaml and the Grafana dashboard's queries).
set -euo pipefail

# Pinned version: promtool 2.42.0 from Debian bookworm's prometheus package. The Debian
# revision is not pinned (security updates replace it in the archive); the upstream version
# is checked after unpacking.
DEB_PACKAGE="prometheus"
PROMTOOL_VERSION="2.42.0"

die() {
    echo "install-promtool: error: $*" >&2
    exit 1
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="$repo_root/.venv"
target="$venv/bin/promtool"

# The venv is created by scripts/install-tools.sh; promtool only joins it.
[[ -d "$venv/bin" ]] || die "$venv/bin does not exist: run scripts/install-tools.sh first"

installed_version() {
    # Prints "2.42.0" from "promtool, version 2.42.0+ds (branch: ...)"; fails if it does not run.
    "$1" --version 2>&1 | sed -n 's/^promtool, version \([0-9][0-9.]*\).*/\1/p' | head -n 1
}

if [[ -x "$target" ]]; then
    current="$(installed_version "$target" || true)"
    if [[ "$current" == "$PROMTOOL_VERSION" ]]; then
        echo "install-promtool: ok (promtool $current already in $target)"
        exit 0
    fi
    echo "install-promtool: replacing $target (found version '${current:-unknown}', want $PROMTOOL_VERSION)"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/aegis-promtool.XXXXXX")" || die "mktemp -d failed"
trap 'rm -rf "$tmp"' EXIT
bash "$repo_root/scripts/fetch-deb.sh" "$tmp/root" "$DEB_PACKAGE" \
    || die "cannot fetch Debian's $DEB_PACKAGE"
[[ -f "$tmp/root/usr/bin/promtool" ]] || die "Debian's $DEB_PACKAGE does not contain usr/bin/promtool"

# Copy to a temporary name in the same directory, check it runs, then rename: a failed run
# never leaves a broken promtool behind.
install -m 0755 "$tmp/root/usr/bin/promtool" "$target.tmp" || die "cannot write $target.tmp"
version_out="$("$target.tmp" --version 2>&1)" || {
    rm -f "$target.tmp"
    die "$target --version failed: $version_out"
}
got="$(installed_version "$target.tmp" || true)"
if [[ "$got" != "$PROMTOOL_VERSION" ]]; then
    rm -f "$target.tmp"
    die "unexpected promtool version '${got:-unknown}' (want $PROMTOOL_VERSION): $version_out"
fi
mv -f "$target.tmp" "$target" || die "cannot move $target.tmp to $target"

echo "install-promtool: ok (promtool $got installed in $target)"
