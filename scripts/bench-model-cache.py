#!/usr/bin/env python3
"""Benchmark (not a test): incremental model verification with the digest cache.

The model: one 256 MiB file and 3 999 files of 192 KiB (about 1 GB, 4 000 files, random
bytes), signed once offline by the upstream `model_signing` Python API with a local P-256
key. `aegis model verify --public-key` then runs, page cache warm:

  first      an empty --cache-dir: every file hashed, the cache written
  unchanged  the same again: metadata reads and one signature check
  changed    the 256 MiB file rewritten and the model re-signed: that file hashed alone
  alone      --no-cache on a model of that one file: what hashing it costs

Targets (ratios in one run): unchanged <= 5% of first; changed <= alone x 1.10.
Each figure is the best wall time of RUNS runs, with that run's CPU time (from
getrusage of the child, i.e. /proc accounting). Prints a table and the ratios; with
--json FILE writes them too. --smoke: a 6 MiB model, one run, no target checked (keeps
the script working in scripts/test.sh).

  python3 scripts/bench-model-cache.py [--aegis target/release/aegis] [--runs 3]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from model_bench import best, key_pair, run, sign, write_random

REPO = Path(__file__).resolve().parent.parent
RACY_MARGIN_S = 2.0  # src/model/cache.rs: RACY_MARGIN


def make_model(root, big, small_n, small_size):
    (root / "shards").mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    write_random(root / "big.safetensors", big, chunk)
    for i in range(small_n):
        # Distinct content per file: a counter prefix.
        (root / "shards" / f"part-{i:05}.bin").write_bytes(
            i.to_bytes(8, "little") + chunk[: small_size - 8]
        )


def wait_out_racy_margin(model):
    """Entries of files changed less than the margin before a run are not trusted (the
    racy rule); the benchmark lets the margin pass once, as any real model has."""
    newest = max(p.stat().st_ctime for p in model.rglob("*"))
    time.sleep(max(0.0, newest + RACY_MARGIN_S + 0.2 - time.time()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--aegis", default=str(REPO / "target/release/aegis"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    big, n, small = (256 << 20, 3999, 192 << 10)
    runs = a.runs
    if a.smoke:
        big, n, small, runs = (4 << 20, 40, 48 << 10, 1)
    work = Path(tempfile.mkdtemp(prefix="aegis-bench-cache-"))
    try:
        key, pub = key_pair(work)
        model, alone = work / "model", work / "alone"
        make_model(model, big, n, small)
        alone.mkdir()
        sig, alone_sig = work / "model.sig", work / "alone.sig"
        sign(model, sig, key)
        verify = [a.aegis, "model", "verify", "--public-key", str(pub), "--signature"]
        cache = work / "cache"
        wait_out_racy_margin(model)
        figures = {}
        # first: each run starts from an empty cache.
        firsts = []
        for _ in range(runs):
            shutil.rmtree(cache, ignore_errors=True)
            wall, cpu, code, text = run(verify + [str(sig), "--cache-dir", str(cache), str(model)])
            if code != 0:
                sys.exit(f"first verify failed:\n{text}")
            firsts.append((wall, cpu))
        figures["first"] = min(firsts)
        figures["unchanged"] = best(runs, verify + [str(sig), "--cache-dir", str(cache), str(model)], 0)
        # changed: rewrite the big file, re-sign (not timed), verify with the cache.
        changed = []
        for i in range(runs):
            with open(model / "big.safetensors", "r+b") as f:
                f.write(bytes([i % 256]) * 16)
            sign(model, sig, key)
            wall, cpu, code, text = run(verify + [str(sig), "--cache-dir", str(cache), str(model)])
            if code != 0:
                sys.exit(f"changed verify failed:\n{text}")
            changed.append((wall, cpu))
        figures["changed"] = min(changed)
        os.link(model / "big.safetensors", alone / "big.safetensors")
        sign(alone, alone_sig, key)
        figures["alone"] = best(runs, verify + [str(alone_sig), "--no-cache", str(alone)], 0)
        ratios = {
            "unchanged_over_first": figures["unchanged"][0] / figures["first"][0],
            "changed_over_alone": figures["changed"][0] / figures["alone"][0],
        }
        print(f"model: 1 x {big >> 20} MiB + {n} x {small >> 10} KiB; best of {runs} runs")
        print(f"{'run':<10} {'wall s':>8} {'cpu s':>8}")
        for k, (w, c) in figures.items():
            print(f"{k:<10} {w:8.3f} {c:8.3f}")
        print(f"unchanged / first = {ratios['unchanged_over_first']:.3f} (target <= 0.05)")
        print(f"changed / alone   = {ratios['changed_over_alone']:.3f} (target <= 1.10)")
        if a.json:
            Path(a.json).write_text(json.dumps({"figures": figures, "ratios": ratios}, indent=2))
        if not a.smoke and (
            ratios["unchanged_over_first"] > 0.05 or ratios["changed_over_alone"] > 1.10
        ):
            sys.exit("bench-model-cache: a target was missed")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
