#!/usr/bin/env bash
# Benchmark (not a test): `aegis model sign` against `model_signing sign key` on the same
# ~1 GiB model directory, page cache warm, and both against the hashing limit
# (cores x `openssl speed -evp sha256` bytes/s). Prints a table and the ratios.
#
#   bash scripts/bench-model-sign.sh            # uses target/release/aegis (builds it)
#   BENCH_DIR=/tmp/m RUNS=5 bash scripts/bench-model-sign.sh
#
# The model: 3 shards of 256 MiB, 200 files of 1 MiB, 4000 files of 4 KiB (random
# bytes), generated once under $BENCH_DIR. Aegis signs through a throwaway OpenBao dev
# server (Transit ecdsa-p256) on a free loopback port; model_signing with a local P-256
# key. Each tool runs $RUNS times; the best wall time counts (with that run's CPU time).
# Targets: aegis at least 2x faster than model_signing, and within 1.3x of the hashing
# limit. On a machine shared with other work the cores are not all free: the script also
# prints `openssl speed -multi <cores>` (what the cores give right now) and the CPU time,
# which contention does not inflate.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
bench_dir="${BENCH_DIR:-/tmp/aegis-bench-model}"
runs="${RUNS:-3}"
venv="$repo/.venv"

die() {
    echo "bench-model-sign: error: $*" >&2
    exit 1
}

[[ -x "$venv/bin/model_signing" && -x "$venv/bin/bao" ]] \
    || die "model_signing or bao missing in $venv: run bash scripts/install-tools.sh"
command -v openssl >/dev/null || die "openssl not found"

aegis="${AEGIS_BIN:-$repo/target/release/aegis}"
if [[ -z "${AEGIS_BIN:-}" ]]; then
    cargo build --release --locked --quiet || die "cargo build --release failed"
fi
[[ -x "$aegis" ]] || die "$aegis is not executable"

