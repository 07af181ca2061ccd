"""Executing a sweep's runs as Ray tasks on a cluster (``onebit sweep FILE --ray [ADDRESS]``).

Each run not yet in the store becomes one Ray task: one GPU per task when the cluster has GPUs (and the run
does not ask for ``device = "cpu"``), else ``threads`` CPUs and as many PyTorch threads. A task takes its run
folder's lock (waiting up to ``LOCK_WAIT_S`` for a dying previous holder to let go), trains, resumes or just
reads the finished run exactly like a local sweep (``runner.train_or_resume``), and *returns* the run's
``RunRecord``; it never opens the results store. The driver is the store's only writer.

Run folders are on storage every node reaches under the same path (the sweep's runs folder, e.g. an NFS
mount); the store is a local file of the driver's machine. Why not ship results back instead: a task whose
node dies must resume on another node from its last checkpoint, which only storage that outlives the node
can give; and with one shared folder a run's lock, checkpoint and metrics mean the same as in a local
sweep. The record the task returns holds everything the store keeps, so the driver never reads run folders
to record (it only peeks at ``metrics.jsonl`` and ``worker.json`` for the progress lines).

Faults: a task whose worker process or node dies is retried by Ray (``max_retries``) and resumes from the
checkpoint; a killed driver takes its tasks with it, and the same command run again skips stored runs,
records finished-but-unrecorded ones and resumes the rest. ``worker.json`` in a run folder says which
host, process and Ray node hold it, for which driver session and attempt.
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from onebit.errors import ConfigError, OnebitError
from onebit.experiments.runner import (Outcome, RunResult, Status, make_record, run_lock, settle,
                                       train_or_resume)
from onebit.experiments.store import ResultsStore, RunRecord
from onebit.experiments.sweep import PlannedRun
from onebit.atomic import atomic_write_json
from onebit.rundir import WORKER, RunDir
from onebit.train.config import TrainConfig

LOCK_WAIT_S = 120.0       # how long a task waits for a run folder held by a dying process (NFS: lease time)
MAX_RETRIES = 3           # Ray retries of a task whose worker or node died


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray, which is not installed: pip install 'onebit[ray]'") from None
    return ray


@dataclass
class PointResult:
    """What a task sends back: DONE with the run's record, or BUSY (another live process holds it)."""

    status: Status
    host: str
    attempt: int
    resumed_from: int | None = None       # the checkpoint's epoch when the task resumed a run
    record: RunRecord | None = None


# ----- the task (runs on a cluster node) -----
@contextmanager
def waiting_run_lock(run_dir: Path, wait_s: float) -> Iterator[bool]:
    """``runner.run_lock``, retried for up to ``wait_s`` seconds while another process holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        with run_lock(run_dir) as mine:
            if mine or time.monotonic() >= deadline:
                yield mine
                return
        time.sleep(0.5)


def write_worker_file(run_dir: Path, session: str) -> int:
    """Write ``worker.json`` (host, pid, Ray node, driver session, attempt); returns the attempt number."""
    import ray

    path = run_dir / WORKER
    attempt = 1
    try:
        old = json.loads(path.read_text())
        if old.get("session") == session:
            attempt = int(old.get("attempt", 0)) + 1
    except (OSError, ValueError):
        pass
    info = {"session": session, "attempt": attempt, "host": platform.node(), "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(path, info)
    return attempt


def checkpoint_epoch(run_dir: Path) -> int | None:
    """The epoch a resumable run folder's checkpoint holds, None without one (or once finished)."""
    from onebit.train.checkpoint import load_checkpoint

    directory = RunDir(run_dir)
    if directory.is_finished() or not directory.has_checkpoint():
        return None
    return int(load_checkpoint(run_dir).state.get("epoch", 0))


def train_point(config: dict[str, Any], run_dir: str, sweep: str | None, preset: str | None, session: str,
                lock_wait_s: float = LOCK_WAIT_S) -> PointResult:
    """The body of one Ray task: finish the run in ``run_dir`` and return its record (no store access)."""
    cfg = TrainConfig.from_dict(config)
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with waiting_run_lock(folder, lock_wait_s) as mine:
        if not mine:
            return PointResult(Status.BUSY, platform.node(), 0)
        attempt = write_worker_file(folder, session)
        resumed_from = checkpoint_epoch(folder)
        train_or_resume(cfg, folder, progress=False)
        record = make_record(folder, sweep, preset, cfg.device)
    return PointResult(Status.DONE, platform.node(), attempt, resumed_from, record)


