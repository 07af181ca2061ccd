"""Where onebit keeps what it can rebuild: ``$ONEBIT_CACHE_DIR/<kind>``, else
``$XDG_CACHE_HOME/onebit/<kind>`` (``~/.cache/onebit/<kind>``). Standard library only."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The cache folder for ``kind`` (e.g. ``c_runtime``, ``teacher``); not created here."""
    root = os.environ.get("ONEBIT_CACHE_DIR")
    if root:
        return Path(root).expanduser() / kind
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onebit" / kind


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes (remembered per path, size and modification time), or None when it cannot
    be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
