#!/usr/bin/env python3
"""Benchmark (not a test): one large file hashed by shards on every core.

The model: one 2 GiB file of random bytes, signed offline by the upstream
`model_signing` Python API with a local P-256 key in each serialization below.
`aegis model verify --public-key --no-cache` then runs on each, page cache warm:

  files             one SHA-256 over the whole file: one core's SHA-256 speed
  shards-default    SHA-256 in upstream's default 1 000 000 000-byte shards (3 shards)
  shards-64MiB      SHA-256 in 67 108 864-byte shards (32 shards)
  blake2-64MiB      BLAKE2b-512 in 67 108 864-byte shards (for the record)
  sha256sum         coreutils over the same file: an outside one-core reference

Target (ratio in one run, on a 2-core machine): files / shards-64MiB wall time >= 1.7,
the 2 GiB file hashed at 1.7x one core's SHA-256 speed. Each figure is the best wall time
of RUNS runs, with that run's CPU time (getrusage of the child, i.e. /proc accounting).
Prints a table and the ratios; with --json FILE writes them too. --smoke: an 8 MiB file,
1 MiB shards, one run, no target checked (keeps the script working in scripts/test.sh).

  python3 scripts/bench-model-shards.py [--aegis target/release/aegis] [--runs 3]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from model_bench import best, chunk, key_pair, sign, write_random

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.7


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--aegis", default=str(REPO / "target/release/aegis"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    size, shard, runs = (2 << 30, 64 << 20, a.runs)
    if a.smoke:
        size, shard, runs = (8 << 20, 1 << 20, 1)
    cases = {
        "files": ("sha256", None),
        "shards-default": ("sha256", 1_000_000_000),
        f"shards-{shard >> 20}MiB": ("sha256", shard),
        f"blake2-{shard >> 20}MiB": ("blake2", shard),
    }
    work = Path(tempfile.mkdtemp(prefix="aegis-bench-shards-"))
    try:
        priv, pub = key_pair(work)
        model = work / "model"
        model.mkdir()
        write_random(model / "weights.safetensors", size, chunk())
        figures = {}
        for name, (algorithm, shard_size) in cases.items():
            sig = work / f"{name}.sig"
            sign(model, sig, priv, algorithm, shard_size)
            argv = [a.aegis, "model", "verify", "--public-key", str(pub), "--signature", str(sig), "--no-cache"]
            figures[name] = best(runs, argv + [str(model)])
        figures["sha256sum"] = best(runs, ["sha256sum", str(model / "weights.safetensors")])
        sharded = f"shards-{shard >> 20}MiB"
        ratios = {
            "files_over_shards": figures["files"][0] / figures[sharded][0],
            "files_over_shards_default": figures["files"][0] / figures["shards-default"][0],
        }
        print(f"model: 1 file of {size >> 20} MiB; {os.cpu_count()} CPUs; best of {runs} runs")
        print(f"{'run':<16} {'wall s':>8} {'cpu s':>8} {'MiB/s':>8}")
        for k, (w, c) in figures.items():
            print(f"{k:<16} {w:8.3f} {c:8.3f} {(size >> 20) / w:8.0f}")
        print(f"files / {sharded}   = {ratios['files_over_shards']:.2f} (target >= {TARGET})")
        print(f"files / shards-default = {ratios['files_over_shards_default']:.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps({"size": size, "figures": figures, "ratios": ratios}, indent=2))
        if not a.smoke and ratios["files_over_shards"] < TARGET:
            sys.exit("bench-model-shards: the target was missed")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
