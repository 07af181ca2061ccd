"""Bare-metal Cortex-M firmware of an exported C runtime: build it, measure it, run it in QEMU.

A folder written by ``onebit export --format c --target cortex-m4`` (or ``cortex-m7``) holds
``cortex-m/`` (reset code, the board's linker script, a semihosting harness) and ``make firmware``.
This module drives that build and reads the result:

* :func:`build_firmware`: ``make firmware MODE=int|int8|float`` (the arena is static, sized for the mode).
* :func:`measure_firmware`: flash and RAM from ``arm-none-eabi-size -A`` (section sizes) and the
  symbol sizes in the linked image (``arm-none-eabi-nm -S``: weights, arena), both read from the ELF
  the linker wrote (its map is next to it). flash = .text (code, packed weights, constants) + .data
  initial values; RAM = .data + .bss (arena, harness buffers) + .stack.
* :func:`run_firmware`: ``qemu-system-arm -M BOARD`` with semihosting; with ``icount`` the emulated
  clock advances 1 ns per executed instruction (``-icount shift=0``), so the SysTick ticks the
  harness reports convert to executed instructions (emulated instruction counts, not cycles).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onebit.errors import ConfigError, OnebitError
from onebit.export.c_build import run_make
from onebit.export.c_contract import EXPORT_INFO
from onebit.export.targets import BARE_METAL_ARM_PACKAGES

SIZE_TOOL = "arm-none-eabi-size"
NM_TOOL = "arm-none-eabi-nm"
QEMU = "qemu-system-arm"
TOOLS = ("arm-none-eabi-gcc", SIZE_TOOL, NM_TOOL, QEMU)
PACKAGES = " ".join(BARE_METAL_ARM_PACKAGES)
STACK_BYTES = 8192
MODES = ("int", "int8", "float")
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 2**20, "MB": 2**20, "MIB": 2**20}


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise OnebitError(f"{', '.join(missing)} not found: install the Debian packages {PACKAGES}")


def parse_bytes(text: str) -> int:
    """``192K``, ``1M``, ``512KB``, ``65536`` -> bytes (K = 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"not a size: {text!r} (use e.g. 192K, 1M or a number of bytes)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def build_firmware(out_dir: Path, mode: str = "int", *, stack: int = STACK_BYTES, flags: str = "",
                   measure_only: bool = False, name: str | None = None) -> Path:
    """``make firmware MODE=mode`` in an exported Cortex-M folder; returns the ELF.

    ``flags``: extra compiler flags (e.g. ``-DONEBIT_NO_DSP`` for the portable integer kernel).
    ``measure_only``: link with 256 MiB memory regions, so that a model too large for the emulated
    board still links and can be measured (such an image is not run). ``name``: copy the ELF to this
    file name in ``out_dir`` (to keep several variants side by side).
    """
    require_tools()
    if mode not in MODES:
        raise ConfigError(f"unknown firmware mode {mode!r}; choose {', '.join(MODES)}")
    out_dir = Path(out_dir)
    if not (out_dir / "cortex-m" / "board.mk").is_file():
        raise OnebitError(f"{out_dir}: not a C export for a Cortex-M target (export with --target cortex-m4)")
    ld = "-Wl,--defsym=OB_FLASH_BYTES=256M -Wl,--defsym=OB_RAM_BYTES=256M" if measure_only else ""
    elf = out_dir / f"firmware-{mode}.elf"
    elf.unlink(missing_ok=True)
    run_make(out_dir, "firmware", timeout=300, MODE=mode, STACK=stack, FW_FLAGS=flags, FW_LDFLAGS=ld)
    if name:
        target = out_dir / name
        shutil.copyfile(elf, target)
        shutil.copyfile(elf.with_suffix(".map"), target.with_suffix(".map"))
        return target
    return elf


@dataclass(frozen=True)
class FirmwareSize:
    """Bytes of one linked firmware image."""

    text: int                 # code + read-only data (packed weights, constants, vector table)
    data: int                 # initialised data (in flash and copied to RAM)
    bss: int                  # zeroed data: the arena and the harness's buffers
    stack: int
    weights: int              # packed sign bits (ob_bits_*), part of text
    arena: int                # the static activation arena, part of bss

    @property
    def flash(self) -> int:
        return self.text + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss + self.stack

    @property
    def code_and_constants(self) -> int:
        return self.text - self.weights


