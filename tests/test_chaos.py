"""Chaos tests: `onebit train` killed with SIGKILL at random moments, and trained into a full disk.

Each training process runs ``onebit.cli.main`` -- exactly what the ``onebit train`` command runs -- forked
from a multiprocessing fork server that has torch and onebit imported, so the many processes do not pay
the interpreter and torch start-up. (Not forked from the test process itself: once a test in it has run
autograd, PyTorch refuses autograd in a forked child, and which tests ran first depends on the run.)
The documented test hook ``ONEBIT_TEST_WRITE_DELAY`` (``onebit.atomic``) makes every atomic write pause
between writing its temporary file and renaming it, so that random kill moments often land inside
checkpoint and metrics writes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from onebit.cli import main
from onebit.rundir import RunDir
from onebit.train.checkpoint import load_checkpoint

EPOCHS = 4
WRITE_DELAY = 0.1        # seconds each atomic write pauses before its rename (ONEBIT_TEST_WRITE_DELAY)


def train_argv(data_dir: Path, run_dir: Path, epochs: int = EPOCHS) -> list[str]:
    return ["train", "--data-dir", str(data_dir), "--depth", "8", "--width", "1", "--epochs", str(epochs),
            "--batch-size", "50", "--eval-batch-size", "50", "--seed", "3", "--num-threads", "1",
            "--amp", "--no-progress", "--run-dir", str(run_dir)]   # bf16 autocast: its resumes are exact too


def resume_argv(run_dir: Path) -> list[str]:
    return ["train", "--resume", str(run_dir), "--no-progress"]


FORK_SERVER = multiprocessing.get_context("forkserver")
FORK_SERVER.set_forkserver_preload(["torch", "onebit.cli", "onebit.train.loop", __name__])


def run_onebit(argv: list[str], delay: float | None) -> None:
    """A training process's body: ``onebit <argv>`` with the write delay and output discarded."""
    if delay:
        os.environ["ONEBIT_TEST_WRITE_DELAY"] = str(delay)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    sys.exit(main(argv))


def start(argv: list[str], delay: float | None = WRITE_DELAY) -> multiprocessing.Process:
    """Start a process running ``onebit <argv>`` (output discarded), forked from the fork server."""
    proc = FORK_SERVER.Process(target=run_onebit, args=(argv, delay), daemon=True)
    proc.start()
    return proc


def wait(proc: multiprocessing.Process, kill_after: float | None = None,
         inside: tuple[Path, str, float] | None = None) -> int | None:
    """The exit code of ``proc``; with ``kill_after``, SIGKILL it at that moment (then None) unless it ends
    first. With ``inside = (folder, pattern, pause)`` the kill waits until ``kill_after`` has passed and a
    temporary file matching ``pattern`` exists in folder (a write in progress), then ``pause`` seconds more."""
    deadline = time.monotonic() + (kill_after if kill_after is not None else 300.0)
    while True:
        if proc.exitcode is not None:
            return proc.exitcode
        if time.monotonic() >= deadline and inside is not None and kill_after is not None:
            folder, pattern, pause = inside
            if not any(folder.glob(pattern)):
                time.sleep(0.002)
                continue
            time.sleep(pause)
            inside = None
        if time.monotonic() >= deadline:
            proc.kill()
            proc.join()
            if kill_after is None:
                raise AssertionError("training process did not finish")
            return None
        time.sleep(0.002)


def metric_epochs(run_dir: Path) -> list[int]:
    """Epoch numbers in metrics.jsonl, read strictly: every line must be a complete JSON object."""
    path = RunDir(run_dir).metrics
    if not path.exists():
        return []
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "metrics.jsonl has a torn last line"
    return [json.loads(line)["epoch"] for line in text.splitlines()]


def checkpoint_epoch(run_dir: Path) -> int | None:
    path = RunDir(run_dir).checkpoint
    return load_checkpoint(path).state["epoch"] if path.exists() else None


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir).model_state


