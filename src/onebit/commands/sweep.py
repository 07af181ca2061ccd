"""``onebit sweep``: expand a sweep file into runs, train those not yet in the results store, record them."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from onebit.errors import ConfigError
from onebit.rundir import RunDir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of trainings from a TOML sweep file into a results store",
                       description="Expand SWEEP.toml ([base] preset + options, [grid] axes, [[rule]], "
                                   "[[exclude]], [[include]]; see onebit.experiments.sweep) into runs and "
                                   "train each one not yet in the results store. Interrupted runs resume "
                                   "from their last checkpoint when the same command is run again.")
    p.add_argument("sweep", type=Path, help="the sweep file (TOML)")
    p.add_argument("--store", type=Path, default=None,
                   help="results store (default: the sweep's [sweep] store, else runs.db beside the sweep)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="folder for the run folders (default: the sweep's [sweep] runs, else <stem>-runs/ "
                        "beside the sweep)")
    p.add_argument("--jobs", "-j", type=int, default=None,
                   help="runs at once, as worker processes (default: 1, or one per GPU with --gpus)")
    p.add_argument("--gpus", nargs="?", const="all", default=None, metavar="IDS",
                   help="give each worker one GPU (CUDA_VISIBLE_DEVICES): 'all' visible ones or e.g. 0,1")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run each grid point as a Ray task (pip install 'onebit[ray]') on the cluster at ADDRESS "
                        "(host:port of `ray start --head`), or on a new local cluster without ADDRESS; the "
                        "runs folder must be a path every node sees, the store stays with this process")
    p.add_argument("--ray-threads", type=int, default=1, metavar="N",
                   help="with --ray and no GPU: CPUs and PyTorch threads per task, unless the sweep sets "
                        "num_threads (default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is stored, then stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def visible_gpus(spec: str) -> list[str]:
    if spec != "all":
        ids = [s.strip() for s in spec.split(",") if s.strip()]
        if not ids:
            raise ConfigError(f"--gpus {spec!r}: give 'all' or a list like 0,1")
        return ids
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return [s.strip() for s in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if s.strip()]
    import torch
    if not torch.cuda.is_available():
        raise ConfigError("--gpus: no CUDA device is visible")
    return [str(i) for i in range(torch.cuda.device_count())]


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from onebit.experiments.runner import LocalBackend, execute
    from onebit.experiments.store import ResultsStore
    from onebit.experiments.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    if args.runs_dir:
        sweep.runs_dir = args.runs_dir.resolve()
    store_path = args.store or sweep.store
    planned = sweep.expand()
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    if args.ray is not None and (args.jobs is not None or args.gpus):
        raise ConfigError("--ray places runs on the cluster's CPUs and GPUs itself; drop --jobs / --gpus")
    gpus = visible_gpus(args.gpus) if args.gpus else None
    jobs = args.jobs or (len(gpus) if gpus else 1)
    stored: set[str] = set()
    if store_path.is_file() or not args.dry_run:          # a dry run creates nothing
        with ResultsStore(store_path, create=not args.dry_run) as store:      # a dry run only reads
            stored = store.hashes()
    if args.dry_run:
        for r in planned:
            state = "stored" if r.config_hash in stored else (
                "resumable" if RunDir(r.run_dir).has_checkpoint() else "to run")
            print(f"{state:<9}  {r.label}")
        print(f"{len(planned)} runs, {sum(r.config_hash in stored for r in planned)} stored; store {store_path}")
        return 0
    signal.signal(signal.SIGTERM, _stop)      # `kill PID` stops the workers too (their checkpoints remain)
    print(f"sweep {sweep.name}: {len(planned)} runs, {sum(r.config_hash in stored for r in planned)} already "
          f"stored; store {store_path}; run folders {sweep.runs_dir}")
    if args.ray is not None:
        from onebit.experiments.ray_sweep import RayBackend
        backend = RayBackend(address=args.ray or None, threads=args.ray_threads)
    else:
        backend = LocalBackend(jobs=jobs, gpus=gpus)
    outcome = execute(planned, store_path, sweep.name, backend, progress=not args.no_progress)
    print(f"done {len(outcome.done)}, already stored {len(outcome.skipped)}, busy elsewhere "
          f"{len(outcome.busy)}, failed {len(outcome.failed)}")
    return 1 if outcome.failed else 0

