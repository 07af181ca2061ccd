"""The prepared device run of issue 12: CUDA correctness, training speed, accuracy, and the paper's cost.

    bash scripts/gpu-check.sh                    # on the device machine: <= 9 minutes, results in $OUT
    bash scripts/gpu-check.sh --cpu-smoke        # anywhere: the same code paths on the CPU, tiny sizes
    python scripts/gpu-check/gpu_check.py --cpu-reference  # on a CPU: the preset on the packed subset

Parts, run one after another, each in a subprocess with its own time budget (a part that overruns is
killed, the others still run, and what it finished is kept):

1. **tests**: ``pytest -m gpu tests/test_gpu.py`` (bf16 / channels_last / compiled step vs fp32 eager,
   fused vs foreach SGD, bit-exact GPU resume and CPU loading, packed export on the CPU).
2. **speed**: ``onebit bench gpu-train`` for WRN-20-10 and WRN-14-4, 1-bit, both designs: images/s, ms/step,
   MFU against the card's dense bf16 peak (and against a measured bf16 matmul), peak memory, BN / shifted
   ReLU ratios; a torch.profiler summary when WRN-20-10's MFU is below 35%.
3. **accuracy**: the README's CPU main-job preset (``PRESET``) on the packed subset, to compare with the
   CPU run of the same preset, subset and seed (``--cpu-reference``, committed as ``REFERENCE``); then
   WRN-20-10 1-bit with shifted ReLU and with BN, the same number of epochs each (as many as the budget
   leaves, from part 2's measured speed), one cosine cycle each, scored on the 1,000 test images.
   Finished runs go into a results store (``runs.db``), so ``onebit report runs.db`` includes them.
4. **cost**: from part 2's images/s, the hours one such GPU needs for the paper's 300-epoch WRN-20-10 run
   and for the whole 24-run table (``sweeps/paper-wrn20-10.toml``).

Writes ``gpu-check.json``, ``gpu-check.log`` and ``runs.db`` into ``$OUT`` (or ``--out``). The data is
the folder ``scripts/gpu-check/gpu_data.py pack`` wrote (``DATA``), carried with the call and checked (sha256 of
every file and of the decoded images) before use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))          # gpu_data, beside this file

PRESET = "cifar10-tiny"                       # the README's CPU main job; rename here if the README does
SPEED_COMMAND = ["-m", "onebit", "bench", "gpu-train"]     # src/onebit/bench/gpu_train.py
GPU_TESTS = REPO / "tests" / "test_gpu.py"
DATA = REPO / ".gpu-data"                     # written by gpu_data.py pack, carried with the call
REFERENCE = REPO / "docs" / "results" / "gpu-check" / "cpu-reference.json"
PAPER_SWEEP = REPO / "sweeps" / "paper-wrn20-10.toml"
MFU_PROFILE_BELOW = 0.35
SEED = 0
CIFAR_TRAIN_IMAGES = 50_000                   # the paper trains on all of them

# Sizes and time budgets (seconds). The device run's total of 540 s is the 9 minutes.
MODES = {
    "device": {"budget": 540, "tests_s": 110, "speed_s": 170, "reserve_s": 20, "preset_s": 100,
               "speed_models": "wrn-20-10,wrn-14-4", "big": (20, 10), "steps": 30, "warmup": 8,
               "batch": 125, "profile_steps": 5, "pytest_k": None, "epoch_overhead_s": 1.5,
               "compile_overhead_s": 25.0},
    # the same code paths on the CPU: tiny models and data (a generated pack), one of the GPU tests; the
    # caps are generous so that a busy CI machine does not kill a part (idle 2 cores: ~30 s in all)
    "smoke": {"budget": 400, "tests_s": 120, "speed_s": 90, "reserve_s": 5, "preset_s": 120,
              "speed_models": "wrn-8-1", "big": (8, 1), "steps": 1, "warmup": 1, "batch": 50,
              "profile_steps": 1, "pytest_k": "fused", "epoch_overhead_s": 0.5,
              "compile_overhead_s": 0.0, "smoke_train": 150, "smoke_test": 50, "max_epochs": 1},
}


# ----- logging: everything goes to stdout and to the log file -----
class Log:
    """Lines with the seconds since the start, to stdout and (unless ``path`` is None) to the log file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.file = open(path, "a", buffering=1) if path else None
        self.start = time.time()

    def __call__(self, line: str = "") -> None:
        text = f"[{time.time() - self.start:6.1f}s] {line}" if line else ""
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")

    def raw(self, line: str) -> None:
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")

    def run(self, cmd: list, timeout: float, env: dict | None = None) -> tuple[int, float]:
        """Run ``cmd`` (in its own process group) streaming its output into the log; kill the group after
        ``timeout`` s. Returns (exit code, seconds); 124 means killed at the limit. ``self.last_output``
        holds the lines it printed."""
        import selectors

        self(f"$ {' '.join(str(c) for c in cmd)}   (limit {timeout:.0f} s)")
        t0 = time.time()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t0 + max(1.0, timeout)
        fd = proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        killed, pending = False, b""
        self.last_output = []
        while True:
            left = deadline - time.time()
            if left <= 0 and not killed:
                os.killpg(proc.pid, 9)
                killed = True
            if sel.select(timeout=min(max(left, 0.05), 1.0)):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for ln in lines:
                    self.last_output.append(ln.decode(errors="replace").rstrip("\r"))
                    self.raw("   " + self.last_output[-1])
        if pending:
            self.last_output.append(pending.decode(errors="replace"))
            self.raw("   " + self.last_output[-1])
        sel.close()
        proc.wait()
        if killed:
            self(f"!! killed at its {timeout:.0f} s limit")
        return (124 if killed else proc.returncode), time.time() - t0


