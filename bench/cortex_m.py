"""Cortex-M figures for docs/embedded.md: firmware flash/RAM (measured from the linked image) and
executed instructions per image under qemu-system-arm -icount shift=0 (emulated instruction counts,
not cycle counts: the SysTick tick count read by the harness times instructions per tick, which a
loop of known length measures on the same board).

    PYTHONPATH=src python bench/cortex_m.py sizes  RUN_OR_CONFIG...      # flash / RAM table
    PYTHONPATH=src python bench/cortex_m.py icount RUN...                # instructions per image

RUN: a run directory / checkpoint / .onebit file; CONFIG: depth-width (e.g. 20-10, random weights:
sizes do not depend on weights).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from onebit.export.c_runtime import export_c
from onebit.export.firmware import build_firmware, measure_firmware, run_firmware
from onebit.models import WRNConfig, build_model

TARGETS = ("cortex-m4", "cortex-m7")


def load(spec: str):
    if "-" in spec and not Path(spec).exists():
        d, w = spec.split("-")
        torch.manual_seed(0)
        return build_model(WRNConfig(depth=int(d), width=int(w))).eval(), f"WRN-{d}-{w} (random weights)"
    from onebit.loading import load_model_file
    model, _ = load_model_file(spec)
    return model, model.config.name


def calib_images(n: int = 64) -> torch.Tensor:
    from onebit.data.cifar import load_cifar
    try:
        return load_cifar("cifar10", "/work/shared/data/cifar10", train=True, download=False).images[:n]
    except Exception:
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


def sizes(specs: list[str]) -> None:
    print("| model | target | mode | flash B (code+const / weights) | RAM B (arena / stack / other) |")
    print("|---|---|---|---|---|")
    calib = calib_images()
    for spec in specs:
        model, name = load(spec)
        with tempfile.TemporaryDirectory() as tmp:
            for target in TARGETS[:1]:
                out = export_c(model, Path(tmp) / target, calibration_images=calib, target=target)
                for mode in ("int", "float"):
                    s = measure_firmware(build_firmware(out, mode, measure_only=True))
                    print(f"| {name} | {target} | {mode} | {s.flash:,} ({s.code_and_constants:,} / {s.weights:,}) "
                          f"| {s.ram:,} ({s.arena:,} / {s.stack:,} / {s.ram - s.arena - s.stack:,}) |", flush=True)


def icount(specs: list[str], n_images: int = 2) -> None:
    from onebit.data.cifar import load_cifar
    test = load_cifar("cifar10", "/work/shared/data/cifar10", train=False, download=False).images[:n_images]
    calib = calib_images()
    print("| model | target | mode | kernels | instructions / image | MACs | instr / MAC |")
    print("|---|---|---|---|---|---|---|")
    for spec in specs:
        model, name = load(spec)
        with tempfile.TemporaryDirectory() as tmp:
            for target in TARGETS:
                out = export_c(model, Path(tmp) / target, calibration_images=calib, target=target)
                (out / "images.bin").write_bytes(test.numpy().tobytes())
                macs = int([l for l in (out / "onebit_config.h").read_text().splitlines()
                            if "ONEBIT_MACS" in l][0].split()[2].rstrip("ULL"))
                for mode, flags in (("int", ""), ("int", "-DONEBIT_NO_DSP"), ("float", "")):
                    elf = build_firmware(out, mode, flags=flags, measure_only=False)
                    run = run_firmware(elf, out / "images.bin", icount=True, timeout=1800)
                    per = float(np.mean(run.instructions()))
                    print(f"| {name} | {target} | {mode} | {run.kernels} | {per:,.0f} | {macs:,} | {per / macs:.2f} |",
                          flush=True)


if __name__ == "__main__":
    {"sizes": sizes, "icount": icount}[sys.argv[1]](sys.argv[2:])
