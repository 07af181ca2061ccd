"""Training throughput on this machine: the full step vs its parts vs the machine's fp32 matmul rate.

Measures, in one run and on one device:
  * fp32 matmul GFLOP/s (square n x n, all cores)                              -- the machine baseline
  * augmentation + batching alone (epoch_batches over the on-device dataset)   -- its share of the step
  * bare forward + backward + SGD step on one fixed batch                      -- the model's own cost
  * the full training step (batching, augmentation, forward, backward, step)   -- what training gets
The model and step are built as ``onebit train`` builds them on a CPU (``prepare_model``, ``TrainStep``:
channels_last by default, ``--no-channels-last`` for NCHW).
Achieved GFLOP/s = 3 x forward conv FLOPs per image x images/s (forward + 2 x backward).

    python bench/train_throughput.py                      # WRN-14-4 (= WRN-16-4 in Zagoruyko's count), batch 125
    python bench/train_throughput.py --depth 8 --width 1 --steps 5   # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from onebit.bench.machine import matmul_gflops
from onebit.data.augment import Augmentation
from onebit.data.batches import epoch_batches
from onebit.models.summary import summarize
from onebit.models import WRNConfig, build_model
from onebit.train.config import TrainConfig
from onebit.train.loop import make_optimizer
from onebit.train.step import TrainStep, prepare_model


def time_steps(step, n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=14,
                    help="6n+2; 14 has 2 blocks per stage, the WRN-16-4 of Zagoruyko & Komodakis")
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--norm", default="none", choices=("none", "bn"))
    ap.add_argument("--weight-bits", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=125)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="memory format, as onebit train's option (default: on)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = WRNConfig(depth=args.depth, width=args.width, norm=args.norm, weight_bits=args.weight_bits)
    cpu = torch.device("cpu")
    model, module = prepare_model(build_model(cfg), cpu, args.channels_last)
    optimizer = make_optimizer(model, TrainConfig(depth=args.depth, width=args.width, norm=args.norm,
                                                  weight_bits=args.weight_bits))
    step = TrainStep(module, optimizer, cpu, amp=False, channels_last=args.channels_last)
    flops_per_image = 3 * 2 * summarize(cfg).macs  # forward + 2 x backward conv FLOPs
    b = args.batch_size
    # a synthetic dataset the size of CIFAR-10's training set, kept as one uint8 tensor
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50_000,))
    augment = Augmentation()

    def train_step(x, y):
        step(x, y, 0.1)

    fixed_x, fixed_y = images[:b].float(), labels[:b]
    stream = iter(())

    def next_batch():
        nonlocal stream
        try:
            return next(stream)
        except StopIteration:
            stream = epoch_batches(images, labels, b, seed=0, epoch=int(time.time()), augment=augment)
            return next(stream)

    matmul = matmul_gflops(torch.get_num_threads())
    t_batch = time_steps(next_batch, args.steps * 5)
    t_bare = time_steps(lambda: train_step(fixed_x, fixed_y), args.steps)
    t_full = time_steps(lambda: train_step(*next_batch()), args.steps)
    matmul_after = matmul_gflops(torch.get_num_threads())

    def rate(t):
        return b / t, flops_per_image * b / t / 1e9

    results = {
        "model": cfg.name, "batch_size": b, "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "device": "cpu", "forward_conv_gflop_per_image": flops_per_image / 3 / 1e9,
        "matmul_gflops": (matmul + matmul_after) / 2, "matmul_gflops_before_after": [matmul, matmul_after],
        "batching_augmentation_ms": t_batch * 1e3,
        "bare_step_ms": t_bare * 1e3, "bare_images_per_s": rate(t_bare)[0], "bare_gflops": rate(t_bare)[1],
        "full_step_ms": t_full * 1e3, "full_images_per_s": rate(t_full)[0], "full_gflops": rate(t_full)[1],
    }
    results["full_vs_matmul"] = results["full_gflops"] / results["matmul_gflops"]
    results["batching_share_of_full_step"] = t_batch / t_full
    print(f"model {cfg.name}, batch {b}, {results['threads']} threads, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, "
          f"{results['forward_conv_gflop_per_image']:.3f} forward conv GFLOP/image")
    print(f"baseline  fp32 matmul (2048^2)          {results['matmul_gflops']:8.1f} GFLOP/s "
          f"(before {matmul:.1f}, after {matmul_after:.1f})")
    print(f"part      batching + augmentation       {t_batch * 1e3:8.2f} ms/batch")
    print(f"part      bare fwd+bwd+step (fixed)     {t_bare * 1e3:8.2f} ms/step  {rate(t_bare)[0]:7.1f} img/s "
          f"{rate(t_bare)[1]:7.1f} GFLOP/s")
    print(f"subject   full training step            {t_full * 1e3:8.2f} ms/step  {rate(t_full)[0]:7.1f} img/s "
          f"{rate(t_full)[1]:7.1f} GFLOP/s")
    print(f"ratio     full step / matmul rate       {results['full_vs_matmul']:8.1%}   (target >= 70%)")
    print(f"ratio     batching share of full step   {results['batching_share_of_full_step']:8.1%}   "
          f"(target <= 5%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
