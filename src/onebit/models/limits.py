"""Checks on an architecture read from an untrusted file, made before any real tensor is built.

Both model-file loaders (training checkpoints, ``train/checkpoint.py``, and packed ``.onebit`` files,
``export/packed.py``) use these, so a crafted file cannot make onebit allocate more than the file itself
holds: the config must have exactly WRNConfig's keys and JSON types, finite values and sizes within
``MAX_DIM``; its depth is bounded by the file's tensor count (every convolution has a tensor); and the
shapes it implies are computed on the ``meta`` device (no memory) for the loader to compare with the file's
tensors before it builds the model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from onebit.models.config import ReferenceLayout, WRNConfig

# Bound on every integer of an architecture (depth, width, classes, input channels): keeps every shape far
# inside int64 even before the shapes are compared with the file's tensors.
MAX_DIM = 1 << 20


def parse_model_config(data: Any) -> WRNConfig:
    """WRNConfig from untrusted decoded JSON: known keys, exact JSON types, finite values, sizes in
    ``1..MAX_DIM``, then WRNConfig's own checks. Raises ValueError with one line naming the field."""
    if not isinstance(data, dict):
        raise ValueError(f"model_config is not a JSON object (got {type(data).__name__})")
    fields = {f.name: f for f in (*dataclasses.fields(WRNConfig), *dataclasses.fields(ReferenceLayout))
              if f.name != "reference"}     # files store the reference layout's keys flat
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"model_config has unknown keys {unknown}")
    for key, value in data.items():
        default = fields[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:   # float or optional float (temperature)
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"model_config.{key} has the wrong type ({type(value).__name__})")
        if isinstance(default, int) and not isinstance(default, bool) and not 1 <= value <= MAX_DIM:
            raise ValueError(f"model_config.{key} = {value} is out of range (1..{MAX_DIM})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"model_config.{key} = {value} is not a finite number")
    try:
        return WRNConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"model_config is invalid ({exc})") from None


def meta_model(config: WRNConfig, tensor_count: int) -> "WideResNet":  # noqa: F821
    """``config``'s network on the meta device (no memory), after bounding its depth by the number of
    tensors the file holds. Raises ValueError if the file is too small for it or it cannot be built."""
    import torch                                  # here: TrainConfig (and the CLI) load without torch

    from onebit.models.wrn import WideResNet

    if config.depth > tensor_count:
        raise ValueError(f"model_config depth {config.depth} needs more tensors than the file's {tensor_count}")
    try:
        with torch.device("meta"):
            return WideResNet(config)
    except (ValueError, TypeError, RuntimeError, ArithmeticError) as exc:
        raise ValueError(f"model_config describes no buildable model ({exc})") from None
