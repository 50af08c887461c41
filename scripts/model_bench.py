"""What the model benchmarks (bench-model-cache.py, bench-model-shards.py) share: timing a
command with its CPU time, a local P-256 key pair, random model files, and signing a
model with the upstream `model_signing` Python API."""

import os
import resource
import subprocess
import sys
import time


def run(argv):
    """Runs argv; returns (wall s, cpu s, exit code, output). The CPU time is the child's
    user + system time from getrusage (the kernel's /proc accounting)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p.returncode, p.stdout + p.stderr


def best(runs, argv, expect=0):
    """The fastest of `runs` runs of argv as (wall s, cpu s); exits unless each exits `expect`."""
    out = []
    for _ in range(runs):
        wall, cpu, code, text = run(argv)
        if code != expect:
            sys.exit(f"{argv} exited {code}, expected {expect}:\n{text}")
        out.append((wall, cpu))
    return min(out)


def write_random(path, size, chunk):
    """Writes `size` bytes of `chunk` repeated, each MiB prefixed by its offset (so no two
    MiB of a file, and no two files of different sizes, are alike)."""
    with open(path, "wb") as f:
        for off in range(0, size, len(chunk)):
            f.write((off.to_bytes(8, "little") + chunk[8:])[: size - off])


def key_pair(work):
    """A P-256 key pair as PEM files in `work`: (private, public)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    priv, pub = work / "key.pem", work / "pub.pem"
    priv.write_bytes(k.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    pub.write_bytes(k.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def sign(model, sig, priv, algorithm="sha256", shard_size=None):
    """Signs `model` with the library's API: files serialization, or shards of shard_size."""
    from model_signing import hashing, signing

    h = hashing.Config()
    if shard_size is None:
        h.use_file_serialization(hashing_algorithm=algorithm)
    else:
        h.use_shard_serialization(hashing_algorithm=algorithm, shard_size=shard_size)
    signing.Config().use_elliptic_key_signer(private_key=priv).set_hashing_config(h).sign(model, sig)


def chunk():
    """A MiB of random bytes."""
    return os.urandom(1 << 20)
