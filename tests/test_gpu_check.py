"""The prepared device run, on the CPU: the data packer and its sha256 checks, the driver's pieces, the fused
SGD layout fix, and the whole ``scripts/gpu-check.sh --cpu-smoke`` run (the dry run of the device call)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onebit.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "gpu-check"))

import gpu_check  # noqa: E402
import gpu_data  # noqa: E402


def _smooth(n: int, seed: int) -> np.ndarray:
    """Blocky random images: compress like (and as fast as) real photographs, unlike white noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 3, 8, 8)).astype(np.uint8)
    return base.repeat(4, axis=2).repeat(4, axis=3)


@pytest.fixture
def source():
    rng = np.random.default_rng(3)
    train = (_smooth(350, 1), rng.integers(0, 10, 350))
    test = (_smooth(40, 2), rng.integers(0, 10, 40))
    return train, test, [f"c{i}" for i in range(10)]


def test_codec_is_lossless_on_noise_and_extremes():
    rng = np.random.default_rng(0)
    for x in (rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8), np.zeros((2, 3, 32, 32), np.uint8),
              np.full((2, 3, 32, 32), 255, np.uint8), _smooth(5, 4)):
        assert np.array_equal(gpu_data.decode_images(gpu_data.encode_images(x)), x)


def test_pack_verify_unpack_round_trip(source, tmp_path):
    from onebit.data.cifar import load_cifar

    train, test, classes = source
    m = gpu_data.pack(train, test, classes, tmp_path / "p", 1 << 30, workers=1, chunk=100)
    assert m["train_images"] == 350 and m["test_images"] == 40
    assert [f["count"] for f in m["files"]] == [40, 100, 100, 100, 50]
    assert gpu_data.verify(tmp_path / "p")["raw_sha256"] == m["raw_sha256"]
    gpu_data.unpack(tmp_path / "p", tmp_path / "data", workers=1)
    tr = load_cifar("cifar10", tmp_path / "data", train=True, download=False)
    te = load_cifar("cifar10", tmp_path / "data", train=False, download=False)
    assert np.array_equal(tr.images.numpy(), train[0]) and np.array_equal(tr.labels.numpy(), train[1])
    assert np.array_equal(te.images.numpy(), test[0]) and np.array_equal(te.labels.numpy(), test[1])
    assert tr.classes == classes
    packed = sum(f["bytes"] for f in m["files"])
    assert packed < 0.5 * 390 * gpu_data.IMAGE_BYTES          # the codec compresses


def test_pack_keeps_the_largest_prefix_that_fits(source, tmp_path):
    train, test, classes = source
    full = gpu_data.pack(train, test, classes, tmp_path / "a", 1 << 30, workers=1, chunk=100)
    sizes = [f["bytes"] for f in full["files"]]
    budget = sizes[0] + sizes[1] + sizes[2] + 8192 + 1               # test + two chunks + the manifest reserve
    m = gpu_data.pack(train, test, classes, tmp_path / "b", budget, workers=1, chunk=100)
    assert m["train_images"] == 200
    assert m["raw_sha256"]["train"] == gpu_data.split_digest(train[0][:200], train[1][:200])
    with pytest.raises(gpu_data.PackError, match="test images alone"):
        gpu_data.pack(train, test, classes, tmp_path / "c", 100, workers=1, chunk=100)


