"""Import the trained models released with the reference implementation (McDonnell-Lab/1-bit-per-weight).

Two layouts of WRN-20-10 with BN (McDonnell, ICLR 2018), both read with ``scipy.io.loadmat`` (plain
MATLAB arrays, nothing executed):

* tf.keras ``*_allparams.mat``: ``conv2d[_i]`` 0/1 arrays (1, kh, kw, C_in, C_out) and
  ``batch_normalization_v1_j`` arrays: the first (4, 3) = [gamma; beta; mean; var] of the input BN, the
  others (2, C) = [mean; var] of BNs without scale/offset (eps 1e-5). TF 'same' padding (0 before, 1
  after for stride 2 on even sizes; the shortcut's average pool divides by real pixels), no ReLU between
  the input BN and the first conv, head = BN -> mean over space.
* MatConvNet ``TrainedWideResNet20-10_*.mat``: ``BinaryWeights{i}`` 0/1 (kh, kw, C_in, C_out),
  ``LayerWeights(i)`` = c, ``Moments{i}`` (C, 2) = [mean, sigma] with sigma = sqrt(var + eps), ``BNG``/
  ``BNB`` gain/bias. Symmetric padding, a ReLU after the input BN, head = BN -> *sum* over space.

Every conv weight is ``(2 * bit - 1) * c`` with ``c = sqrt(2 / (kh * kw * C_in))`` (bit 1 -> +c);
kernels (kh, kw, C_in, C_out) become PyTorch's (C_out, C_in, kh, kw) (both frameworks correlate, no flip).
BN layers are matched in forward order: input BN, then the BN before each conv, then the head BN.
``*_01weights.mat`` files hold only the conv bits and cannot be evaluated: the BN statistics are missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onebit.errors import ReferenceImportError
from onebit.models import ReferenceLayout, WRNConfig, WideResNet
from onebit.models.config import infer_dataset

KERAS = "tf.keras"
MATCONVNET = "MatConvNet"
BN_EPS = 1e-5         # the Keras models' epsilon = BatchNorm2d's default (files store no eps, so it must be)

_KERAS_CONV = re.compile(r"^conv2d(?:_(\d+))?$")
_KERAS_BN = re.compile(r"^batch_normalization(?:_v\d+)?(?:_(\d+))?$")
_MATCONVNET_KEYS = ("BinaryWeights", "LayerWeights", "Moments", "BNG", "BNB", "Stride", "Padding")


@dataclass
class ImportedModel:
    """A reference model as a onebit ``WideResNet`` (eval mode) plus what was detected in the file."""

    model: WideResNet
    source_format: str
    source_file: str
    info: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        """JSON metadata describing the origin, for the packed model file (all released models are CIFAR)."""
        cfg = self.model.config
        return {"source": "reference-import", "source_format": self.source_format,
                "source_file": Path(self.source_file).name,
                "dataset": infer_dataset(cfg),
                "description": f"WRN-{cfg.depth}-{cfg.width}, {cfg.num_classes} classes, 1-bit weights + BN, "
                               f"imported from the reference implementation's {self.source_format} model"}


def read_mat(path: str | Path) -> dict[str, Any]:
    """The variables of a MATLAB .mat file (v5), without the ``__header__``-style entries."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceImportError(f"{path}: no such file")
    import zlib

    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise ReferenceImportError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported; the released "
                                   f"reference models are v5 .mat files") from None
    except (ValueError, TypeError, OSError, EOFError, IndexError, KeyError, MatReadError, zlib.error,
            OverflowError, MemoryError) as exc:
        raise ReferenceImportError(f"{path}: not a readable MATLAB .mat file ({exc})") from None
    return {k: v for k, v in mat.items() if not k.startswith("__")}


def detect_format(mat: dict[str, Any]) -> str:
    """``'tf.keras'``, ``'MatConvNet'``, or a ReferenceImportError naming what is missing."""
    if any(_KERAS_CONV.match(k) for k in mat):
        if not any(_KERAS_BN.match(k) for k in mat):
            raise ReferenceImportError(
                "this file holds only the 1-bit conv weights (a *_01weights.mat file) and no batch-norm "
                "statistics; the network has BN layers whose running means and variances are needed for "
                "inference, so it cannot be evaluated on its own -- import the matching *_allparams.mat")
        return KERAS
    if "BinaryWeights" in mat:
        missing = [k for k in _MATCONVNET_KEYS if k not in mat]
        if missing:
            raise ReferenceImportError(f"MatConvNet model file lacks {', '.join(missing)} "
                                       f"(BN statistics and layer settings are needed for inference)")
        return MATCONVNET
    names = ", ".join(sorted(mat)[:8]) or "none"
    raise ReferenceImportError(f"not a released reference model: expected tf.keras conv2d*/"
                               f"batch_normalization* arrays or a MatConvNet BinaryWeights model "
                               f"(variables found: {names})")


