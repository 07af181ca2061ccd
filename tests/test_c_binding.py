"""The Python binding of the C runtime and ``onebit eval --engine c``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from onebit.cli import main
from onebit.data.cifar import load_cifar
from onebit.export.c_program import lower
from onebit.export.fixed_point import QParams, run_program_int
from onebit.export.int8 import Q8Params, run_program_int8
from onebit.export.packed import save_packed
from onebit.models import WRNConfig, build_model
from onebit.runtime import RuntimeMismatchError, build_runtime, compile_export

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on PATH")


@pytest.fixture(scope="module")
def test_images(cifar10_dir):
    return load_cifar("cifar10", cifar10_dir, train=False, download=False)


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(WRNConfig(depth=8, width=1)).eval()


def test_binding_float_int_threads_and_refusal(test_images, tmp_path):
    net = model(0)
    images, calib = test_images.images[:48], test_images.images[500:756]
    rt = build_runtime(net, calibration_images=calib, cache_dir=tmp_path, threads=2)
    with torch.no_grad():
        ref = net(images).numpy()
    got = rt.run(images)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    assert np.array_equal(rt.run(images, threads=2), got)             # images over threads
    assert np.array_equal(rt.run(images[:1], threads=2), got[:1])     # spatial tiles over threads
    _, q = rt.run(images, mode="int", return_int=True)
    info = json.loads((rt.lib_dir / "onebit_model.json").read_text())
    qp = QParams.from_dict(info["qparams"])
    assert np.array_equal(q, run_program_int(lower(net), qp, images))
    f8, q8 = rt.run(images, mode="int8", return_int=True)
    assert rt.has_int8 and rt.kernels8 != "none"
    assert np.array_equal(q8, run_program_int8(lower(net), qp, Q8Params.from_dict(info["q8params"]), images))
    assert np.array_equal(rt.run(images, mode="int8", threads=2), f8)
    # integer logits only (no float output): what a processor without an FPU calls
    q_only = np.zeros_like(q)
    _, arena, arena_bytes = rt._arena(1, 1)
    x = np.ascontiguousarray(images.numpy())
    assert rt._lib.onebit_run(1, x.ctypes.data, len(x), None, q_only.ctypes.data, arena, arena_bytes, 1) == 0
    assert np.array_equal(q_only, q)
    assert rt._lib.onebit_run(0, x.ctypes.data, len(x), None, q_only.ctypes.data, arena, arena_bytes, 1) == -2
    # cached: the same library again, no rebuild
    assert build_runtime(net, calibration_images=calib, cache_dir=tmp_path, threads=2).lib_dir == rt.lib_dir
    # the library refuses a model file it was not built from, and accepts its own
    save_packed(net, tmp_path / "same.onebit")
    save_packed(model(1), tmp_path / "other.onebit")
    rt.check(tmp_path / "same.onebit")
    with pytest.raises(RuntimeMismatchError, match="does not match the compiled C runtime"):
        rt.check(tmp_path / "other.onebit")
    with pytest.raises(Exception, match="uint8"):
        rt.run(images.float())


def test_cli_export_and_eval_engine_c(test_images, cifar10_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ONEBIT_CACHE_DIR", str(tmp_path / "cache"))
    net = model(2)
    save_packed(net, tmp_path / "m.onebit")
    save_packed(model(3), tmp_path / "other.onebit")
    data = ["--data-dir", str(cifar10_dir)]
    assert main(["export", str(tmp_path / "m.onebit"), "--format", "c", "-o", str(tmp_path / "c"),
                 "--calibrate", "64", *data]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m.onebit"), "--json", *data]) == 0
    torch_result = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tmp_path / "m.onebit"), "--engine", "c", "--json", *data]) == 0
    captured = capsys.readouterr()
    c_result = json.loads(captured.out)
    assert "compiling the C runtime (first use, cached in" in captured.err
    assert torch_result["engine"] == "PyTorch, cpu"
    assert c_result["engine"] == "onebit C runtime, float32 mode, 1 thread"
    assert c_result["count"] == torch_result["count"] == len(test_images)
    assert c_result["top1"] == pytest.approx(torch_result["top1"], abs=1.5 / len(test_images))
    assert main(["eval", str(tmp_path / "m.onebit"), "--engine", "c", "--c-mode", "int", "--c-sources",
                 str(tmp_path / "c"), "--json", *data]) == 0
    int_result = json.loads(capsys.readouterr().out)
    assert int_result["engine"] == "onebit C runtime, int16 fixed-point mode, 1 thread"
    assert abs(int_result["top1"] - torch_result["top1"]) <= 0.02
    assert main(["eval", str(tmp_path / "m.onebit"), "--engine", "c", "--c-mode", "int8", "--c-sources",
                 str(tmp_path / "c"), "--json", *data]) == 0
    int8_result = json.loads(capsys.readouterr().out)
    assert int8_result["engine"] == "onebit C runtime, 8-bit activation mode, 1 thread"
    assert abs(int8_result["top1"] - torch_result["top1"]) <= 0.05
    # a folder exported from one model refuses another
    assert main(["eval", str(tmp_path / "other.onebit"), "--engine", "c", "--c-sources", str(tmp_path / "c"),
                 *data]) != 0
    assert "does not match the compiled C runtime" in capsys.readouterr().err
    assert compile_export(tmp_path / "c").has_int
