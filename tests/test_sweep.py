"""Sweep files: grid expansion, bad files, and executing real tiny runs (skip on resume, resume, workers)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from onebit.cli import main
from onebit.errors import ConfigError
from onebit.experiments.runner import execute, run_and_record, run_lock
from onebit.experiments.store import ResultsStore
from onebit.experiments.sweep import load_sweep, resolve_path
from onebit.presets import PRESETS
from onebit.rundir import RunDir
from onebit.train.checkpoint import load_checkpoint
from onebit.train.loop import train

GRID = """
[sweep]
name = "grid-test"
runs = "out/runs"

[base]
preset = "cifar10-tiny"
epochs = 2
data_dir = "data/c10"

[grid]
norm = ["bn", "none"]
weight_bits = [1, 32]
seed = [0, 1]

[[rule]]
when = {norm = "bn"}
set = {schedule = "restarts", first_cycle = 1}

[[exclude]]
norm = "bn"
weight_bits = 32
seed = [1]

[[include]]
depth = 14
width = 2
norm = "none"
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_expands_in_order_with_preset_base_rules_exclude_and_include(tmp_path):
    sweep = load_sweep(write(tmp_path, GRID))
    runs = sweep.expand()
    points = [(r.config.norm, r.config.weight_bits, r.config.seed, r.config.depth) for r in runs]
    # 8 grid points minus the excluded (bn, 32, seed 1), last axis fastest, then the include
    assert points == [("bn", 1, 0, 8), ("bn", 1, 1, 8), ("bn", 32, 0, 8),
                      ("none", 1, 0, 8), ("none", 1, 1, 8), ("none", 32, 0, 8), ("none", 32, 1, 8),
                      ("none", 1, 0, 14)]
    preset = PRESETS["cifar10-tiny"][1]
    for r in runs:
        assert r.config.epochs == 2                       # base overrides the preset
        assert r.config.train_limit == preset["train_limit"]
        assert r.config.schedule == ("restarts" if r.config.norm == "bn" else "cosine")
        assert r.config.first_cycle == (1 if r.config.norm == "bn" else 2)
        assert r.config.data_dir == str((tmp_path / "data" / "c10").resolve())
        assert r.run_dir == tmp_path / "out" / "runs" / r.config_hash
        assert r.config_hash == r.config.hash()
        assert r.preset == "cifar10-tiny"
    assert runs[-1].config.width == 2 and runs[-1].point == {"depth": 14, "width": 2, "norm": "none"}
    assert len({r.config_hash for r in runs}) == len(runs)
    assert sweep.name == "grid-test" and sweep.store == tmp_path / "runs.db"


def test_preset_axis_and_duplicates(tmp_path):
    text = """
[base]
epochs = 3
[grid]
preset = ["cifar10-wrn20-10-bn-1bit", "cifar10-wrn20-10-srelu-32bit", "cifar10-wrn20-10-bn-1bit"]
"""
    runs = load_sweep(write(tmp_path, text)).expand()
    assert [(r.config.norm, r.config.weight_bits, r.config.schedule, r.config.epochs) for r in runs] == \
        [("bn", 1, "restarts", 3), ("none", 32, "cosine", 3)]
    assert [r.preset for r in runs] == ["cifar10-wrn20-10-bn-1bit", "cifar10-wrn20-10-srelu-32bit"]
    assert runs[0].run_dir == tmp_path / "s-runs" / runs[0].config_hash


def test_data_dir_environment_and_default(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEBIT_TEST_DATA", raising=False)
    assert resolve_path("${ONEBIT_TEST_DATA:-rel/dir}", tmp_path) == str(tmp_path / "rel" / "dir")
    monkeypatch.setenv("ONEBIT_TEST_DATA", "/abs/data")
    assert resolve_path("${ONEBIT_TEST_DATA:-rel/dir}", tmp_path) == "/abs/data"
    assert resolve_path("$ONEBIT_TEST_DATA/c10", tmp_path) == "/abs/data/c10"
    monkeypatch.delenv("ONEBIT_TEST_DATA")
    with pytest.raises(ConfigError, match="not set"):
        resolve_path("${ONEBIT_TEST_DATA}", tmp_path)


def test_teacher_paths_are_relative_to_the_sweep_file_and_reference_names_are_kept(tmp_path):
    text = """
[base]
depth = 8
width = 1
[[include]]
teacher = "models/t.onebit"
[[include]]
teacher = "reference:CIFAR10_allparams.mat"
"""
    runs = load_sweep(write(tmp_path, text)).expand()
    assert [r.config.teacher for r in runs] == [str(tmp_path / "models" / "t.onebit"),
                                                "reference:CIFAR10_allparams.mat"]


@pytest.mark.parametrize("text, message", [
    ("[base]\ndeepth = 8\n", "unknown option"),
    ("[grid]\ndepth = 8\n", "non-empty list"),
    ("[grid]\ndepth = []\n", "non-empty list"),
    ("[gird]\ndepth = [8]\n", "unknown table"),
    ("[base\ndepth = 8\n", "not valid TOML"),
    ("[base]\npreset = \"nope\"\n", "unknown preset"),
    ("[base]\ndepth = 9\n", "6n\\+2"),
    ("[base]\ndepth = \"eight\"\n", "depth must be an integer"),
    ("[[rule]]\nwhen = {norm = \"bn\"}\n[base]\ndepth = 8\n", "when. table and a .set"),
    ("[sweep]\nname = \"x\"\n", "needs a"),
])
def test_bad_sweep_files_raise_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write(tmp_path, text)).expand()


