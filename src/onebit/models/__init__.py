"""The wide residual network family of McDonnell (ICLR 2018) and McDonnell et al. (2019)."""

from onebit.models.wrn import (ReferenceLayout, WRNConfig, WideResNet, build_model, default_temperature,
                               parse_wrn_name)

__all__ = ["ReferenceLayout", "WRNConfig", "WideResNet", "build_model", "default_temperature", "parse_wrn_name"]
