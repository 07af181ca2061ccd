"""The run directory and the atomic writes, in process (fast enough for mutation testing): file names and
modes, what a failed write leaves behind, the orphan temporary files of dead writers, the tolerant metrics
log and its warnings, the lock (re-entrant in a process, refused to a second one with its PID) and the
run-folder names. The kill-in-the-middle behaviour is tested for real by tests/test_chaos.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onebit import rundir
from onebit.atomic import (_fsync_dir, _pid_alive, atomic_output, atomic_write_bytes, atomic_write_json,
                           atomic_write_text, remove_orphan_temps, replace_symlink, temp_path)
from onebit.errors import ConfigError, RunDirError, RunLockedError
from onebit.rundir import (RunDir, _lock_holder, check_path, new_run_path, parse_metrics, point_latest,
                           read_json_object)

PID = os.getpid()


@pytest.fixture(autouse=True)
def _signal_zero_only(monkeypatch):
    """Liveness is asked with signal 0 only: no test (nor a mutant) may send a real signal to a process."""
    real_kill = os.kill

    def kill(pid, sig):
        assert sig == 0, f"os.kill({pid}, {sig}): only signal 0 may be sent"
        return real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one is restored after."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ----- atomic.py -----

def test_temp_path_is_a_fresh_name_beside_the_file():
    a, b = temp_path("runs/x/a.json"), temp_path(Path("runs/x/a.json"))
    assert a.parent == b.parent == Path("runs/x")
    m_a = re.fullmatch(rf"a\.json\.{PID}\.(\d+)\.tmp", a.name)
    m_b = re.fullmatch(rf"a\.json\.{PID}\.(\d+)\.tmp", b.name)
    assert m_a and m_b and int(m_b[1]) == int(m_a[1]) + 1


def test_atomic_output_renames_the_written_temp_over_the_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with atomic_output(str(target)) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f"a.bin.{PID}.") and tmp.name.endswith(".tmp")
        assert tmp.read_bytes() == b"" and target.read_bytes() == b"old"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and names(tmp_path) == ["a.bin"]


def test_atomic_output_creates_the_parent_folders(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b" / "c.bin", b"x")
    assert (tmp_path / "a" / "b" / "c.bin").read_bytes() == b"x"


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, exc):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise exc
    assert target.read_bytes() == b"old" and names(tmp_path) == ["a.bin"]


def test_a_writer_that_removed_its_temp_gets_its_own_error_back(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with atomic_output(tmp_path / "a.bin") as tmp:
            tmp.unlink()
            raise ValueError("boom")
    with pytest.raises(FileNotFoundError):                  # nothing to rename: refused, nothing written
        with atomic_output(tmp_path / "a.bin") as tmp:
            tmp.unlink()
    assert names(tmp_path) == []


def test_atomic_output_refuses_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        with atomic_output(tmp_path / "d"):
            pass
    assert (info.value.errno, info.value.strerror, info.value.filename) == (
        errno.EISDIR, os.strerror(errno.EISDIR), str(tmp_path / "d"))
    assert names(tmp_path) == ["d"]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_allows(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / "plain.bin", b"x")
    with atomic_output(tmp_path / "recreated.bin") as tmp:   # e.g. a library writing its own 0600 file
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"y")
        os.close(fd)
    assert mode(tmp_path / "plain.bin") == mode(tmp_path / "recreated.bin") == expected
    assert (tmp_path / "recreated.bin").read_bytes() == b"y"


def test_the_file_then_its_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd)), real_fsync(fd))[1])
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert [(stat.S_ISDIR(s.st_mode), s.st_ino) for s in synced] == [
        (False, (tmp_path / "a.bin").stat().st_ino), (True, tmp_path.stat().st_ino)]


def test_fsync_dir_ignores_a_missing_folder_and_a_failing_fsync(tmp_path, monkeypatch):
    fds = open_fds()
    _fsync_dir(tmp_path / "missing")

    def failing(fd):
        raise OSError(errno.EINVAL, "not supported")

    monkeypatch.setattr(os, "fsync", failing)
    _fsync_dir(tmp_path)
    assert open_fds() == fds


def test_write_delay_hook_sleeps_after_the_temp_is_written_and_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    seen = []
    monkeypatch.setattr(time, "sleep", lambda s: seen.append((s, target.read_bytes(), names(tmp_path))))
    monkeypatch.delenv("ONEBIT_TEST_WRITE_DELAY", raising=False)
    atomic_write_bytes(target, b"1")
    monkeypatch.setenv("ONEBIT_TEST_WRITE_DELAY", "")
    atomic_write_bytes(target, b"2")
    assert seen == []
    monkeypatch.setenv("ONEBIT_TEST_WRITE_DELAY", "0.25")
    atomic_write_bytes(target, b"3")
    assert len(seen) == 1 and seen[0][:2] == (0.25, b"2")
    assert seen[0][2][0] == "a.bin" and re.fullmatch(rf"a\.bin\.{PID}\.\d+\.tmp", seen[0][2][1])
    assert target.read_bytes() == b"3"


def test_text_is_utf8_and_json_is_indented_with_a_final_newline(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "é\n")
    assert (tmp_path / "a.txt").read_bytes() == b"\xc3\xa9\n"
    atomic_write_json(tmp_path / "a.json", {"a": [1], "é": None})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1\n  ],\n  "\\u00e9": null\n}\n'
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        atomic_write_json(tmp_path / "a.json", {"loss": float("nan")})
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1], "é": None}
    assert names(tmp_path) == ["a.json", "a.txt"]


def test_pid_alive(dead_pid, monkeypatch):
    assert _pid_alive(PID) and not _pid_alive(dead_pid)
    assert _pid_alive(2 ** 64)                       # cannot be asked (OverflowError): assume alive

    def denied(pid, sig):
        raise PermissionError(errno.EPERM, "not permitted")

    monkeypatch.setattr(os, "kill", denied)          # another user's process: alive
    assert _pid_alive(1) and not _pid_alive(0)


def test_remove_orphan_temps_removes_only_dead_writers_temps_of_that_file(tmp_path, dead_pid):
    target = tmp_path / "a[1].json"                  # glob metacharacters in the name are literal
    files = {"dead": f"a[1].json.{dead_pid}.0.tmp", "dead2": f"a[1].json.{dead_pid}.17.tmp",
             "live": f"a[1].json.{PID}.0.tmp", "not_a_pid": "a[1].json.x.0.tmp",
             "other_file": f"a1.json.{dead_pid}.0.tmp", "other_file2": f"b.json.{dead_pid}.0.tmp",
             "one_field": f"a[1].json.{dead_pid}.tmp", "target": "a[1].json"}
    for name in files.values():
        (tmp_path / name).write_text("x")
    (tmp_path / f"a[1].json.{dead_pid}.1.tmp").mkdir()          # not a file: left alone
    removed = remove_orphan_temps(str(target))
    assert sorted(removed) == sorted([tmp_path / files["dead"], tmp_path / files["dead2"]])
    assert names(tmp_path) == sorted(set(files.values()) - {files["dead"], files["dead2"]}
                                     | {f"a[1].json.{dead_pid}.1.tmp"})
    assert remove_orphan_temps(target) == []


def test_a_temp_removed_meanwhile_by_another_cleaner_is_no_error(tmp_path, dead_pid, monkeypatch):
    real_is_file = Path.is_file

    def is_file_then_gone(path):                     # the other cleaner deletes it right after the check
        found = real_is_file(path)
        if path.suffix == ".tmp":
            path.unlink()
        return found

    (tmp_path / f"a.json.{dead_pid}.0.tmp").write_text("x")
    (tmp_path / "b.json.1.0.tmp").write_text("x")
    monkeypatch.setattr(Path, "is_file", is_file_then_gone)
    assert remove_orphan_temps(tmp_path / "a.json") == [tmp_path / f"a.json.{dead_pid}.0.tmp"]
    RunDir(tmp_path).remove_stale_temps()
    assert names(tmp_path) == []


def test_replace_symlink_points_the_link_at_a_relative_target(tmp_path):
    link = tmp_path / "latest"
    replace_symlink(link, "run-1")
    replace_symlink(str(link), "run-2")
    assert os.readlink(link) == "run-2" and names(tmp_path) == ["latest"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").touch()
    with pytest.raises(IsADirectoryError):
        replace_symlink(tmp_path / "d", "run-1")
    assert names(tmp_path) == ["d", "latest"]


# ----- rundir.py: names, paths, files -----

def test_check_path_refuses_a_path_that_is_not_utf8():
    assert check_path("runs/é") == Path("runs/é") and check_path(Path("a")) == Path("a")
    with pytest.raises(ConfigError) as info:
        check_path("runs/\udcff", "sweep folder")
    assert str(info.value) == r"sweep folder 'runs/\\udcff' is not a valid UTF-8 path; choose a name in UTF-8"
    with pytest.raises(ConfigError, match=r"^run directory 'x\\\\udcff' is not a valid UTF-8 path"):
        RunDir("x\udcff")


def test_run_dir_file_names(tmp_path):
    rd = RunDir(str(tmp_path))
    assert rd.path == tmp_path and repr(RunDir("runs/a")) == "RunDir('runs/a')"
    assert [p.relative_to(tmp_path).as_posix() for p in (rd.config, rd.metrics, rd.checkpoint, rd.results,
                                                         rd.lock_file, rd.log)] == [
        "config.json", "metrics.jsonl", "checkpoint.safetensors", "results.json", ".lock", "log.txt"]
    assert (rundir.WORKER, rundir.LATEST) == ("worker.json", "latest")


def test_state_config_and_results(tmp_path):
    rd = RunDir(tmp_path)
    assert not rd.has_checkpoint() and not rd.is_finished()
    rd.checkpoint.mkdir()                            # a folder of that name is no checkpoint
    rd.results.mkdir()
    assert not rd.has_checkpoint() and not rd.is_finished()
    rd.checkpoint.rmdir()
    rd.results.rmdir()
    rd.checkpoint.write_bytes(b"")
    with pytest.raises(RunDirError) as info:
        rd.read_config()
    assert str(info.value) == f"{tmp_path} is not a run directory (no config.json)"
    rd.write_config({"lr": 0.1})
    rd.write_results({"top1": 0.5})
    assert rd.read_config() == {"lr": 0.1} and rd.read_results() == {"top1": 0.5}
    rd.results.write_text("[]")
    with pytest.raises(RunDirError) as info:
        rd.read_results()
    assert str(info.value) == f"{rd.results}: results file is not a JSON object (got list)"
    rd.results.write_text('{"top1": 0.5}')
    assert rd.config.read_text() == '{\n  "lr": 0.1\n}\n' and rd.has_checkpoint() and rd.is_finished()


def test_read_json_object_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(RunDirError) as info:
        read_json_object(path, "results file")
    assert str(info.value) == f"{path}: unreadable results file ([Errno 2] No such file or directory: '{path}')"
    for text, problem in [("{", "unreadable results file (Expecting property name enclosed in double quotes: "
                                "line 1 column 2 (char 1))"),
                          ("[1]", "results file is not a JSON object (got list)"),
                          ("null", "results file is not a JSON object (got NoneType)"),
                          ("\"\xff\"", "results file is not a JSON object (got str)")]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(RunDirError) as info:
            read_json_object(path, "results file")
        assert str(info.value) == f"{path}: {problem}"
    path.write_text("[" * 100_000)
    with pytest.raises(RunDirError, match=r": unreadable results file \(maximum recursion depth exceeded"):
        read_json_object(path, "results file")
    path.write_text('{"é": 1}', encoding="utf-8")
    assert read_json_object(path, "x") == {"é": 1}
    RunDir(tmp_path).config.write_text("x")
    with pytest.raises(RunDirError, match=r"config\.json: unreadable run configuration \(Expecting value"):
        RunDir(tmp_path).read_config()


def test_files_are_read_as_utf8_whatever_the_locale(tmp_path, capsys):
    import locale

    rd = RunDir(tmp_path)
    rd.results.write_text('{"note": "é"}', encoding="utf-8")
    rd.metrics.write_text('{"epoch": 1, "note": "é"}\n', encoding="utf-8")
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")           # an ASCII locale (LANG=C): the default would fail
    try:
        assert sys.flags.utf8_mode or locale.getpreferredencoding(False) != "UTF-8"
        assert rd.read_results() == {"note": "é"} and rd.read_metrics() == [{"epoch": 1, "note": "é"}]
    finally:
        locale.setlocale(locale.LC_CTYPE, old)
    assert capsys.readouterr().err == ""


# ----- the metrics log -----

def test_parse_metrics_keeps_rows_with_a_positive_integer_epoch(capsys):
    long = '{"epoch": 0, "note": "' + "x" * 80 + '"}'
    lines = ['{"epoch": 1, "loss": 2.5}', "", "   ", '{"epoch": true}', '{"epoch": 0}', '{"epoch": 2.0}',
             '{"epoch": "3"}', '{"loss": 1}', "[4]", "garbage", long, '{"epoch": 7}']
    rows = parse_metrics("\n".join(lines) + "\n", "runs/a/metrics.jsonl")
    assert rows == [{"epoch": 1, "loss": 2.5}, {"epoch": 7}]
    assert capsys.readouterr().err.splitlines() == [
        f"onebit: warning: runs/a/metrics.jsonl: dropped an unreadable line {n} ({text})" for n, text in [
            (4, "'{\"epoch\": true}'"), (5, "'{\"epoch\": 0}'"), (6, "'{\"epoch\": 2.0}'"),
            (7, "'{\"epoch\": \"3\"}'"), (8, "'{\"loss\": 1}'"), (9, "'[4]'"), (10, "'garbage'"),
            (11, "'{\"epoch\": 0, \"note\": \"" + "x" * 38 + "'")]]      # the first 60 characters


def test_a_torn_last_line_is_told_apart_from_an_unreadable_one(capsys):
    assert parse_metrics('{"epoch": 1}\nxx\n{"epoch": 2}\n{"epo') == [{"epoch": 1}, {"epoch": 2}]
    assert capsys.readouterr().err == ("onebit: warning: metrics.jsonl: dropped an unreadable line 2 ('xx')\n"
                                       "onebit: warning: metrics.jsonl: dropped a torn last line 4 ('{\"epo')\n")
    assert parse_metrics('{"epoch": 1}\n{"epo\n') == [{"epoch": 1}]
    assert capsys.readouterr().err == ("onebit: warning: metrics.jsonl: dropped an unreadable line 2 "
                                       "('{\"epo')\n")
    assert parse_metrics("") == [] and parse_metrics("\n\n") == [] and capsys.readouterr().err == ""


def test_parse_metrics_survives_deep_nesting(capsys):
    assert parse_metrics("[" * 100_000 + '\n{"epoch": 1}\n') == [{"epoch": 1}]
    assert "dropped an unreadable line 1" in capsys.readouterr().err


def test_read_metrics_is_sorted_and_later_rows_of_an_epoch_win(tmp_path, capsys):
    rd = RunDir(tmp_path)
    assert rd.read_metrics() == []
    rd.metrics.write_bytes(b'{"epoch": 3}\n{"epoch": 1, "v": "a"}\n\xff\n{"epoch": 2, "n": "\xfe"}\n'
                           b'{"epoch": 1, "v": "b"}\n')
    assert rd.read_metrics() == [{"epoch": 1, "v": "b"}, {"epoch": 2, "n": "\ufffd"}, {"epoch": 3}]
    assert capsys.readouterr().err == f"onebit: warning: {rd.metrics}: dropped an unreadable line 3 ('\ufffd')\n"
    rd.metrics.unlink()
    rd.metrics.mkdir()
    with pytest.raises(RunDirError) as info:
        rd.read_metrics()
    assert str(info.value) == f"{rd.metrics}: unreadable (Is a directory)"


def test_record_epoch_drops_the_rows_at_and_after_it(tmp_path):
    rd = RunDir(tmp_path)
    rd.record_epoch({"epoch": 1, "loss": 3.0})
    assert rd.metrics.read_text() == '{"epoch": 1, "loss": 3.0}\n'
    for e in (2, 3, 4):
        rd.record_epoch({"epoch": e})
    rd.record_epoch({"epoch": 3, "loss": 1.0})
    assert rd.metrics.read_text() == '{"epoch": 1, "loss": 3.0}\n{"epoch": 2}\n{"epoch": 3, "loss": 1.0}\n'
    rd.write_metrics([])
    assert rd.metrics.read_text() == "" and names(tmp_path) == ["metrics.jsonl"]


def test_truncate_metrics_rewrites_only_when_that_changes_the_file(tmp_path, capsys):
    rd = RunDir(tmp_path)
    rd.truncate_metrics(5)
    assert not rd.metrics.exists()
    rd.write_metrics([{"epoch": e} for e in (1, 2, 3)])
    before = rd.metrics.stat()
    time.sleep(0.01)
    rd.truncate_metrics(3)
    after = rd.metrics.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    rd.truncate_metrics(2)
    assert rd.metrics.read_text() == '{"epoch": 1}\n{"epoch": 2}\n' and rd.metrics.stat().st_ino != before.st_ino
    rd.metrics.write_bytes(b'{"epoch":1}\n\xff\n{"epoch": 2}\n')       # same rows, other bytes: rewritten
    rd.truncate_metrics(2)
    assert rd.metrics.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert "dropped an unreadable line 2" in capsys.readouterr().err
    rd.truncate_metrics(0)
    assert rd.metrics.read_text() == ""


def test_clear_partial_and_remove_stale_temps(tmp_path):
    rd = RunDir(tmp_path)
    rd.clear_partial()                               # nothing to clear
    rd.metrics.write_text('{"epoch": 1}\n')
    for name in ("config.json.1.0.tmp", "x.tmp", "keep.tmpx", "checkpoint.safetensors"):
        (tmp_path / name).write_text("x")
    (tmp_path / "d.tmp").mkdir()
    (tmp_path / "d.tmp" / "inner.tmp").write_text("x")
    rd.remove_stale_temps()
    rd.clear_partial()
    assert names(tmp_path) == ["checkpoint.safetensors", "d.tmp", "keep.tmpx"]
    assert names(tmp_path / "d.tmp") == ["inner.tmp"]


# ----- the lock -----

def test_the_lock_is_reentrant_writes_the_pid_and_is_released(tmp_path, umask):
    rd = RunDir(tmp_path / "a" / "run")
    key = os.path.realpath(rd.lock_file)
    other = RunDir(tmp_path / "alias")
    (tmp_path / "alias").symlink_to(tmp_path / "a" / "run", target_is_directory=True)
    with rd.lock():
        fd = rundir._held[key][0]
        assert rundir._held[key] == (fd, 1) and rd.lock_file.read_text() == f"{PID}\n"
        assert mode(rd.lock_file) == 0o644
        with other.lock():                           # the same lock file under another name
            assert rundir._held[key] == (fd, 2)
            with rd.lock():
                assert rundir._held[key] == (fd, 3)
            assert rundir._held[key] == (fd, 2)
        assert rundir._held[key] == (fd, 1)
        assert _flock_free(rd.lock_file) is False
    assert key not in rundir._held and _flock_free(rd.lock_file)
    with pytest.raises(OSError):
        os.fstat(fd)                                 # closed
    with pytest.raises(ZeroDivisionError):
        with rd.lock():
            1 / 0
    assert rundir._held == {}


def _flock_free(path: Path) -> bool:
    """Whether an exclusive flock on ``path`` could be taken now (through a descriptor of its own)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_the_pid_overwrites_a_longer_one(tmp_path):
    rd = RunDir(tmp_path)
    rd.lock_file.write_text("123456789012\n")
    assert rd.try_acquire() and rd.lock_file.read_text() == f"{PID}\n"
    rd.release()
    assert rundir._held == {}


