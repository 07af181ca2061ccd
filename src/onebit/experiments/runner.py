"""Executing a sweep's runs (``execute``) on a backend: here one after another in this process or N at once
as worker processes (``LocalBackend``), or on a Ray cluster (``ray_sweep.RayBackend``); one status vocabulary.

Each run lives in its own folder (named by its config hash). A run is taken only by the process that
holds the folder's lock (``onebit.rundir.RunDir.lock``, the same lock ``onebit train`` holds: an OS file
lock released when the process dies), so two sweeps over one grid never train the same run twice. Per run:

* already in the store -> skipped;
* results present (finished, not yet recorded) -> recorded;
* a checkpoint present -> resumed from its last epoch (``train(..., resume=True)``);
* otherwise trained from scratch (``train`` clears what a run killed in its first epoch left).

The process that trains a run records it in the store (worker processes write to the store directly).
Worker: ``python -m onebit.experiments.runner --store DB RUN_DIR`` (reads RUN_DIR/config.json).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterator, Protocol

from onebit.errors import OnebitError
from onebit.rundir import RunDir
from onebit.experiments.store import ResultsStore, RunRecord
from onebit.experiments.sweep import PlannedRun
from onebit.train.config import TrainConfig
from onebit.cpus import usable_cpus

BUSY_EXIT = 75                        # worker exit codes: another process holds the run,
SKIPPED_EXIT = 76                     # the run was already in the store


class Status(StrEnum):
    """What happened to one run."""

    DONE = "done"          # trained (or resumed, or just recorded) and recorded now
    SKIPPED = "skipped"    # already in the store
    BUSY = "busy"          # another process holds the run
    FAILED = "failed"


@dataclass(frozen=True)
class RunResult:
    status: Status
    error: str = ""        # why, when FAILED


EXIT_CODES = {Status.DONE: 0, Status.BUSY: BUSY_EXIT, Status.SKIPPED: SKIPPED_EXIT}   # worker exit code of each
WORKER_EXITS = {code: status for status, code in EXIT_CODES.items()}


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)        # trained (or resumed) and recorded now
    skipped: list[str] = field(default_factory=list)     # already in the store
    busy: list[str] = field(default_factory=list)        # being trained by another process
    failed: dict[str, str] = field(default_factory=dict)  # hash -> error message


# ----- provenance -----
def library_versions() -> dict[str, str]:
    import numpy
    import torch

    import onebit
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "onebit": onebit.__version__}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the git checkout holding the onebit sources (``-dirty`` if the package's tracked files
    differ from it), or None (not a checkout, no git). Cached: a process records the commit of the code it
    started with (``execute`` and the worker ask for it first)."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=source.parent, timeout=10)
    return out.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")


def device_description(device: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    threads = torch.get_num_threads()
    return f"cpu ({platform.machine()}, {threads} thread{'s' if threads != 1 else ''})"


# ----- reading a finished run folder -----
def read_run_dir(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(config, per-epoch metrics, final results) of a finished run folder."""
    directory = RunDir(run_dir)
    return directory.read_config(), directory.read_metrics(), directory.read_results()


def training_rate(epochs: list[dict[str, Any]]) -> float | None:
    """Training images/s over the whole run: sum(images) / sum(epoch time)."""
    seconds = sum(e.get("epoch_time_s", 0.0) for e in epochs)
    images = sum(e.get("images_per_s", 0.0) * e.get("epoch_time_s", 0.0) for e in epochs)
    return images / seconds if seconds > 0 else None


def make_record(run_dir: Path, sweep: str | None, preset: str | None, device: str) -> RunRecord:
    config, epochs, final = read_run_dir(run_dir)
    cfg = TrainConfig.from_dict(config)
    return RunRecord(config_hash=cfg.hash(), config=config, final=final, epochs=epochs,
                     wall_time_s=final.get("elapsed_s"), train_images_per_s=training_rate(epochs),
                     device=device_description(device), host=platform.node() or None,
                     versions=library_versions(), git_commit=git_commit(),
                     sweep=sweep, preset=preset, run_dir=str(run_dir))


# ----- one run -----
@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Yields True if this process now holds ``run_dir``'s lock, False if another process holds it."""
    directory = RunDir(run_dir)
    if not directory.try_acquire():
        yield False
        return
    try:
        yield True
    finally:
        directory.release()


def train_or_resume(cfg: TrainConfig, run_dir: Path, progress: bool = False) -> None:
    """Finish the run in ``run_dir`` (whose lock the caller holds): nothing if it has its results, else
    resume from its checkpoint, else train from scratch."""
    from onebit.train.loop import train

    directory = RunDir(run_dir)
    if not directory.is_finished():
        train(cfg, run_dir, resume=directory.has_checkpoint(), progress=progress)


