"""``onebit export``: write a trained model as a packed 1-bit file, an ONNX graph or C sources."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onebit.errors import ConfigError
from onebit.export.c_contract import EXPORT_INFO
from onebit.export.targets import HOST, TARGETS
from onebit.atomic import remove_orphan_temps
from onebit.rundir import CHECKPOINT


FORMATS = ("packed", "onnx", "c")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model: packed 1-bit .onebit file, ONNX, or C sources",
        description="Export MODEL (a checkpoint, a run directory or a .onebit file). "
                    "packed: safetensors with 1 bit per binarized weight (8 per byte) and the architecture "
                    "in its metadata; `onebit eval` reads it. onnx: a standard ONNX graph (opset 18) with "
                    "weights baked in as c*sign(w), input float32 NCHW raw pixels 0..255. c: a C runtime "
                    "(source folder).")
    p.add_argument("model", metavar="MODEL", help="checkpoint file, run directory or .onebit file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (packed, onnx) or folder (c)")
    p.add_argument("--format", choices=FORMATS, default="packed", help="what to write (default: packed)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output file, or write into a folder that is not a previous C "
                        "export (the model being exported is never overwritten)")
    c = p.add_argument_group("C runtime (--format c)")
    c.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="also build the integer mode, with scales calibrated on N training images "
                        "(0: float mode only)")
    c.add_argument("--target", default=HOST, choices=tuple(TARGETS),
                   help="CPU that `make` builds for (cross compiler and flags in onebit_target.mk; "
                        "see docs/embedded.md)")
    c.add_argument("--dataset", default=None, help="the model's dataset, cifar10 or cifar100, for calibration and "
                                                   "the class names recorded in the export (default: from the "
                                                   "model)")
    c.add_argument("--data-dir", default=None, help="dataset folder (default: $ONEBIT_DATA or cache; class names "
                                                    "are left out when it is absent)")
    p.set_defaults(func=run)


def _extra_metadata(info: dict) -> dict:
    """What the packed file records about where it came from."""
    if info.get("kind") == "packed":
        return dict(info.get("extra") or {})
    extra = {"source": info.get("path"), "source_kind": info.get("kind")}
    for key in ("train_config", "state"):
        if info.get(key):
            extra[key] = info[key]
    return extra


def check_output(out: Path, source: Path, fmt: str, force: bool) -> None:
    """Refuse to overwrite the exported model itself, or (without ``force``) an existing file or a folder
    holding anything but a previous C export."""
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ConfigError(f"-o {out} is the model being exported; choose another output")
    if fmt == "c":
        if out.exists() and not out.is_dir():
            raise ConfigError(f"-o {out}: exists and is not a folder (the C export writes a folder)")
        if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_INFO).is_file() and not force:
            raise ConfigError(f"-o {out}: folder is not empty and holds no previous C export; choose a new "
                              f"folder or pass --force to write into it")
    else:
        if out.is_dir():
            raise ConfigError(f"-o {out} is a folder; give a file name (e.g. {out / 'model.onebit'})")
        if out.exists() and not force:
            raise ConfigError(f"-o {out} exists; pass --force to replace it")


def class_names(model, info: dict, args: argparse.Namespace) -> list[str] | None:
    """The model's class names: recorded in a packed file's metadata, else from its dataset's meta file
    when that is on disk; None when unknown."""
    extra = info.get("extra") or {}
    names = extra.get("class_names")
    if isinstance(names, list) and len(names) == model.config.num_classes and all(isinstance(n, str) for n in names):
        return names
    from onebit.loading import recorded_dataset

    dataset, data_dir = recorded_dataset(model, info, args.dataset)
    if dataset not in ("cifar10", "cifar100"):
        return None
    from onebit.data.cifar import known_class_names

    names = known_class_names(dataset, args.data_dir or data_dir)
    return names if names and len(names) == model.config.num_classes else None


def run(args: argparse.Namespace) -> int:
    from onebit.loading import load_model_file

    out = Path(args.output)
    source = Path(args.model)
    check_output(out, source / CHECKPOINT if source.is_dir() else source, args.format, args.force)
    if args.format != "c":
        remove_orphan_temps(out)          # left by an export that was killed while writing
    from onebit.export.fixed_point import MAX_CALIBRATION

    if args.calibrate < 0:
        raise ConfigError(f"--calibrate must be >= 0 (0: float mode only), got {args.calibrate}")
    if args.calibrate > MAX_CALIBRATION:
        raise ConfigError(f"--calibrate {args.calibrate} is above the {MAX_CALIBRATION:,} training images")
    if args.calibrate and args.format != "c":
        raise ConfigError(f"--calibrate applies to --format c only (got --format {args.format})")
    model, info = load_model_file(args.model)
    if args.format == "packed":
        from onebit.export.packed import save_packed

        extra = _extra_metadata(info)
        names = class_names(model, info, args)
        if names:
            extra["class_names"] = names
        save_packed(model, out, extra_metadata=extra)
        print(f"wrote {out} ({out.stat().st_size:,} bytes, {model.config.name}, packed 1-bit format)")
    elif args.format == "onnx":
        from onebit.export.onnx_export import OPSET, export_onnx

        export_onnx(model, out)
        print(f"wrote {out} ({out.stat().st_size:,} bytes, {model.config.name}, ONNX opset {OPSET})")
    else:
        from onebit.export.c_runtime import export_c

        calibration = None
        if args.calibrate > 0:
            from onebit.data.cifar import load_cifar

            from onebit.loading import recorded_dataset

            dataset, data_dir = recorded_dataset(model, info, args.dataset)
            if dataset not in ("cifar10", "cifar100"):
                raise ConfigError(f"--calibrate reads CIFAR training images; {args.model} is a {dataset} model")
            calibration = load_cifar(dataset, args.data_dir or data_dir, train=True).images[:args.calibrate]
            print(f"calibrating the integer mode on {len(calibration)} {dataset} training images ...",
                  file=sys.stderr, flush=True)
        export_c(model, out, calibration_images=calibration, target=args.target,
                 class_names=class_names(model, info, args),
                 **({"calibration_count": args.calibrate} if calibration is not None else {}))
        mode = "float and integer modes" if calibration is not None else "float mode"
        print(f"wrote the C runtime for {model.config.name} ({mode}, target {args.target}) to {out}")
    return 0
