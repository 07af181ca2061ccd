"""The models a benchmark runs, named one way everywhere: ``wrn-D-K`` (BN-free), ``wrn-D-K-bn`` (BN design),
with random 1-bit weights (speed and size do not depend on the weights), or a model file."""

from __future__ import annotations

from pathlib import Path

import torch

from onebit.errors import ConfigError
from onebit.models import WRNConfig, build_model
from onebit.models.config import parse_model_name


def model_size(name: str, option: str = "model") -> tuple[int, int, str]:
    """(depth, width, norm) of a model name; ConfigError naming ``option`` and the name when it is not one."""
    parsed = parse_model_name(name)
    if parsed is None:
        raise ConfigError(f"{option}: {name!r} is not a model name like wrn-8-1 or wrn-8-1-bn (wrn-DEPTH-WIDTH[-bn])")
    try:
        WRNConfig(depth=parsed[0], width=parsed[1], norm=parsed[2])
    except ValueError as exc:
        raise ConfigError(f"{option}: {name}: {exc}") from None
    return parsed


def model_sizes(text: str, option: str = "--models") -> list[tuple[int, int, str]]:
    """``wrn-8-1,wrn-14-4-bn`` -> [(8, 1, "none"), (14, 4, "bn")]."""
    return [model_size(name.strip(), option) for name in text.split(",")]


def resolve_model(spec: str, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """(model in eval mode, label) of a model name (random weights, seeded) or a model file (checkpoint, run
    directory or .onebit)."""
    if parse_model_name(spec) and not Path(spec).exists():
        depth, width, norm = model_size(spec)
        torch.manual_seed(seed)
        return build_model(WRNConfig(depth=depth, width=width, norm=norm)).eval(), spec.lower()
    from onebit.loading import load_model_file

    model, _ = load_model_file(spec)
    return model.eval(), f"{Path(spec).name} ({model.config.name})"
