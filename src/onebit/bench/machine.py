"""The machine's own speed, the baseline every benchmark reports next to its results: one matmul
measurement for every format and device (the CPU benchmarks in GFLOP/s, the GPU one in TFLOP/s); and the
process's resident memory around one call."""

from __future__ import annotations

import time

import numpy as np
import torch

from onebit.bench.subject_ort import status_kb


def matmul_gflops(threads: int | None, n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> float:
    """Matmul rate of this machine in ``dtype`` on ``device`` (PyTorch; on a CPU with ``threads`` threads, None
    or 0 = the current setting): 2 n^3 / the median time of ``reps`` products after 2 warm-ups, seeded data."""
    device = torch.device(device)
    old = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
        b = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
        for _ in range(2):
            a @ b
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


def peak_memory_of(fn, *args) -> dict | None:
    """Run ``fn(*args)`` with the process's peak resident set reset first (Linux: ``5`` written to
    ``/proc/self/clear_refs`` sets VmHWM to the current VmRSS): ``{"peak_rss_mb": VmHWM after,
    "above_start_mb": VmHWM after - VmRSS before}`` in MiB, the memory the call needed beyond what was
    resident already. None where the kernel offers no reset (not Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = status_kb("VmRSS")
    fn(*args)
    peak = status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return {"peak_rss_mb": peak / 1024, "above_start_mb": (peak - before) / 1024}