def test_cli_reports_bad_sweep_in_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("onebit sweep: error:") and "not found" in err and "\n" not in err


def tiny_sweep(tmp_path: Path, data: Path, seeds: list[int]) -> Path:
    return write(tmp_path, f"""
[base]
data_dir = "{data}"
depth = 8
width = 1
epochs = 2
batch_size = 50
val_size = 40
eval_batch_size = 100
device = "cpu"
num_threads = 1
[grid]
norm = ["none"]
seed = {json.dumps(seeds)}
""")


def test_sweep_records_skips_stored_runs_and_resumes_an_interrupted_one(tmp_path, tiny_cifar10, capsys):
    path = tiny_sweep(tmp_path, tiny_cifar10, [0, 1])
    assert main(["sweep", str(path), "--no-progress"]) == 0
    store_path = tmp_path / "runs.db"
    with ResultsStore(store_path) as store:
        first = {r["config_hash"]: r for r in store.runs()}
    assert len(first) == 2
    results_files = {h: (tmp_path / "s-runs" / h / "results.json") for h in first}
    mtimes = {h: f.stat().st_mtime_ns for h, f in results_files.items()}

    # A third seed is interrupted after its first epoch (checkpoint kept, no results).
    path = tiny_sweep(tmp_path, tiny_cifar10, [0, 1, 2])
    runs = load_sweep(path).expand()
    third = runs[2]
    train(third.config, third.run_dir, progress=False, stop_after=1)
    assert (third.run_dir / "checkpoint.safetensors").is_file() and not (third.run_dir / "results.json").exists()

    outcome = execute(runs, store_path, "s", progress=False)
    assert outcome.skipped == [r.config_hash for r in runs[:2]]
    assert outcome.done == [third.config_hash] and not outcome.failed and not outcome.busy
    assert {h: f.stat().st_mtime_ns for h, f in results_files.items()} == mtimes   # not retrained
    with ResultsStore(store_path) as store:
        resumed = store.runs([("seed", "=", 2)])[0]
        epochs = store.epochs(third.config_hash)
    assert [e["epoch"] for e in epochs] == [1, 2]

    # The resumed run ends exactly where an uninterrupted run of the same config ends.
    fresh = train(third.config, tmp_path / "fresh", progress=False)
    assert resumed["test_acc"] == pytest.approx(fresh["test_acc"], abs=1e-9)
    assert resumed["val_acc"] == pytest.approx(fresh["val_acc"], abs=1e-9)

    # Running the whole sweep again does nothing.
    capsys.readouterr()
    assert main(["sweep", str(path), "--no-progress"]) == 0
    assert "done 0, already stored 3" in capsys.readouterr().out


