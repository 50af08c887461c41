"""The model digest cache (`--cache-dir`, `AEGIS_CACHE_DIR`, `--no-cache`) with models
signed offline by the upstream `model_signing` 1.1.1 Python API (local P-256 key) and
checked by `aegis model verify --public-key`.

What each test proves, with exact counts from the verify line
("... N hashed, M from the digest cache"):
- an unchanged model is not re-hashed; a changed file is hashed alone; files and shards;
- the attacker is a local process that can write the model files but not the cache
  directory: a same-size rewrite with its mtime put back, and a same-size, same-mtime
  file renamed over the original, are both re-hashed and refused;
- a damaged cache is ignored whole (and rewritten), a directory others can write is not
  used at all, `--no-cache` and an unset `AEGIS_CACHE_DIR` hash everything.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import aegis_path, clean_env

RACY_MARGIN_S = 2.0  # src/model/cache.rs RACY_MARGIN
EXIT_REFUSED = 65
FILES = {"w1.bin": 300_000, "w2.bin": 5_000, "cfg/config.json": 40, "cfg/vocab.txt": 900, "README": 12}


def keys(tmp: Path) -> tuple[Path, Path]:
    k = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp / "key.pem", tmp / "pub.pem"
    priv.write_bytes(
        k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub.write_bytes(
        k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


def make_model(root: Path) -> Path:
    model = root / "model"
    for name, size in FILES.items():
        p = model / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
    return model


def sign(model: Path, sig: Path, priv: Path, shard_size: int | None = None) -> None:
    from model_signing import hashing, signing

    cfg = signing.Config().use_elliptic_key_signer(private_key=priv)
    if shard_size:
        cfg.set_hashing_config(hashing.Config().use_shard_serialization(shard_size=shard_size))
    cfg.sign(model, sig)


def wait_out_racy_margin(model: Path) -> None:
    """Entries of files changed within RACY_MARGIN_S of a run's start are not trusted
    (the racy rule); waits on the clock until the newest change is older than that."""
    newest = max(p.stat().st_ctime for p in model.rglob("*"))
    deadline = newest + RACY_MARGIN_S + 0.1
    while time.time() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.time())))


def verify(pub: Path, sig: Path, model: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [aegis_path(), "model", "verify", "--public-key", str(pub), "--signature", str(sig), *extra, str(model)]
    return subprocess.run(argv, capture_output=True, text=True, env=env or clean_env(), timeout=60)


def counts(p: subprocess.CompletedProcess) -> tuple[int, int]:
    m = re.search(r"(\d+) hashed, (\d+) from the digest cache", p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    return int(m.group(1)), int(m.group(2))


@pytest.fixture
def signed(tmp_path):
    priv, pub = keys(tmp_path)
    model = make_model(tmp_path)
    sig = tmp_path / "model.sig"
    sign(model, sig, priv)
    wait_out_racy_margin(model)
    return model, sig, priv, pub, tmp_path / "cache"


@pytest.mark.parametrize("shard_size", [None, 100_000])
def test_an_unchanged_model_is_not_rehashed_and_a_changed_file_is_hashed_alone(tmp_path, shard_size):
    priv, pub = keys(tmp_path)
    model = make_model(tmp_path)
    sig, cache = tmp_path / "model.sig", tmp_path / "cache"
    sign(model, sig, priv, shard_size)
    wait_out_racy_margin(model)
    first = verify(pub, sig, model, "--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr
    assert counts(first) == (5, 0)
    again = verify(pub, sig, model, "--cache-dir", str(cache))
    assert again.returncode == 0, again.stderr
    assert counts(again) == (0, 5)
    # A re-signed change: that file alone is read.
    (model / "w1.bin").write_bytes(os.urandom(FILES["w1.bin"]))
    sign(model, sig, priv, shard_size)
    changed = verify(pub, sig, model, "--cache-dir", str(cache))
    assert changed.returncode == 0, changed.stderr
    assert counts(changed) == (1, 4)


def test_a_writer_who_puts_the_mtime_back_or_renames_a_lookalike_over_a_file_is_caught(signed):
    """Attacker: a local process that can write the model files (not the cache)."""
    model, sig, _priv, pub, cache = signed
    assert verify(pub, sig, model, "--cache-dir", str(cache)).returncode == 0
    victim = model / "w2.bin"
    st = victim.stat()
    with open(victim, "r+b") as f:
        f.write(b"\x00" * 16)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    p = verify(pub, sig, model, "--cache-dir", str(cache))
    assert p.returncode == EXIT_REFUSED, p.stdout + p.stderr
    assert 'content changed: "w2.bin"' in p.stderr, p.stderr
    # A same-size lookalike with the original's mtime, renamed over it (a new inode).
    other = model / "cfg" / "vocab.txt"
    st = other.stat()
    fake = model / "cfg" / ".vocab.tmp"
    fake.write_bytes(os.urandom(st.st_size))
    os.utime(fake, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(fake, other)
    p = verify(pub, sig, model, "--cache-dir", str(cache))
    assert p.returncode == EXIT_REFUSED
    assert '"cfg/vocab.txt"' in p.stderr and '"w2.bin"' in p.stderr, p.stderr


def cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "model-digests").glob("*.digests"))


def test_a_damaged_cache_is_ignored_whole_and_rewritten(signed):
    model, sig, _priv, pub, cache = signed
    assert counts(verify(pub, sig, model, "--cache-dir", str(cache))) == (5, 0)
    [f] = cache_files(cache)
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    p = verify(pub, sig, model, "--cache-dir", str(cache))
    assert p.returncode == 0, p.stderr
    assert counts(p) == (5, 0)
    assert "model digest cache file ignored" in p.stderr and "checksum mismatch" in p.stderr, p.stderr
    assert counts(verify(pub, sig, model, "--cache-dir", str(cache))) == (0, 5)


def test_a_cache_directory_others_can_write_is_not_used(signed):
    model, sig, _priv, pub, cache = signed
    (cache / "model-digests").mkdir(parents=True)
    os.chmod(cache / "model-digests", 0o777)
    for _ in range(2):
        p = verify(pub, sig, model, "--cache-dir", str(cache))
        assert p.returncode == 0, p.stderr
        assert counts(p) == (5, 0)
        assert "writable by its group or others" in p.stderr, p.stderr
    assert cache_files(cache) == []


def test_no_cache_and_the_environment(signed):
    model, sig, _priv, pub, cache = signed
    env = clean_env(AEGIS_CACHE_DIR=str(cache))
    # Unset: no cache at all.
    assert counts(verify(pub, sig, model)) == (5, 0)
    assert not cache.exists()
    # AEGIS_CACHE_DIR is used; --no-cache overrides it and writes nothing.
    assert counts(verify(pub, sig, model, env=env)) == (5, 0)
    assert counts(verify(pub, sig, model, env=env)) == (0, 5)
    [f] = cache_files(cache)
    before = f.read_bytes()
    assert counts(verify(pub, sig, model, "--no-cache", env=env)) == (5, 0)
    assert f.read_bytes() == before
    # --cache-dir overrides the environment.
    other = cache.parent / "other-cache"
    assert counts(verify(pub, sig, model, "--cache-dir", str(other), env=env)) == (5, 0)
    assert len(cache_files(other)) == 1
