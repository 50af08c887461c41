"""The image build's inputs, checked without a Docker engine (none runs here): every file
the binary embeds from outside ``src/`` (``include_str!``/``include_bytes!``) is copied by
the Dockerfile and let through by ``.dockerignore``, so ``cargo build --locked`` in the
builder stage finds it."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

INCLUDE = re.compile(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)')


def embedded_top_dirs() -> set:
    """Top-level directories of the repository that embedded files live in."""
    tops = set()
    for source in (REPO / "src").rglob("*.rs"):
        for rel in INCLUDE.findall(source.read_text()):
            target = (source.parent / rel).resolve().relative_to(REPO.resolve())
            tops.add(target.parts[0])
    return tops


def test_every_embedded_file_reaches_the_builder() -> None:
    tops = embedded_top_dirs()
    assert "openapi" in tops, tops  # the OpenAPI document: the scan itself works
    dockerfile = (REPO / "Dockerfile").read_text()
    # The sources of each COPY from the build context: every word but the destination.
    copied = {
        source.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M)
        for source in line.split()[:-1]
    }
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for top in tops | {"src"}:
        assert top in copied, f"the Dockerfile does not COPY {top}/ (embedded by the binary)"
        assert top in allowed, f".dockerignore does not let {top}/ through"