def child_env(cpu: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("ONEBIT_OFFLINE", "1")
    if cpu:
        env["ONEBIT_GPU_TESTS_ON_CPU"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ----- part 1: the GPU tests -----
def part_tests(log: Log, work: Path, mode: dict, budget: float, cpu: bool) -> dict:
    junit = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-v", "-m", "gpu", str(GPU_TESTS), "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-rs", "--tb=short"]
    if mode["pytest_k"]:
        cmd += ["-k", mode["pytest_k"]]
    rc, seconds = log.run(cmd, budget, child_env(cpu))
    out = {"rc": rc, "seconds": seconds, "device": "cpu (code check only)" if cpu else "cuda", "tests": []}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], \
                        (node.get("message") or "")[:400]
            out["tests"].append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                                 "message": message})
    else:       # killed before pytest wrote its report: take the verdicts it printed (-v) so far
        for line in log.last_output:
            name, _, verdict = line.partition(" ")
            word = verdict.split(" ")[0] if verdict else ""
            if "::" in name and word in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
                out["tests"].append({"name": name.split("::", 1)[1], "outcome": {"PASSED": "passed",
                                     "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped"}[word],
                                     "seconds": None, "message": "from the output (pytest was killed)"})
    counts = {k: sum(t["outcome"] == k for t in out["tests"]) for k in ("passed", "failed", "error", "skipped")}
    out.update(counts)
    out["status"] = ("ok" if rc == 0 and counts["passed"] and not counts["failed"] + counts["error"]
                     else "timeout" if rc == 124 else "failed")
    return out


