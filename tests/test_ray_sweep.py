"""``onebit sweep --ray``: tiny sweeps on a real two-node Ray cluster on this machine (loopback only).

One cluster per module (ray.cluster_utils.Cluster: a head and one worker node, 1 CPU and a 100 MB object
store each, no dashboard), shut down in a finalizer. The sweep driver runs as ``python -m onebit sweep``
in a subprocess, so it can be killed like a user's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onebit.cli import main
from onebit.experiments.runner import execute
from onebit.experiments.store import ResultsStore
from onebit.experiments.sweep import load_sweep

SRC = Path(__file__).resolve().parents[1] / "src"
NODE = {"num_cpus": 1, "object_store_memory": 100 * 1024 ** 2, "node_ip_address": "127.0.0.1"}
# Ray replaces 127.0.0.1 in a driver's address by the machine's outward IP unless this is 0 (its switch for
# single-machine clusters); the test cluster listens on loopback only.
DRIVER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
TIME_FIELDS = {"images_per_s", "epoch_time_s", "elapsed_s"}


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'onebit[ray]')")
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    # the nodes' worker processes inherit this environment: they must import this checkout's onebit
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), saved["PYTHONPATH"]]))
    os.environ["OMP_NUM_THREADS"] = "1"
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
              "health_check_initial_delay_ms": 0}
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False,
                                                      "_system_config": health})
    try:
        c.worker = c.add_node(**NODE)
        yield c
    finally:
        c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tiny_sweep(folder: Path, data: Path, seeds: list[int], epochs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "s.toml"
    path.write_text(f"""
