"""sha256 of files and bytes: the one way the package fingerprints what it reads and writes.

Manifests, exported models, imported checkpoints and the app's caches all key
on these digests, so they must all be computed the same way.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MB chunks so a large file is never held in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of bytes in memory (an image's pixels as a cache key, say)."""
    return hashlib.sha256(data).hexdigest()