# ----- part 2: speed -----
def part_speed(log: Log, work: Path, mode: dict, budget: float, cpu: bool) -> dict:
    result = work / "speed.json"
    big = "wrn-{}-{}".format(*mode["big"])
    cmd = [sys.executable, *SPEED_COMMAND, "--models", mode["speed_models"], "--bits", "1",
           "--steps", str(mode["steps"]), "--warmup", str(mode["warmup"]), "--batch-size", str(mode["batch"]),
           "--matmul", "--profile-below", str(1.01 if cpu else MFU_PROFILE_BELOW), "--profile-models", big,
           "--profile-steps", str(mode["profile_steps"]), "--time-budget", str(max(1.0, budget - 15)),
           "--json", str(result)]
    if cpu:
        cmd += ["--device", "cpu", "--threads", "1"]
    rc, seconds = log.run(cmd, budget, child_env(cpu))
    out = json.loads(result.read_text()) if result.is_file() else {}
    out.update(rc=rc, seconds=seconds, script="onebit bench gpu-train")
    out["status"] = "ok" if rc == 0 and out.get("rows") and not out.get("skipped") else (
        "timeout" if rc == 124 else "partial" if out.get("rows") else "failed")
    return out


def speed_of(speed: dict, depth: int, width: int, norm: str) -> dict | None:
    name = f"wrn-{depth}-{width}-{'bn' if norm == 'bn' else 'srelu'}-1bit"
    return next((r for r in speed.get("rows", []) if r.get("model") == name), None)


# ----- part 3: accuracy (runs in its own process: ``--part accuracy``) -----
def train_run(cfg, run_dir: Path, deadline: float, log, store_path: Path, preset: str | None) -> dict:
    """Train ``cfg`` epoch by epoch with onebit's Trainer, stopping at ``deadline``; record it if finished."""
    from onebit.experiments.runner import make_record
    from onebit.experiments.store import ResultsStore
    from onebit.train.loop import Trainer

    t0 = time.time()
    trainer = Trainer(cfg, run_dir, progress=False)
    epochs = []
    stopped = False
    while trainer.epoch < cfg.epochs:
        t_epoch = time.time()
        row = trainer.fit_until(trainer.epoch + 1)
        t_epoch = time.time() - t_epoch
        epochs.append({k: row.get(k) for k in ("epoch", "train_loss", "train_acc", "test_acc", "images_per_s",
                                               "epoch_time_s")})
        log(f"{cfg.model_config().name} epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.3f}, "
            f"test acc {100 * row.get('test_acc', float('nan')):.2f}%, {row['images_per_s']:.0f} img/s, "
            f"{row['epoch_time_s']:.1f} s")
        if trainer.epoch < cfg.epochs and time.time() + 1.1 * t_epoch > deadline:
            stopped = True
            log(f"!! stopping {cfg.model_config().name} after epoch {trainer.epoch}: the next would pass the "
                f"part's deadline (not recorded in the store: the schedule did not finish)")
            break
    # the trainer's config: automatic settings (bf16) resolved, as its run directory and the store record it
    out = {"model": cfg.model_config().name, "preset": preset, "config_hash": trainer.cfg.hash(), "epochs": cfg.epochs,
           "train_images": cfg.train_limit, "schedule": cfg.schedule, "seed": cfg.seed, "curve": epochs,
           "finished": not stopped, "wall_s": time.time() - t0, "run_dir": str(run_dir)}
    if stopped:
        out.update(test_acc=epochs[-1]["test_acc"] if epochs else None, epochs_done=trainer.epoch)
        return out
    final = trainer.finish()
    out.update(test_acc=final.get("test_acc"), test_top5=final.get("test_top5"), test_loss=final.get("test_loss"),
               train_time_s=final.get("elapsed_s"))
    with ResultsStore(store_path) as store:
        out["recorded"] = store.record(make_record(run_dir, "gpu-check", preset, cfg.device))
    log(f"{out['model']}: finished {cfg.epochs} epochs, test accuracy {100 * out['test_acc']:.2f}% "
        f"({len(trainer.data.test)} test images), {out['wall_s']:.0f} s")
    return out


