"""Lower a 1-bit WideResNet to the flat list of fused convolutions that the C runtime executes.

Every convolution becomes one :class:`ConvStep` whose epilogue fuses what follows it in the network
(McDonnell et al. 2019, fig. 1; McDonnell, ICLR 2018, fig. 1):

* ``"act"``  (first conv of a block):  ``T = act2(c * acc)``
* ``"res"``  (stem, second conv of a block):  ``R = c * acc + shortcut(R_prev)``, ``A = act_next(R)``
* ``"head"`` (final 1x1 conv):  ``y = a_k * (c * acc) + b_k`` per class, then mean (or sum) over space

``acc = sum_k s_k x_k`` with ``s_k = +-1`` the stored sign bits (``w >= 0`` -> +1) and ``c = sqrt(2 /
(kh*kw*C_in))``, so a convolution is additions and subtractions followed by one multiplication.
``act`` is the shifted ReLU ``max(x, -1)`` (BN-free design) or ``max(a_k x + b_k, 0)`` (eval-mode BN
without scale/offset, then ReLU: ``a = 1/sqrt(var + eps)``, ``b = -mean * a``). The stem's learned input BN
is a per-channel affine on the raw pixels. The shortcut is the identity or a 3x3 stride-2 average pool
over real pixels followed by zero channels.

:func:`run_program` evaluates the lowered program with PyTorch (float32, same fusions) and records each
tensor's range: tests compare it with the model, and the fixed-point calibration reads the ranges.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onebit.errors import ConfigError
from onebit.export.c_contract import NCO
from onebit.models import WideResNet
from onebit.nn import BinaryConv2d, ShiftedReLU, unwrap



@dataclass
class Act:
    """``kind``: 'none', 'srelu' (max(x, -1)) or 'affine_relu' (max(a_k x + b_k, 0), per channel k)."""

    kind: str
    a: np.ndarray | None = None        # float64 per channel
    b: np.ndarray | None = None


@dataclass
class ConvStep:
    name: str
    cin: int                  # real input channels
    cin_p: int                # input channels as stored in the activation buffer (even; stem 3 -> 4)
    cout: int
    k: int
    stride: int
    pad: int                  # padding before (top / left); after-padding is implied by the output size
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    scale: float              # c = sqrt(2 / (k*k*cin))
    signs: np.ndarray         # bool (cout, cin, k, k): True = +c
    epilogue: str             # 'act' | 'res' | 'head'
    src: str                  # input tensor
    act: Act                  # 'act': applied to the output; 'res': to produce act_out
    out: str | None = None    # 'act': T; 'res': R (None when no later step reads R)
    act_out: str | None = None
    res: str = "none"         # 'none' | 'identity' | 'pool'
    res_src: str | None = None
    res_pad: int = 0          # pool padding before

    @property
    def blocks(self) -> int:
        return -(-self.cout // NCO)


@dataclass
class Program:
    """A whole network: input affine + stem relu, the convolutions in order, the head."""

    in_c: int
    in_c_p: int
    in_hw: tuple[int, int]
    in_a: np.ndarray                   # float64 per input channel: x = a * pixel + b
    in_b: np.ndarray
    stem_relu: bool
    steps: list[ConvStep]
    head_a: np.ndarray                 # float64 per class: y = a * (c * acc) + b
    head_b: np.ndarray
    head_pool: str                     # 'mean' | 'sum'
    num_classes: int
    tensors: dict[str, tuple[int, int, int]] = field(default_factory=dict)   # name -> (C, H, W)
    norm: str = "none"

    def macs(self) -> int:
        return sum(s.out_hw[0] * s.out_hw[1] * s.cout * s.cin * s.k * s.k for s in self.steps)

    def weight_count(self) -> int:
        return sum(s.signs.size for s in self.steps)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BN as ``a x + b`` (float64): ``a = gamma / sqrt(var + eps)``, ``b = beta - mean a``."""
    mean = bn.running_mean.detach().double().cpu().numpy()
    var = bn.running_var.detach().double().cpu().numpy()
    a = 1.0 / np.sqrt(var + bn.eps)
    b = -mean * a
    if bn.affine:
        g = bn.weight.detach().double().cpu().numpy()
        beta = bn.bias.detach().double().cpu().numpy()
        a, b = a * g, b * g + beta
    return a, b


