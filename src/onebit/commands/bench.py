"""``onebit bench``: batch-1 latency, batch throughput and peak memory of five ways to run a model."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="inference benchmark: C runtime vs PyTorch vs ONNX Runtime (latency, throughput, memory)",
        description="For each model, on this machine and in one run: batch-1 latency (median, p95), batch "
                    "throughput and peak resident memory (each subject in its own process) of PyTorch eager "
                    "(BN design, 32-bit), PyTorch eager (the 1-bit BN-free model, weights expanded to float), "
                    "ONNX Runtime (CPU), and the onebit C runtime in float and integer mode; with MACs, "
                    "weight bytes, achieved GFLOP/s and the machine's fp32 matmul rate. Prints a table and "
                    "writes OUT/inference.json and OUT/inference.png (latency vs memory).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="wrn-D-K (random BN-free 1-bit weights) or a model file "
                        "(default: wrn-14-4 wrn-20-10; WRN-14-4 has the 2 blocks per stage that the "
                        "WRN-16-4 of the usual 6n+4 naming has)")
    p.add_argument("--subjects", default="torch-bn-fp32,torch-1bit,onnxruntime,c-float,c-int",
                   help="comma-separated subset of the subjects")
    p.add_argument("--runs", type=int, default=50, help="timed batch-1 calls per subject (after warm-up)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement (<= 64)")
    p.add_argument("--batch-runs", type=int, default=5, help="timed batch calls per subject")
    p.add_argument("--threads", type=int, default=1, help="threads for every subject")
    p.add_argument("--calibrate", type=int, default=256,
                   help="CIFAR-10 training images that calibrate the integer mode")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: $ONEBIT_DATA or cache); "
                                                    "random images if absent")
    p.add_argument("-o", "--out", default="bench-results", help="folder for inference.json and inference.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onebit.bench.inference import DEFAULT_MODELS, BenchConfig, format_table, run_benchmark

    cfg = BenchConfig(models=args.models or list(DEFAULT_MODELS),
                      subjects=[s.strip() for s in args.subjects.split(",") if s.strip()],
                      runs=args.runs, batch=args.batch, batch_runs=args.batch_runs, threads=args.threads,
                      data_dir=args.data_dir, calibrate=args.calibrate, out_dir=Path(args.out))
    report = run_benchmark(cfg, command="onebit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print()
    print(format_table(report))
    print(f"\nwrote {cfg.out_dir / 'inference.json'} and {cfg.out_dir / 'inference.png'}")
    return 0