# ----- the driver -----
def task_resources(cfg: TrainConfig, cluster_gpus: float, threads: int) -> tuple[TrainConfig, dict[str, Any]]:
    """A run's config for its task and the task's Ray resources: one GPU when the cluster has GPUs and the
    run may use one, else ``threads`` CPUs (the run's own ``num_threads`` wins when it sets one)."""
    if cluster_gpus > 0 and cfg.device != "cpu":
        return cfg, {"num_gpus": 1, "num_cpus": 1}
    if cfg.device.startswith("cuda"):
        raise ConfigError(f"run {cfg.hash()} asks for device {cfg.device!r} but the Ray cluster has no GPU")
    n = cfg.num_threads or threads
    return cfg.replace(num_threads=n), {"num_gpus": 0, "num_cpus": n}


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Refuse, in one line, an address that is not HOST:PORT or where nothing listens (Ray itself would
    retry for minutes). Ray Client addresses (``ray://...``) are left to Ray."""
    import socket

    if "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray {address!r}: expected HOST:PORT of the cluster's head (ray start --head)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise OnebitError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(ray: Any, address: str | None) -> None:
    """Join the cluster at ``address``, or start a local one on this machine (address None)."""
    import logging

    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise OnebitError(f"cannot reach a Ray cluster at {address or 'a new local cluster'}: {exc}") from None


@dataclass(frozen=True)
class RayBackend:
    """A Ray cluster (``address``: host:port of ``ray start --head``; None: a new local cluster): each run a
    task with ``threads`` CPUs (or one GPU), retried ``max_retries`` times when its worker or node dies."""

    address: str | None = None
    threads: int = 1
    max_retries: int = MAX_RETRIES
    lock_wait_s: float = LOCK_WAIT_S

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("--ray-threads must be >= 1")

    def run(self, todo: list[PlannedRun], store_path: Path, sweep: str | None, outcome: Outcome,
            progress: bool) -> None:
        ray = import_ray()
        connect(ray, self.address)
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            session = uuid.uuid4().hex
            task = ray.remote(train_point)
            pending: dict[Any, PlannedRun] = {}
            for run in todo:
                cfg, resources = task_resources(run.config, gpus, self.threads)
                ref = task.options(max_retries=self.max_retries, retry_exceptions=False, **resources).remote(
                    cfg.to_dict(), str(run.run_dir), sweep, run.preset, session, self.lock_wait_s)
                pending[ref] = run
            with LiveProgress(len(todo), session, progress) as live:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                    for ref in ready:
                        run = pending.pop(ref)
                        live.finished(run)
                        settle(outcome, run, *_result(ray, ref, store_path))
                    live.refresh(list(pending.values()))
        finally:
            ray.shutdown()


def _result(ray: Any, ref: Any, store_path: Path) -> tuple[RunResult, str]:
    """A finished task's status (its run recorded in the store when it trained it) and the detail shown."""
    try:
        result: PointResult = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:          # the run itself raised (bad data, bad config ...)
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        return RunResult(Status.FAILED, f"{type(cause).__name__}: {cause}".splitlines()[0][:300]), ""
    except ray.exceptions.RayError as exc:              # worker / node lost more than max_retries times
        return RunResult(Status.FAILED, f"{type(exc).__name__} (retries used up; rerun to resume)"), ""
    if result.status is Status.BUSY:
        return RunResult(Status.BUSY), "(another process holds its run folder)"
    with ResultsStore(store_path) as store:
        inserted = store.record(result.record)
    how = f"attempt {result.attempt}" + (f", resumed at epoch {result.resumed_from}"
                                          if result.resumed_from is not None else "")
    return RunResult(Status.DONE if inserted else Status.SKIPPED), f"on {result.host} ({how})"


class LiveProgress:
    """An overall bar (runs finished / total, ETA) and one live line per running run (host, epoch)."""

    def __init__(self, total: int, session: str, enabled: bool):
        from tqdm.auto import tqdm

        self.tqdm, self.session, self.enabled = tqdm, session, enabled
        self.bar = tqdm(total=total, desc="sweep", unit="run", disable=not enabled, dynamic_ncols=True)
        self.lines: dict[str, Any] = {}        # config hash -> its tqdm line
        self.slots: dict[str, int] = {}        # config hash -> the line's row below the overall bar
        self.seen: set[str] = set()
        self.last = 0.0

    def __enter__(self) -> "LiveProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        for line in self.lines.values():
            line.close()
        self.bar.close()

    def refresh(self, running: list[PlannedRun]) -> None:
        """Poll the run folders of unfinished runs (at most once a second) for their worker and epoch."""
        if time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        for run in running:
            try:
                worker = json.loads((run.run_dir / WORKER).read_text())
            except (OSError, ValueError):
                continue
            if worker.get("session") != self.session:
                continue
            key = f"{run.config_hash}:{worker.get('attempt')}"
            if key not in self.seen:
                self.seen.add(key)
                self.write(f"started: {run.label} on {worker.get('host')} (attempt {worker.get('attempt')})")
            if not self.enabled:
                continue
            line = self.lines.get(run.config_hash)
            if line is None:
                slot = min(set(range(1, len(self.lines) + 2)) - set(self.slots.values()))
                self.slots[run.config_hash] = slot
                line = self.lines[run.config_hash] = self.tqdm(
                    total=run.config.epochs, unit="epoch", leave=False, dynamic_ncols=True, position=slot)
            line.set_description_str(f"{worker.get('host')} {run.label}", refresh=False)
            try:
                line.n = len(RunDir(run.run_dir).read_metrics())
            except OnebitError:
                continue
            line.refresh()

    def finished(self, run: PlannedRun) -> None:
        """Close ``run``'s live line and count it on the overall bar (its status line is ``runner.settle``'s)."""
        line = self.lines.pop(run.config_hash, None)
        self.slots.pop(run.config_hash, None)
        if line is not None:
            line.close()
        self.bar.update()

    def write(self, text: str) -> None:
        self.tqdm.write(f"{time.strftime('%H:%M:%S')} {text}")

