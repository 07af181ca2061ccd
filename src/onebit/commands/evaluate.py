"""``onebit eval``: top-1, top-5 and per-class accuracy of a checkpoint or packed model on a test set."""

from __future__ import annotations

import argparse
import json

from onebit.errors import ConfigError
from onebit.train.config import check_device_name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint, run directory or packed model",
                       description="Print top-1 / top-5 and per-class accuracy on the test set.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="checkpoint.safetensors, a run directory, or a packed .onebit model")
    p.add_argument("--dataset", default=None, help="cifar10 or cifar100 (default: from the model)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $ONEBIT_DATA or cache)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split to score")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--crops", type=int, choices=(1, 25), default=1,
                   help="ImageNet models: centre crop, or the 25 crops (5 scales x 5 positions) of ICLR 2018")
    c = p.add_argument_group("C runtime (--engine c)")
    c.add_argument("--engine", choices=("torch", "c"), default="torch",
                   help="torch: PyTorch; c: the onebit C runtime via its Python binding (exported and compiled "
                        "with the system cc on first use, cached)")
    c.add_argument("--c-mode", choices=("float", "int", "int8"), default=None,
                   help="C runtime arithmetic: float32, int16 fixed point or 8-bit activations (both calibrated "
                        "on training images)")
    c.add_argument("--calibrate", type=int, default=None, metavar="N",
                   help="training images that choose the integer mode's scales (default: 256)")
    c.add_argument("--c-sources", default=None, metavar="DIR",
                   help="compile this `onebit export --format c` folder instead of exporting MODEL; refused "
                        "if it was generated from another model")
    c.add_argument("--threads", type=int, default=None, help="C runtime threads (default: 1)")
    p.set_defaults(func=run)


C_DEFAULTS = {"c_mode": "float", "calibrate": 256, "c_sources": None, "threads": 1}


def check_options(args: argparse.Namespace) -> None:
    from onebit.export.fixed_point import MAX_CALIBRATION

    if args.engine != "c":
        given = [f"--{k.replace('_', '-')}" for k in C_DEFAULTS if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} applies to the C runtime only; add --engine c or drop it")
    for key, value in C_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--calibrate", args.calibrate, 1),
                             ("--threads", args.threads, 1)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if args.calibrate > MAX_CALIBRATION:
        raise ConfigError(f"--calibrate {args.calibrate} is above the {MAX_CALIBRATION:,} training images")
    if args.c_mode == "float" and args.calibrate != C_DEFAULTS["calibrate"]:
        raise ConfigError("--calibrate applies to the integer modes only; add --c-mode int or int8, or drop it")
    check_device_name(args.device)


def run(args: argparse.Namespace) -> int:
    check_options(args)
    from onebit.data.cifar import load_cifar
    from onebit.data.imagenet import load_image_folder
    from onebit.loading import load_model_file, recorded_dataset
    from onebit.train.device import select_device
    from onebit.train.evaluation import evaluate, evaluate_image_folder

    model, info = load_model_file(args.model)
    train_cfg = info.get("train_config") or {}
    dataset, recorded_dir = recorded_dataset(model, info, args.dataset)
    imagenet = dataset == "imagenet"
    if args.crops != 1 and not imagenet:
        raise ConfigError("--crops 25 applies to ImageNet models only")
    if imagenet and args.engine != "torch":
        raise ConfigError("the C runtime does not run ImageNet models; use --engine torch")
    data = (load_image_folder(args.data_dir or recorded_dir, train=args.split == "train") if imagenet
            else load_cifar(dataset, args.data_dir or recorded_dir, train=args.split == "train"))
    if len(data.classes) != model.config.num_classes:
        raise ConfigError(f"model has {model.config.num_classes} classes but {dataset} has {len(data.classes)}")
    if imagenet:
        device = select_device(args.device)
        sizes = {k: train_cfg[k] for k in ("crop_size", "resize_size") if k in train_cfg}
        result = evaluate_image_folder(model.to(device), data, args.batch_size, device, args.crops,
                                       progress=None, **sizes)
        engine = f"PyTorch, {device}"
    elif args.engine == "c":
        import torch

        from onebit.runtime import c_engine_logits
        from onebit.train.evaluation import accuracy_from_logits

        logits = c_engine_logits(
            model, data.images, mode=args.c_mode, threads=args.threads, sources=args.c_sources, progress=None,
            calibration=lambda: load_cifar(dataset, args.data_dir or recorded_dir,
                                           train=True).images[:args.calibrate])
        result = accuracy_from_logits(torch.from_numpy(logits), data.labels, model.config.num_classes)
        arithmetic = {"int": "int16 fixed-point", "int8": "8-bit activation", "float": "float32"}[args.c_mode]
        engine = (f"onebit C runtime, {arithmetic} mode, "
                  f"{args.threads} thread{'s' if args.threads != 1 else ''}")
    else:
        device = select_device(args.device)
        result = evaluate(model.to(device), data.images, data.labels, args.batch_size, device, progress=None)
        engine = f"PyTorch, {device}"
    if args.json:
        print(json.dumps({"model": str(args.model), "dataset": dataset, "split": args.split, "crops": args.crops,
                          "engine": engine, **result.as_dict(), "classes": data.classes}, indent=2))
        return 0
    print(f"{args.model}: {model.config.name} on {dataset} {args.split} ({result.count} images; {engine})")
    print(f"top-1 accuracy {100 * result.top1:6.2f}%   top-5 accuracy {100 * result.top5:6.2f}%   "
          f"loss {result.loss:.4f}")
    print("per-class accuracy:")
    for name, acc in zip(data.classes, result.per_class):
        print(f"  {name:<16} {100 * acc:6.2f}%")
    return 0