def test_locked_run_is_left_to_its_owner(tmp_path, tiny_cifar10):
    run = load_sweep(tiny_sweep(tmp_path, tiny_cifar10, [0])).expand()[0]
    owner = os.fork()            # another process holds the run's lock (the lock is re-entrant in one process)
    if owner == 0:
        try:
            with run_lock(run.run_dir) as mine:
                assert mine
                time.sleep(600)
        finally:
            os._exit(0)
    try:
        lock = RunDir(run.run_dir).lock_file
        while not (lock.exists() and lock.read_text().strip() == str(owner)):
            time.sleep(0.01)
        assert run_and_record(run.config, run.run_dir, tmp_path / "runs.db") == "busy"
    finally:
        os.kill(owner, signal.SIGKILL)
        os.waitpid(owner, 0)
    assert not (run.run_dir / "checkpoint.safetensors").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_jobs_run_as_worker_processes_that_record_into_the_store(tmp_path, tiny_cifar10, capsys):
    path = tiny_sweep(tmp_path, tiny_cifar10, [0, 1])
    assert main(["sweep", str(path), "--jobs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "done 2" in out and out.count("started: ") == 2
    with ResultsStore(tmp_path / "runs.db") as store:
        rows = store.runs()
        assert sorted(r["seed"] for r in rows) == [0, 1]
        assert all(len(store.epochs(r["config_hash"])) == 2 for r in rows)
    for r in rows:
        log = (Path(r["run_dir"]) / "log.txt").read_text()
        assert "done" in log
        assert json.loads((Path(r["run_dir"]) / "config.json").read_text())["num_threads"] >= 1


def test_worker_sweep_bar_counts_epochs_from_the_runs_metrics_logs(tmp_path, tiny_cifar10):
    """Worker processes cannot draw a bar: the sweep's counts epochs, read from each active run's metrics
    log (a resumed run from its checkpoint's), and names the active runs with done/epochs."""
    import io
    from tqdm import tqdm
    from onebit.experiments.runner import EpochCount, Status

    runs = load_sweep(tiny_sweep(tmp_path, tiny_cifar10, [0, 1, 2])).expand()
    resumed, fresh, failing = runs
    RunDir(resumed.run_dir).path.mkdir(parents=True)
    RunDir(resumed.run_dir).write_metrics([{"epoch": 1, "val_acc": 0.1}])
    out = io.StringIO()
    bar = tqdm(total=len(runs), file=out, mininterval=0)
    count = EpochCount(runs, bar)
    assert (bar.total, bar.n, bar.unit) == (6, 1, "epoch")
    RunDir(fresh.run_dir).path.mkdir(parents=True)
    RunDir(fresh.run_dir).write_metrics([{"epoch": 1}])
    count.show([resumed, fresh])
    assert bar.n == 2
    assert f"{resumed.config_hash[:8]} 1/2 · {fresh.config_hash[:8]} 1/2" in out.getvalue()
    count.finished(resumed, Status.DONE)          # its last epoch was not polled: counted whole now
    count.finished(failing, Status.FAILED)        # a failed run adds nothing
    assert bar.n == 3
    written = len(out.getvalue())
    count.show([fresh])
    assert bar.n == 3                             # nothing new in fresh's log: no double count,
    assert len(out.getvalue()) == written         # and no redraw in a file (a log is not a clock)
    count.finished(fresh, Status.DONE)
    assert bar.n == 4 and bar.n < bar.total
    bar.close()


SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def test_shipped_sweep_files_expand(monkeypatch):
    from onebit.presets import get_preset

    monkeypatch.setenv("ONEBIT_DATA", "/somewhere/data")
    paper = load_sweep(SWEEPS / "paper-wrn20-10.toml").expand()
    assert len(paper) == 24 and {r.config.epochs for r in paper} == {254, 300}
    # the sweep resolves automatic bf16 for this machine; the preset leaves it open
    assert all(r.config.amp is not None for r in paper)
    assert all(r.config_hash == get_preset(r.preset, seed=r.config.seed, amp=r.config.amp).hash() for r in paper)
    sizes = load_sweep(SWEEPS / "iclr-sizes.toml").expand()
    assert {(r.config.depth, r.config.width) for r in sizes} == {(20, 4), (26, 10)} and len(sizes) == 32
    for r in sizes:       # the same recipe as the paper presets
        preset = get_preset(f"{r.config.dataset}-wrn20-10-{'bn' if r.config.norm == 'bn' else 'srelu'}-"
                            f"{r.config.weight_bits}bit", depth=r.config.depth, width=r.config.width,
                            seed=r.config.seed, amp=r.config.amp)
        assert r.config_hash == preset.hash()
    cpu = load_sweep(SWEEPS / "cpu-study.toml")
    runs = cpu.expand()
    assert len(runs) == 24 and {r.config.seed for r in runs} == {0, 1, 2}
    assert {(r.config.depth, r.config.width) for r in runs} == {(8, 1), (8, 2)}
    assert {(r.config.norm, r.config.schedule) for r in runs} == {("bn", "restarts"), ("none", "cosine")}
    assert all(r.config.data_dir == "/somewhere/data" and r.config.val_size == 5000 for r in runs)
    assert cpu.store == SWEEPS.parent / "docs" / "results" / "cpu-study" / "runs.db"


def test_dry_run_lists_runs_and_creates_nothing(tmp_path, tiny_cifar10, capsys):
    path = tiny_sweep(tmp_path, tiny_cifar10, [0, 1])
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("to run") == 2 and "2 runs, 0 stored" in out
    assert not (tmp_path / "runs.db").exists() and not (tmp_path / "s-runs").exists()


def test_killed_sweep_resumes_and_records_every_epoch_once(tmp_path, tiny_cifar10):
    import signal
    import subprocess
    import sys
    import time

    path = tiny_sweep(tmp_path, tiny_cifar10, [0, 1])
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 4"))
    runs = load_sweep(path).expand()
    proc = subprocess.Popen([sys.executable, "-m", "onebit", "sweep", str(path), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (runs[0].run_dir / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)         # no clean-up at all
    proc.wait()
    assert (runs[0].run_dir / "checkpoint.safetensors").exists()
    # the kill interrupted the sweep: its first run unfinished and unrecorded, the second not started
    assert not RunDir(runs[0].run_dir).is_finished()
    assert load_checkpoint(runs[0].run_dir).state["epoch"] < 4
    assert not (runs[1].run_dir / "checkpoint.safetensors").exists()
    with ResultsStore(tmp_path / "runs.db") as store:
        assert store.hashes() == set()
    assert main(["sweep", str(path), "--no-progress"]) == 0
    with ResultsStore(tmp_path / "runs.db") as store:
        assert store.hashes() == {r.config_hash for r in runs}
        for r in runs:
            assert [e["epoch"] for e in store.epochs(r.config_hash)] == list(range(1, 5))
    metrics = (runs[0].run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == list(range(1, 5))
