"""``onebit eval``: top-1, top-5 and per-class accuracy of a checkpoint or packed model on a test set."""

from __future__ import annotations

import argparse
import json

from onebit.data.cifar import load_cifar
from onebit.errors import ConfigError
from onebit.evaluate import evaluate
from onebit.loading import load_model_file
from onebit.train.loop import select_device


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, info = load_model_file(args.model)
    train_cfg = info.get("train_config") or {}
    dataset = args.dataset or train_cfg.get("dataset") or (
        "cifar100" if model.config.num_classes == 100 else "cifar10")
    data = load_cifar(dataset, args.data_dir or train_cfg.get("data_dir"), train=args.split == "train")
    if len(data.classes) != model.config.num_classes:
        raise ConfigError(f"model has {model.config.num_classes} classes but {dataset} has {len(data.classes)}")
    device = select_device(args.device)
    result = evaluate(model.to(device), data.images, data.labels, args.batch_size, device)
    if args.json:
        print(json.dumps({"model": str(args.model), "dataset": dataset, "split": args.split,
                          **result.as_dict(), "classes": data.classes}, indent=2))
        return 0
    print(f"{args.model}: {model.config.name} on {dataset} {args.split} ({result.count} images)")
    print(f"top-1 accuracy {100 * result.top1:6.2f}%   top-5 accuracy {100 * result.top5:6.2f}%   "
          f"loss {result.loss:.4f}")
    print("per-class accuracy:")
    for name, acc in zip(data.classes, result.per_class):
        print(f"  {name:<16} {100 * acc:6.2f}%")
    return 0
