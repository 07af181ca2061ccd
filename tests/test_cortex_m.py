"""Bare-metal Cortex-M firmware in qemu-system-arm: a WRN-8-1 trained by onebit runs on the emulated
Cortex-M4 (MPS2 AN386) and Cortex-M7 (MPS2 AN500) within a 192 KB RAM budget, with integer logits
bit-identical to the host's integer modes (int16 and 8-bit activations) on 100 real CIFAR-10 test images
(hence the same accuracy), and float logits bit-identical to the host's float mode on the M7. The host reference is checked
against a plain host export, so the bare-metal arena plan (outputs over consumed input rows) is too."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from onebit.cli import main
from onebit.data.cifar import load_cifar
from onebit.export.c_runtime import export_c
from onebit.export.firmware import (PACKAGES, build_firmware, measure_firmware, missing_tools, parse_bytes,
                                    run_firmware)
from onebit.loading import load_model_file

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"install {PACKAGES} (apt-get) for the "
                                                               f"Cortex-M tests")
N_INT, N_FLOAT = 100, 8
RAM_BUDGET = parse_bytes("192K")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar10_dir):
    """WRN-8-1, BN-free, 1-bit, trained by onebit (1 epoch on 2,000 images), exported for both boards."""
    root = tmp_path_factory.mktemp("cortexm")
    run = root / "run"
    assert main(["train", "--run-dir", str(run), "--data-dir", str(cifar10_dir), "--depth", "8", "--width", "1",
                 "--norm", "none", "--epochs", "1", "--train-limit", "2000", "--num-threads", "1",
                 "--no-progress"]) == 0
    model, _ = load_model_file(str(run))
    test = load_cifar("cifar10", cifar10_dir, train=False, download=False)
    calib = load_cifar("cifar10", cifar10_dir, train=True, download=False).images[:256]
    images = root / "images.bin"
    images.write_bytes(test.images[:N_INT].numpy().tobytes())       # raw uint8 CHW, as the harness reads
    outs = {t: export_c(model, root / t, calibration_images=calib, target=t) for t in ("cortex-m4", "cortex-m7")}
    host = outs["cortex-m4"]
    subprocess.run(["make", "-C", str(host), "host"], check=True, capture_output=True)
    demo = host / "onebit_demo_host"

    def host_run(*args: str) -> tuple[np.ndarray, np.ndarray]:
        out = subprocess.run([str(demo), *args, str(images)], check=True, capture_output=True, text=True).stdout
        rows = [r.split() for r in out.strip().splitlines()]
        return np.array([r[2:] for r in rows]), np.array([int(r[1]) for r in rows])

    q, q_pred = host_run("--int", "--raw")
    q8, q8_pred = host_run("--int8", "--raw")
    f, _ = host_run()
    # the bare-metal exports' overlapping arena plan computes what a plain host export computes
    plain = export_c(model, root / "host", calibration_images=calib)
    subprocess.run(["make", "-C", str(plain), "host"], check=True, capture_output=True)
    demo = plain / "onebit_demo_host"
    assert np.array_equal(host_run("--int", "--raw")[0], q) and np.array_equal(host_run()[0], f)
    assert np.array_equal(host_run("--int8", "--raw")[0], q8)
    return {"run": run, "data_dir": cifar10_dir, "outs": outs, "images": images,
            "labels": test.labels[:N_INT].numpy(),
            "host_int": q.astype(np.int64), "host_int_pred": q_pred, "host_float": f.astype(np.float32),
            "host_int8": q8.astype(np.int64), "host_int8_pred": q8_pred}


@pytest.mark.parametrize("mode", ["int", "int8"])
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_integer_modes_bare_metal_bit_identical_within_192k(trained, target, mode):
    out = trained["outs"][target]
    elf = build_firmware(out, mode)
    size = measure_firmware(elf)
    assert size.ram <= RAM_BUDGET, size                  # arena + stack + data/bss within 192 KB
    assert size.arena > 0 and size.weights > 0 and size.flash > size.weights
    if mode == "int8":                                   # blocks streamed row by row: at most half int16's arena
        assert size.arena <= measure_firmware(build_firmware(out, "int")).arena // 2
    symbols = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    for libc in ("malloc", "printf", "_sbrk", "_write", "fopen"):  # no heap, no stdio in the firmware
        assert f" {libc}\n" not in symbols, libc
    run = run_firmware(elf, trained["images"])
    assert run.kernels == "dsp" and run.mode == mode
    assert run.logits.shape == (N_INT, 10)
    assert np.array_equal(run.logits, trained[f"host_{mode}"])
    assert np.array_equal(run.preds, trained[f"host_{mode}_pred"])
    acc, host_acc = (run.preds == trained["labels"]).mean(), (trained[f"host_{mode}_pred"] == trained["labels"]).mean()
    assert acc == host_acc
    assert 0 < run.stack_used < size.stack


def test_float_mode_on_m7_bit_identical(trained, tmp_path):
    out = trained["outs"]["cortex-m7"]
    elf = build_firmware(out, "float")
    size = measure_firmware(elf)
    assert size.ram <= parse_bytes("512K") and size.arena > measure_firmware(build_firmware(out, "int")).arena
    few = tmp_path / "few.bin"
    few.write_bytes(trained["images"].read_bytes()[:N_FLOAT * 3072])
    run = run_firmware(out / "firmware-float.elf", few)
    assert run.mode == "float"
    assert np.array_equal(run.logits.view(np.uint32), trained["host_float"][:N_FLOAT].view(np.uint32))


def test_summary_refuses_a_budget_it_exceeds(trained, capsys):
    model = str(trained["images"].parent / "run")
    assert main(["summary", model, "--target", "cortex-m4", "--mode", "int", "--ram", "192K",
                 "--flash", "1M"]) == 0
    report = capsys.readouterr().out
    assert "fits" in report and "NOT" not in report
    assert main(["summary", model, "--target", "cortex-m4", "--mode", "int", "--ram", "64K"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit cortex-m4" in err[0] and "RAM" in err[0]


def test_harness_reports_a_bad_image_file(trained, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 1000)                         # not a whole image
    elf = trained["outs"]["cortex-m4"] / "firmware-int.elf"
    if not elf.exists():
        elf = build_firmware(trained["outs"]["cortex-m4"], "int")
    from onebit.errors import OnebitError
    with pytest.raises(OnebitError, match="status 1.*not a whole number of images"):
        run_firmware(elf, bad)


def test_the_firmware_accuracy_benchmark_scores_the_firmware_s_own_outputs(trained, tmp_path, capsys):
    """``onebit bench firmware accuracy``: the firmware's predictions, compared logit for logit with the host."""
    out = tmp_path / "acc.json"
    assert main(["bench", "firmware", "accuracy", str(trained["run"]), "--targets", "cortex-m4", "--images", "30",
                 "--data-dir", str(trained["data_dir"]), "--json", str(out)]) == 0
    [row] = json.loads(out.read_text())["rows"]
    want = float((trained["host_int_pred"][:30] == trained["labels"][:30]).mean())
    assert row["images"] == 30 and row["logits_identical"] is True and row["kernels"] == "dsp"
    assert row["firmware_accuracy"] == row["host_accuracy"] == pytest.approx(want)
    assert f"{100 * want:.2f}%" in capsys.readouterr().out
