"""ONNX export: a standard graph (opset 18) with the 1-bit weights baked in as constants ``c * sign(w)``.

The exported copy of the model has plain ``Conv`` nodes whose weights are the effective values
``c * sign(w)`` (``sign(0) = +1``, ``c = sqrt(2 / (kh * kw * C_in))``; McDonnell, ICLR 2018, sec. 2.1), so
any ONNX runtime runs it without custom operators. Input ``images``: float32 NCHW raw pixel values
0..255 (no normalisation: the stem's input BN is in the graph), dynamic batch axis. Output ``logits``.

Uses the torch.export-based exporter: the TorchScript one (``dynamo=False``) loses the channel count at
the zero-channel shortcut under a dynamic batch and cannot export BN networks. It emits opset 18 (onnx's
version converter has no Pad adapter down to 17).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from onebit.errors import OnebitError
from onebit.models import WideResNet
from onebit.nn import BinaryConv2d

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def with_baked_weights(model: WideResNet) -> WideResNet:
    """A CPU eval-mode copy whose binarized convs hold ``c * sign(w)`` as ordinary 32-bit weights."""
    baked = copy.deepcopy(model).cpu().eval()
    for _, conv in baked.conv_layers():
        conv: BinaryConv2d
        if conv.weight_bits == 1:
            with torch.no_grad():
                conv.weight.copy_(torch.where(conv.weight >= 0, conv.scale, -conv.scale))
            conv.weight_bits = 32
    return baked


def export_onnx(model: WideResNet, path: str | Path, image_size: int | None = None) -> Path:
    """Write ``model`` as an ONNX file at ``path`` and check it with ``onnx.checker``; return the path.

    The graph's spatial size is fixed: ``image_size`` (default 32 for CIFAR nets, 224 for ImageNet nets).
    """
    import onnx

    path = Path(path)
    image_size = image_size or (224 if model.config.arch == "imagenet" else 32)
    baked = with_baked_weights(model)
    example = torch.zeros(1, model.config.in_channels, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(baked, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True)
    proto = program.model_proto
    proto.doc_string = (f"onebit {model.config.name}: input float32 NCHW raw pixels 0..255, output logits; "
                        f"1-bit conv weights stored as c*sign(w)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnebitError(f"exported ONNX model failed onnx.checker: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path
