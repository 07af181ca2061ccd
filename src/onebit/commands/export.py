"""``onebit export``: write a trained model as a packed 1-bit file, an ONNX graph or C sources."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from onebit.errors import OnebitError

FORMATS = ("packed", "onnx", "c")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model: packed 1-bit .onebit file, ONNX, or C sources",
        description="Export MODEL (a checkpoint, a run directory or a .onebit file). "
                    "packed: safetensors with 1 bit per binarized weight (8 per byte) and the architecture "
                    "in its metadata; `onebit eval` reads it. onnx: a standard ONNX graph (opset 18) with "
                    "weights baked in as c*sign(w), input float32 NCHW raw pixels 0..255. c: a C runtime "
                    "(source folder).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="checkpoint file, run directory or .onebit file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (packed, onnx) or folder (c)")
    p.add_argument("--format", choices=FORMATS, default="packed", help="what to write")
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


def run(args: argparse.Namespace) -> int:
    from onebit.loading import load_model_file

    model, info = load_model_file(args.model)
    out = Path(args.output)
    if args.format == "packed":
        from onebit.export.packed import save_packed

        save_packed(model, out, extra_metadata=_extra_metadata(info))
        print(f"wrote {out} ({out.stat().st_size:,} bytes, {model.config.name}, packed 1-bit format)")
    elif args.format == "onnx":
        from onebit.export.onnx_export import OPSET, export_onnx

        export_onnx(model, out)
        print(f"wrote {out} ({out.stat().st_size:,} bytes, {model.config.name}, ONNX opset {OPSET})")
    else:
        if importlib.util.find_spec("onebit.export.c_runtime") is None:
            raise OnebitError("the C export (onebit.export.c_runtime) is not available in this installation")
        from onebit.export.c_runtime import export_c

        export_c(model, out)
        print(f"wrote C sources for {model.config.name} to {out}")
    return 0
