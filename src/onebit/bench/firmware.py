"""Cortex-M firmware, measured from the linked image and in QEMU (emulated; not a board).

Measurements (``onebit bench firmware MEASURE MODEL...``; MODEL: a model file or run directory, or a name
``wrn-D-K[-bn]`` with random 1-bit weights where weights do not matter):

* ``sizes``    flash (code + constants, packed weights) and RAM (arena, stack, other) of the firmware of
               each mode (``--modes``: int = int16, int8 = 8-bit activations, float), from
               ``arm-none-eabi-size -A`` and the ELF's symbols;
* ``icount``   executed instructions per image under ``qemu-system-arm -icount shift=0`` in each mode, with
               the Cortex-M kernels and the portable ones (``-DONEBIT_NO_DSP``). **Emulated instruction
               counts, not cycles**: they ignore pipelines, dual issue, wait states and memory latency;
* ``arena``    the arena plans (host and bare metal) against the lower bound of live bytes;
* ``accuracy`` the integer-mode firmware (int and/or int8) classifies the first ``--images`` CIFAR-10 test
               images in QEMU; its logits are compared with the host build's (``onebit_demo_host --int
               --raw``, ``--int8 --raw``) and its accuracy is computed from its own printed predictions.

    onebit bench firmware sizes runs/latest wrn-20-10
    onebit bench firmware icount runs/latest --targets cortex-m4,cortex-m7 --modes int,int8
    onebit bench firmware accuracy models/cifar10-mcu.onebit --targets cortex-m7 --images 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from onebit.bench.models import resolve_model
from onebit.errors import ConfigError, DataError, OnebitError
from onebit.export.c_build import run_make
from onebit.export.c_runtime import export_c, read_export_info
from onebit.export.firmware import MODES, build_firmware, measure_firmware, run_firmware
from onebit.export.targets import TARGETS

MEASURES = ("sizes", "icount", "arena", "accuracy")
BARE_METAL = tuple(t for t in TARGETS if t.startswith("cortex-m"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("measure", choices=MEASURES, help="what to measure (see above)")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model file, run directory or wrn-D-K[-bn]")
    p.add_argument("--targets", default="cortex-m4", help=f"comma-separated, of {', '.join(BARE_METAL)} "
                                                          f"(default: %(default)s)")
    p.add_argument("--images", type=int, default=None,
                   help="test images to run (default: 2 for icount, 1000 for accuracy)")
    p.add_argument("--calibrate", type=int, default=256,
                   help="training images that calibrate the integer mode (default: %(default)s)")
    p.add_argument("--modes", default=None,
                   help=f"comma-separated, of {', '.join(MODES)} (default: all for sizes, icount and arena; "
                        f"int for accuracy)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: $ONEBIT_DATA or cache)")
    p.add_argument("--json", default=None, help="also write the rows here")


def run(args: argparse.Namespace) -> int:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in BARE_METAL]
    if bad or not targets:
        raise ConfigError(f"--targets {args.targets!r}: choose from {', '.join(BARE_METAL)}")
    if args.images is not None and not 1 <= args.images <= 10_000:
        raise ConfigError(f"--images {args.images}: need 1..10000")
    if not 1 <= args.calibrate <= 50_000:
        raise ConfigError(f"--calibrate {args.calibrate}: need 1..50000")
    default = "int" if args.measure == "accuracy" else ",".join(MODES)
    args.modes = [m.strip() for m in (args.modes or default).split(",") if m.strip()]
    allowed = ("int", "int8") if args.measure == "accuracy" else MODES
    if not args.modes or any(m not in allowed for m in args.modes):
        raise ConfigError(f"--modes {','.join(args.modes)!r}: choose from {', '.join(allowed)}")
    rows = {"sizes": sizes, "icount": icount, "arena": arena, "accuracy": accuracy}[args.measure](args, targets)
    if args.json:
        Path(args.json).write_text(json.dumps({"measure": args.measure, "rows": rows}, indent=1) + "\n")
    return 0


def _cifar(data_dir: str | None, train: bool):
    from onebit.data.cifar import load_cifar

    return load_cifar("cifar10", data_dir, train=train, download=False)


def _calibration(args: argparse.Namespace, required: bool) -> torch.Tensor:
    """Training images for the integer mode's scales; random ones where only sizes matter."""
    try:
        return _cifar(args.data_dir, True).images[:args.calibrate]
    except DataError:
        if required:
            raise
        return torch.randint(0, 256, (min(args.calibrate, 64), 3, 32, 32), dtype=torch.uint8,
                             generator=torch.Generator().manual_seed(0))