def run_and_record(cfg: TrainConfig, run_dir: Path, store_path: Path, sweep: str | None = None,
                   preset: str | None = None, progress: bool = False) -> Status:
    """Train (or resume, or just record) one run and record it; returns DONE, SKIPPED or BUSY."""
    with run_lock(run_dir) as mine:
        if not mine:
            return Status.BUSY
        with ResultsStore(store_path) as store:
            if store.has(cfg.hash()):
                return Status.SKIPPED
        train_or_resume(cfg, run_dir, progress)
        record = make_record(run_dir, sweep, preset, cfg.device)
        with ResultsStore(store_path) as store:
            store.record(record)
    return Status.DONE


# ----- many runs -----
def pending_first(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Runs with a checkpoint (interrupted) first, then the rest in sweep order."""
    return sorted(runs, key=lambda r: not RunDir(r.run_dir).has_checkpoint())


class Backend(Protocol):
    """Where a sweep's runs train (``LocalBackend``, ``ray_sweep.RayBackend``): ``run`` trains the runs
    not yet in the store, records them, and settles each into ``outcome`` with a :class:`Status`."""

    def run(self, todo: list[PlannedRun], store_path: Path, sweep: str | None, outcome: Outcome,
            progress: bool) -> None: ...


def execute(runs: list[PlannedRun], store_path: Path, sweep: str | None = None, backend: Backend | None = None,
            progress: bool = True) -> Outcome:
    """Run every planned run not yet in the store on ``backend`` (default: this process, one at a time),
    resumable runs first; the outcome lists each run once by its :class:`Status`."""
    outcome = Outcome()
    git_commit()                                    # the commit of the code this process runs
    with ResultsStore(store_path) as store:
        stored = store.hashes()
    todo = []
    for run in runs:
        (outcome.skipped.append(run.config_hash) if run.config_hash in stored else todo.append(run))
    if todo:
        (backend or LocalBackend()).run(pending_first(todo), store_path, sweep, outcome, progress)
    return outcome


@dataclass(frozen=True)
class LocalBackend:
    """This machine: one run after another in this process (``jobs`` 1, no GPUs), or ``jobs`` worker
    processes at once (slot i on GPU ``gpus[i % len(gpus)]`` when GPUs are given)."""

    jobs: int = 1
    gpus: list[str] | None = None

    def run(self, todo: list[PlannedRun], store_path: Path, sweep: str | None, outcome: Outcome,
            progress: bool) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)
        try:
            if self.jobs <= 1 and not self.gpus:
                for run in todo:
                    bar.set_postfix_str(run.label)
                    settle(outcome, run, _in_process(run, store_path, sweep, progress))
                    bar.update()
            else:
                _with_workers(todo, store_path, sweep, max(self.jobs, 1), self.gpus, outcome, bar)
        finally:
            bar.close()


def _in_process(run: PlannedRun, store_path: Path, sweep: str | None, progress: bool) -> RunResult:
    try:
        return RunResult(run_and_record(run.config, run.run_dir, store_path, sweep, run.preset, progress))
    except OnebitError as exc:
        return RunResult(Status.FAILED, str(exc))


def settle(outcome: Outcome, run: PlannedRun, result: RunResult, detail: str = "") -> None:
    """Count ``run`` in ``outcome`` under its status and print one line (``HH:MM:SS status: run detail``)."""
    from tqdm.auto import tqdm

    tqdm.write(f"{time.strftime('%H:%M:%S')} {result.status}: {run.label} {detail}".rstrip())
    if result.status is Status.DONE:
        outcome.done.append(run.config_hash)
    elif result.status is Status.SKIPPED:
        outcome.skipped.append(run.config_hash)
    elif result.status is Status.BUSY:
        outcome.busy.append(run.config_hash)
    else:
        outcome.failed[run.config_hash] = result.error
        print(f"run {run.label} failed: {result.error}", file=sys.stderr)


EPOCH_POLL_S = 1.0                    # how often the worker sweep's bar reads its runs' metrics logs


class EpochCount:
    """The sweep bar while worker processes train (they cannot draw their own): counted in epochs, the
    total being every pending run's ``epochs``; a run's count is the epochs its metrics log holds (so a
    resumed run starts from its checkpoint's), a recorded run counts whole. The postfix names each active
    run by its hash with ``done/epochs``; the "started" lines give the hash's settings."""

    def __init__(self, todo: list[PlannedRun], bar: Any):
        self.bar = bar
        self.total = {run.config_hash: run.config.epochs for run in todo}
        self.seen = {run.config_hash: min(RunDir(run.run_dir).epochs_logged(), run.config.epochs)
                     for run in todo}
        bar.reset(total=sum(self.total.values()))
        bar.unit = "epoch"
        bar.n = bar.last_print_n = bar.initial = sum(self.seen.values())     # no rate from earlier epochs
        bar.refresh()

    def _advance(self, run: PlannedRun, done: int) -> int:
        """Record ``done`` epochs of ``run`` (capped at its total); the epochs that are new."""
        new = max(0, min(done, self.total[run.config_hash]) - self.seen[run.config_hash])
        self.seen[run.config_hash] += new
        return new

    def show(self, active: list[PlannedRun]) -> None:
        """Read the active runs' metrics logs; advance the bar and name them in its postfix. Redrawn every
        poll on a terminal (the clock moves), only when a count moved in a log file."""
        new = sum(self._advance(run, RunDir(run.run_dir).epochs_logged()) for run in active)
        self.bar.set_postfix_str(" · ".join(f"{run.config_hash[:8]} {self.seen[run.config_hash]}/"
                                            f"{self.total[run.config_hash]}" for run in active), refresh=False)
        if new:
            self.bar.update(new)
        elif getattr(getattr(self.bar, "fp", None), "isatty", lambda: False)():
            self.bar.refresh()

    def finished(self, run: PlannedRun, status: Status) -> None:
        """A worker ended: a recorded run (done, or recorded before) counts all its epochs."""
        if status in (Status.DONE, Status.SKIPPED):
            self.bar.update(self._advance(run, self.total[run.config_hash]))


def _with_workers(todo: list[PlannedRun], store_path: Path, sweep: str | None, jobs: int,
                  gpus: list[str] | None, outcome: Outcome, bar: Any) -> None:
    """Keep ``jobs`` worker processes busy; slot i uses GPU gpus[i % len(gpus)] when gpus are given. The
    bar counts epochs (:class:`EpochCount`)."""
    from tqdm.auto import tqdm

    queue = list(todo)
    active: dict[int, tuple[subprocess.Popen, PlannedRun, Any]] = {}
    threads = max(1, len(usable_cpus()) // jobs)
    epochs = EpochCount(todo, bar)
    polled = time.monotonic()
    try:
        while queue or active:
            for slot in range(jobs):
                if slot in active or not queue:
                    continue
                run = queue.pop(0)
                cfg = run.config if run.config.num_threads or gpus else run.config.replace(num_threads=threads)
                RunDir(run.run_dir).write_config(cfg.to_dict())
                env = dict(os.environ)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                cmd = [sys.executable, "-m", "onebit.experiments.runner", "--store", str(store_path),
                       str(run.run_dir)]
                cmd += ["--sweep", sweep] if sweep else []
                cmd += ["--preset", run.preset] if run.preset else []
                log = open(RunDir(run.run_dir).log, "a")
                active[slot] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), run, log)
                tqdm.write(f"{time.strftime('%H:%M:%S')} started: {run.label}")
            time.sleep(0.2)
            if time.monotonic() - polled >= EPOCH_POLL_S:
                epochs.show([run for _, run, _ in active.values()])
                polled = time.monotonic()
            for slot, (proc, run, log) in list(active.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del active[slot]
                result = (RunResult(WORKER_EXITS[code]) if code in WORKER_EXITS else RunResult(
                    Status.FAILED, f"worker exited with code {code}; see {RunDir(run.run_dir).log}"))
                settle(outcome, run, result)
                epochs.finished(run, result.status)
    finally:
        for proc, _, log in active.values():     # interrupted: stop workers; their checkpoints remain
            proc.terminate()
            proc.wait()
            log.close()


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onebit.experiments.runner",
                                     description="Train one sweep run from RUN_DIR/config.json and record it.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--sweep", default=None)
    parser.add_argument("--preset", default=None)
    args = parser.parse_args(argv)
    git_commit()
    try:
        cfg = TrainConfig.from_dict(RunDir(args.run_dir).read_config())
        status = run_and_record(cfg, args.run_dir, args.store, args.sweep, args.preset)
    except (OnebitError, OSError, ValueError) as exc:
        print(f"run {args.run_dir}: error: {exc}", file=sys.stderr)
        return 1
    print(f"run {args.run_dir}: {status}")
    return EXIT_CODES[status]


if __name__ == "__main__":
    sys.exit(worker_main())