def assert_same_weights(run: Path, reference: Path) -> None:
    got, want = weights(run), weights(reference)
    assert want and got.keys() == want.keys(), (sorted(got), sorted(want))
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{run} differs from {reference} in {different}"


@pytest.fixture
def reference(tiny_cifar10: Path, tmp_path: Path) -> tuple[Path, float]:
    """An uninterrupted run (forked the same way, same write delay) and how long it took."""
    run = tmp_path / "reference"
    warm_up = FORK_SERVER.Process(target=time.sleep, args=(0,))   # the server starts (~3 s) outside the timing
    warm_up.start()
    warm_up.join()
    t0 = time.monotonic()
    assert wait(start(train_argv(tiny_cifar10, run))) == 0
    return run, time.monotonic() - t0


def test_sigkill_at_random_moments_loses_nothing_and_resumes_exactly(tiny_cifar10, tmp_path, reference):
    ref_run, duration = reference
    rng = random.Random(20190716)
    kills = in_write = in_resume = 0
    finished_runs = 0
    run_index = 0
    while kills < 21 or finished_runs == 0:
        assert run_index < 12 and kills < 80, "the chaos loop did not converge"
        run = tmp_path / f"run{run_index}"
        attempt = 0
        while True:
            fresh = not RunDir(run).config.exists()
            argv = train_argv(tiny_cifar10, run) if fresh else resume_argv(run)
            target = rng.choice([None, f"{RunDir(run).metrics.name}.*.tmp", f"{RunDir(run).checkpoint.name}.*.tmp"])
            code = wait(start(argv), kill_after=rng.uniform(0.0, 0.6 * duration),
                        inside=(run, target, rng.uniform(0.0, 0.8 * WRITE_DELAY)) if target else None)
            if code is not None:                     # finished before the kill
                assert code == 0, f"attempt {attempt} of {run} exited with {code}"
                break
            kills += 1
            in_resume += not fresh
            in_write += any(run.glob("*.tmp"))       # killed inside an atomic write
            # what a kill leaves: complete metric lines, each epoch once, at most one ahead of the checkpoint
            epochs, saved = metric_epochs(run), checkpoint_epoch(run)
            assert epochs == list(range(1, len(epochs) + 1)), epochs
            assert len(epochs) - (saved or 0) in (0, 1), (epochs, saved)
            attempt += 1
        # finished: every epoch exactly once, no temporary files, the weights of the uninterrupted run
        assert metric_epochs(run) == list(range(1, EPOCHS + 1))
        assert not list(run.glob("*.tmp"))
        assert RunDir(run).results.is_file() and checkpoint_epoch(run) == EPOCHS
        assert_same_weights(run, ref_run)
        finished_runs += 1
        run_index += 1
    # (the loop itself guarantees >= 21 kills; what it cannot guarantee is where they land)
    assert in_resume >= 10 and in_write >= 5, (kills, in_resume, in_write)


def test_second_writer_is_refused_with_the_holders_pid(tiny_cifar10, tmp_path):
    run = tmp_path / "run"
    assert main(train_argv(tiny_cifar10, run) + ["--stop-after", "1"]) == 0
    holder = start(resume_argv(run), delay=1000.0)    # takes the lock, then stalls in its first write
    try:
        deadline = time.monotonic() + 120
        while RunDir(run).lock_file.read_text().strip() != str(holder.pid):
            assert time.monotonic() < deadline, "the holder did not take the lock"
            time.sleep(0.01)
        for argv in (train_argv(tiny_cifar10, run), resume_argv(run)):
            out = subprocess.run([sys.executable, "-m", "onebit", *argv], capture_output=True, text=True,
                                 timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            assert out.returncode == 1
            assert out.stderr.count("\n") == 1 and f"in use by process {holder.pid}" in out.stderr, out.stderr
    finally:
        wait(holder, kill_after=0.0)
    # the lock died with the killed holder, and the run resumes
    assert wait(start(resume_argv(run), delay=None)) == 0
    assert metric_epochs(run) == list(range(1, EPOCHS + 1))


# ----- a full disk -----
def _fill(folder: Path, leave: int) -> Path:
    """Write a ballast file so that about ``leave`` bytes stay free on ``folder``'s filesystem."""
    ballast = folder / "ballast"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return ballast


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?); test_full_disk_by_fault_injection covers it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=20)