def measure_firmware(elf: Path) -> FirmwareSize:
    require_tools()
    out = subprocess.run([SIZE_TOOL, "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    sec: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            sec[parts[0]] = int(parts[1])
    syms = subprocess.run([NM_TOOL, "-S", "--size-sort", str(elf)], capture_output=True, text=True,
                          check=True).stdout
    weights = arena = 0
    for line in syms.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        size, name = int(parts[1], 16), parts[3]
        if name.startswith("ob_bits_"):
            weights += size
        elif name == "ob_arena":
            arena = size
    text = sec.get(".text", 0) + sec.get(".ARM.exidx", 0)
    return FirmwareSize(text=text, data=sec.get(".data", 0), bss=sec.get(".bss", 0), stack=sec.get(".stack", 0),
                        weights=weights, arena=arena)


def budget_problems(size: FirmwareSize, ram: int | None, flash: int | None) -> list[str]:
    """What exceeds the given RAM / flash budgets (empty when it fits)."""
    problems = []
    if ram is not None and size.ram > ram:
        problems.append(f"RAM {size.ram:,} B > {ram:,} B")
    if flash is not None and size.flash > flash:
        problems.append(f"flash {size.flash:,} B > {flash:,} B")
    return problems


@dataclass
class FirmwareRun:
    """What the harness printed: logits per image (int64 integer logits or float32), ticks per image."""

    mode: str
    logits: np.ndarray
    preds: np.ndarray
    ticks: np.ndarray
    kernels: str
    stack_used: int
    instructions_per_tick: float | None = None

    def instructions(self) -> np.ndarray:
        if self.instructions_per_tick is None:
            raise OnebitError("instruction counts need a run with icount=True")
        return self.ticks * self.instructions_per_tick


def _qemu_cmd(elf: Path, board: str, args: list[str], icount: bool) -> list[str]:
    cmd = [QEMU, "-M", board, "-display", "none", "-monitor", "none", "-serial", "none"]
    if icount:
        cmd += ["-icount", "shift=0"]
    sh = ",".join(["enable=on", "target=native", "chardev=ob", "arg=onebit_mcu", *(f"arg={a}" for a in args)])
    return cmd + ["-chardev", "stdio,id=ob", "-semihosting-config", sh, "-kernel", str(elf)]


def board_of(out_dir: Path) -> str:
    text = (Path(out_dir) / "cortex-m" / "board.mk").read_text()
    m = re.search(r"^BOARD\s*=\s*(\S+)", text, re.M)
    if not m:
        raise OnebitError(f"{out_dir}/cortex-m/board.mk names no BOARD")
    return m.group(1)


def _qemu(cmd: list[str], cwd: Path, timeout: float, images: int | None = None) -> str:
    """QEMU's standard output; with ``images``, a progress bar (stderr) counts the per-image lines."""
    import threading

    from tqdm.auto import tqdm

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        err: list[str] = []
        drain = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        drain.start()
        lines = []
        with tqdm(total=images, disable=True if images is None else None,     # None: only on a terminal
                  desc=f"firmware in {Path(cmd[0]).name}", unit="img", leave=False, dynamic_ncols=True) as bar:
            for line in proc.stdout:
                lines.append(line)
                if line[:1].isdigit():
                    bar.update(1)
        proc.wait()
        drain.join()
    finally:
        timed_out = not timer.is_alive() and proc.returncode != 0
        timer.cancel()
    if timed_out:
        raise OnebitError(f"the firmware did not finish within {timeout:g} s")
    out = "".join(lines)
    if proc.returncode != 0:
        tail = (out + "".join(err)).strip().splitlines()
        raise OnebitError(f"the firmware exited with status {proc.returncode}: {tail[-1] if tail else ''}")
    return out


def instructions_per_tick(elf: Path, board: str, cwd: Path, timeout: float = 60) -> float:
    """Executed instructions per SysTick tick under -icount shift=0, measured with a loop of known length."""
    n = 1_000_000
    out = _qemu(_qemu_cmd(elf, board, ["--tick-check", str(n)], True), cwd, timeout)
    m = re.search(r"loop_instructions (\d+) ticks (\d+)", out)
    if not m or int(m.group(2)) == 0:
        raise OnebitError(f"the timer check printed no tick count: {out.strip()[:200]}")
    return int(m.group(1)) / int(m.group(2))


def run_firmware(elf: Path, images: Path, *, board: str | None = None, icount: bool = True,
                 timeout: float = 600) -> FirmwareRun:
    """Run the firmware in qemu-system-arm on a raw uint8 CHW image file; parse what it prints.

    ``icount`` (default): deterministic emulated clock, 1 ns per instruction, so ticks are meaningful.
    """
    require_tools()
    elf, images = Path(elf), Path(images)
    cwd = elf.parent
    board = board or board_of(cwd)
    n = None                            # images in the file, for the progress bar: its size / one image's bytes
    try:
        meta = json.loads((cwd / EXPORT_INFO).read_text())
        n = images.stat().st_size // (meta["config"]["in_channels"] * meta["image_size"] ** 2)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        pass
    out = _qemu(_qemu_cmd(elf, board, [str(images.resolve())], icount), cwd, timeout, n)
    rows, done = [], None
    for line in out.splitlines():
        if line.startswith("done "):
            done = line.split()
        elif line[:1].isdigit():
            rows.append(line.split())
    if done is None:
        raise OnebitError(f"the firmware printed no summary line: {out.strip()[-200:]}")
    info = dict(zip(done[1::2], done[2::2]))
    mode = info["mode"]
    if mode in ("int", "int8"):
        logits = np.array([[int(v) for v in r[2:-2]] for r in rows], dtype=np.int64)
    else:
        bits = np.array([[int(v, 16) for v in r[2:-2]] for r in rows], dtype=np.uint32)
        logits = bits.view(np.float32)
    run = FirmwareRun(mode=mode, logits=logits, preds=np.array([int(r[1]) for r in rows]),
                      ticks=np.array([int(r[-1]) for r in rows], dtype=np.uint64).astype(np.int64), kernels=info["kernels"],
                      stack_used=int(info["stack_used"]))
    if icount:
        run.instructions_per_tick = instructions_per_tick(elf, board, cwd)
    return run


def fit_report(config, target: str, modes: tuple[str, ...], work_dir: Path, *, ram: str | None = None,
               flash: str | None = None) -> tuple[str, list[str]]:
    """Flash / RAM table of ``config``'s firmware for ``target`` in each mode, and the budget problems.

    Sizes depend on the architecture only (not on the weights or on the calibrated scales, whose
    arrays have fixed lengths), so the firmware is built from a model with the config's shape and
    the integer mode is calibrated on a few synthetic images.
    """
    import torch

    from onebit.export.c_runtime import export_c, read_export_info
    from onebit.export.targets import get_target
    from onebit.models import build_model

    tgt = get_target(target)
    if not tgt.bare_metal:
        raise ConfigError(f"--target {target}: the fit report builds bare-metal firmware (cortex-m targets)")
    require_tools()
    ram_b = parse_bytes(ram) if ram else None
    flash_b = parse_bytes(flash) if flash else None
    torch.manual_seed(0)
    model = build_model(config).eval()
    calib = torch.randint(0, 256, (8, config.in_channels, 32, 32), dtype=torch.uint8)
    out = export_c(model, Path(work_dir) / "c", calibration_images=calib, target=target)
    lines = [f"{config.name} on {target} ({tgt.qemu_machine}), bytes measured from the linked firmware "
             f"(arm-none-eabi-size -A, nm):",
             f"{'mode':<6} {'flash':>11} {'code+const':>11} {'weights':>11} {'RAM':>11} {'arena':>11} "
             f"{'stack':>7} {'other':>7}"]
    problems = []
    has_int8 = read_export_info(out).get("arena_bytes_int8") is not None
    for mode in modes:
        if mode == "int8" and not has_int8:
            lines.append(f"{'int8':<6} (no 8-bit mode: it needs a multiple of 4 channels into every convolution)")
            continue
        size = measure_firmware(build_firmware(out, mode, measure_only=True))
        lines.append(f"{mode:<6} {size.flash:>11,} {size.code_and_constants:>11,} {size.weights:>11,} "
                     f"{size.ram:>11,} {size.arena:>11,} {size.stack:>7,} {size.ram - size.arena - size.stack:>7,}")
        problems += [f"{mode} mode {p}" for p in budget_problems(size, ram_b, flash_b)]
    if ram_b is not None or flash_b is not None:
        budget = ", ".join(f"{k} {v:,} B" for k, v in (("RAM", ram_b), ("flash", flash_b)) if v is not None)
        lines.append(f"budget {budget}: " + ("fits" if not problems else "does NOT fit"))
    return "\n".join(lines) + "\n", problems
