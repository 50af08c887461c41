#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time; fails on any
# crash, panic, timeout or out-of-memory, naming the input that caused it.
#
#   bash scripts/fuzz.sh                 # every target, FUZZ_SECONDS (default 12) each
#   FUZZ_SECONDS=300 bash scripts/fuzz.sh signature request_json
#
# The committed seeds (fuzz/corpus/<target>/) are read, never written: what a run finds
# goes to a temporary corpus, and a crashing input to fuzz/artifacts/<target>/. Turn a
# crash into a regression test in the normal test suite and add the input to the seeds.
#
# Stable Rust only: cargo-fuzz passes nightly flags (-Z...), accepted with RUSTC_BOOTSTRAP=1.
# No sanitizer (the crate forbids unsafe code; aws-lc's C is not instrumented anyway),
# debug assertions and overflow checks on. Build output: fuzz/target.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root="$PWD"

die() {
    echo "fuzz: error: $*" >&2
    exit 1
}

seconds="${FUZZ_SECONDS:-12}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS must be a positive number of seconds, got '$seconds'"

cargo_fuzz="$repo_root/.venv/bin/cargo-fuzz"
[[ -x "$cargo_fuzz" ]] || die "$cargo_fuzz is missing: run bash scripts/install-cargo-fuzz.sh"
# cargo finds `cargo fuzz` on PATH.
export PATH="$repo_root/.venv/bin:$PATH"
export RUSTC_BOOTSTRAP=1

mapfile -t all_targets < <(cd fuzz && cargo fuzz list)
[[ ${#all_targets[@]} -gt 0 ]] || die "cargo fuzz list found no targets in fuzz/"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")

flags=(--sanitizer none --debug-assertions)

# The fuzz crate is its own workspace: the main `cargo fmt --check` does not see it.
(cd fuzz && cargo fmt --check) || die "fuzz/ is not formatted: run (cd fuzz && cargo fmt)"

started=$SECONDS
echo "fuzz: building ${#all_targets[@]} targets (fuzz/target)"
(cd fuzz && cargo fuzz build "${flags[@]}") || die "cargo fuzz build failed"
echo "fuzz: built in $((SECONDS - started))s"

work="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-run.XXXXXX")"
trap 'rm -rf "$work"' EXIT

for target in "${targets[@]}"; do
    seeds="fuzz/corpus/$target"
    [[ -d "$seeds" ]] && compgen -G "$seeds/*" >/dev/null || die "no seed corpus in $seeds"
    mkdir -p "$work/$target" "fuzz/artifacts/$target"
    echo "fuzz: $target for ${seconds}s"
    log="$work/$target.log"
    # A dictionary of the format's tokens, when the target has one.
    dict=()
    [[ -f "fuzz/dicts/$target.dict" ]] && dict=(-dict="dicts/$target.dict")
    # First corpus directory: where new inputs go (temporary); then the seeds (read only).
    if ! (cd fuzz && cargo fuzz run "${flags[@]}" "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 "${dict[@]}") >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        die "$target failed; the input is in fuzz/artifacts/$target/ (reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $target <file>)"
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)"
    echo "fuzz: $target ok (${runs:-?} runs, ${cov:-cov: ?}, $(find "$work/$target" -type f | wc -l) new inputs)"
done
echo "fuzz: all ${#targets[@]} targets passed in $((SECONDS - started))s"