[base]
data_dir = "{data}"
depth = 8
width = 1
epochs = {epochs}
batch_size = 50
val_size = 40
eval_batch_size = 100
device = "cpu"
num_threads = 1
[grid]
norm = ["none"]
seed = {json.dumps(seeds)}
""")
    return path


def driver(path: Path, address: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, **DRIVER_ENV}
    return [sys.executable, "-m", "onebit", "sweep", str(path), "--ray", address, "--no-progress"], env


def run_driver(path: Path, address: str, timeout: float = 600) -> str:
    cmd, env = driver(path, address)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def wait_for(condition, timeout: float = 400, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def worker_info(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "worker.json").read_text())
    except (OSError, ValueError):
        return None


def check_store(store_path: Path, runs, epochs: int) -> list[dict]:
    """Every planned run stored exactly once with each epoch once; the file passes integrity_check."""
    db = sqlite3.connect(store_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    counts = dict(db.execute("SELECT config_hash, COUNT(*) FROM runs GROUP BY config_hash").fetchall())
    assert counts == {r.config_hash: 1 for r in runs}
    for r in runs:
        assert [e for (e,) in db.execute("SELECT epoch FROM epochs WHERE config_hash = ? ORDER BY epoch",
                                         (r.config_hash,))] == list(range(1, epochs + 1))
        lines = (r.run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epochs + 1))
    db.close()
    with ResultsStore(store_path) as store:
        return store.runs()


def test_cluster_sweep_stores_each_point_once_with_the_metrics_of_a_local_sweep(cluster, tmp_path, tiny_cifar10):
    path = tiny_sweep(tmp_path / "ray", tiny_cifar10, [0, 1, 2], epochs=1)
    out = run_driver(path, cluster.address)
    assert "done 3, already stored 0" in out and out.count("done: ") == 3
    sweep = load_sweep(path)
    runs = sweep.expand()
    rows = {r["config_hash"]: r for r in check_store(sweep.store, runs, epochs=1)}
    nodes = {cluster.head_node.node_id, cluster.worker.node_id}
    for r in runs:
        info = worker_info(r.run_dir)
        assert info["node_id"] in nodes and info["attempt"] == 1
        assert rows[r.config_hash]["host"] == socket.gethostname() == info["host"]
        assert f"on {info['host']} (attempt 1)" in out

    # The same sweep run locally (same seeds, another store and runs folder) gives identical metrics.
    local = load_sweep(tiny_sweep(tmp_path / "local", tiny_cifar10, [0, 1, 2], epochs=1))
    assert [r.config_hash for r in local.expand()] == [r.config_hash for r in runs]
    assert execute(local.expand(), local.store, progress=False).done == [r.config_hash for r in runs]
    with ResultsStore(local.store) as store, ResultsStore(sweep.store) as ray_store:
        for r in runs:
            mine = rows[r.config_hash]
            theirs = store.runs([("config_hash", "=", r.config_hash)])[0]
            for key in ("test_acc", "test_loss", "val_acc", "val_loss", "best_value", "best_epoch"):
                assert mine[key] == theirs[key], key
            strip = [{k: v for k, v in e.items() if k not in TIME_FIELDS} for e in store.epochs(r.config_hash)]
            assert strip == [{k: v for k, v in e.items() if k not in TIME_FIELDS}
                             for e in ray_store.epochs(r.config_hash)]

    # Run again: everything is stored, no task is started.
    again = run_driver(path, cluster.address)
    assert "done 0, already stored 3" in again and "started: " not in again


def test_killed_driver_rerun_resumes_with_nothing_lost_or_duplicated(cluster, tmp_path, tiny_cifar10):
    path = tiny_sweep(tmp_path, tiny_cifar10, [10, 11], epochs=4)
    runs = load_sweep(path).expand()
    cmd, env = driver(path, cluster.address)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any((r.run_dir / "checkpoint.safetensors").exists() for r in runs), what="a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)          # no clean-up at all; Ray ends the dead driver's tasks
        proc.wait()
    interrupted = [r for r in runs if (r.run_dir / "checkpoint.safetensors").exists()
                   and not (r.run_dir / "results.json").exists()]
    assert interrupted                                  # 4 epochs: killed well before the end
    out = run_driver(path, cluster.address)
    assert "failed 0" in out
    check_store(load_sweep(path).store, runs, epochs=4)
    assert any(f"{r.config_hash} on" in line and "resumed at epoch" in line
               for r in interrupted for line in out.splitlines()), out


def test_killed_worker_node_points_are_retried_from_their_checkpoint(cluster, tmp_path, tiny_cifar10):
    path = tiny_sweep(tmp_path, tiny_cifar10, [20, 21], epochs=4)
    runs = load_sweep(path).expand()
    victim = cluster.worker
    cmd, env = driver(path, cluster.address)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # two points, one CPU per node: one of them trains on the worker node
        def on_victim_with_checkpoint():
            return next((r for r in runs if (worker_info(r.run_dir) or {}).get("node_id") == victim.node_id
                         and (r.run_dir / "checkpoint.safetensors").exists()), None)
        wait_for(on_victim_with_checkpoint, what="a checkpoint written on the worker node")
        hit = on_victim_with_checkpoint()
        os.kill(worker_info(hit.run_dir)["pid"], signal.SIGKILL)      # the training process ...
        cluster.remove_node(victim, allow_graceful=False)             # ... and the node's raylet, agents
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "done 2, already stored 0, busy elsewhere 0, failed 0" in out
    check_store(load_sweep(path).store, runs, epochs=4)
    retried = [line for line in out.splitlines() if "done: " in line and hit.config_hash in line]
    assert len(retried) == 1 and "attempt 2, resumed at epoch" in retried[0], out
    info = worker_info(hit.run_dir)
    assert info["attempt"] == 2 and info["node_id"] == cluster.head_node.node_id


def test_ray_missing_is_one_line(tmp_path, tiny_cifar10, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)           # `import ray` raises ImportError
    path = tiny_sweep(tmp_path, tiny_cifar10, [0], epochs=1)
    assert main(["sweep", str(path), "--ray", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Ray, which is not installed" in err and "onebit[ray]" in err


@pytest.mark.parametrize("extra, message", [
    (["--ray", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
    (["--ray", "nohost"], "expected HOST:PORT"),
    (["--ray", "--ray-threads", "0"], "--ray-threads must be >= 1"),
    (["--ray", "--jobs", "2"], "drop --jobs"),
])
def test_bad_ray_options_are_one_line(tmp_path, tiny_cifar10, capsys, extra, message):
    if "127.0.0.1:1" in extra or "nohost" in extra:
        pytest.importorskip("ray", reason="Ray is not installed (pip install 'onebit[ray]')")
    path = tiny_sweep(tmp_path, tiny_cifar10, [0], epochs=1)
    assert main(["sweep", str(path), *extra, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