def accuracy_main(plan: dict) -> int:
    """Part 3 in this process: the preset, then the WRN-20-10 pair; writes plan['result'] as it goes."""
    import torch

    from onebit.presets import get_preset

    log = Log(None)                     # the parent streams this process's output into the log
    result_path = Path(plan["result"])
    mode, device, data_dir = plan["mode"], plan["device"], plan["data_dir"]
    n_train = plan["train_images"]
    out: dict = {"runs": [], "train_images": n_train, "device": device}

    def save() -> None:
        result_path.write_text(json.dumps(out, indent=2))

    store = Path(plan["store"])
    runs = Path(plan["runs"])
    end = plan["deadline"]
    if device == "cpu":
        torch.set_num_threads(1)
    # (a) the README's CPU main-job preset on the same subset, to compare with its CPU run
    overrides = {"data_dir": data_dir, "train_limit": n_train, "seed": SEED, "device": device}
    if mode.get("max_epochs"):
        overrides["epochs"] = mode["max_epochs"]
    preset_cfg = get_preset(PRESET, **overrides)
    t0 = time.time()
    run = train_run(preset_cfg, runs / PRESET, min(end, t0 + mode["preset_s"]), log, store, PRESET)
    out["preset"] = run
    out["runs"].append(run)
    reference = plan.get("reference")
    if reference and run.get("finished"):
        same = reference.get("config_hash") == run["config_hash"]
        out["preset_vs_cpu"] = {
            "cpu_test_acc": reference.get("test_acc"), "gpu_test_acc": run["test_acc"], "same_config": same,
            "difference_points": 100 * (run["test_acc"] - reference["test_acc"]),
            "within_2_points": same and abs(run["test_acc"] - reference["test_acc"]) <= 0.02}
    save()
    # (b) WRN-20-10 (the smoke's stand-in: WRN-8-1), 1-bit, shifted ReLU then BN, the same epochs each
    depth, width = mode["big"]
    speeds = plan.get("speeds", {})
    # per design: seconds per epoch (training at part 2's rate + evaluation and checkpoint) and fixed seconds
    # (compilation, as long as part 2's cold warm-up of the same model; BN: the final statistics pass)
    warmups = plan.get("warmups", {})
    per_epoch, fixed = {}, {}
    for norm in ("none", "bn"):
        ips = speeds.get(norm) or (3000.0 if device != "cpu" else 20.0)   # guesses if part 2 gave nothing
        per_epoch[norm] = 1.1 * n_train / ips + mode["epoch_overhead_s"]
        fixed[norm] = max(warmups.get(norm, 0.0), mode["compile_overhead_s"]) + (n_train / ips / 3 if norm == "bn"
                                                                                 else 0.0)
    left = end - time.time()
    epochs = int((left - sum(fixed.values())) // sum(per_epoch.values()))
    if mode.get("max_epochs"):
        epochs = min(epochs, mode["max_epochs"])
    out["pair_plan"] = {"epochs": epochs, "seconds_left": left, "estimated_s_per_epoch": per_epoch,
                        "estimated_fixed_s": fixed, "images_per_s_used": speeds}
    log(f"WRN-{depth}-{width} pair: {left:.0f} s left, ~{per_epoch['none']:.1f} + {per_epoch['bn']:.1f} s per "
        f"epoch, {sum(fixed.values()):.0f} s fixed -> {epochs} epochs each (one cosine cycle)")
    if epochs < 1:
        out["pair_skipped"] = "no time left for one epoch of each design"
        save()
        return 0
    for norm in ("none", "bn"):
        cfg = get_preset("cifar10-wrn20-10-srelu-1bit" if norm == "none" else "cifar10-wrn20-10-bn-1bit",
                         depth=depth, width=width, epochs=epochs, schedule="cosine", data_dir=data_dir,
                         train_limit=n_train, seed=SEED, device=device, batch_size=mode["batch"]
                         if device == "cpu" else 125)
        # shifted ReLU first; it must leave the BN run the time that run is estimated to need
        run_deadline = end - (epochs * per_epoch["bn"] + fixed["bn"]) if norm == "none" else end
        run = train_run(cfg, runs / cfg.model_config().name, run_deadline, log, store, None)
        out["runs"].append(run)
        out[f"wrn_{norm}"] = run
        save()
    return 0


def part_accuracy(log: Log, work: Path, mode: dict, budget: float, cpu: bool, data: dict, speed: dict,
                  store: Path) -> dict:
    if data.get("status") != "ok":
        return {"status": "skipped", "reason": f"no verified data ({data.get('error', 'see data')})"}
    depth, width = mode["big"]
    rows = {norm: speed_of(speed, depth, width, norm) or {} for norm in ("none", "bn")}
    speeds = {norm: r.get("images_per_s") for norm, r in rows.items()}
    warmups = {norm: r.get("warmup_s") for norm, r in rows.items() if r.get("warmup_s")}
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else None
    result = work / "accuracy.json"
    plan = {"mode": mode, "device": "cpu" if cpu else "cuda", "data_dir": data["dir"],
            "train_images": data["train_images"], "deadline": time.time() + budget - 15,
            "speeds": {k: v for k, v in speeds.items() if v}, "warmups": warmups, "reference": reference,
            "store": str(store),
            "runs": str(work / "runs"), "result": str(result)}
    plan_path = work / "accuracy-plan.json"
    plan_path.write_text(json.dumps(plan, indent=2))
    rc, seconds = log.run([sys.executable, str(Path(__file__).resolve()), "--part", "accuracy", str(plan_path)],
                          budget, child_env(cpu))
    out = json.loads(result.read_text()) if result.is_file() else {}
    if reference is None:
        out["preset_vs_cpu"] = {"missing": f"no CPU reference at {REFERENCE.relative_to(REPO)}; run "
                                           f"`python scripts/gpu-check/gpu_check.py --cpu-reference` on a CPU first"}
    runs = out.get("runs", [])
    out.update(rc=rc, seconds=seconds)
    complete = runs and all(r.get("finished") for r in runs) and "wrn_bn" in out
    out["status"] = "ok" if rc == 0 and complete else ("timeout" if rc == 124 else "partial" if runs else "failed")
    return out


# ----- part 4: cost -----
def paper_table_runs() -> list[tuple[str, int]]:
    """(norm, epochs) of every run of the paper's table, from its sweep file and the presets."""
    import tomllib

    from onebit.presets import get_preset

    grid = tomllib.loads(PAPER_SWEEP.read_text())["grid"]
    out = []
    for preset in grid["preset"]:
        cfg = get_preset(preset)
        out += [(cfg.norm, cfg.epochs)] * len(grid.get("seed", [0]))
    return out


def part_cost(speed: dict, accuracy: dict, big: tuple[int, int]) -> dict:
    """GPU-hours of the paper's runs at the measured training images/s (training steps only; the per-epoch
    test evaluation and checkpoint add the overhead measured in part 3, stated separately)."""
    rates = {norm: (speed_of(speed, *big, norm) or {}).get("images_per_s") for norm in ("none", "bn")}
    if not all(rates.values()):
        return {"status": "skipped", "reason": "no WRN-{}-{} images/s from part 2".format(*big)}
    runs = paper_table_runs()
    hours = lambda norm, epochs: epochs * CIFAR_TRAIN_IMAGES / rates[norm] / 3600  # noqa: E731
    out = {"model": "WRN-{}-{}".format(*big), "images_per_s": rates, "images_per_epoch": CIFAR_TRAIN_IMAGES,
           "device": speed.get("device"),
           "one_run_srelu_300_epochs_h": hours("none", 300),
           "one_run_bn_254_epochs_h": hours("bn", 254),
           "table_runs": len(runs), "table_epochs": sum(e for _, e in runs),
           "table_h": sum(hours(n, e) for n, e in runs), "status": "ok",
           "note": "training steps only; CIFAR-100 and 32-bit runs assumed at the 1-bit CIFAR-10 rate "
                   "(same convolutions; the 1-bit sign is one elementwise op per weight per step)"}
    overhead = []
    for run in accuracy.get("runs", []):
        curve = run.get("curve") or []
        if run.get("model", "").startswith("wrn-{}-{}".format(*big)) and curve:
            train_s = sum(e["epoch_time_s"] for e in curve)
            overhead.append(run["wall_s"] / train_s if train_s else None)
    if overhead and all(overhead):
        out["measured_wall_over_train_time"] = max(overhead)
        out["table_h_with_overhead"] = out["table_h"] * max(overhead)
    return out


# ----- data -----
def prepare_data(log: Log, work: Path, smoke: bool) -> dict:
    import gpu_data

    t0 = time.time()
    folder = DATA
    try:
        if smoke:           # a generated pack exercises the packer, the sha256 check and the unpacking
            folder = work / "pack"
            import numpy as np
            rng = np.random.default_rng(0)
            n_train, n_test = MODES["smoke"]["smoke_train"], MODES["smoke"]["smoke_test"]

            def smooth(n: int) -> np.ndarray:
                base = rng.integers(0, 256, (n, 3, 8, 8)).astype(np.uint8)
                return base.repeat(4, axis=2).repeat(4, axis=3)

            gpu_data.pack((smooth(n_train), rng.integers(0, 10, n_train)), (smooth(n_test), rng.integers(0, 10, n_test)),
                          [f"class{i}" for i in range(10)], folder, 10 * gpu_data.MIB, workers=1, chunk=100)
        manifest = gpu_data.unpack(folder, work / "data")
    except (gpu_data.PackError, OSError) as exc:
        log(f"!! data: {exc}")
        return {"status": "failed", "error": str(exc), "folder": str(folder)}
    log(f"data: {manifest['train_images']} training + {manifest['test_images']} test images, every file's "
        f"sha256 and the decoded images' sha256 match the manifest ({time.time() - t0:.1f} s)")
    return {"status": "ok", "dir": str(work / "data"), "train_images": manifest["train_images"],
            "test_images": manifest["test_images"], "seconds": time.time() - t0, "generated": smoke,
            "raw_sha256": manifest["raw_sha256"]}


# ----- the whole run -----
def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "host": platform.node(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    try:
        from onebit.experiments.runner import git_commit
        info["git_commit"] = git_commit()
    except Exception:  # noqa: BLE001 -- provenance only
        pass
    return info


def copy_store(src: Path, dst: Path) -> None:
    """A self-contained copy of the SQLite store (no -wal / -shm files beside it)."""
    if not src.is_file():
        return
    dst.unlink(missing_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    with sqlite3.connect(dst) as b:
        b.execute("PRAGMA journal_mode = DELETE")


def summary_lines(report: dict) -> list[str]:
    lines = ["", "=== gpu-check summary ==="]
    env = report["environment"]
    lines.append(f"device: {env.get('gpu', 'CPU')}; torch {env['torch']}; mode {report['mode']}; "
                 f"{report['seconds']:.0f} s of a {report['budget_s']} s budget")
    t = report["parts"].get("tests", {})
    lines.append(f"1 tests: {t.get('status')} ({t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                 f"{t.get('error', 0)} errors, {t.get('skipped', 0)} skipped)")
    for case in t.get("tests", []):
        if case["outcome"] in ("failed", "error"):
            lines.append(f"    {case['outcome']}: {case['name']}: {case['message'][:200]}")
    s = report["parts"].get("speed", {})
    lines.append(f"2 speed: {s.get('status')}; peak {s.get('peak_tflops')} TFLOP/s ({s.get('peak_source')}); "
                 f"measured matmul {s.get('matmul_tflops', float('nan')):.1f} TFLOP/s")
    for r in s.get("rows", []):
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        mem = f"{r['peak_mem_mib']:.0f} MiB" if r.get("peak_mem_mib") is not None else "n/a"
        lines.append(f"    {r['model']:<22} {r['images_per_s']:9.0f} img/s {r['step_ms']:8.2f} ms/step "
                     f"MFU {mfu:>6}  peak {mem}")
    for p in s.get("pairs", []):
        mem = f", memory {p['peak_mem_bn_over_srelu']:.3f}x" if "peak_mem_bn_over_srelu" in p else ""
        lines.append(f"    BN / shifted ReLU {p['model']}: step time {p['step_time_bn_over_srelu']:.3f}x{mem}")
    a = report["parts"].get("accuracy", {})
    lines.append(f"3 accuracy: {a.get('status')}" + (f" ({a['reason']})" if "reason" in a else "")
                 + (f"; {a.get('train_images')} training images" if a.get("train_images") else ""))
    for r in a.get("runs", []):
        acc = f"{100 * r['test_acc']:.2f}%" if r.get("test_acc") is not None else "n/a"
        lines.append(f"    {r['model']:<22} {r.get('preset') or '':<14} {r['epochs']:3d} epochs "
                     f"{'finished' if r.get('finished') else 'STOPPED EARLY'}: test acc {acc}")
    cmp_ = a.get("preset_vs_cpu", {})
    if "difference_points" in cmp_:
        lines.append(f"    {PRESET} GPU - CPU: {cmp_['difference_points']:+.2f} points "
                     f"(within 2: {cmp_['within_2_points']}; same config: {cmp_['same_config']})")
    elif cmp_:
        lines.append(f"    {PRESET} vs CPU: {cmp_.get('missing', cmp_)}")
    c = report["parts"].get("cost", {})
    if c.get("status") == "ok":
        lines.append(f"4 cost: {c['model']} 300 epochs shifted ReLU {c['one_run_srelu_300_epochs_h']:.2f} h, 254 "
                     f"epochs BN {c['one_run_bn_254_epochs_h']:.2f} h; the {c['table_runs']}-run table "
                     f"{c['table_h']:.1f} h of training steps"
                     + (f" ({c['table_h_with_overhead']:.1f} h with measured overhead)"
                        if "table_h_with_overhead" in c else ""))
    else:
        lines.append(f"4 cost: {c.get('status')} ({c.get('reason', '')})")
    return lines


def main_run(args: argparse.Namespace) -> int:
    smoke = args.cpu_smoke
    mode = dict(MODES["smoke" if smoke else "device"])
    if args.budget:
        mode["budget"] = args.budget
    out_dir = Path(args.out or os.environ.get("OUT") or (REPO / "gpu-check-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("gpu-check.json", "gpu-check.log", "runs.db"):
        (out_dir / name).unlink(missing_ok=True)
    log = Log(out_dir / "gpu-check.log")
    start = time.time()
    end = start + mode["budget"]
    work = Path(tempfile.mkdtemp(prefix="onebit-gpu-check-"))
    import torch

    cpu = smoke
    if not cpu and not torch.cuda.is_available():      # (does not create a CUDA context)
        print("gpu_check: error: no CUDA device here; run it on the device machine, or use --cpu-smoke",
              file=sys.stderr)
        return 2
    parts = [p.strip() for p in args.parts.split(",")]
    unknown = sorted(set(parts) - {"tests", "speed", "accuracy"})
    if unknown:
        print(f"gpu_check: error: unknown part(s) {', '.join(unknown)}; choose from tests, speed, accuracy",
              file=sys.stderr)
        return 2
    store = work / "runs.db"
    # the data first: its decoding forks worker processes, best done before this process touches CUDA
    data = prepare_data(log, work, smoke) if "accuracy" in parts else {"status": "skipped"}
    report = {"mode": "cpu-smoke" if smoke else "device", "budget_s": mode["budget"], "preset": PRESET,
              "environment": environment(), "data": data, "parts": {},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    log(f"gpu-check ({report['mode']}): {json.dumps(report['environment'])}")

    def save() -> None:
        report["seconds"] = time.time() - start
        tmp = out_dir / "gpu-check.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        os.replace(tmp, out_dir / "gpu-check.json")

    def left(reserve: float = 0.0) -> float:
        return end - time.time() - reserve

    save()
    speed: dict = {}
    for part in ("tests", "speed", "accuracy"):
        if part not in parts:
            continue
        cap = left(mode["reserve_s"]) if part == "accuracy" else min(mode[f"{part}_s"], left(mode["reserve_s"]))
        log(f"--- part {part}: {cap:.0f} s budget")
        if cap < 5:
            report["parts"][part] = {"status": "skipped", "reason": "no time left"}
            continue
        try:
            if part == "tests":
                res = part_tests(log, work, mode, cap, cpu)
            elif part == "speed":
                res = speed = part_speed(log, work, mode, cap, cpu)
            else:
                res = part_accuracy(log, work, mode, cap, cpu, data, speed, store)
        except Exception as exc:  # noqa: BLE001 -- one part's failure must not lose the others
            res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            log(f"!! part {part} failed: {res['error']}")
        report["parts"][part] = res
        save()
    report["parts"]["cost"] = part_cost(speed, report["parts"].get("accuracy", {}), mode["big"])
    copy_store(store, out_dir / "runs.db")
    save()
    for line in summary_lines(report):
        log(line)
    shutil.rmtree(work, ignore_errors=True)
    statuses = [p.get("status") for p in report["parts"].values()]
    return 0 if all(s in ("ok", "skipped") for s in statuses) else 1


def cpu_reference(args: argparse.Namespace) -> int:
    """Train PRESET on the packed subset on this CPU (same seed as the device run); write REFERENCE."""
    import gpu_data
    import torch

    from onebit.experiments.runner import git_commit
    from onebit.presets import get_preset
    from onebit.train.loop import train

    work = Path(tempfile.mkdtemp(prefix="onebit-cpu-reference-"))
    try:
        manifest = gpu_data.unpack(DATA, work / "data")
    except gpu_data.PackError as exc:
        print(f"gpu_check --cpu-reference: error: {exc}", file=sys.stderr)
        return 1
    cfg = get_preset(PRESET, data_dir=str(work / "data"), train_limit=manifest["train_images"], seed=SEED,
                     device="cpu", num_threads=args.threads)
    t0 = time.time()
    final = train(cfg, work / "run", progress=True)
    ref = {"preset": PRESET, "config_hash": final["config_hash"], "train_images": manifest["train_images"],
           "raw_sha256": manifest["raw_sha256"], "seed": SEED, "epochs": cfg.epochs,
           "test_acc": final["test_acc"], "test_top5": final.get("test_top5"), "test_loss": final.get("test_loss"),
           "wall_s": time.time() - t0, "device": f"cpu ({platform.machine()}, {args.threads} thread(s))",
           "torch": torch.__version__, "git_commit": git_commit(),
           "command": f"python scripts/gpu-check/gpu_check.py --cpu-reference --threads {args.threads}"}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(ref, indent=2) + "\n")
    print(f"{PRESET} on {manifest['train_images']} images, CPU: test accuracy {100 * final['test_acc']:.2f}% -> "
          f"{REFERENCE.relative_to(REPO)}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="the same code paths on the CPU, tiny sizes")
    ap.add_argument("--cpu-reference", action="store_true", help=f"train {PRESET} on the packed subset here")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for --cpu-reference")
    ap.add_argument("--out", default=None, help="output folder (default: $OUT, else ./gpu-check-out)")
    ap.add_argument("--budget", type=float, default=None, help="total seconds (default: 540 on the device)")
    ap.add_argument("--parts", default="tests,speed,accuracy", help="which parts to run (cost always follows)")
    ap.add_argument("--part", nargs=2, metavar=("NAME", "PLAN"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.part:
        return accuracy_main(json.loads(Path(args.part[1]).read_text()))
    if args.cpu_reference:
        return cpu_reference(args)
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