def import_reference(path: str | Path) -> ImportedModel:
    """Read a released reference .mat file and return the equivalent onebit model in eval mode."""
    mat = read_mat(path)
    fmt = ""
    try:
        fmt = detect_format(mat)
        model, info = _from_keras(mat) if fmt == KERAS else _from_matconvnet(mat)
    except ReferenceImportError as exc:
        raise ReferenceImportError(f"{path}: {exc}") from None
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise ReferenceImportError(f"{path}: malformed {fmt} model file ({exc})") from None
    return ImportedModel(model.eval(), fmt, str(path), info)


# --- shared helpers ---------------------------------------------------------------------------------

def _numbered(mat: dict[str, Any], pattern: re.Pattern) -> list[np.ndarray]:
    """Arrays whose names match ``pattern``, sorted by their trailing number (no number = 0)."""
    keyed = [(int(m.group(1) or 0), k) for k in mat if (m := pattern.match(k))]
    return [np.asarray(mat[k]) for _, k in sorted(keyed)]


def _config_for(kernels: list[np.ndarray], reference: ReferenceLayout) -> WRNConfig:
    """WRN depth, width and classes from the kernels (kh, kw, C_in, C_out) in forward order."""
    if any(k.ndim != 4 for k in kernels):
        raise ReferenceImportError(f"conv kernels must be 4-d (kh, kw, C_in, C_out), got shapes "
                                   f"{sorted({k.shape for k in kernels})}")
    depth = len(kernels)
    width, rem = divmod(kernels[0].shape[3], 16)
    if rem or (depth - 2) % 6 or depth < 8:
        raise ReferenceImportError(f"{depth} conv layers with {kernels[0].shape[3]} stem channels is not a "
                                   f"WRN-d-k (d = 6n+2 convs, 16k stem channels)")
    return WRNConfig(depth=depth, width=width, num_classes=int(kernels[-1].shape[3]), norm="bn",
                     weight_bits=1, binarize_first_last=True, reference=reference)


def _set_convs(model: WideResNet, kernels: list[np.ndarray], scales: list[float] | None = None) -> None:
    """Load 0/1 kernels (kh, kw, C_in, C_out) as weights ``(2 bit - 1) c`` in (C_out, C_in, kh, kw)."""
    convs = model.conv_layers()
    if len(convs) != len(kernels):
        raise ReferenceImportError(f"expected {len(convs)} conv layers, found {len(kernels)}")
    for i, ((name, conv), bits) in enumerate(zip(convs, kernels)):
        expected = (conv.kernel_size[0], conv.kernel_size[1], conv.in_channels, conv.out_channels)
        if bits.shape != expected:
            raise ReferenceImportError(f"conv layer {i + 1} ({name}) has shape {bits.shape}, expected {expected}")
        values = np.unique(bits)
        if not np.isin(values, (0, 1)).all():
            raise ReferenceImportError(f"conv layer {i + 1} holds values other than 0/1: {values[:5]}")
        if scales is not None and not np.isclose(scales[i], conv.scale, rtol=1e-5):
            raise ReferenceImportError(f"conv layer {i + 1} has scale {scales[i]:.6g}, expected "
                                       f"sqrt(2 / fan_in) = {conv.scale:.6g}")
        positive = torch.from_numpy(np.ascontiguousarray(bits.transpose(3, 2, 0, 1)).astype(bool))
        with torch.no_grad():
            conv.weight.copy_(torch.where(positive, conv.scale, -conv.scale))


