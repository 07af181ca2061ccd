"""The machine's own speed, the baseline every benchmark reports next to its results: one matmul
measurement for every format and device (the CPU benchmarks in GFLOP/s, the GPU one in TFLOP/s)."""

from __future__ import annotations

import time

import numpy as np
import torch


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
