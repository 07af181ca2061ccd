"""The packed model file (``.onebit``): 1 bit per binarized weight, in a safetensors container.

Deployment stores one bit per weight and recomputes the scale ``c = sqrt(2 / (kh * kw * C_in))`` from the
shape (McDonnell, ICLR 2018, sec. 2.1; McDonnell et al. 2019, sec. 2).

Format ``onebit-packed``, version ``1``. A safetensors file whose tensors are:

* ``<module name>.bits`` (uint8, 1-D) for every 1-bit convolution, and nothing else for it. The bits are
  ``numpy.packbits(w.reshape(-1) >= 0)`` with numpy's default (big-endian) bit order: the weight flattened
  in C order over ``(C_out, C_in, kh, kw)``; weight ``i`` is bit ``7 - i % 8`` (the most significant bit
  first) of byte ``i // 8``; bit 1 means ``+c`` (``w >= 0``, so ``sign(0) = +1``), bit 0 means ``-c``.
  The tensor has ``ceil(C_out * C_in * kh * kw / 8)`` bytes; padding bits of the last byte are 0 and are
  ignored on reading. Effective weight: ``c * (2 * bit - 1)``.
* ``<module name>.weight`` (float32, full shape) for convolutions kept at 32 bits (``weight_bits=32``
  models, and the first and last convs when ``binarize_first_last`` is false).
* The state-dict entries of the BN layers as float32: the stem's learned input BN (``input_bn.weight``,
  ``.bias``, ``.running_mean``, ``.running_var``) and, in BN networks only, every BN's ``running_mean``
  and ``running_var`` (plus ``weight`` and ``bias`` where a BN learns them). ``num_batches_tracked`` is
  not stored. Tensor names are the model's state-dict names, e.g. ``blocks.3.act1.0.running_var``.

Metadata (strings): ``format``, ``version``, ``model_config`` (JSON of WRNConfig: depth, width, norm,
temperature, pad mode, ...), ``extra`` (JSON object: free information such as the source checkpoint) and
``sha256``: the hex SHA-256 over, for each tensor in sorted name order, ``name NUL dtype NUL shape NUL
raw little-endian bytes``, followed by ``model_config NUL extra``. Readers that only want the weights may
ignore it; :func:`load_packed` checks it, so any corruption of the weights or metadata is detected.

Loading executes no code (safetensors + JSON) and validates everything -- container, format, version,
config, tensor names, dtypes, shapes, checksum -- raising :class:`PackedModelError` with one line that
names the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from onebit.errors import PackedModelError
from onebit.models import WRNConfig, WideResNet
from onebit.models.limits import meta_model, parse_model_config
from onebit.nn import unwrap
from onebit.safetensors_io import atomic_save, check_finite_constants, missing_file_reason

FORMAT = "onebit-packed"
VERSION = "1"
SUFFIX = ".onebit"


def pack_bits(weight: torch.Tensor) -> torch.Tensor:
    """uint8 tensor of the sign bits of ``weight`` (1 = ``w >= 0``), 8 per byte, MSB first."""
    signs = (weight.detach().cpu().reshape(-1) >= 0).numpy()
    return torch.from_numpy(np.packbits(signs))


def unpack_bits(bits: torch.Tensor, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    """float32 weight ``c * (2 * bit - 1)`` of ``shape`` from packed bits (inverse of :func:`pack_bits`)."""
    count = math.prod(shape)
    signs = np.unpackbits(bits.numpy(), count=count).astype(bool)
    weight = np.where(signs, np.float32(scale), np.float32(-scale)).astype(np.float32)
    return torch.from_numpy(weight.reshape(shape))


def _expected_spec(model: WideResNet) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor name: (safetensors dtype, shape)}`` the packed file of ``model``'s architecture holds."""
    convs = dict(model.conv_layers())
    spec: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        module_name = key.rsplit(".", 1)[0]
        conv = convs.get(module_name)
        if conv is not None and key == f"{module_name}.weight" and conv.weight_bits == 1:
            spec[f"{module_name}.bits"] = ("U8", ((value.numel() + 7) // 8,))
        else:
            spec[key] = ("F32", tuple(value.shape))
    return spec


def _checksum(arrays: dict[str, np.ndarray], model_config: str, extra: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        dtype = "U8" if array.dtype == np.uint8 else "F32"
        digest.update(f"{name}\0{dtype}\0{list(array.shape)}\0".encode())
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    digest.update(f"{model_config}\0{extra}".encode())
    return digest.hexdigest()


def save_packed(model: WideResNet, path: str | Path, extra_metadata: dict[str, Any] | None = None) -> None:
    """Atomically write ``model`` as a packed ``.onebit`` file (see the module docstring for the format).

    ``extra_metadata`` must be JSON-serialisable; it comes back as ``metadata["extra"]`` from
    :func:`load_packed`.
    """
    model = unwrap(model)
    if not isinstance(model, WideResNet):
        raise TypeError(f"save_packed needs a WideResNet, got {type(model).__name__}")
    convs = dict(model.conv_layers())
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for name in _expected_spec(model):
        module_name, field = name.rsplit(".", 1)
        if field == "bits":
            tensors[name] = pack_bits(convs[module_name].weight)
        else:
            tensors[name] = state[name].detach().cpu().to(torch.float32).contiguous()
    config_json = json.dumps(model.config.to_dict(), sort_keys=True)
    extra_json = json.dumps(extra_metadata or {}, sort_keys=True)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": config_json,
        "extra": extra_json,
        "sha256": _checksum({k: v.numpy() for k, v in tensors.items()}, config_json, extra_json),
    }
    atomic_save(tensors, metadata, path)


def _parse_config(text: str) -> WRNConfig:
    """WRNConfig from untrusted JSON (``onebit.models.limits``: exact keys, types and bounds)."""
    try:
        return parse_model_config(json.loads(text))
    except (ValueError, RecursionError) as exc:
        raise PackedModelError(str(exc) if isinstance(exc, ValueError) and str(exc).startswith("model_config")
                               else f"model_config is not valid JSON ({exc})") from None


def load_packed(path: str | Path) -> tuple[WideResNet, dict[str, Any]]:
    """Read a packed model: ``(model in eval mode on the CPU, metadata)``.

    ``metadata`` = ``{"format", "version", "model_config": dict, "extra": dict}``. Every failure raises
    :class:`PackedModelError` whose message starts with the path and names the problem.
    """
    path = Path(path)
    try:
        return _load(path)
    except PackedModelError as exc:
        raise PackedModelError(f"{path}: {exc}") from None


def _load(path: Path) -> tuple[WideResNet, dict[str, Any]]:
    reason = missing_file_reason(path)
    if reason:
        raise PackedModelError(reason)
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeError) as exc:
        raise PackedModelError(f"not a readable safetensors file: truncated or corrupt ({exc})") from None
    with handle as f:
        metadata = dict(f.metadata() or {})
        if metadata.get("format") != FORMAT:
            raise PackedModelError(f"not a packed onebit model (format={metadata.get('format')!r}, "
                                   f"expected {FORMAT!r})")
        if metadata.get("version") != VERSION:
            raise PackedModelError(f"packed model version {metadata.get('version')!r} is not supported "
                                   f"(this onebit reads version {VERSION})")
        for key in ("model_config", "extra", "sha256"):
            if key not in metadata:
                raise PackedModelError(f"metadata field {key!r} is missing")
        config = _parse_config(metadata["model_config"])
        try:
            extra = json.loads(metadata["extra"])
        except (ValueError, RecursionError) as exc:
            raise PackedModelError(f"metadata field 'extra' is not valid JSON ({exc})") from None
        if not isinstance(extra, dict):
            raise PackedModelError("metadata field 'extra' is not a JSON object")

        names = list(f.keys())
        try:
            spec = _expected_spec(meta_model(config, len(names)))
        except ValueError as exc:
            raise PackedModelError(str(exc)) from None
        missing = sorted(set(spec) - set(names))
        if missing:
            raise PackedModelError(f"tensor {missing[0]!r} is missing ({len(missing)} missing in all) "
                                   f"for {config.name}")
        unexpected = sorted(set(names) - set(spec))
        if unexpected:
            raise PackedModelError(f"unexpected tensor {unexpected[0]!r} for {config.name}")
        arrays: dict[str, np.ndarray] = {}
        for name, (dtype, shape) in spec.items():
            try:
                view = f.get_slice(name)
                got_dtype, got_shape = view.get_dtype(), tuple(view.get_shape())
            except (SafetensorError, ValueError, RuntimeError) as exc:
                raise PackedModelError(f"tensor {name!r} is unreadable ({exc})") from None
            if got_dtype != dtype:
                raise PackedModelError(f"tensor {name!r} has dtype {got_dtype}, expected {dtype}")
            if got_shape != shape:
                raise PackedModelError(f"tensor {name!r} has shape {list(got_shape)}, "
                                       f"expected {list(shape)}")
            try:
                arrays[name] = f.get_tensor(name).numpy()
            except (SafetensorError, ValueError, RuntimeError) as exc:
                raise PackedModelError(f"tensor {name!r} is unreadable ({exc})") from None

    if _checksum(arrays, metadata["model_config"], metadata["extra"]) != metadata["sha256"]:
        raise PackedModelError("checksum mismatch: the file is corrupt")
    problem = check_finite_constants({k: torch.from_numpy(a) for k, a in arrays.items() if a.dtype.kind == "f"})
    if problem:
        raise PackedModelError(problem)

    with torch.device("meta"):
        model = WideResNet(config)
    model = model.to_empty(device="cpu")
    convs = dict(model.conv_layers())
    state: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        module_name, field = name.rsplit(".", 1)
        if field == "bits":
            conv = convs[module_name]
            state[f"{module_name}.weight"] = unpack_bits(torch.from_numpy(array), tuple(conv.weight.shape),
                                                         conv.scale)
        else:
            state[name] = torch.from_numpy(array.copy())
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    model.load_state_dict(state, strict=True)
    info = {"format": FORMAT, "version": VERSION, "model_config": config.to_dict(), "extra": extra}
    return model.eval(), info