def _bn_layers(model: WideResNet) -> list[nn.BatchNorm2d]:
    """The model's BN layers in forward order (module registration order = forward order)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _set_bn(bn: nn.BatchNorm2d, mean: np.ndarray, var: np.ndarray, index: int,
            gamma: np.ndarray | None = None, beta: np.ndarray | None = None) -> None:
    stats = {"mean": mean, "variance": var, "gain": gamma, "bias": beta}
    for what, value in stats.items():
        if value is not None and np.asarray(value).size != bn.num_features:
            raise ReferenceImportError(f"BN layer {index + 1} {what} has {np.asarray(value).size} values, "
                                       f"expected {bn.num_features}")
    if not (np.isfinite(var).all() and (np.asarray(var) >= 0).all() and np.isfinite(mean).all()):
        raise ReferenceImportError(f"BN layer {index + 1} has non-finite or negative statistics")
    with torch.no_grad():
        bn.running_mean.copy_(torch.as_tensor(np.ravel(mean), dtype=torch.float32))
        bn.running_var.copy_(torch.as_tensor(np.ravel(var), dtype=torch.float32))
        if gamma is not None:
            bn.weight.copy_(torch.as_tensor(np.ravel(gamma), dtype=torch.float32))
            bn.bias.copy_(torch.as_tensor(np.ravel(beta), dtype=torch.float32))


# --- tf.keras -----------------------------------------------------------------------------------------

def _from_keras(mat: dict[str, Any]) -> tuple[WideResNet, dict[str, Any]]:
    kernels = [k[0] if k.ndim == 5 and k.shape[0] == 1 else k for k in _numbered(mat, _KERAS_CONV)]
    bns = _numbered(mat, _KERAS_BN)
    cfg = _config_for(kernels, ReferenceLayout(pad_mode="tf_same"))
    model = WideResNet(cfg)
    _set_convs(model, kernels)
    layers = _bn_layers(model)
    if len(bns) != len(layers):
        raise ReferenceImportError(f"expected {len(layers)} batch_normalization arrays, found {len(bns)}")
    if bns[0].shape != (4, cfg.in_channels):
        raise ReferenceImportError(f"input BN must be (4, {cfg.in_channels}) = [gamma; beta; mean; var], "
                                   f"got {bns[0].shape}")
    gamma, beta, mean, var = bns[0]
    _set_bn(layers[0], mean, var, 0, gamma, beta)
    for i, (bn, stats) in enumerate(zip(layers[1:], bns[1:]), start=1):
        if stats.ndim != 2 or stats.shape[0] != 2:
            raise ReferenceImportError(f"BN layer {i + 1} must be (2, C) = [mean; var], got {stats.shape}")
        _set_bn(bn, stats[0], stats[1], i)
    return model, _info(cfg)


# --- MatConvNet ---------------------------------------------------------------------------------------

def _cells(value: Any) -> list[np.ndarray]:
    """A MATLAB cell array as a flat list of numeric arrays."""
    arr = np.asarray(value)
    if arr.dtype != object:
        raise ReferenceImportError(f"expected a cell array, got a {arr.dtype} array")
    return [np.asarray(c) for c in arr.ravel()]


def _from_matconvnet(mat: dict[str, Any]) -> tuple[WideResNet, dict[str, Any]]:
    kernels = [k.reshape(k.shape + (1,) * (4 - k.ndim)) for k in _cells(mat["BinaryWeights"])]
    cfg = _config_for(kernels, ReferenceLayout(pad_mode="symmetric", stem_relu=True, head_pool="sum"))
    model = WideResNet(cfg)
    convs = [c for _, c in model.conv_layers()]
    strides = np.ravel(mat["Stride"]).astype(int).tolist()
    paddings = np.ravel(mat["Padding"]).astype(int).tolist()
    if strides != [c.stride[0] for c in convs] or paddings != [c.padding[0] for c in convs]:
        raise ReferenceImportError(f"layer strides {strides} / paddings {paddings} are not those of a "
                                   f"WRN-{cfg.depth}-{cfg.width}")
    _set_convs(model, kernels, np.ravel(mat["LayerWeights"]).astype(float).tolist())
    moments, gains, biases = _cells(mat["Moments"]), _cells(mat["BNG"]), _cells(mat["BNB"])
    layers = _bn_layers(model)
    if not len(moments) == len(gains) == len(biases) == len(layers):
        raise ReferenceImportError(f"expected {len(layers)} BN layers, found {len(moments)} Moments, "
                                   f"{len(gains)} BNG, {len(biases)} BNB")
    for i, (bn, mom, g, b) in enumerate(zip(layers, moments, gains, biases)):
        if mom.ndim != 2 or mom.shape[1] != 2:
            raise ReferenceImportError(f"Moments{{{i + 1}}} must be (C, 2) = [mean, sigma], got {mom.shape}")
        mean, sigma = mom[:, 0].astype(np.float64), mom[:, 1].astype(np.float64)
        if (sigma ** 2 < BN_EPS).any():
            raise ReferenceImportError(f"Moments{{{i + 1}}} has a standard deviation below sqrt(eps)")
        # MatConvNet divides by sigma itself; BatchNorm2d divides by sqrt(var + eps): var = sigma^2 - eps.
        var = sigma ** 2 - BN_EPS
        if bn.affine:
            _set_bn(bn, mean, var, i, g, b)
        elif np.allclose(g, 1) and np.allclose(b, 0):
            _set_bn(bn, mean, var, i)
        else:
            raise ReferenceImportError(f"BN layer {i + 1} has a learned gain/bias, which this WRN "
                                       f"(BN without scale/offset) cannot hold")
    return model, _info(cfg)


def _info(cfg: WRNConfig) -> dict[str, Any]:
    return {"depth": cfg.depth, "width": cfg.width, "num_classes": cfg.num_classes}
