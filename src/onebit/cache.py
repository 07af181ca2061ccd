"""Where onebit keeps what it can rebuild: ``$ONEBIT_CACHE_DIR/<kind>``, else
``$XDG_CACHE_HOME/onebit/<kind>`` (``~/.cache/onebit/<kind>``). Standard library only."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The cache folder for ``kind`` (e.g. ``c_runtime``, ``teacher``); not created here."""
    root = os.environ.get("ONEBIT_CACHE_DIR")
    if root:
        return Path(root).expanduser() / kind
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onebit" / kind
