"""Fetch an official dataset archive, verify its md5 and extract it -- or explain how to supply it."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from onebit.errors import DataError

TIMEOUT_S = 15


def download_and_extract(url: str, md5: str, dest: Path, what: str, looked_in: list[Path]) -> None:
    """Download ``url`` into ``dest``, check ``md5`` and extract the tar.gz there.

    Any failure raises one DataError naming where the data was looked for and how to point onebit at it.
    """
    hint = (f"{what} not found (looked in: {', '.join(str(p) for p in looked_in)}). "
            f"Pass --data-dir DIR or set ONEBIT_DATA=DIR to a folder holding it, "
            f"or download {url} and extract it there")
    if os.environ.get("ONEBIT_OFFLINE"):
        raise DataError(hint + " (download skipped: ONEBIT_OFFLINE is set)")
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tar.gz", dir=dest)
    os.close(fd)
    try:
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            raise DataError(f"{hint}; the download failed: {exc}") from None
        if digest.hexdigest() != md5:
            raise DataError(f"{hint}; the downloaded archive's md5 {digest.hexdigest()} != expected {md5}")
        with tarfile.open(tmp) as tar:
            tar.extractall(dest, filter="data")
    finally:
        Path(tmp).unlink(missing_ok=True)