def _activation(module: nn.Module) -> Act:
    if isinstance(module, ShiftedReLU):
        return Act("srelu")
    if (isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.BatchNorm2d)
            and isinstance(module[1], nn.ReLU)):
        a, b = _bn_affine(module[0])
        return Act("affine_relu", a, b)
    raise ConfigError(f"the C runtime does not support the activation {module.__class__.__name__}")


def _conv_geometry(conv: BinaryConv2d, hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(padding before, output size) of ``conv`` on an ``hw`` input, for both padding modes."""
    k, s = conv.kernel_size[0], conv.stride[0]
    if conv.pad_mode == "tf_same" and s > 1 and k > 1:
        outs, befores = [], []
        for n in hw:
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            befores.append(total // 2)
            outs.append(math.ceil(n / s))
        if befores[0] != befores[1]:
            raise ConfigError("the C runtime needs square inputs for TF 'same' padding")
        pad = befores[0]
    else:
        pad = k // 2
        outs = [(n + 2 * pad - k) // s + 1 for n in hw]
    for n, o in zip(hw, outs):
        if pad > 1 or (o - 1) * s + k - pad > n + 1:
            raise ConfigError(f"{conv}: padding wider than one pixel is not supported by the C runtime")
    return pad, (outs[0], outs[1])


def _signs(conv: BinaryConv2d) -> np.ndarray:
    return (conv.weight.detach().cpu() >= 0).numpy()


def lower(model: WideResNet, image_size: int = 32) -> Program:
    """Lower ``model`` (eval-mode semantics: BN uses running statistics) for ``image_size`` inputs."""
    model = unwrap(model)
    if not isinstance(model, WideResNet):
        raise ConfigError(f"the C runtime exports WideResNet models, got {type(model).__name__}")
    cfg = model.config
    if cfg.arch != "cifar":
        raise ConfigError(f"the C runtime supports the CIFAR WRN shape only (3x3 stem, no max pool); "
                          f"{cfg.name} has arch={cfg.arch!r}")
    for name, conv in model.conv_layers():
        if conv.weight_bits != 1:
            raise ConfigError(f"the C runtime computes from 1-bit weights only; layer {name!r} has "
                              f"{conv.weight_bits}-bit weights (weight_bits=32 models and "
                              f"binarize_first_last=False are not supported)")
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
            raise ConfigError(f"layer {name!r}: only square kernels and strides are supported")
    hw = (image_size, image_size)
    in_c = cfg.in_channels
    in_c_p = in_c + (in_c % 2)
    tensors: dict[str, tuple[int, int, int]] = {"x": (in_c_p, *hw)}
    in_a, in_b = _bn_affine(model.input_bn)
    blocks = list(model.blocks)
    acts = [_activation(b.act1) for b in blocks] + [_activation(model.head_act)]
    steps: list[ConvStep] = []

    def conv_step(name: str, conv: BinaryConv2d, src: str, epilogue: str, act: Act) -> ConvStep:
        c, h, w = tensors[src]
        pad, out_hw = _conv_geometry(conv, (h, w))
        step = ConvStep(name=name, cin=conv.in_channels, cin_p=c, cout=conv.out_channels,
                        k=conv.kernel_size[0], stride=conv.stride[0], pad=pad, in_hw=(h, w), out_hw=out_hw,
                        scale=float(conv.scale), signs=_signs(conv), epilogue=epilogue, src=src, act=act)
        steps.append(step)
        return step

    # stem: R0 = conv(x); A0 = act1 of the first block (R0)
    stem = conv_step("stem", model.stem, "x", "res", acts[0])
    stem.out, stem.act_out = "r0", "a0"
    tensors["r0"] = tensors["a0"] = (stem.cout, *stem.out_hw)
    r, a = "r0", "a0"
    for i, block in enumerate(blocks):
        c1 = conv_step(f"blocks.{i}.conv1", block.conv1, a, "act", _activation(block.act2))
        c1.out = f"t{i + 1}"
        tensors[c1.out] = (c1.cout, *c1.out_hw)
        c2 = conv_step(f"blocks.{i}.conv2", block.conv2, c1.out, "res", acts[i + 1])
        last = i == len(blocks) - 1
        c2.out = None if last else f"r{i + 1}"
        c2.act_out = f"a{i + 1}"
        tensors[f"r{i + 1}"] = tensors[f"a{i + 1}"] = (c2.cout, *c2.out_hw)
        c2.res_src = r
        if isinstance(block.shortcut, nn.Identity):
            c2.res = "identity"
            if tensors[r] != tensors[f"r{i + 1}"]:
                raise ConfigError(f"block {i}: identity shortcut with a shape change")
        else:
            c2.res = "pool"
            rc, rh, rw = tensors[r]
            c2.res_pad = 0 if block.shortcut.pad_mode == "tf_same" else 1
            pool_hw = tuple((n + c2.res_pad + 1 - 3) // 2 + 1 for n in (rh, rw))   # 1 pixel after
            if pool_hw != c2.out_hw or rc > c2.cout:
                raise ConfigError(f"block {i}: shortcut shape {pool_hw} does not match the convolution's "
                                  f"{c2.out_hw}")
        r, a = f"r{i + 1}", f"a{i + 1}"
    head = conv_step("head", model.head, a, "head", Act("none"))
    if model.head_bn is not None:
        head_a, head_b = _bn_affine(model.head_bn)
    else:
        head_a = np.full(cfg.num_classes, float(model.inv_temperature))
        head_b = np.zeros(cfg.num_classes)
    return Program(in_c=in_c, in_c_p=in_c_p, in_hw=hw, in_a=in_a, in_b=in_b,
                   stem_relu=cfg.reference.stem_relu, steps=steps, head_a=head_a, head_b=head_b,
                   head_pool=cfg.reference.head_pool, num_classes=head.cout, tensors=tensors,
                   norm=cfg.norm)


def model_fingerprint(model: WideResNet) -> str:
    """SHA-256 identifying what the C runtime computes: config, sign bits and BN statistics.

    Two models get the same fingerprint exactly when their configs, the sign of every conv weight and
    every BN tensor (float32) agree, so a compiled runtime can refuse a model file it was not built from.
    """
    model = unwrap(model)
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    convs = {n for n, _ in model.conv_layers()}
    for key, value in sorted(model.state_dict().items()):
        if key.endswith("num_batches_tracked"):
            continue
        module = key.rsplit(".", 1)[0]
        if module in convs and key.endswith(".weight"):
            data = np.packbits((value.detach().cpu() >= 0).numpy().reshape(-1)).tobytes()
        else:
            data = value.detach().cpu().to(torch.float32).numpy().astype("<f4").tobytes()
        digest.update(key.encode() + b"\0" + data)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Reference evaluation of a lowered program (float32), with per-tensor ranges for calibration.


def raw_name(step: ConvStep) -> str:
    """Name of a 'res' step's output before its activation (its R tensor, also when R is not stored)."""
    return step.out or f"{step.act_out}.raw"


def apply_act(act: Act, v: torch.Tensor) -> torch.Tensor:
    if act.kind == "srelu":
        return torch.clamp_min(v, -1.0)
    if act.kind == "affine_relu":
        a = torch.as_tensor(act.a, dtype=v.dtype).view(1, -1, 1, 1)
        b = torch.as_tensor(act.b, dtype=v.dtype).view(1, -1, 1, 1)
        return torch.clamp_min(v * a + b, 0.0)
    return v


def input_tensor(prog: Program, images: torch.Tensor) -> torch.Tensor:
    """The stem's input ``a_c * pixel + b_c`` (ReLU'd if the model has a stem ReLU), channel-padded."""
    x = images.to(torch.float32)
    a = torch.as_tensor(prog.in_a, dtype=torch.float32).view(1, -1, 1, 1)
    b = torch.as_tensor(prog.in_b, dtype=torch.float32).view(1, -1, 1, 1)
    x = x * a + b
    if prog.stem_relu:
        x = torch.relu(x)
    return F.pad(x, (0, 0, 0, 0, 0, prog.in_c_p - prog.in_c))


def conv_pm1(step: ConvStep, x: torch.Tensor) -> torch.Tensor:
    """``acc = sum s_k x_k`` (weights +-1, channel-padded input), cropped to the step's output size."""
    w = torch.from_numpy(np.where(step.signs, 1.0, -1.0)).to(x.dtype)
    w = F.pad(w, (0, 0, 0, 0, 0, step.cin_p - step.cin))
    h, wd = step.in_hw
    oh, ow = step.out_hw
    after_h = (oh - 1) * step.stride + step.k - step.pad - h
    after_w = (ow - 1) * step.stride + step.k - step.pad - wd
    x = F.pad(x, (step.pad, max(after_w, 0), step.pad, max(after_h, 0)))
    return F.conv2d(x, w, stride=step.stride)[:, :, :oh, :ow]


def pool_sum_count(x: torch.Tensor, pad: int, out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Window sums and real-pixel counts of the 3x3 stride-2 shortcut pool (zero padding ``pad`` before)."""
    h, w = x.shape[-2:]
    oh, ow = out_hw
    pads = (pad, (ow - 1) * 2 + 3 - pad - w, pad, (oh - 1) * 2 + 3 - pad - h)
    sums = F.avg_pool2d(F.pad(x, pads), 3, 2, divisor_override=1)
    ones = F.pad(torch.ones(1, 1, h, w, dtype=x.dtype), pads)
    counts = F.avg_pool2d(ones, 3, 2, divisor_override=1)
    return sums, counts


def shortcut(step: ConvStep, r: torch.Tensor) -> torch.Tensor:
    if step.res == "identity":
        return r
    sums, counts = pool_sum_count(r, step.res_pad, step.out_hw)
    return F.pad(sums / counts, (0, 0, 0, 0, 0, step.cout - r.shape[1]))


@torch.no_grad()
def run_program(prog: Program, images: torch.Tensor,
                ranges: dict[str, float] | None = None) -> torch.Tensor:
    """Logits of ``images`` (uint8 or float NCHW raw pixels) computed the way the C float mode does.

    If ``ranges`` is given, it is updated with the largest ``|value|`` of every tensor.
    """
    def record(name: str, t: torch.Tensor) -> None:
        if ranges is not None and name is not None:
            ranges[name] = max(ranges.get(name, 0.0), float(t.abs().max()))

    env = {"x": input_tensor(prog, images)}
    record("x", env["x"])
    logits = None
    for step in prog.steps:
        v = conv_pm1(step, env[step.src]) * step.scale
        if step.epilogue == "act":
            env[step.out] = apply_act(step.act, v)
            record(step.out, env[step.out])
        elif step.epilogue == "res":
            if step.res != "none":
                v = v + shortcut(step, env[step.res_src])
            if step.out:
                env[step.out] = v
            record(raw_name(step), v)
            env[step.act_out] = apply_act(step.act, v)
            record(step.act_out, env[step.act_out])
        else:
            a = torch.as_tensor(prog.head_a, dtype=v.dtype).view(1, -1, 1, 1)
            b = torch.as_tensor(prog.head_b, dtype=v.dtype).view(1, -1, 1, 1)
            y = v * a + b
            logits = y.sum(dim=(2, 3)) if prog.head_pool == "sum" else y.mean(dim=(2, 3))
            record("logits", logits)
    return logits
