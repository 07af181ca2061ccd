"""Cortex-M figures for docs/embedded.md: firmware flash/RAM (measured from the linked image) and
executed instructions per image under qemu-system-arm -icount shift=0 (emulated instruction counts,
not cycle counts: the SysTick tick count read by the harness times instructions per tick, which a
loop of known length measures on the same board).

    PYTHONPATH=src python bench/cortex_m.py sizes  RUN_OR_CONFIG...      # flash / RAM table
    PYTHONPATH=src python bench/cortex_m.py icount RUN...                # instructions per image
    PYTHONPATH=src python bench/cortex_m.py arena CONFIG...              # arena plans vs lower bound

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
                for mode, flags in (("int", ""), ("int", "-DONEBIT_NO_DSP"), ("float", ""), ("float", "-DONEBIT_NO_DSP")):
                    elf = build_firmware(out, mode, flags=flags, measure_only=False)
                    run = run_firmware(elf, out / "images.bin", icount=True, timeout=1800)
                    per = float(np.mean(run.instructions()))
                    print(f"| {name} | {target} | {mode} | {run.kernels} | {per:,.0f} | {macs:,} | {per / macs:.2f} |",
                          flush=True)


def live_lower_bound(prog, esz: int, overlap: bool) -> int:
    """max over steps of the bytes that must be live at once: inputs still to be read and outputs (an
    identity R counted once; with overlap an output over its dying conv input spans
    max(input + lag, output) bytes). No plan can be smaller (alignment ignored)."""
    from onebit.export.c_runtime import _lag_bytes

    def nbytes(t):
        c, h, w = prog.tensors[t]
        return (h + 2) * (w + 2) * c * esz, (w + 2) * c * esz

    last = {}
    for i, st in enumerate(prog.steps):
        for t in (st.src, st.res_src):
            if t:
                last[t] = i
    best = 0
    for i, st in enumerate(prog.steps):
        defined = {"x"} | {t for s2 in prog.steps[:i] for t in (s2.out, s2.act_out) if t}
        live = {t for t in defined if last.get(t, -1) >= i}
        if st.epilogue == "head":
            total = sum(nbytes(t)[0] for t in live) + st.out_hw[0] * st.out_hw[1] * prog.num_classes * 4
            best = max(best, total)
            continue
        out = st.act_out if st.epilogue == "res" else st.out
        total = sum(nbytes(t)[0] for t in live)
        if st.epilogue == "res" and st.out and st.res != "identity":
            total += nbytes(st.out)[0]
        o, orow = nbytes(out)
        if overlap and last.get(st.src) == i and st.src != st.res_src:
            src, srow = nbytes(st.src)
            total += max(src + _lag_bytes(st, orow, srow), o) - src
        else:
            total += o
        best = max(best, total)
    return best


def arena(specs: list[str]) -> None:
    from onebit.export.c_program import lower
    from onebit.export.c_runtime import plan_slots

    print("| model | mode | planned, host | lower bound, host | planned, bare metal | lower bound, bare metal |")
    print("|---|---|---|---|---|---|")
    for spec in specs:
        model, name = load(spec)
        prog = lower(model)
        host, bare = plan_slots(prog), plan_slots(prog, overlap=True)
        for mode, esz, a, b in (("int", 2, host.total_i, bare.total_i), ("float", 4, host.total_f, bare.total_f)):
            print(f"| {name} | {mode} | {a:,} | {live_lower_bound(prog, esz, False):,} | {b:,} | "
                  f"{live_lower_bound(prog, esz, True):,} |")


if __name__ == "__main__":
    {"sizes": sizes, "icount": icount, "arena": arena}[sys.argv[1]](sys.argv[2:])