@pytest.mark.parametrize("leave", [0, 300_000])
def test_full_disk_keeps_the_last_good_checkpoint_and_resumes(tiny_cifar10, tmp_path, reference, small_tmpfs,
                                                              capsys, leave):
    """A real full filesystem (4 MB tmpfs): ``leave`` = 0 fails the metrics write, 300 kB the checkpoint's."""
    ref_run, _ = reference
    run = small_tmpfs / "run"
    assert main(train_argv(tiny_cifar10, run) + ["--stop-after", "2"]) == 0
    before = RunDir(run).checkpoint.read_bytes()
    ballast = _fill(small_tmpfs, leave)
    capsys.readouterr()
    assert main(resume_argv(run)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert RunDir(run).checkpoint.read_bytes() == before               # the last good checkpoint survives
    assert metric_epochs(run)[:2] == [1, 2] and len(metric_epochs(run)) <= 3
    assert not list(run.glob("*.tmp"))
    ballast.unlink()                                                    # space is back
    assert main(resume_argv(run)) == 0
    assert metric_epochs(run) == list(range(1, EPOCHS + 1))
    assert_same_weights(run, ref_run)


def test_full_disk_by_fault_injection(tiny_cifar10, tmp_path, reference, monkeypatch, capsys):
    """The same at the write calls (for machines that cannot mount a tmpfs): every write of the resumed
    run writes half its data, then fails with ENOSPC."""
    import errno

    import onebit.atomic as atomic
    import onebit.safetensors_io as safetensors_io

    ref_run, _ = reference
    run = tmp_path / "run"
    assert main(train_argv(tiny_cifar10, run) + ["--stop-after", "2"]) == 0
    before = RunDir(run).checkpoint.read_bytes()
    metrics_before = RunDir(run).metrics.read_bytes()

    class FullDisk:
        def __init__(self, path, mode="r", *args, **kwargs):
            self.f = open(path, mode, *args, **kwargs)

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.f.name))

        def fileno(self):
            return self.f.fileno()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        from safetensors import SafetensorError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    for target, name, fake in ((atomic, "open", FullDisk), (safetensors_io, "save_file", full_save_file)):
        monkeypatch.setattr(target, name, fake, raising=False)
        capsys.readouterr()
        assert main(resume_argv(run)) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err, err
        assert RunDir(run).checkpoint.read_bytes() == before
        assert RunDir(run).metrics.read_bytes().startswith(metrics_before)
        assert not list(run.glob("*.tmp"))
        monkeypatch.undo()
    assert main(resume_argv(run)) == 0
    assert metric_epochs(run) == list(range(1, EPOCHS + 1))
    assert_same_weights(run, ref_run)


def test_sigterm_stops_a_parallel_sweeps_workers(tiny_cifar10, tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'[base]\ndata_dir = "{tiny_cifar10}"\ndepth = 8\nwidth = 1\nepochs = 200\n'
                     f'batch_size = 50\nnum_threads = 1\n[grid]\nseed = [0, 1]\n')
    proc = subprocess.Popen([sys.executable, "-m", "onebit", "sweep", str(sweep), "--jobs", "2", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 300
        while True:        # both workers hold their run folders' locks (their PIDs are in the lock files)
            pids = [int(t) for p in (tmp_path / "s-runs").glob("*/.lock") if (t := p.read_text().strip())]
            if len(pids) == 2:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and proc.stderr.read().count("\n") <= 1
    for pid in pids:                       # the workers are gone (not left running)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
