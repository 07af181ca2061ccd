"""``onebit bench BENCHMARK``: every benchmark of the project behind one command.

Each benchmark lives in a module of ``onebit.bench`` exposing ``add_arguments(parser)`` and ``run(args)``
(its docstring is its ``--help`` text); it is imported only when it runs, so ``onebit`` starts without
torch. Each prints its baseline and its subject from the same run, and their ratio.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module, one-line summary), in listing order. Add a benchmark by adding a row.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "inference": ("onebit.bench.inference",
                  "C runtime vs PyTorch vs ONNX Runtime: batch-1 latency, throughput, peak memory"),
    "train": ("onebit.bench.train_throughput",
              "CPU training step, float32 vs bf16, against the machine's matmul rate"),
    "layout": ("onebit.bench.layout", "CPU training step, NCHW vs channels_last"),
    "threads": ("onebit.bench.threads", "training thread settings, on an idle machine and beside a busy process"),
    "firmware": ("onebit.bench.firmware",
                 "Cortex-M firmware: flash/RAM, emulated instructions, arena plans, accuracy on the firmware"),
    "gpu-train": ("onebit.bench.gpu_train", "GPU training: images/s, MFU, BN vs shifted ReLU step time and memory"),
    "imagenet-loader": ("onebit.bench.imagenet_loader", "ImageNet JPEG decoding and augmentation, images/s"),
}


def register(sub: argparse._SubParsersAction) -> None:
    listing = "\n".join(f"  {name:<16} {summary}" for name, (_, summary) in BENCHMARKS.items())
    p = sub.add_parser("bench", help="benchmarks: inference, training, threads, firmware, GPU, data loading",
                       description=f"Run one of the project's benchmarks; `onebit bench BENCHMARK --help` "
                                   f"for its options.\n\nbenchmarks:\n{listing}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=list(BENCHMARKS), metavar="BENCHMARK", help="which benchmark (listed above)")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options")
    p.set_defaults(func=run, parser_class=type(p))


def benchmark_parser(name: str, parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
                     ) -> tuple[argparse.ArgumentParser, object]:
    """The argument parser of benchmark ``name`` and its module."""
    module = importlib.import_module(BENCHMARKS[name][0])
    parser = parser_class(prog=f"onebit bench {name}", description=module.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser, module


def run(args: argparse.Namespace) -> int:
    parser, module = benchmark_parser(args.benchmark, args.parser_class)
    return int(module.run(parser.parse_args(args.options)) or 0)
