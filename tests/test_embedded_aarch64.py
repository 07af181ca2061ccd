"""The C runtime on 64-bit Arm: `onebit export --format c --target aarch64` cross-compiles with one `make`,
selects the NEON kernels, and under user-mode QEMU (emulated, not a real Cortex-A) gives logits
bit-identical to the host's portable build on real CIFAR-10 test images, float and integer mode.

Emulated tests skip without the toolchain (see Target.install_hint)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from onebit.cli import main
from onebit.data.cifar import load_cifar
from onebit.export.c_runtime import export_c, read_export_info
from onebit.export.targets import HOST, TARGETS, get_target
from onebit.loading import load_model_file
from onebit.models import WRNConfig, build_model

AARCH64 = get_target("aarch64")
MCN_C10 = "TrainedWideResNet20-10_CIFAR10_1-bit-per-weight-4MB.mat"
# images run under QEMU (it emulates NEON float lane by lane: WRN-20-10 takes ~50 s per image in float
# mode); ONEBIT_EMU_IMAGES raises both counts for a longer check
EMU_IMAGES = int(os.environ.get("ONEBIT_EMU_IMAGES", "0"))
WRN8_IMAGES = max(EMU_IMAGES, 32)
REF_IMAGES = max(EMU_IMAGES, 1)


def require(target) -> None:
    missing = target.missing_tools() + ([] if shutil.which("make") else ["make"])
    if missing:
        pytest.skip(f"{target.name} toolchain missing ({', '.join(missing)}); install with: "
                    f"{target.install_hint()}")


def make(folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["make", "-s", *args], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"{p.args} failed:\n{out}"
        outs.append(out)
    return outs


def build_cross_and_host(folder: Path) -> None:
    """`make` (the export's target) and the host's portable build, the reference of every kernel."""
    wait_all([make(folder), make(folder, "host", "HOST_SIMD=-DONEBIT_PORTABLE")])


def assert_bit_identical(folder: Path, n: int, modes=(["--int", "--raw"], ["--int8", "--raw"], [])) -> None:
    """Float logits are printed with 9 significant digits (exact for float32), integer logits as int32."""
    runs = [subprocess.Popen([*AARCH64.emulator, "./onebit_demo", *m, "images.bin"], cwd=folder,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in modes]
    hosts = [subprocess.run(["./onebit_demo_host", *m, "images.bin"], cwd=folder, capture_output=True, text=True,
                            check=True).stdout for m in modes]
    for m, emulated, host in zip(modes, wait_all(runs), hosts):
        lines = host.strip().splitlines()
        assert len(lines) == n
        assert emulated == host, f"aarch64 (NEON, emulated) and host (portable) differ in mode {m or 'float'}"


def write_images(folder: Path, cifar10_dir: Path, n: int) -> None:
    test = load_cifar("cifar10", cifar10_dir, train=False, download=False)
    (folder / "images.bin").write_bytes(test.images[:n].numpy().tobytes())


def test_target_table_and_makefile(tmp_path):
    """Each target's Makefile defaults; cross builds get no -Werror or -march=native, CC overrides."""
    if shutil.which("make") is None:
        pytest.skip("make not found")
    assert TARGETS[HOST].werror and TARGETS[HOST].simd_flags == ("-march=native",)
    for t in TARGETS.values():
        assert t.bare_metal == t.name.startswith("cortex-m")
        assert (t.qemu_machine is not None) == t.bare_metal
        if t.cross:
            assert not t.werror and "-march=native" not in t.simd_flags and t.packages
    model = build_model(WRNConfig(depth=8, width=1))
    host = export_c(model, tmp_path / "host")
    cross = export_c(model, tmp_path / "a64", target="aarch64")
    assert read_export_info(cross)["target"] == "aarch64"

    def dry(folder: Path, *args: str) -> str:
        return subprocess.run(["make", "-n", *args], cwd=folder, capture_output=True, text=True, check=True).stdout

    host_cmd, cross_cmd = dry(host), dry(cross)
    assert host_cmd.startswith("cc ") and "-Werror" in host_cmd and "-march=native" in host_cmd
    assert cross_cmd.startswith("aarch64-linux-gnu-gcc ") and "-march=armv8-a" in cross_cmd
    assert "-Werror" not in cross_cmd and "-march=native" not in cross_cmd and "-ffp-contract=off" in cross_cmd
    assert dry(cross, "CC=clang --target=aarch64-linux-gnu").startswith("clang --target=aarch64-linux-gnu ")
    assert "-Werror" in dry(cross, "WERROR=-Werror")
    assert dry(cross, "host").startswith("cc ") and "-march=native" in dry(cross, "host")
    lib = dry(export_c(model, tmp_path / "m4", target="cortex-m4"))
    assert lib.startswith("arm-none-eabi-gcc ") and "-mcpu=cortex-m4" in lib and "-c -o onebit.o onebit.c" in lib


def test_cli_target_option(tmp_path, capsys):
    from onebit.export.packed import save_packed

    save_packed(build_model(WRNConfig(depth=8, width=1)), tmp_path / "m.onebit")
    assert main(["export", str(tmp_path / "m.onebit"), "--format", "c", "--target", "aarch64",
                 "-o", str(tmp_path / "c")]) == 0
    assert "target aarch64" in capsys.readouterr().out
    assert "TARGET_CC = aarch64-linux-gnu-gcc" in (tmp_path / "c" / "onebit_target.mk").read_text()
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "m.onebit"), "--format", "c", "--target", "sparc", "-o", str(tmp_path / "d")])
    assert "invalid choice: 'sparc'" in capsys.readouterr().err


