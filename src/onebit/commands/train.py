"""``onebit train``: train a preset (any option overridable) or resume a run directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from onebit.errors import ConfigError
from onebit.rundir import RunDir, check_path, new_run_path, point_latest
from onebit.presets import get_preset
from onebit.train.config import NOT_RESULT_SETTINGS, TrainConfig, field_types


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per TrainConfig field; unset options keep the preset's value."""
    group = parser.add_argument_group("training options (override the preset)")
    types = field_types()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"]
        if types[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=text + ("" if "(default" in text
                                            else f" (default: {'on' if f.default else 'off'})"))
        else:
            group.add_argument(flag, dest=f.name, type=types[f.name], default=None, metavar=f.name.upper(),
                               help=text + ("" if "(default" in text else f" (default: {f.default})"))


def config_overrides(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name, None) is not None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network (a preset, with any option overridden)",
                       description="Train a WRN with the reference recipe. Pick a preset (`onebit presets`) "
                                   "and override any option, or continue a stopped run with --resume. "
                                   "Under torchrun it trains data-parallel on all ranks (same global batch).",
                       )
    p.add_argument("--preset", default=None, help="named preset (see `onebit presets`)")
    p.add_argument("--run-dir", default=None, help="output folder (default: runs/<preset>-<time>, and "
                                                    "runs/latest points at it)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                   help="stop (resumably) after this epoch, keeping the schedule of the full run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_options(p)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    overrides = config_overrides(args)
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after must be an epoch >= 1, got {args.stop_after}")
    if args.resume:
        conflicting = [flag for flag, value in (("--preset", args.preset), ("--run-dir", args.run_dir)) if value]
        if conflicting:
            raise ConfigError(f"--resume continues {args.resume} with its own configuration and folder; drop "
                              f"{' and '.join(conflicting)} (or start a new run without --resume)")
        directory = RunDir(args.resume)
        if not directory.path.is_dir():
            raise ConfigError(f"--resume {args.resume}: no such run directory")
        base = directory.read_config()
        changed = {k for k, v in overrides.items()
                   if k not in NOT_RESULT_SETTINGS and base.get(k) != v}
        if changed:
            raise ConfigError(f"--resume cannot change {', '.join(sorted(changed))}; start a new run instead")
        return TrainConfig.from_dict({**base, **overrides}, source=str(directory.config), recorded=True)
    if args.preset:
        return get_preset(args.preset, **overrides)
    return TrainConfig.from_dict(overrides)


def run(args: argparse.Namespace) -> int:
    from onebit.train.loop import train

    cfg = resolve_config(args)
    if args.stop_after is not None and args.stop_after > cfg.epochs:
        raise ConfigError(f"--stop-after {args.stop_after} is beyond the run's {cfg.epochs} epochs")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not (args.resume or args.run_dir):
        raise ConfigError("under torchrun pass --run-dir (every rank must name the same folder)")
    if args.resume or args.run_dir:
        run_dir = check_path(args.resume or args.run_dir)
    else:
        run_dir = new_run_path("runs", args.preset or cfg.model_config().name)
        point_latest(run_dir)                 # `onebit eval runs/latest` finds the newest run
    result = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress,
                   stop_after=args.stop_after)
    if rank == 0:
        print(json.dumps({"run_dir": str(run_dir), **result}, indent=2))
    return 0
