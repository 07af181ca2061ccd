"""CPU training step in NCHW (baseline) vs channels_last / NHWC (subject), the layout onebit trains in.

For each model, builds the net and its training step exactly as ``onebit train`` does on a CPU
(``onebit.train.step.prepare_model`` and ``TrainStep``, SGD from the recipe), once per layout, and times
forward + cross-entropy + backward + SGD update on a fixed CIFAR-sized batch. The two layouts alternate
``--repeats`` times so that drifting machine load hits both alike; the best repeat of each is reported,
with the ratio subject / baseline (images/s). Run it on an otherwise idle machine.

    onebit bench layout                                            # ~2 min on 2 cores
    onebit bench layout --models wrn-8-1 --steps 5 --repeats 1     # smoke run
"""

from __future__ import annotations

import argparse
import json

import torch

from onebit.bench.models import model_sizes
from onebit.bench.train_throughput import time_steps
from onebit.errors import ConfigError
from onebit.models import build_model
from onebit.train.config import TrainConfig
from onebit.train.optimizer import make_optimizer
from onebit.train.step import TrainStep, prepare_model
from onebit.train.threads import default_threads


def images_per_s(depth: int, width: int, norm: str, channels_last: bool, steps: int, batch: int) -> float:
    """Training images per second of one freshly built net and step in the given layout."""
    torch.manual_seed(0)
    cfg = TrainConfig(depth=depth, width=width, norm=norm, temperature=5.0 if norm == "none" else None)
    net, module = prepare_model(build_model(cfg.model_config()), torch.device("cpu"), channels_last)
    step = TrainStep(module, make_optimizer(net, cfg), torch.device("cpu"), amp=False, channels_last=channels_last)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return batch / time_steps(lambda: step(x, y, 0.1), steps, warmup=3)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--models", default="wrn-8-1,wrn-14-1,wrn-8-2,wrn-8-1-bn",
                    help="comma-separated model names, wrn-D-K or wrn-D-K-bn (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per measurement (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats per layout (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=125)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: onebit's default)")
    ap.add_argument("--json", default=None, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    sizes = model_sizes(args.models)
    if not (1 <= args.batch_size <= 50_000 and 1 <= args.steps <= 10_000 and 1 <= args.repeats <= 100
            and 0 <= args.threads <= 1024):
        raise ConfigError("need 1 <= --batch-size <= 50000, 1 <= --steps <= 10000, 1 <= --repeats <= 100, "
                          "0 <= --threads <= 1024")
    torch.set_num_threads(default_threads(args.threads))
    print(f"{torch.get_num_threads()} threads, batch {args.batch_size}, best of {args.repeats} x {args.steps} steps")
    print(f"{'model':16s} {'NCHW img/s':>11s} {'NHWC img/s':>11s} {'NHWC/NCHW':>10s}")
    results = []
    for depth, width, norm in sizes:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for layout in (False, True):
                rates[layout].append(images_per_s(depth, width, norm, layout, args.steps, args.batch_size))
        base, subject = max(rates[False]), max(rates[True])
        name = f"wrn-{depth}-{width}-{'bn' if norm == 'bn' else 'srelu'}"
        print(f"{name:16s} {base:11.0f} {subject:11.0f} {subject / base:9.2f}x")
        results.append({"model": name, "nchw_images_per_s": rates[False], "nhwc_images_per_s": rates[True],
                         "ratio_best": subject / base})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "batch_size": args.batch_size, "steps": args.steps,
                       "results": results}, f, indent=2)
            f.write("\n")
    return 0
