"""CPU training step in NCHW (baseline) vs channels_last / NHWC (subject), the layout onebit trains in.

For each model, builds the net and its training step exactly as ``onebit train`` does on a CPU
(``onebit.train.step.prepare_model`` and ``TrainStep``, SGD from the recipe), once per layout, and times
forward + cross-entropy + backward + SGD update on a fixed CIFAR-sized batch. The two layouts alternate
``--repeats`` times so that drifting machine load hits both alike; the best repeat of each is reported,
with the ratio subject / baseline (images/s). Run it on an otherwise idle machine.

    python bench/cpu_channels_last.py                          # ~2 min on 2 cores
    python bench/cpu_channels_last.py --models 8-1 --steps 5 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import json

import torch

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["8-1", "14-1", "8-2", "8-1-bn"],
                    help="depth-width[-bn] (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per measurement (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats per layout (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=125)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: onebit's default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(default_threads(args.threads))
    print(f"{torch.get_num_threads()} threads, batch {args.batch_size}, best of {args.repeats} x {args.steps} steps")
    print(f"{'model':16s} {'NCHW img/s':>11s} {'NHWC img/s':>11s} {'NHWC/NCHW':>10s}")
    results = []
    for spec in args.models:
        depth, width, *rest = spec.split("-") + [""]
        if not (depth.isdigit() and width.isdigit() and rest in ([""], ["bn", ""])):
            ap.error(f"--models: {spec!r} is not depth-width or depth-width-bn (e.g. 8-1, 8-1-bn)")
        norm = "bn" if rest[0] == "bn" else "none"
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for layout in (False, True):
                try:
                    rates[layout].append(images_per_s(int(depth), int(width), norm, layout, args.steps,
                                                      args.batch_size))
                except ConfigError as exc:
                    ap.error(f"--models {spec}: {exc}")
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


if __name__ == "__main__":
    main()
