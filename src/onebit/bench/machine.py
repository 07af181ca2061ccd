"""The machine's own speed, the baseline every benchmark reports next to its results."""

from __future__ import annotations

import time

import numpy as np
import torch


def matmul_gflops(threads: int, n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Matmul rate of this machine in ``dtype`` (PyTorch, ``threads`` threads): 2 n^3 / median time."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 2 * n ** 3 / float(np.median(times)) / 1e9