def test_neon_trained_wrn8_bit_identical_to_host(cifar10_dir, tmp_path):
    """A BN-free 1-bit WRN-8-1 trained by onebit (1 epoch on 2,000 images), float, int16 and 8-bit modes."""
    require(AARCH64)
    run = tmp_path / "run"
    assert main(["train", "--depth", "8", "--width", "1", "--norm", "none", "--epochs", "1", "--train-limit",
                 "2000", "--num-threads", "1", "--device", "cpu", "--no-progress", "--data-dir", str(cifar10_dir),
                 "--run-dir", str(run)]) == 0
    model, _ = load_model_file(run)
    assert model.config.norm == "none" and model.config.weight_bits == 1
    calib = load_cifar("cifar10", cifar10_dir, train=True, download=False).images[:256]
    folder = export_c(model, tmp_path / "c", calibration_images=calib, target="aarch64")
    write_images(folder, cifar10_dir, WRN8_IMAGES)
    build_cross_and_host(folder)
    bench = subprocess.run([*AARCH64.emulator, "./onebit_demo", "--bench", "1", "images.bin"], cwd=folder,
                           capture_output=True, text=True, check=True).stdout
    assert " kernels neon " in bench          # the emulated binary runs the NEON kernels
    host = subprocess.run(["./onebit_demo_host", "--bench", "1", "images.bin"], cwd=folder, capture_output=True,
                          text=True, check=True).stdout
    assert " kernels portable " in host
    assert_bit_identical(folder, WRN8_IMAGES)
    # the 8-bit kernel's dot-product path (UDOT, Armv8.2-A), emulated on QEMU's `max` CPU
    (folder / "onebit_demo").unlink()
    wait_all([make(folder, "ARCH=-march=armv8.2-a+dotprod")])
    cmd = [AARCH64.emulator[0], "-cpu", "max", *AARCH64.emulator[1:], "./onebit_demo"]
    bench = subprocess.run([*cmd, "--int8", "--bench", "1", "images.bin"], cwd=folder, capture_output=True,
                           text=True, check=True).stdout
    assert " kernels neon-dotprod " in bench
    emulated = subprocess.run([*cmd, "--int8", "--raw", "images.bin"], cwd=folder, capture_output=True, text=True,
                              check=True).stdout
    host = subprocess.run(["./onebit_demo_host", "--int8", "--raw", "images.bin"], cwd=folder, capture_output=True,
                          text=True, check=True).stdout
    assert emulated == host and len(host.strip().splitlines()) == WRN8_IMAGES


@pytest.mark.slow
def test_neon_reference_wrn20_10_bit_identical_to_host(cifar10_dir, reference_models_dir, tmp_path):
    """The imported reference WRN-20-10 (BN, 26.7 M 1-bit weights, ~4 GMAC per image)."""
    require(AARCH64)
    path = reference_models_dir / MCN_C10
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model_file = tmp_path / "wrn20.onebit"
    assert main(["import-reference", str(path), "-o", str(model_file)]) == 0
    model, _ = load_model_file(model_file)
    calib = load_cifar("cifar10", cifar10_dir, train=True, download=False).images[:4]
    folder = export_c(model, tmp_path / "c", calibration_images=calib, target="aarch64")
    write_images(folder, cifar10_dir, REF_IMAGES)
    build_cross_and_host(folder)
    assert_bit_identical(folder, REF_IMAGES)