def _table(header: list[str], rows: list[dict], keys: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = ("yes" if r[k] is True else "no" if r[k] is False else f"{r[k]:,}" if isinstance(r[k], int)
                 else str(r[k]) for k in keys)
        print("| " + " | ".join(cells) + " |", flush=True)


def _exports(args: argparse.Namespace, targets: list[str], calib: torch.Tensor) -> Iterator[tuple[str, str, Path]]:
    """(model label, target, C export folder) for every model and target, each exported to a temporary folder
    that lives until the next one is yielded."""
    for spec in args.models:
        model, name = resolve_model(spec)
        with tempfile.TemporaryDirectory() as tmp:
            for target in targets:
                yield name, target, export_c(model, Path(tmp) / target, calibration_images=calib,
                                             calibration_count=len(calib), target=target)


def sizes(args: argparse.Namespace, targets: list[str]) -> list[dict]:
    calib = _calibration(args, required=False)
    rows = []
    for name, target, out in _exports(args, targets, calib):
        for mode in _modes_of(args, out):
            s = measure_firmware(build_firmware(out, mode, measure_only=True))
            rows.append({"model": name, "target": target, "mode": mode, "flash": s.flash,
                         "code_and_constants": s.code_and_constants, "weights": s.weights, "ram": s.ram,
                         "arena": s.arena, "stack": s.stack, "other": s.ram - s.arena - s.stack})
    _table(["model", "target", "mode", "flash B", "code+const", "weights", "RAM B", "arena", "stack", "other"],
           rows, ["model", "target", "mode", "flash", "code_and_constants", "weights", "ram", "arena", "stack",
                  "other"])
    return rows


def icount(args: argparse.Namespace, targets: list[str]) -> list[dict]:
    test = _cifar(args.data_dir, False).images[:args.images or 2]
    calib = _calibration(args, required=True)
    rows = []
    for name, target, out in _exports(args, targets, calib):
        (out / "images.bin").write_bytes(test.numpy().tobytes())
        macs = read_export_info(out)["macs"]
        for mode, flags in [(m, f) for m in _modes_of(args, out) for f in ("", "-DONEBIT_NO_DSP")]:
            elf = build_firmware(out, mode, flags=flags, measure_only=False)
            fw = run_firmware(elf, out / "images.bin", icount=True, timeout=3600)
            per = float(np.mean(fw.instructions()))
            rows.append({"model": name, "target": target, "mode": mode, "kernels": fw.kernels,
                         "instructions_per_image": round(per), "macs": macs,
                         "instructions_per_mac": round(per / macs, 2)})
    print(f"emulated instructions per image ({len(test)} test images; not cycles)")
    _table(["model", "target", "mode", "kernels", "instructions / image", "MACs", "instr / MAC"], rows,
           ["model", "target", "mode", "kernels", "instructions_per_image", "macs", "instructions_per_mac"])
    return rows


def _modes_of(args: argparse.Namespace, out: Path) -> list[str]:
    """The requested modes this export has (the 8-bit mode needs a multiple of 4 channels per convolution)."""
    info = read_export_info(out)
    modes = [m for m in args.modes if m != "int8" or info.get("arena_bytes_int8") is not None]
    if not modes:
        raise ConfigError(f"{info['name']} has none of the modes {', '.join(args.modes)}")
    return modes


def _host_logits(out: Path, images: Path, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer logits and predictions of the host build of the same export (``make host``)."""
    run_make(out, "host")
    text = subprocess.run([str(out / "onebit_demo_host"), f"--{mode}", "--raw", str(images)], check=True,
                          capture_output=True, text=True).stdout
    rows = [r.split() for r in text.strip().splitlines()]
    return np.array([[int(v) for v in r[2:]] for r in rows], dtype=np.int64), np.array([int(r[1]) for r in rows])


def accuracy(args: argparse.Namespace, targets: list[str]) -> list[dict]:
    test = _cifar(args.data_dir, False)
    n = min(args.images or 1000, len(test))
    labels = test.labels[:n].numpy()
    calib = _calibration(args, required=True)
    rows = []
    for name, target, out in _exports(args, targets, calib):
        images = out / "images.bin"
        images.write_bytes(test.images[:n].numpy().tobytes())
        for mode in _modes_of(args, out):
            start = time.perf_counter()
            elf = build_firmware(out, mode, measure_only=False)
            fw = run_firmware(elf, images, icount=False, timeout=6 * 3600)
            seconds = time.perf_counter() - start
            host, host_pred = _host_logits(out, images, mode)
            if fw.logits.shape != host.shape:
                raise OnebitError(f"{name} on {target}: the firmware printed {len(fw.logits)} images of {n}")
            size = measure_firmware(elf)
            rows.append({"model": name, "target": target, "mode": mode, "kernels": fw.kernels, "images": n,
                         "firmware_accuracy": float((fw.preds == labels).mean()),
                         "host_accuracy": float((host_pred == labels).mean()),
                         "logits_identical": bool(np.array_equal(fw.logits, host)),
                         "flash": size.flash, "ram": size.ram, "qemu_seconds": round(seconds, 1)})
    print(f"integer-mode firmware in QEMU on the first {n} CIFAR-10 test images, against the host build")
    _table(["model", "target", "mode", "kernels", "images", "firmware acc", "host acc", "logits identical",
            "flash B", "RAM B"], [{**r, "firmware_accuracy": f"{100 * r['firmware_accuracy']:.2f}%",
                        "host_accuracy": f"{100 * r['host_accuracy']:.2f}%"} for r in rows],
           ["model", "target", "mode", "kernels", "images", "firmware_accuracy", "host_accuracy",
            "logits_identical", "flash", "ram"])
    if not all(r["logits_identical"] for r in rows):
        raise OnebitError("the firmware's logits differ from the host build's (see the table)")
    return rows


def live_lower_bound(prog, esz, overlap: bool) -> int:
    """max over steps of the bytes that must be live at once: inputs still to be read and outputs (an
    identity R counted once; with overlap an output over its dying conv input spans
    max(input + lag, output) bytes). No plan can be smaller (alignment ignored). ``esz``: bytes per element,
    or a function of the tensor's name (the 8-bit mode's bytes and int16 residual stream)."""
    from onebit.export.arena import lag_bytes

    def nbytes(t):
        c, h, w = prog.tensors[t]
        e = esz(t) if callable(esz) else esz
        return (h + 2) * (w + 2) * c * e, (w + 2) * c * e

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
            total += max(src + lag_bytes(st, orow, srow), o) - src
        else:
            total += o
        best = max(best, total)
    return best


def stream_lower_bound(prog) -> int:
    """The streamed 8-bit plan's limit (onebit/export/arena.py, _stream_layout): max over the stem (its R over the
    consumed input: max(x + lag, R)) and the blocks (their k-row windows of A and T, the last block's head row
    and partial sums, plus the R read and the R written: an identity R once, a pool R over the consumed rows of
    the R it pools: max(R_prev + lag, R)). Alignment ignored."""
    from onebit.export.arena import lag_bytes, pool_lag_bytes, stream_rows

    rows = stream_rows(prog)

    def nbytes(t, esz, keep=None):
        c, h, w = prog.tensors[t]
        return (keep or h + 2) * (w + 2) * c * esz, (w + 2) * c * esz

    steps = prog.steps
    (x, x_row), (r0, r0_row) = nbytes("x", 1), nbytes(steps[0].out, 2)
    best = max(x + lag_bytes(steps[0], r0_row, x_row), r0)
    for b in range((len(steps) - 2) // 2):
        c1, c2 = steps[2 * b + 1], steps[2 * b + 2]
        total = sum(nbytes(t, 1, rows[t])[0] for t in (c1.src, c1.out))
        r_prev, r_prev_row = nbytes(steps[2 * b].out, 2)
        if c2.out and c2.res != "identity":
            r, r_row = nbytes(c2.out, 2)
            total += max(r_prev + pool_lag_bytes(c2, r_row, r_prev_row), r)
        else:
            total += r_prev
        if not c2.out:
            total += nbytes(c2.act_out, 1, rows[c2.act_out])[0] + \
                steps[-1].out_hw[0] * steps[-1].out_hw[1] * prog.num_classes * 4
        best = max(best, total)
    return best


def arena(args: argparse.Namespace, targets: list[str]) -> list[dict]:
    from onebit.export.c_program import lower
    from onebit.export.arena import plan_slots

    rows = []
    for spec in args.models:
        model, name = resolve_model(spec)
        prog = lower(model)
        host, bare = plan_slots(prog), plan_slots(prog, overlap=True)
        inputs = {st.src for st in prog.steps}
        planned = {"int": (2, host.total_i, bare.total_i), "float": (4, host.total_f, bare.total_f),
                   "int8": (lambda t: 1 if t in inputs else 2, host.total_8, bare.total_8)}
        for mode in args.modes:
            esz, a, b = planned[mode]
            streamed = mode == "int8" and bare.stream8
            rows.append({"model": name, "mode": mode, "host_planned": a,
                         "host_lower_bound": live_lower_bound(prog, esz, False), "bare_metal_planned": b,
                         "bare_metal_lower_bound": stream_lower_bound(prog) if streamed
                         else live_lower_bound(prog, esz, True), "bare_metal_streamed": streamed})
    _table(["model", "mode", "planned, host", "lower bound, host", "planned, bare metal", "lower bound, bare metal",
            "bare metal streamed"],
           rows, ["model", "mode", "host_planned", "host_lower_bound", "bare_metal_planned", "bare_metal_lower_bound",
                  "bare_metal_streamed"])
    return rows
