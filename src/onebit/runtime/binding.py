"""ctypes binding to the onebit C runtime: compile the exported sources with the system compiler, cache
the shared library, and run it on numpy / torch images.

The library is built from exactly the folder ``onebit export --format c`` writes (same kernels, same
arithmetic as the command-line demo), by its own Makefile: ``make shared`` with ``-Werror``, the SIMD
variant ``-march=native`` (falling back to the portable kernels if the compiler rejects it) and pthreads
(``onebit.export.c_build``). Libraries are cached under ``$ONEBIT_CACHE_DIR`` (default
``~/.cache/onebit``)/c_runtime, keyed by a hash of the sources, the Makefile, the variant, the compiler and
the CPU, and written atomically.

A compiled library knows the fingerprint of the model it was generated from
(:func:`onebit.export.c_program.model_fingerprint`); :meth:`CRuntime.check` refuses any other model.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from onebit.cache import cache_dir
from onebit.cpus import usable_cpus
from onebit.errors import ConfigError, OnebitError, RuntimeMismatchError
from onebit.export import c_contract
from onebit.export.c_build import compiler_id, host_compiler, run_make, simd_flags
from onebit.export.c_program import model_fingerprint
from onebit.export.c_runtime import STATIC_FILES, TEMPLATES, export_c, read_export_info

MODES = c_contract.MODES
FLOAT, INT, INT8 = MODES["float"], MODES["int"], MODES["int8"]

def cache_root() -> Path:
    return cache_dir("c_runtime")


def _cpu_id() -> str:
    try:
        flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        return platform.machine() + (flags.group(1) if flags else "")
    except OSError:
        return platform.machine()


def _digest(parts: list[bytes | str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:24]


def compile_export(src: str | Path, *, simd: str = "native", threads: int | None = None,
                   cache_dir: str | Path | None = None) -> "CRuntime":
    """Compile (or reuse from the cache) the C export folder ``src`` into a shared library and load it.

    ``simd``: a variant of ``onebit.export.c_build.SIMD_VARIANTS`` ('native', 'avx2', 'portable', 'none').
    ``threads``: the most threads the library accepts (default: the CPUs this process may use).
    """
    src = Path(src)
    info = read_export_info(src)
    simd_flags(simd)                                   # refuses an unknown variant
    threads = max(1, int(threads or len(usable_cpus())))
    cc = host_compiler()
    build_files = sorted(p for p in src.iterdir() if p.suffix in (".c", ".h", ".mk") or p.name == "Makefile")
    key = _digest([p.name.encode() + b"\0" + p.read_bytes() for p in build_files] +
                  [simd, f"threads {threads}", compiler_id(cc), _cpu_id()])
    out = Path(cache_dir) / "c_runtime" if cache_dir else cache_root()
    lib_dir = out / f"{info['name']}-{key}"
    lib = lib_dir / "libonebit.so"
    if not lib.is_file():
        print(f"compiling the C runtime (first use, cached in {lib_dir}) ...", file=sys.stderr, flush=True)
        lib_dir.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix="build.", dir=lib_dir))
        try:
            for p in build_files:
                shutil.copyfile(p, build / p.name)
            for variant in ([simd, "portable"] if simd == "native" else [simd]):   # compiler without -march=native
                res = run_make(build, "libonebit.so", check=False, CC=cc, ARCH="", SIMD=simd_flags(variant),
                               THREADS=threads, WERROR="-Werror", BARE_METAL=0)
                if res.returncode == 0:
                    break
            if res.returncode != 0:
                tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
                raise OnebitError(f"compiling the C runtime failed: {' / '.join(tail)}")
            shutil.copyfile(src / c_contract.EXPORT_INFO, lib_dir / c_contract.EXPORT_INFO)
            os.replace(build / "libonebit.so", lib)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return CRuntime(lib_dir)


def build_runtime(model, *, calibration_images=None, calibration_count: int = 256, image_size: int = 32,
                  cache_dir: str | Path | None = None, simd: str = "native",
                  threads: int | None = None) -> "CRuntime":
    """Export ``model`` as C (cached by model fingerprint and calibration data), compile and load it."""
    model_id = model_fingerprint(model)
    calib = None
    if calibration_images is not None:
        calib = np.ascontiguousarray(np.asarray(calibration_images, dtype=np.uint8)[:calibration_count])
    template_digest = _digest([(TEMPLATES / f).read_bytes() for f in STATIC_FILES])
    key = _digest([model_id, str(image_size), template_digest,
                   calib.tobytes() if calib is not None else b"no-int"])
    out = Path(cache_dir) / "c_runtime" if cache_dir else cache_root()
    src = out / f"src-{key}"
    if not (src / c_contract.EXPORT_INFO).is_file():
        calibrating = f", calibrating the integer mode on {len(calib)} images" if calib is not None else ""
        print(f"exporting {model.config.name} as C sources{calibrating} (first use, cached in {src}) ...",
              file=sys.stderr, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="src.", dir=out))
        try:
            export_c(model, tmp, image_size=image_size, calibration_images=calib,
                     calibration_count=calibration_count)
            try:
                os.replace(tmp, src)
            except OSError:          # another process finished the same export first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return compile_export(src, simd=simd, threads=threads, cache_dir=cache_dir)


class CRuntime:
    """A compiled onebit C runtime (``libonebit.so`` + ``onebit_model.json`` in ``lib_dir``)."""

    def __init__(self, lib_dir: str | Path):
        self.lib_dir = Path(lib_dir)
        self.info = read_export_info(self.lib_dir)
        try:
            lib = ctypes.CDLL(str(self.lib_dir / "libonebit.so"))
        except OSError as exc:
            raise OnebitError(f"cannot load the C runtime in {self.lib_dir}: {exc}") from None
        lib.onebit_model_id.restype = ctypes.c_char_p
        lib.onebit_kernel_name.restype = ctypes.c_char_p
        lib.onebit_kernel8_name.restype = ctypes.c_char_p
        lib.onebit_arena_bytes.restype = ctypes.c_size_t
        lib.onebit_arena_bytes.argtypes = [ctypes.c_int]
        lib.onebit_input_bytes.restype = ctypes.c_size_t
        lib.onebit_run.restype = ctypes.c_int
        lib.onebit_run.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._lib = lib
        self.model_id = lib.onebit_model_id().decode()
        if self.model_id != self.info["model_id"]:
            raise RuntimeMismatchError(f"{self.lib_dir}: library and onebit_model.json disagree")
        self.kernels = lib.onebit_kernel_name().decode()
        self.num_classes = lib.onebit_num_classes()
        self.input_bytes = lib.onebit_input_bytes()
        self.has_int = bool(lib.onebit_has_int())
        self.has_int8 = bool(lib.onebit_has_int8())
        self.kernels8 = lib.onebit_kernel8_name().decode()
        self.max_threads = lib.onebit_max_threads()
        self._arenas: dict[tuple[int, int], tuple[np.ndarray, int]] = {}

    @property
    def name(self) -> str:
        return self.info["name"]

    def check(self, model) -> None:
        """Raise :class:`RuntimeMismatchError` unless ``model`` (a WideResNet or a model file path) is the
        model this library was generated from (same config, sign bits and BN statistics)."""
        what = model
        if isinstance(model, (str, Path)):
            from onebit.loading import load_model_file

            model, _ = load_model_file(model)
        fp = model_fingerprint(model)
        if fp != self.model_id:
            raise RuntimeMismatchError(
                f"{what if isinstance(what, (str, Path)) else model.config.name} does not match the compiled C "
                f"runtime in {self.lib_dir} (built for {self.name} {self.model_id[:12]}, got {fp[:12]}); "
                f"export and build the runtime for this model")

    def _arena(self, mode: int, workers: int) -> tuple[np.ndarray, int, int]:
        per = self._lib.onebit_arena_bytes(mode)
        key = (mode, workers)
        if key not in self._arenas:
            buf = np.zeros(per * workers + c_contract.SLOT_ALIGN, dtype=np.uint8)
            offset = (-buf.ctypes.data) % c_contract.SLOT_ALIGN
            self._arenas[key] = (buf, offset)
        buf, offset = self._arenas[key]
        return buf, buf.ctypes.data + offset, per * workers

    def run(self, images, mode: str = "float", threads: int = 1, batch_size: int = 256,
            return_int: bool = False, progress: bool | None = False):
        """Logits (float32, N x classes) of ``images`` (uint8 N x C x H x W, raw pixels).

        ``mode``: 'float', 'int' (int16) or 'int8' (8-bit activations). With ``return_int`` (integer
        modes) also the integer logits (int32).
        ``progress``: a bar over the batches on stderr (None: only when stderr is a terminal).
        """
        from tqdm.auto import tqdm

        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if (mode == "int" and not self.has_int) or (mode == "int8" and not self.has_int8):
            raise ConfigError(f"the C runtime {self.name} was exported without the {mode} mode "
                              f"(export with calibration images, e.g. `--calibrate 256`"
                              f"{'; the 8-bit mode needs a multiple of 4 channels into every convolution' if mode == 'int8' else ''})")
        if isinstance(images, torch.Tensor):
            images = images.numpy()
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images[0].size != self.input_bytes:
            raise ConfigError(f"the C runtime takes uint8 images (N, C, H, W) of {self.input_bytes} values each, "
                              f"got {images.dtype} {images.shape}")
        images = np.ascontiguousarray(images)
        n = len(images)
        threads = max(1, min(int(threads), self.max_threads))
        logits = np.zeros((n, self.num_classes), dtype=np.float32)
        qlogits = np.zeros((n, self.num_classes), dtype=np.int32)
        workers = min(threads, max(1, batch_size)) if n > 1 else 1
        buf, arena, arena_bytes = self._arena(MODES[mode], workers)
        starts = range(0, n, batch_size)
        off = True if progress is False or len(starts) < 2 else (None if progress is None else False)  # None: tty
        for start in tqdm(starts, desc=f"C runtime ({mode})", unit="batch", leave=False, dynamic_ncols=True,
                          disable=off):
            stop = min(n, start + batch_size)
            rc = self._lib.onebit_run(MODES[mode], images[start:stop].ctypes.data, stop - start,
                                      logits[start:stop].ctypes.data, qlogits[start:stop].ctypes.data,
                                      arena, arena_bytes, threads)
            if rc != 0:
                raise OnebitError(f"C runtime error {rc}: {c_contract.ERROR_MEANING.get(rc, 'unknown')}")
        del buf
        return (logits, qlogits) if return_int else logits
