"""The run directory: its file names, atomic writes, the per-epoch metrics log and the writer's lock.

Layout of a run directory (every name is defined here and nowhere else):

* ``config.json``  -- the resolved TrainConfig (JSON object);
* ``metrics.jsonl`` -- one JSON object per finished epoch, ``{"epoch": n, ...}``;
* ``checkpoint.safetensors`` -- weights, momentum and state after the last finished epoch;
* ``results.json`` -- the final metrics, once the run is finished;
* ``.lock`` -- the lock file (holds the writer's PID); ``log.txt`` -- a sweep worker's output.
* ``worker.json`` -- which host, process and Ray node hold the run, under ``onebit sweep --ray``.

Guarantees:

* Every file is replaced atomically (``onebit.atomic``); temporary files left by a kill are removed when
  the next writer takes the lock.
* ``metrics.jsonl`` is rewritten whole (atomically) for every epoch, never appended in place, and read
  tolerantly: a line that is not a JSON object with an integer ``epoch`` is dropped with a warning.
* One writer at a time: :meth:`RunDir.lock` takes an exclusive ``fcntl.flock`` on ``.lock`` for the life
  of the writer (released by the OS when the process dies) and writes the holder's PID into it; a second
  writer gets :class:`RunLockedError` naming that PID. The lock is re-entrant inside one process (a sweep
  holds it around ``train``, which takes it too).

Standard library only, so every layer (train, experiments, export, commands) may import it.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from onebit.atomic import TMP_SUFFIX, atomic_write_json, atomic_write_text, replace_symlink
from onebit.errors import ConfigError, RunDirError, RunLockedError, warn

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
RESULTS = "results.json"
LOCK = ".lock"
LOG = "log.txt"
WORKER = "worker.json"      # written by onebit.experiments.ray_sweep
LATEST = "latest"            # runs/latest: symlink to the newest run `onebit train` started in runs/


def check_path(path: str | Path, what: str = "run directory") -> Path:
    """``path`` as a Path, refused with one line if it is not valid UTF-8 (it could not be stored in
    config files, results stores or reports, nor typed back)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {text.encode('utf-8', 'backslashreplace').decode()!r} is not a valid "
                          f"UTF-8 path; choose a name in UTF-8") from None
    return Path(text)


# ----- the lock -----
_held: dict[str, tuple[int, int]] = {}        # real path of a lock file -> (fd, depth) in this process


def _lock_holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; RunDirError with one line if it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RunDirError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: {what} is not a JSON object (got {type(data).__name__})")
    return data


def parse_metrics(text: str, source: str = METRICS) -> list[dict[str, Any]]:
    """The rows of a metrics log: JSON objects with a positive integer ``epoch``; anything else (a line
    cut off by a kill or a full disk, garbage) is dropped with a warning."""
    rows = []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            torn = number == len(lines) and not text.endswith("\n")
            warn(f"{source}: dropped {'a torn last' if torn else 'an unreadable'} line {number} "
                 f"({line[:60]!r})")
            continue
        rows.append(row)
    return rows


class RunDir:
    """One run directory: paths of its files, tolerant reading and atomic writing, and its lock."""

    def __init__(self, path: str | Path):
        self.path = check_path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    @property
    def log(self) -> Path:
        return self.path / LOG

    # ----- state -----
    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def is_finished(self) -> bool:
        return self.results.is_file()

    # ----- config and results -----
    def read_config(self) -> dict[str, Any]:
        if not self.config.is_file():
            raise RunDirError(f"{self.path} is not a run directory (no {CONFIG})")
        return read_json_object(self.config, "run configuration")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config, config)

    def read_results(self) -> dict[str, Any]:
        return read_json_object(self.results, "results file")

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.results, results)

    # ----- metrics -----
    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch rows, tolerant of torn or garbage lines (dropped with a warning); later rows of
        a repeated epoch replace earlier ones, so every epoch appears once, in order."""
        try:
            text = self.metrics.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RunDirError(f"{self.metrics}: unreadable ({exc.strerror or exc})") from None
        by_epoch = {row["epoch"]: row for row in parse_metrics(text, str(self.metrics))}
        return [by_epoch[e] for e in sorted(by_epoch)]

    def epochs_logged(self) -> int:
        """How many epochs the metrics log holds: its non-blank lines (the log is rewritten atomically, one
        line per epoch), counted without parsing, for progress displays that poll it."""
        try:
            return sum(1 for line in self.metrics.read_bytes().splitlines() if line.strip())
        except OSError:
            return 0

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def record_epoch(self, row: dict[str, Any]) -> None:
        """Add the metrics of epoch ``row['epoch']``, dropping any rows at or after it; atomic rewrite."""
        kept = [r for r in self.read_metrics() if r["epoch"] < row["epoch"]]
        self.write_metrics(kept + [row])

    def truncate_metrics(self, epoch: int) -> None:
        """Keep the rows of epochs ``1..epoch`` (what the checkpoint holds); rewrite only if that changes
        the file."""
        if not self.metrics.exists():
            return
        rows = self.read_metrics()
        kept = [r for r in rows if r["epoch"] <= epoch]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        if self.metrics.read_text(encoding="utf-8", errors="replace") != text:
            atomic_write_text(self.metrics, text)

    # ----- housekeeping -----
    def remove_stale_temps(self) -> None:
        """Delete temporary files left by killed writers (call while holding the lock)."""
        for tmp in self.path.glob(f"*{TMP_SUFFIX}"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)

    def remove_if_unused(self) -> None:
        """Remove this folder if it holds nothing but its lock file (a run refused before its first write)."""
        try:
            entries = {p.name for p in self.path.iterdir()}
        except OSError:
            return
        if entries <= {self.lock_file.name} and self.try_acquire():
            try:
                self.lock_file.unlink(missing_ok=True)
                self.path.rmdir()
            except OSError:
                pass
            finally:
                self.release()

    def clear_partial(self) -> None:
        """Remove the metrics of a run killed before its first checkpoint: a clean restart."""
        self.metrics.unlink(missing_ok=True)

    # ----- the lock -----
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory's exclusive lock (creating the folder); RunLockedError if another process
        holds it. Re-entrant within one process."""
        if not self.try_acquire():
            raise RunLockedError(f"{self.path} is in use by {_lock_holder(self.lock_file)} (a training run "
                                 f"or sweep writing into it); wait for it to finish or pick another folder")
        try:
            yield
        finally:
            self.release()

    def try_acquire(self) -> bool:
        """Take the lock if free (True) or if this process already holds it; False if another holds it."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a run directory; pick another folder")
        self.path.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.lock_file)
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            return True
        try:
            import fcntl
        except ImportError:                     # no POSIX locks (Windows): single-writer use only
            _held[key] = (-1, 1)
            return True
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass                                # the PID is informative only (e.g. a full disk)
        _held[key] = (fd, 1)
        return True

    def release(self) -> None:
        key = os.path.realpath(self.lock_file)
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
            return
        del _held[key]
        if fd >= 0:
            os.close(fd)                        # closing the descriptor releases the flock


def new_run_path(parent: str | Path, name: str) -> Path:
    """``parent/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... appended if that folder exists."""
    parent = Path(parent)
    base = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in itertools.count(1):
        candidate = parent / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def point_latest(run_dir: Path) -> None:
    """Make ``<parent>/latest`` a relative symlink to ``run_dir`` (the newest run started there)."""
    link = run_dir.parent / LATEST
    if link.exists() and not link.is_symlink():
        warn(f"{link} exists and is not a symlink; not updating it")
        return
    replace_symlink(link, run_dir.name)

