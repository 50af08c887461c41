#!/usr/bin/env bash
# Installs promtool (Prometheus rule checker and rule unit-test runner) into ./.venv/bin at the
# repository root (idempotent). There is no Go toolchain here and the network only reaches
# package registries, so promtool comes from Debian's `prometheus` package: the .deb is
# downloaded with `apt-get download` into a temporary directory and unpacked with `dpkg-deb -x`;
# nothing is installed system-wide and no root is needed (apt-get download runs as any user).
# Only promtool is kept; the Prometheus server binary in the same package is not installed.
# Every failure stops the script with a non-zero status and a message; nothing is skipped.
#
# Used by tests/interop/test_monitoring_rules.py (promtool check rules / promtool test rules on
# deploy/prometheus/aegis-alerts.yaml and the Grafana dashboard's queries).
set -euo pipefail

# Pinned version: Debian bookworm's prometheus package (promtool 2.42.0).
DEB_PACKAGE="prometheus"
DEB_VERSION="2.42.0+ds-5+b6"
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

command -v apt-get >/dev/null 2>&1 \
    || die "apt-get not found: promtool is installed from Debian's '$DEB_PACKAGE' package (Debian/Ubuntu only)"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (package dpkg)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/aegis-promtool.XXXXXX")" || die "mktemp -d failed"
trap 'rm -rf "$tmp"' EXIT
# As root, apt-get download drops privileges to _apt, which must be able to write here;
# otherwise it still works but warns that the download ran unsandboxed.
if [[ "$(id -u)" == 0 ]] && id _apt >/dev/null 2>&1; then
    chown _apt "$tmp" 2>/dev/null || true
fi

download() {
    (cd "$tmp" && apt-get download -q "$DEB_PACKAGE=$DEB_VERSION") >"$tmp/apt.log" 2>&1
}

echo "install-promtool: downloading $DEB_PACKAGE=$DEB_VERSION (apt-get download, no install)"
if ! download; then
    # A fresh container has no package lists yet; as root, fetch them once and retry.
    if [[ "$(id -u)" == 0 ]]; then
        echo "install-promtool: download failed; running apt-get update and retrying"
        apt-get update -q >"$tmp/apt-update.log" 2>&1 || {
            cat "$tmp/apt-update.log" >&2
            die "apt-get update failed"
        }
        download || {
            cat "$tmp/apt.log" >&2
            die "apt-get download $DEB_PACKAGE=$DEB_VERSION failed after apt-get update (is Debian bookworm's main archive in the apt sources?)"
        }
    else
        cat "$tmp/apt.log" >&2
        die "apt-get download $DEB_PACKAGE=$DEB_VERSION failed (is Debian bookworm's main archive in the apt sources? if the package lists are missing, run 'apt-get update' as root)"
    fi
fi

shopt -s nullglob
debs=("$tmp"/"${DEB_PACKAGE}"_*.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || die "expected one ${DEB_PACKAGE}_*.deb in $tmp after apt-get download, found ${#debs[@]}"

dpkg-deb -x "${debs[0]}" "$tmp/root" || die "dpkg-deb -x ${debs[0]} failed"
[[ -f "$tmp/root/usr/bin/promtool" ]] || die "${debs[0]} does not contain usr/bin/promtool"

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
