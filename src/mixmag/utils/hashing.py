"""Content hashes used for provenance and resume checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Full SHA-256 hex digest of a file (use for weights and checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def quick_file_hash(path: str | os.PathLike[str], sample_bytes: int = 4 * _CHUNK) -> str:
    """Fast identity hash of a (possibly multi-GB) slide: size + first and last ``sample_bytes``.

    Hashing whole slides would cost minutes per file on network storage; this is enough to detect
    a replaced or re-scanned slide behind an unchanged file name. Returns ``"q1:<hex>"``.
    """
    p = Path(path)
    size = p.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(p, "rb") as fh:
        digest.update(fh.read(sample_bytes))
        if size > sample_bytes:
            fh.seek(max(size - sample_bytes, sample_bytes))
            digest.update(fh.read(sample_bytes))
    return "q1:" + digest.hexdigest()


def sha256_text(text: str) -> str:
    """SHA-256 hex digest of a UTF-8 string (config fingerprints)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
