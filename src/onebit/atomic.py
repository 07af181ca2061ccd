"""Atomic file writes: every file onebit writes is replaced whole or not at all.

A write goes to ``<name>.<pid>.<n>.tmp`` in the same folder, is flushed with fsync, renamed over the old file,
then the folder is fsynced. A kill or a full disk leaves the previous version intact; the temporary file of a
writer that was killed is removed by the next writer of that folder (``RunDir.remove_stale_temps``) or of
that file (:func:`remove_orphan_temps`). Files get the mode the umask allows, like any other file the user
writes (not 0600).

Test hook (documented, used by the chaos tests only): when ``ONEBIT_TEST_WRITE_DELAY`` is set to a number
of seconds, every atomic write sleeps that long after writing its temporary file and before renaming it,
so that a test can kill a process inside the write window.

Standard library only, so every layer may import it.
"""

from __future__ import annotations

import errno
import glob
import itertools
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TMP_SUFFIX = ".tmp"

_counter = itertools.count()


def _test_delay() -> None:
    delay = os.environ.get("ONEBIT_TEST_WRITE_DELAY")
    if delay:
        time.sleep(float(delay))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (``<name>.<pid>.<n>.tmp``)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{next(_counter)}{TMP_SUFFIX}")


def remove_orphan_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files of ``path`` (``<name>.<pid>.<n>.tmp``) whose writing process is gone
    (killed mid-write); a live writer's files are left alone. Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.*{TMP_SUFFIX}"):
        pid = tmp.name[len(path.name) + 1:].split(".")[0]
        if pid.isdigit() and not _pid_alive(int(pid)) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid != 0
    return True


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    The caller writes the temporary file (by any means, e.g. a library's ``save_file``). On any exception
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the mode the umask allows
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            if os.fstat(f.fileno()).st_mode & 0o777 != mode:   # a writer that recreated it as 0600
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        _test_delay()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def replace_symlink(link: str | Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` (relative), replacing it atomically."""
    link = Path(link)
    tmp = temp_path(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
