#!/usr/bin/env bash
# Installs cargo-fuzz (pinned) into ./.venv/bin from crates.io, for scripts/fuzz.sh.
# Idempotent: nothing is rebuilt when the pinned version is already there.
# Fails (non-zero, with a message) when cargo is missing or the build fails; never skips.
set -euo pipefail

CARGO_FUZZ_VERSION="0.13.2"

die() {
    echo "install-cargo-fuzz: error: $*" >&2
    exit 1
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
bin="$venv/bin/cargo-fuzz"

command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH"
# libfuzzer-sys compiles libFuzzer (C++) when the targets are built.
command -v "${CXX:-c++}" >/dev/null 2>&1 || die "no C++ compiler (${CXX:-c++}) on PATH: libFuzzer needs one (Debian: g++)"

if [[ -x "$bin" ]] && [[ "$("$bin" --version 2>/dev/null)" == "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "install-cargo-fuzz: ok (cargo-fuzz $CARGO_FUZZ_VERSION already in $venv/bin)"
    exit 0
fi

mkdir -p "$venv"
echo "install-cargo-fuzz: building cargo-fuzz $CARGO_FUZZ_VERSION into $venv/bin (crates.io, --locked)"
# A build directory of its own, removed afterwards: nothing lands in the project's target/.
build_dir="$(mktemp -d "${TMPDIR:-/tmp}/cargo-fuzz-build.XXXXXX")"
trap 'rm -rf "$build_dir"' EXIT
CARGO_TARGET_DIR="$build_dir" cargo install --locked --quiet \
    --root "$venv" --version "=$CARGO_FUZZ_VERSION" cargo-fuzz \
    || die "cargo install cargo-fuzz@$CARGO_FUZZ_VERSION failed"

got="$("$bin" --version 2>&1)" || die "$bin --version failed: $got"
[[ "$got" == "cargo-fuzz $CARGO_FUZZ_VERSION" ]] || die "$bin reports '$got', expected cargo-fuzz $CARGO_FUZZ_VERSION"
echo "install-cargo-fuzz: ok ($got)"
