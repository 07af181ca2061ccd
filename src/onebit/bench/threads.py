"""CPU thread settings for training, on an idle machine and beside one busy process.

Trains the README's main-job preset for one epoch on the first N training images (a subprocess per
measurement, as a user runs it) under each thread setting, first on an idle machine, then with one
competing CPU-bound process (``python -c "while True: pass"``) started beside it. For each condition it
prints the wall time of every setting, the best one as the baseline, and each setting's ratio to it.

    onebit bench threads --data-dir ../shared/data/cifar10                      # ~5 min on 2 cores
    onebit bench threads --data-dir ... --limit 2000 --preset cifar10-tiny      # quick smoke run

Settings: 1 thread; all usable CPUs (the old default); all CPUs with OMP_WAIT_POLICY=PASSIVE (OpenMP
workers sleep instead of spinning); onebit's default (``--num-threads`` unset: the usable CPUs minus
those other processes are busy on, onebit.train.threads). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onebit.errors import ConfigError, OnebitError
from onebit.cpus import usable_cpus
from onebit.train.threads import default_threads


def settings(cpus: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (extra train options, extra environment)."""
    return {
        "1 thread": (["--num-threads", "1"], {}),
        f"{cpus} threads (all CPUs)": (["--num-threads", str(cpus)], {}),
        f"{cpus} threads, OMP_WAIT_POLICY=PASSIVE": (["--num-threads", str(cpus)], {"OMP_WAIT_POLICY": "PASSIVE"}),
        "onebit default": ([], {}),
    }


def train_once(args: argparse.Namespace, options: list[str], env_extra: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "onebit", "train", "--preset", args.preset, "--epochs", "1",
               "--train-limit", str(args.limit), "--data-dir", args.data_dir, "--run-dir", str(run_dir),
               "--no-progress", *options]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        env.update(env_extra)
        chosen = default_threads()  # what onebit's default picks at this moment, for the table
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise OnebitError(f"training failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    return {"wall_s": wall, "images_per_s": epoch.get("images_per_s"), "epoch_s": epoch.get("epoch_time_s"),
            "default_would_choose": chosen}


def measure(args: argparse.Namespace, condition: str) -> dict[str, dict]:
    competitor = None
    if condition != "idle":
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    rows = {}
    try:
        for name, (options, env) in settings(args.cpus).items():
            print(f"  {condition}: {name} ...", file=sys.stderr, flush=True)
            rows[name] = train_once(args, options, env)
        return rows
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py")
    ap.add_argument("--preset", default="cifar10-tiny", help="the preset to train (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=15000, help="training images in the epoch (default: %(default)s)")
    ap.add_argument("--json", default=None, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1_000_000:
        raise ConfigError(f"--limit {args.limit}: need 1..1000000 training images")
    args.cpus = len(usable_cpus())
    results = {}
    for condition in ("idle", "one busy process"):
        results[condition] = rows = measure(args, condition)
        best = min(r["wall_s"] for r in rows.values())
        print(f"\n{condition} ({args.preset}, 1 epoch on {args.limit} images, {args.cpus} usable CPUs)")
        print(f"  {'setting':42s} {'wall s':>8s} {'img/s':>8s} {'vs best':>8s}")
        for name, r in rows.items():
            print(f"  {name:42s} {r['wall_s']:8.1f} {r['images_per_s'] or 0:8.0f} {r['wall_s'] / best:7.2f}x")
        print(f"  (the default chose {rows['onebit default']['default_would_choose']} thread(s) here)")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "limit": args.limit, "cpus": args.cpus,
                                               "results": results}, indent=2) + "\n")
    return 0