HOLD = """import sys
from onebit.rundir import RunDir
with RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunLockedError) as info:
            with RunDir(run).lock():
                pass
        assert str(info.value) == (f"{run} is in use by process {holder.pid} (a training run or sweep "
                                   f"writing into it); wait for it to finish or pick another folder")
        assert not RunDir(run).try_acquire() and rundir._held == {}
        RunDir(run).remove_if_unused()               # holds only its lock, but the lock is taken
        assert names(run) == [".lock"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    with RunDir(run).lock():
        pass


def test_lock_holder_names_the_pid_or_another_process(tmp_path):
    path = tmp_path / ".lock"
    assert _lock_holder(path) == "another process"
    path.write_text("4242\n")
    assert _lock_holder(path) == "process 4242"
    path.write_text("pid 4242\n")
    assert _lock_holder(path) == "another process"


def test_try_acquire_refuses_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(RunDirError) as info:
        RunDir(tmp_path / "run").try_acquire()
    assert str(info.value) == f"{tmp_path / 'run'} is a file, not a run directory; pick another folder"


def test_a_failing_flock_closes_the_descriptor_and_an_unwritable_pid_is_no_error(tmp_path, monkeypatch):
    import fcntl

    rd = RunDir(tmp_path)

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    def full(fd, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    fds = open_fds()
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError, match="No locks available"):
        rd.try_acquire()
    assert open_fds() == fds and rundir._held == {}
    monkeypatch.undo()
    monkeypatch.setattr(os, "ftruncate", full)
    with rd.lock():
        assert rd.lock_file.read_text() == ""
    assert open_fds() == fds


def test_without_posix_locks_the_lock_is_bookkeeping_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)          # `import fcntl` raises ImportError
    rd = RunDir(tmp_path / "run")
    with rd.lock():
        assert rundir._held == {os.path.realpath(rd.lock_file): (-1, 1)} and names(rd.path) == []
    assert rundir._held == {}
    rd.remove_if_unused()
    assert not rd.path.exists()


def test_remove_if_unused_removes_only_a_folder_holding_nothing_but_its_lock(tmp_path):
    for content in ([], [".lock"]):
        rd = RunDir(tmp_path / "run")
        rd.path.mkdir()
        for name in content:
            (rd.path / name).write_text("1\n")
        rd.remove_if_unused()
        assert not rd.path.exists() and rundir._held == {}
    rd.path.mkdir()
    for name in (".lock", "config.json"):
        (rd.path / name).write_text("{}")
    rd.remove_if_unused()
    assert names(rd.path) == [".lock", "config.json"] and rundir._held == {}
    RunDir(tmp_path / "missing").remove_if_unused()
    assert names(tmp_path) == ["run"]


# ----- new runs -----

def test_new_run_path_is_named_after_the_time_and_numbered_if_taken(tmp_path, monkeypatch):
    real = time.strftime
    monkeypatch.setattr(time, "strftime", lambda fmt, *t: real(fmt, (2025, 1, 2, 3, 4, 5, 3, 2, 0)))
    parent = tmp_path / "runs" / "deep"
    paths = [new_run_path(str(parent), "wrn") for _ in range(3)]
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "runs/deep/wrn-20250102-030405", "runs/deep/wrn-20250102-030405-2", "runs/deep/wrn-20250102-030405-3"]
    assert all(p.is_dir() for p in paths)
    (parent / "wrn-20250102-030405-4").write_text("a file")
    assert new_run_path(parent, "wrn").name == "wrn-20250102-030405-5"


def test_point_latest_is_a_relative_symlink_and_leaves_a_real_file(tmp_path, capsys):
    first, second = tmp_path / "a-1", tmp_path / "b-2"
    first.mkdir(), second.mkdir()
    point_latest(first)
    assert os.readlink(tmp_path / "latest") == "a-1"
    point_latest(second)
    assert os.readlink(tmp_path / "latest") == "b-2" and names(tmp_path) == ["a-1", "b-2", "latest"]
    second.rmdir()                                   # a dangling link is replaced too
    point_latest(first)
    assert os.readlink(tmp_path / "latest") == "a-1" and capsys.readouterr().err == ""
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").write_text("mine")
    point_latest(first)
    assert (tmp_path / "latest").read_text() == "mine" and not (tmp_path / "latest").is_symlink()
    assert capsys.readouterr().err == (f"onebit: warning: {tmp_path / 'latest'} exists and is not a symlink; "
                                       f"not updating it\n")
