"""Inference speed and memory: the onebit C runtime vs PyTorch eager vs ONNX Runtime, in one run.

The same benchmark as ``onebit bench`` (see ``onebit bench --help`` and src/onebit/bench/inference.py):
for each model, batch-1 latency (median, p95), batch-32 throughput and peak resident memory (each subject
in its own process) of PyTorch eager (BN design, 32-bit), PyTorch eager (1-bit BN-free, weights expanded
to float), ONNX Runtime (CPU EP) -- the baselines -- and the onebit C runtime in float and integer mode --
the subjects -- with MACs, weight bytes, achieved GFLOP/s, the machine's fp32 matmul rate, and the ratios
C / ONNX Runtime.

    python bench/inference.py                                   # WRN-14-4 and WRN-20-10, 1 thread
    python bench/inference.py wrn-8-1 --runs 10 --batch-runs 2  # quick smoke run
"""

import sys

from onebit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
