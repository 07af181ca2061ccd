"""The number format of training: one bf16 autocast policy for GPUs and CPUs.

``amp`` (TrainConfig) is ``True`` (bf16 autocast), ``False`` (float32) or ``None`` (automatic: bf16 on CUDA,
float32 on a CPU). On a CPU, ``--amp`` trains in bf16; the run says whether the CPU does bf16 natively
(AVX-512 BF16 or AMX-BF16, read from the CPU's own feature flags, never guessed from its vendor), where it
is 1.4-3.4x faster per step (WRN-8-1 to WRN-14-4, docs/performance.md). It is not the CPU default because
the fp32 / bf16 twins (docs/results/cpu-bf16) did not agree within 1.0 point on every check: WRN-8-1's
validation accuracy after 7 epochs was 1.19 points lower in bf16 (4 seeds, not significant). A run resolves
``None`` once, before its folder is written, so ``config.json`` records the format it trained in and
``--resume`` keeps it.

What autocast covers: the training forward pass (convolutions and the head's matmul run in bf16; autocast
keeps reductions in float32). Master weights, SGD momentum, the loss (cross-entropy of the logits cast to
float32) stay float32. Evaluation and BN-statistics recomputation are float32 on a CPU (bf16 on a GPU, as
before), so the reported metrics are not rounded to bf16 there.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

# x86 feature flags (Linux /proc/cpuinfo names) that give native bf16 dot products: AVX-512 BF16
# (vdpbf16ps, Cooper Lake / Zen 4 and later) and AMX-BF16 (tdpbf16ps tiles, Sapphire Rapids and later).
# Arm's bf16 extension (the "bf16" Features flag, e.g. Graviton3) is not counted: PyTorch's CPU autocast
# there has not been measured by this project, so Arm CPUs train in float32 unless asked (--amp).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (x86 ``flags``, Arm ``Features``); empty if unreadable."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16_cpu(flags: set[str] | None = None) -> tuple[bool, str]:
    """(does this CPU do bf16 arithmetic natively, the evidence in a few words).

    Linux: the kernel's flags. Elsewhere: PyTorch's own CPU probe (cpuinfo), if it has one.
    """
    if flags is None and platform.system() == "Linux":
        flags = cpu_flags()
    if flags:
        found = [f for f in NATIVE_BF16_FLAGS if f in flags]
        if found:
            return True, "CPU flags " + ", ".join(found)
        return False, "no " + " or ".join(NATIVE_BF16_FLAGS) + " CPU flag"
    try:
        import torch

        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True, "PyTorch reports AVX-512 BF16 / AMX"
    except (ImportError, AttributeError):
        return False, "CPU features unknown"
    return False, "PyTorch reports no AVX-512 BF16 / AMX"


def device_type(device: str) -> str:
    """``cuda`` or ``cpu`` for a TrainConfig device name (``auto`` asks torch whether CUDA is there)."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def resolve_amp(amp: bool | None, device: str) -> bool:
    """The concrete choice for ``amp`` on ``device``: as given, or automatic for ``None`` (bf16 on CUDA,
    float32 on a CPU)."""
    if amp is not None:
        return amp
    return device_type(device) == "cuda"


def describe(amp: bool, device_kind: str) -> str:
    """One line: which format a run trains in, and why."""
    if device_kind == "cuda":
        return "precision: bf16 autocast on the GPU" if amp else "precision: float32 (amp off)"
    native, evidence = native_bf16_cpu()
    if amp:
        how = (f"native bf16 on this CPU: {evidence}" if native
               else f"forced by amp = true; {evidence}, so bf16 is emulated and slower than float32")
        return f"precision: bf16 autocast on the CPU ({how}; --no-amp for float32)"
    why = (f"this CPU has native bf16 ({evidence}): --amp trains 1.4-3.4x faster per step" if native
           else f"this CPU has no native bf16 ({evidence})")
    return f"precision: float32 ({why})"


def training_autocast(device_kind: str, amp: bool) -> contextlib.AbstractContextManager:
    """Autocast around the training forward pass: bf16 when ``amp``, on either device."""
    import torch

    return torch.autocast(device_kind, dtype=torch.bfloat16, enabled=amp)


def inference_autocast(device_kind: str, amp: bool) -> contextlib.AbstractContextManager:
    """Autocast for evaluation and BN recomputation: bf16 only on a GPU; float32 on a CPU."""
    import torch

    return torch.autocast(device_kind, dtype=torch.bfloat16, enabled=amp and device_kind == "cuda")