model="$bench_dir/model"
work="$(mktemp -d)"
bao_pid=""
cleanup() {
    if [[ -n "$bao_pid" ]]; then
        kill "$bao_pid" 2>/dev/null || true
        wait "$bao_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [[ ! -f "$bench_dir/.complete" ]]; then
    echo "generating the model under $model ..."
    rm -rf "$bench_dir"
    "$venv/bin/python" - "$model" <<'EOF'
import os, sys
root = sys.argv[1]
os.makedirs(os.path.join(root, "small"), exist_ok=True)
os.makedirs(os.path.join(root, "layers"), exist_ok=True)
chunk = os.urandom(1 << 20)
for i in range(3):  # large shards: 256 MiB each
    with open(os.path.join(root, f"model-{i:05d}-of-00003.safetensors"), "wb") as f:
        for j in range(256):
            f.write(bytes([j]) + chunk[1:])
for i in range(200):  # 1 MiB files
    with open(os.path.join(root, "layers", f"layer-{i:04d}.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
for i in range(4000):  # 4 KiB files
    with open(os.path.join(root, "small", f"part-{i:05d}.json"), "wb") as f:
        f.write(os.urandom(4096))
EOF
    touch "$bench_dir/.complete"
fi
total_bytes="$(find "$model" -type f -printf '%s\n' | awk '{s += $1} END {print s}')"
files="$(find "$model" -type f | wc -l)"

# A throwaway OpenBao with a Transit ECDSA key.
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
token="bench-$RANDOM$RANDOM"
"$venv/bin/bao" server -dev -dev-no-store-token -dev-root-token-id="$token" \
    -dev-listen-address="127.0.0.1:$port" >"$work/bao.log" 2>&1 &
bao_pid=$!
export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN="$token"
for _ in $(seq 1 300); do
    curl -sf "$VAULT_ADDR/v1/sys/health" >/dev/null 2>&1 && break
    kill -0 "$bao_pid" 2>/dev/null || die "bao exited: $(cat "$work/bao.log")"
    sleep 0.1
done
curl -sf -H "X-Vault-Token: $token" -X POST -d '{"type":"transit"}' "$VAULT_ADDR/v1/sys/mounts/transit" >/dev/null \
    || die "cannot enable Transit"
curl -sf -H "X-Vault-Token: $token" -X POST -d '{"type":"ecdsa-p256"}' "$VAULT_ADDR/v1/transit/keys/bench" >/dev/null \
    || die "cannot create the Transit key"
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ec.pem" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$work/ec.pem" -out "$work/key.pem"

# Page cache warm.
find "$model" -type f -exec cat {} + >/dev/null

# Best wall time of $runs runs of "$@", and the CPU time (user + sys) of that run: "wall cpu".
best() {
    local best_wall="" best_cpu="" wall cpu
    for _ in $(seq 1 "$runs"); do
        { TIMEFORMAT='%R %U %S'; time "$@" >/dev/null 2>"$work/err"; } 2>"$work/time" \
            || die "$1 failed: $(cat "$work/err")"
        read -r wall user sys <"$work/time"
        cpu="$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.3f", u + s}')"
        if [[ -z "$best_wall" ]] || awk -v t="$wall" -v b="$best_wall" 'BEGIN {exit !(t < b)}'; then
            best_wall="$wall"
            best_cpu="$cpu"
        fi
    done
    echo "$best_wall $best_cpu"
}

read -r aegis_t aegis_cpu < <(best "$aegis" model sign --key bench --signature "$work/aegis.sig" "$model")
read -r upstream_t upstream_cpu < <(best "$venv/bin/model_signing" sign key --private_key "$work/key.pem" --signature "$work/upstream.sig" "$model")
"$aegis" model verify --key bench --signature "$work/aegis.sig" "$model" >/dev/null \
    || die "the aegis signature does not verify"

cores="$(nproc)"
# openssl speed prints "sha256  <k bytes/s>k" for the 1 MiB block size: one process, and
# one per core at once (what the cores give right now, on a machine shared with others).
speed() {
    openssl speed "$@" -evp sha256 -bytes 1048576 -seconds 3 2>/dev/null \
        | awk '/^sha256/ {sub(/k$/, "", $2); print $2}'
}
per_core_k="$(speed)"
multi_k="$(speed -multi "$cores")"
[[ -n "$per_core_k" && -n "$multi_k" ]] || die "cannot read openssl speed's output"

awk -v bytes="$total_bytes" -v files="$files" -v a="$aegis_t" -v u="$upstream_t" \
    -v acpu="$aegis_cpu" -v ucpu="$upstream_cpu" -v cores="$cores" -v k="$per_core_k" \
    -v mk="$multi_k" -v model="$model" 'BEGIN {
    rate = k * 1000; limit = bytes / (cores * rate); multi = bytes / (mk * 1000)
    cpu_limit = bytes / rate
    printf "model: %d files, %.0f MB (%s)\n", files, bytes / 1e6, model
    printf "cores: %d; openssl speed -evp sha256 (1 MiB blocks): %.2f GB/s on one core, %.2f GB/s with -multi %d\n\n", cores, rate / 1e9, mk * 1000 / 1e9, cores
    printf "| what | wall (s) | GB/s | CPU (s) |\n| --- | ---: | ---: | ---: |\n"
    printf "| hashing limit: cores x openssl speed | %.3f | %.2f | %.3f |\n", limit, bytes / limit / 1e9, cpu_limit
    printf "| openssl speed -multi %d (the cores as they are now) | %.3f | %.2f | |\n", cores, multi, bytes / multi / 1e9
    printf "| aegis model sign | %.3f | %.2f | %.3f |\n", a, bytes / a / 1e9, acpu
    printf "| model_signing sign key | %.3f | %.2f | %.3f |\n\n", u, bytes / u / 1e9, ucpu
    printf "model_signing / aegis (wall): %.2fx (target >= 2x)\n", u / a
    printf "aegis / limit (wall): %.2fx (target <= 1.3x); against -multi %d: %.2fx\n", a / limit, cores, a / multi
    printf "aegis CPU / hashing CPU at openssl speed: %.2fx\n", acpu / cpu_limit
}'
