"""Every compile of an exported C project goes through its Makefile and ``onebit_target.mk``: the Python side
names make goals and variables (the SIMD variant, the thread count, the compiler), never compiler flags,
so the flags are written once, in ``onebit/csrc/Makefile`` and the target records of ``targets.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from onebit.errors import ConfigError, OnebitError

# SIMD variants of a host build (the Makefile's SIMD variable): -march=native picks the AVX-512 or AVX2
# kernels the CPU has; "portable" the plain C99 kernels; "none" no SIMD flags at all (strict C99 on x86-64).
SIMD_VARIANTS = {"native": "-march=native", "avx2": "-mavx2 -mfma", "portable": "-DONEBIT_PORTABLE", "none": ""}


def simd_flags(variant: str) -> str:
    if variant not in SIMD_VARIANTS:
        raise ConfigError(f"simd must be one of {', '.join(SIMD_VARIANTS)}, got {variant!r}")
    return SIMD_VARIANTS[variant]


def run_make(out_dir: str | Path, *goals: str, timeout: float = 600, check: bool = True,
             **variables: str | int) -> subprocess.CompletedProcess:
    """``make -C out_dir GOALS VAR=value...``; with ``check``, OnebitError naming the goal and make's last
    line when it fails."""
    cmd = ["make", "--no-print-directory", "-C", str(out_dir), *goals,
           *(f"{name}={value}" for name, value in variables.items())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["make failed"]
        raise OnebitError(f"make {' '.join(goals)} failed in {out_dir}: {tail[0]}")
    return proc


def host_compiler() -> str:
    """The build machine's C compiler: ``$CC`` or ``cc``, resolved on PATH."""
    cc = os.environ.get("CC", "cc")
    path = shutil.which(cc)
    if path is None:
        raise OnebitError(f"no C compiler found ({cc!r} is not on PATH; set CC)")
    return path


def compiler_id(cc: str) -> str:
    """The first line of ``cc --version`` (part of a build cache key)."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out.splitlines()[0] if out else cc