def test_verify_and_load_detect_every_alteration(source, tmp_path):
    train, test, classes = source
    folder = tmp_path / "p"

    def fresh() -> dict:
        if folder.exists():
            shutil.rmtree(folder)
        return gpu_data.pack(train, test, classes, folder, 1 << 30, workers=1, chunk=100)

    m = fresh()
    chunk = folder / m["files"][1]["name"]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1
    chunk.write_bytes(bytes(data))
    with pytest.raises(gpu_data.PackError, match="sha256"):
        gpu_data.verify(folder)
    fresh()
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(gpu_data.PackError, match="bytes, manifest says"):
        gpu_data.verify(folder)
    fresh()
    chunk.unlink()
    with pytest.raises(gpu_data.PackError, match="missing"):
        gpu_data.verify(folder)
    m = fresh()
    m["raw_sha256"]["train"] = "0" * 64
    (folder / gpu_data.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(gpu_data.PackError, match="decoded train images differ"):
        gpu_data.load(folder, workers=1)


def test_cli_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    assert gpu_data.main(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpu_data verify: error:") and "\n" not in err


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_traveling_bytes_counts_tracked_and_unignored_files(tmp_path):
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / ".gitignore").write_text("big/\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 10)
    run("add", ".gitignore", "tracked.txt")
    (tmp_path / "untracked.txt").write_bytes(b"y" * 20)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "data").write_bytes(b"z" * 1000)
    assert gpu_data.traveling_bytes(tmp_path) == 10 + 20 + len("big/\n")


def test_restored_momentum_keeps_the_parameter_layout_for_fused_sgd(tmp_path):
    """The checkpoint stores momentum in NCHW order; restoring it into a channels_last parameter must keep
    the parameter's layout, else the fused kernel pairs the wrong elements (seen on the CPU kernel too)."""
    from onebit.models import WRNConfig, build_model
    from onebit.train.checkpoint import load_checkpoint, restore_optimizer, save_checkpoint

    cfg = WRNConfig(depth=8, width=1)
    module = build_model(cfg).to(memory_format=torch.channels_last)
    params = list(module.parameters())
    p = next(q for q in params if q.dim() == 4 and q.shape[-1] == 3)
    assert not p.is_contiguous()                       # channels_last
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for q in params:
        q.grad = torch.randn_like(q)
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", module, cfg, opt)
    buf = opt.state[p]["momentum_buffer"].clone()
    fused = torch.optim.SGD(params, lr=0.1, momentum=0.9, fused=True)
    restore_optimizer(fused, load_checkpoint(tmp_path / "c.safetensors").optimizer_state)
    restored = fused.state[p]["momentum_buffer"]
    assert restored.stride() == p.stride() and torch.equal(restored, buf)
    before = p.detach().clone()
    for q in params:
        q.grad = torch.randn_like(q)
    fused.step()
    torch.testing.assert_close(p.detach(), before - 0.1 * (0.9 * buf + p.grad), rtol=1e-6, atol=1e-6)


def test_cost_of_the_paper_table_from_images_per_second():
    speed = {"device": "X", "rows": [{"model": "wrn-20-10-srelu-1bit", "images_per_s": 5000.0},
                                     {"model": "wrn-20-10-bn-1bit", "images_per_s": 4000.0}]}
    cost = gpu_check.part_cost(speed, {}, (20, 10))
    assert cost["one_run_srelu_300_epochs_h"] == pytest.approx(300 * 50_000 / 5000 / 3600)
    assert cost["table_runs"] == 24 and cost["table_epochs"] == 12 * 254 + 12 * 300
    assert cost["table_h"] == pytest.approx((12 * 254 * 50_000 / 4000 + 12 * 300 * 50_000 / 5000) / 3600)
    assert gpu_check.part_cost({}, {}, (20, 10))["status"] == "skipped"


def test_log_run_streams_output_and_kills_at_the_limit(tmp_path):
    log = gpu_check.Log(tmp_path / "log")
    rc, seconds = log.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2)
    assert rc == 124 and seconds < 30
    text = (tmp_path / "log").read_text()
    assert "started" in text and "killed at its 2 s limit" in text
    assert log.run([sys.executable, "-c", "print('a'); print('b', end='')"], 30)[0] == 0
    assert "   a\n" in (tmp_path / "log").read_text() and "   b\n" in (tmp_path / "log").read_text()


def test_cpu_smoke_run_of_the_whole_device_check(tmp_path):
    """The dry run: every part on the CPU with tiny sizes, one JSON + one log + the store in --out."""
    from onebit.experiments.store import ResultsStore

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu-check" / "gpu_check.py"), "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.log", "runs.db"]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["data"]["status"] == "ok"
    parts = report["parts"]
    assert {k: parts[k]["status"] for k in ("tests", "speed", "accuracy", "cost")} == dict.fromkeys(
        ("tests", "speed", "accuracy", "cost"), "ok")
    assert parts["tests"]["passed"] >= 1 and not parts["tests"]["failed"]
    assert {r["model"] for r in parts["speed"]["rows"]} == {"wrn-8-1-bn-1bit", "wrn-8-1-srelu-1bit"}
    assert "profile" in parts["speed"]["rows"][0] and parts["speed"]["pairs"]
    runs = parts["accuracy"]["runs"]
    preset_model = get_preset(gpu_check.PRESET).model_config().name       # the README's main-job network
    assert [r["model"] for r in runs] == [preset_model, "wrn-8-1-srelu-1bit", "wrn-8-1-bn-1bit"]
    assert runs[0]["preset"] == gpu_check.PRESET and all(r["finished"] for r in runs)
    with ResultsStore(out / "runs.db", create=False) as store:
        stored = store.runs()
    assert {r["config_hash"] for r in stored} == {r["config_hash"] for r in runs}
    assert all(r["sweep"] == "gpu-check" for r in stored)
    assert "=== gpu-check summary ===" in (out / "gpu-check.log").read_text()
