"""The wide residual network family of McDonnell (ICLR 2018) and McDonnell et al. (2019).

The configuration (``WRNConfig``, ``ReferenceLayout``, ...) imports without torch; ``WideResNet`` and
``build_model`` load ``onebit.models.wrn`` (and torch) on first use, so the CLI starts fast.
"""

from onebit.models.config import ReferenceLayout, WRNConfig, default_temperature, parse_wrn_name

__all__ = ["ReferenceLayout", "WRNConfig", "WideResNet", "build_model", "default_temperature", "parse_wrn_name"]


def __getattr__(name: str):
    if name in ("WideResNet", "build_model"):
        from onebit.models import wrn

        return getattr(wrn, name)
    raise AttributeError(f"module 'onebit.models' has no attribute {name!r}")
