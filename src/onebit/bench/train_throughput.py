"""Training throughput on this machine: float32 vs bf16 autocast, against the machine's matmul rate in both.

Measures, in one run and on one device, for each model:
  * the machine's matmul GFLOP/s in float32 and in bf16 (square 2048^2, all threads) -- the baselines
  * augmentation + batching alone (epoch_batches over the on-device dataset)           -- its share of the step
  * bare forward + backward + SGD step on one fixed batch, per format                  -- the model's own cost
  * the full training step (batching, augmentation, forward, backward, step), per format -- what training gets
  * memory: what autograd keeps from a step's forward pass for its backward pass (the activation memory,
    exact), and the process's peak resident memory over ``--steps`` full steps (Linux: the peak reset
    before; memory freed earlier stays resident, so this is an upper bound, not the step's own need)
and the bf16 / float32 ratio of the full step's images/s. The formats alternate ``--repeats`` times and the
best of each is kept, so a slow moment of a shared machine does not fall on one format only.
The model and step are built as ``onebit train`` builds them on a CPU (``prepare_model``, ``TrainStep``:
channels_last by default, ``--no-channels-last`` for NCHW; bf16 = ``amp`` on).
Achieved GFLOP/s = 3 x forward conv FLOPs per image x images/s (forward + 2 x backward).

    onebit bench train --models wrn-8-1,wrn-8-2,wrn-14-4 --steps 6      # the docs' table
    onebit bench train --models wrn-8-1 --steps 2 --formats fp32        # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from onebit.bench.machine import matmul_gflops, peak_memory_of
from onebit.bench.models import model_sizes
from onebit.cpus import usable_cpus
from onebit.data.augment import Augmentation
from onebit.data.batches import epoch_batches
from onebit.errors import ConfigError
from onebit.models import WRNConfig, build_model
from onebit.models.summary import summarize
from onebit.train.config import TrainConfig
from onebit.train.optimizer import make_optimizer
from onebit.train.precision import native_bf16_cpu
from onebit.train.step import TrainStep, prepare_model

FORMATS = {"fp32": False, "bf16": True}      # format name -> TrainStep's amp


def time_steps(step, n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def saved_for_backward_bytes(step, *args) -> int:
    """Bytes autograd keeps from the forward pass for the backward pass in one ``step(*args)`` (every saved
    tensor's storage counted once): the activation memory a training step needs, BN's included."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(*args)
    return sum(storages.values())


def parse_formats(text: str) -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise ConfigError(f"--formats: {text!r}; choose from {', '.join(FORMATS)} (comma-separated)")
    return names


def measure_model(depth: int, width: int, norm: str, args: argparse.Namespace, formats: list[str],
                  images: torch.Tensor, labels: torch.Tensor) -> dict:
    torch.manual_seed(0)
    cfg = WRNConfig(depth=depth, width=width, norm=norm, weight_bits=args.weight_bits)
    cpu = torch.device("cpu")
    model, module = prepare_model(build_model(cfg), cpu, args.channels_last)
    optimizer = make_optimizer(model, TrainConfig(depth=depth, width=width, norm=norm,
                                                  weight_bits=args.weight_bits))
    steps = {f: TrainStep(module, optimizer, cpu, amp=FORMATS[f], channels_last=args.channels_last)
             for f in formats}
    flops_per_image = 3 * 2 * summarize(cfg).macs  # forward + 2 x backward conv FLOPs
    b = args.batch_size
    augment = Augmentation()
    fixed_x, fixed_y = images[:b].float(), labels[:b]
    stream = iter(())

    def next_batch():
        nonlocal stream
        try:
            return next(stream)
        except StopIteration:
            stream = epoch_batches(images, labels, b, seed=0, epoch=int(time.time()), augment=augment)
            return next(stream)

    t_batch = time_steps(next_batch, args.steps * 5)
    bare = {f: [] for f in formats}
    full = {f: [] for f in formats}
    for _ in range(args.repeats):
        for f in formats:
            bare[f].append(time_steps(lambda: steps[f](fixed_x, fixed_y, 0.01), args.steps))
            full[f].append(time_steps(lambda: steps[f](*next_batch(), 0.01), args.steps))
    memory = {f: peak_memory_of(time_steps, lambda: steps[f](*next_batch(), 0.01), args.steps, 0) for f in formats}
    saved = {f: saved_for_backward_bytes(steps[f], fixed_x, fixed_y, 0.01) for f in formats}
    row = {"model": cfg.name, "forward_conv_gflop_per_image": flops_per_image / 3 / 1e9,
           "batching_augmentation_ms": t_batch * 1e3, "formats": {}}
    for f in formats:
        t_bare, t_full = min(bare[f]), min(full[f])
        row["formats"][f] = {
            "bare_step_ms": t_bare * 1e3, "bare_images_per_s": b / t_bare,
            "bare_gflops": flops_per_image * b / t_bare / 1e9,
            "full_step_ms": t_full * 1e3, "full_images_per_s": b / t_full,
            "full_gflops": flops_per_image * b / t_full / 1e9,
            "full_step_ms_each_repeat": [t * 1e3 for t in full[f]],
            "batching_share_of_full_step": t_batch / t_full,
            "memory": memory[f],
            "saved_for_backward_mb": saved[f] / 2**20,
        }
    if "fp32" in formats and "bf16" in formats:
        row["bf16_vs_fp32"] = (row["formats"]["bf16"]["full_images_per_s"]
                               / row["formats"]["fp32"]["full_images_per_s"])
    return row


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--models", default="wrn-14-4",
                    help="comma-separated model names, wrn-DEPTH-WIDTH (default: wrn-14-4, Zagoruyko's WRN-16-4)")
    ap.add_argument("--formats", default="fp32,bf16", help="fp32, bf16 or both (default: fp32,bf16)")
    ap.add_argument("--norm", default="none", choices=("none", "bn"),
                    help="design of every model (a wrn-D-K-bn name is the BN design in any case)")
    ap.add_argument("--weight-bits", type=int, default=1, choices=(1, 32))
    ap.add_argument("--batch-size", type=int, default=125)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per measurement (default: 6)")
    ap.add_argument("--repeats", type=int, default=2, help="alternations of the formats; best kept (default: 2)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="memory format, as onebit train's option (default: on)")
    ap.add_argument("--json", default=None, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    sizes = [(d, w, "bn" if norm == "bn" else args.norm) for d, w, norm in model_sizes(args.models)]
    formats = parse_formats(args.formats)
    if not (1 <= args.batch_size <= 50_000 and 1 <= args.steps <= 10_000 and 1 <= args.repeats <= 100
            and 0 <= args.threads <= 1024):
        raise ConfigError("need 1 <= --batch-size <= 50000, 1 <= --steps <= 10000, 1 <= --repeats <= 100, "
                          "0 <= --threads <= 1024")

    torch.set_num_threads(args.threads or len(usable_cpus()))
    threads = torch.get_num_threads()
    native, evidence = native_bf16_cpu()
    # a synthetic dataset the size of CIFAR-10's training set, kept as one uint8 tensor
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50_000,))
    matmul = {f: [matmul_gflops(threads, dtype=torch.bfloat16 if FORMATS[f] else torch.float32)]
              for f in formats}
    rows = [measure_model(d, w, norm, args, formats, images, labels) for d, w, norm in sizes]
    for f in formats:                                     # the baselines again, after: drift shows up here
        matmul[f].append(matmul_gflops(threads, dtype=torch.bfloat16 if FORMATS[f] else torch.float32))
    results = {"batch_size": args.batch_size, "threads": threads, "channels_last": args.channels_last,
               "device": "cpu", "native_bf16": native, "native_bf16_evidence": evidence,
               "torch": torch.__version__, "norm": args.norm, "weight_bits": args.weight_bits,
               "matmul_gflops": {f: sum(v) / 2 for f, v in matmul.items()},
               "matmul_gflops_before_after": matmul, "results": rows}
    for row in rows:
        for f, r in row["formats"].items():
            r["full_vs_matmul"] = r["full_gflops"] / results["matmul_gflops"][f]

    print(f"batch {args.batch_size}, {threads} threads, {'channels_last' if args.channels_last else 'NCHW'}, "
          f"torch {torch.__version__}; native bf16: {'yes' if native else 'no'} ({evidence})")
    for f in formats:
        before, after = matmul[f]
        print(f"baseline  {f} matmul 2048^2  {results['matmul_gflops'][f]:8.1f} GFLOP/s "
              f"(before {before:.1f}, after {after:.1f})")
    for row in rows:
        print(f"{row['model']}: {row['forward_conv_gflop_per_image']:.3f} forward conv GFLOP/image, "
              f"batching + augmentation {row['batching_augmentation_ms']:.2f} ms/batch")
        for f, r in row["formats"].items():
            print(f"  subject {f}  bare {r['bare_step_ms']:8.2f} ms/step  full {r['full_step_ms']:8.2f} ms/step "
                  f"{r['full_images_per_s']:7.1f} img/s {r['full_gflops']:7.1f} GFLOP/s "
                  f"= {r['full_vs_matmul']:6.1%} of {f} matmul  saved for backward "
                  f"{r['saved_for_backward_mb']:.1f} MiB" +
                  (f"  peak RSS {r['memory']['peak_rss_mb']:.0f} MiB ({r['memory']['above_start_mb']:+.0f} over "
                   f"the start)" if r["memory"] else ""))
        if "bf16_vs_fp32" in row:
            print(f"  ratio   bf16 / fp32 full-step images/s  {row['bf16_vs_fp32']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
