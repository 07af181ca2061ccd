"""Integer mode of the C runtime: int16 fixed-point activations, calibration, and its exact Python model.

Every tensor ``t`` of the lowered program (:mod:`onebit.export.c_program`) is stored as int16 ``q`` with
real value ``q * 2^-f_t``; ``f_t`` is chosen on calibration images so that twice the largest ``|t|`` seen
still fits (one bit of headroom; values beyond saturate at +-32767). With +-1 weights a convolution is
``acc = sum s_k q_k``: additions and subtractions of integers, exact in int32. The only multiplications
are the rescales into the next tensor's scale,

    rq(v, M, sh) = (v * M + 2^(sh-1)) >> sh        (int64 product, arithmetic shift: rounds half up)

with an integer multiplier ``M ~ m * 2^sh`` per layer (per channel where a BN affine follows, which is
BN's cost in this mode). Shifted ReLU is ``max(q, -2^f)``. The shortcut pool sums up to 9 int16 values
and rescales by a multiplier chosen by the number of real pixels. The head sums ``acc`` over space in
int64 and rescales once per class into int32 logits of scale ``2^-f_logit``.

:func:`run_program_int` is the reference implementation of exactly this arithmetic (numpy int64); the C
runtime's integer mode must reproduce its logits bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from onebit.errors import ConfigError
from onebit.export.c_program import Program, conv_pm1, pool_sum_count, raw_name, run_program

QMAX = 32767                  # int16 tensors saturate at +-QMAX
MAX_CALIBRATION = 50_000      # calibration images come from the CIFAR training split, which has 50,000
HEADROOM = 2.0                # calibrated range x 2 must fit
LOGIT_HEADROOM = 4.0


def frac_bits(max_abs: float, qmax: float = QMAX, headroom: float = HEADROOM) -> int:
    """Fractional bits f of a tensor whose calibrated ``max |t|`` is ``max_abs`` (scale 2^-f)."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        return 8
    return int(min(24, max(-16, math.floor(math.log2(qmax / (max_abs * headroom))))))


def multiplier(m: np.ndarray | float, v_max: float) -> tuple[np.ndarray, int]:
    """Integer multipliers ``M = round(m * 2^sh)`` sharing one shift, |M| < 2^31, |v| * |M| < 2^62."""
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    a_max = float(np.abs(m).max()) if m.size else 0.0
    if a_max == 0.0:
        return np.zeros(m.shape, dtype=np.int64), 1
    sh = math.floor(math.log2((2 ** 31 - 1) / a_max))
    sh = min(sh, math.floor(math.log2(2.0 ** 62 / (max(v_max, 1.0) * a_max))), 62)
    if sh < 1:
        raise ConfigError(f"fixed-point rescale factor {a_max:g} is out of range for the integer mode")
    M = np.floor(m * 2.0 ** sh + 0.5).astype(np.int64)
    M = np.clip(M, -(2 ** 31 - 1), 2 ** 31 - 1)
    return M, sh


@dataclass
class LayerQ:
    q_m: int = 0
    q_sh: int = 1
    q_lo: int = 0
    q_act_m: list[int] = field(default_factory=list)
    q_act_b: list[int] = field(default_factory=list)
    q_act_sh: int = 1
    q_res_m: int = 0
    q_res_sh: int = 1
    q_pool_m: list[int] = field(default_factory=list)       # index = number of real pixels 0..9
    q_pool_sh: int = 1


@dataclass
class QParams:
    """Everything the integer mode needs beyond the program: scales, multipliers, the input table."""

    frac: dict[str, int]
    logit_frac: int
    layers: list[LayerQ]
    in_lut: list[list[int]]            # [channel][pixel 0..255] -> int16
    head_m: list[int]
    head_b: list[int]
    head_sh: int
    calibration_images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QParams":
        d = dict(d)
        d["layers"] = [LayerQ(**layer) for layer in d["layers"]]
        return cls(**d)


def _scale_name(prog: Program, tensor: str) -> str:
    """Shifted-ReLU outputs share their input's scale (max(q, -2^f) needs no rescale)."""
    for step in prog.steps:
        if step.epilogue == "res" and step.act_out == tensor and step.act.kind == "srelu":
            return raw_name(step)
    return tensor


def measure_ranges(prog: Program, images: torch.Tensor | np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """The largest ``|t|`` of every tensor of ``prog`` over ``images`` (uint8 NCHW, float32 evaluation)."""
    images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4 or images.shape[0] == 0:
        raise ConfigError("calibration needs a non-empty batch of images (N, C, H, W)")
    ranges: dict[str, float] = {}
    for i in range(0, len(images), batch_size):
        run_program(prog, images[i:i + batch_size], ranges)
    ranges["@images"] = float(len(images))
    return ranges


def calibrate(prog: Program, images: torch.Tensor | np.ndarray | None = None, batch_size: int = 64,
              ranges: dict[str, float] | None = None) -> QParams:
    """Choose every scale from the ranges seen on ``images`` (uint8 NCHW) or from ``ranges``
    (:func:`measure_ranges`), and derive the multipliers."""
    if ranges is None:
        ranges = measure_ranges(prog, images, batch_size)
    ranges = dict(ranges)
    n_images = int(ranges.pop("@images", 0))
    frac = {name: frac_bits(v) for name, v in ranges.items() if name != "logits"}
    for step in prog.steps:                  # aliased shifted-ReLU tensors: the scale of their input
        if step.epilogue == "res":
            alias = _scale_name(prog, step.act_out)
            if alias != step.act_out:
                frac[step.act_out] = frac[alias]
    logit_frac = int(min(24, max(0, math.floor(math.log2((2 ** 31 - 1) /
                                                         (max(ranges["logits"], 1e-3) * LOGIT_HEADROOM))))))
    s = {name: 2.0 ** -f for name, f in frac.items()}

    layers: list[LayerQ] = []
    head_m = head_b = None
    head_sh = 1
    for step in prog.steps:
        lq = LayerQ()
        acc_scale = step.scale * s[step.src]
        acc_max = step.k * step.k * step.cin_p * QMAX
        if step.epilogue == "act":
            t = step.out
            if step.act.kind == "srelu":
                M, lq.q_sh = multiplier(acc_scale / s[t], acc_max)
                lq.q_m = int(M[0])
                lq.q_lo = -int(round(2.0 ** frac[t]))
            else:
                M, lq.q_act_sh = multiplier(step.act.a * acc_scale / s[t], acc_max)
                lq.q_act_m = M.tolist()
                lq.q_act_b = np.floor(step.act.b / s[t] + 0.5).astype(np.int64).tolist()
        elif step.epilogue == "res":
            r = raw_name(step)
            M, lq.q_sh = multiplier(acc_scale / s[r], acc_max)
            lq.q_m = int(M[0])
            if step.res == "identity":
                M, lq.q_res_sh = multiplier(s[step.res_src] / s[r], QMAX)
                lq.q_res_m = int(M[0])
            elif step.res == "pool":
                ratios = [0.0] + [s[step.res_src] / (s[r] * n) for n in range(1, 10)]
                M, lq.q_pool_sh = multiplier(np.array(ratios), 9 * QMAX)
                lq.q_pool_m = M.tolist()
            if step.act.kind == "srelu":
                lq.q_lo = -int(round(2.0 ** frac[r]))
            else:
                a_name = step.act_out
                M, lq.q_act_sh = multiplier(step.act.a * s[r] / s[a_name], QMAX)
                lq.q_act_m = M.tolist()
                lq.q_act_b = np.floor(step.act.b / s[a_name] + 0.5).astype(np.int64).tolist()
        else:
            npix = step.out_hw[0] * step.out_hw[1]
            pool_div = 1 if prog.head_pool == "sum" else npix
            s_logit = 2.0 ** -logit_frac
            M, head_sh = multiplier(prog.head_a * acc_scale / (pool_div * s_logit), npix * acc_max)
            head_m = M.tolist()
            # sum over space of (a v + b) = a sum(v) + npix b; the mean divides both by npix
            head_b = np.floor(prog.head_b * (npix / pool_div) / s_logit + 0.5).astype(np.int64).tolist()
        layers.append(lq)

    pixels = np.arange(256, dtype=np.float64)
    lut = []
    for c in range(prog.in_c):
        v = prog.in_a[c] * pixels + prog.in_b[c]
        if prog.stem_relu:
            v = np.maximum(v, 0.0)
        q = np.clip(np.floor(v / s["x"] + 0.5), -QMAX, QMAX).astype(np.int64)
        lut.append(q.tolist())
    return QParams(frac=frac, logit_frac=logit_frac, layers=layers, in_lut=lut, head_m=head_m,
                   head_b=head_b, head_sh=head_sh, calibration_images=n_images)


# ----------------------------------------------------------------------------------------------------
# The exact reference model of the integer arithmetic.


def rq(v: np.ndarray, m: np.ndarray | int, sh: int) -> np.ndarray:
    """``(v * m + 2^(sh-1)) >> sh`` in int64 (arithmetic shift)."""
    return (v.astype(np.int64) * np.asarray(m, dtype=np.int64) + (1 << (sh - 1))) >> sh


def sat16(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -QMAX, QMAX)


def _conv_int(step, q: np.ndarray) -> np.ndarray:
    acc = conv_pm1(step, torch.from_numpy(q.astype(np.float64)))     # integers < 2^53: exact
    return acc.numpy().astype(np.int64)


def _per_channel(v: list[int]) -> np.ndarray:
    return np.asarray(v, dtype=np.int64).reshape(1, -1, 1, 1)


def add_shortcut(step, lq: LayerQ, v: np.ndarray, r_prev: np.ndarray | None) -> np.ndarray:
    """``v`` (the rescaled convolution, R's scale) plus the shortcut of the int16 ``r_prev``: the identity
    ``rq(R_prev, q_res_m, q_res_sh)`` or the 3x3 stride-2 pool ``rq(window sum, q_pool_m[count],
    q_pool_sh)`` over the real pixels, into the first channels. Shared by the int16 and 8-bit modes."""
    if step.res == "identity":
        return v + rq(r_prev, lq.q_res_m, lq.q_res_sh)
    if step.res == "pool":
        sums, counts = pool_sum_count(torch.from_numpy(r_prev.astype(np.float64)), step.res_pad, step.out_hw)
        m = np.asarray(lq.q_pool_m, dtype=np.int64)[counts.numpy().astype(np.int64)]
        v = v.copy()
        v[:, :r_prev.shape[1]] += rq(sums.numpy().astype(np.int64), m, lq.q_pool_sh)
    return v


def run_program_int(prog: Program, qp: QParams, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Integer logits (int64, scale ``2^-logit_frac``) of ``images`` (uint8 NCHW), bit-exact with C."""
    img = np.asarray(images).astype(np.int64)
    lut = np.asarray(qp.in_lut, dtype=np.int64)
    x = np.stack([lut[c][img[:, c]] for c in range(prog.in_c)], axis=1)
    x = np.pad(x, ((0, 0), (0, prog.in_c_p - prog.in_c), (0, 0), (0, 0)))
    env = {"x": x}
    logits = None
    for step, lq in zip(prog.steps, qp.layers):
        acc = _conv_int(step, env[step.src])
        if step.epilogue == "act":
            if step.act.kind == "srelu":
                env[step.out] = sat16(np.maximum(rq(acc, lq.q_m, lq.q_sh), lq.q_lo))
            else:
                t = rq(acc, _per_channel(lq.q_act_m), lq.q_act_sh) + _per_channel(lq.q_act_b)
                env[step.out] = sat16(np.maximum(t, 0))
        elif step.epilogue == "res":
            r = sat16(add_shortcut(step, lq, rq(acc, lq.q_m, lq.q_sh), env.get(step.res_src)))
            if step.out:
                env[step.out] = r
            if step.act.kind == "srelu":
                env[step.act_out] = sat16(np.maximum(r, lq.q_lo))
            else:
                t = rq(r, _per_channel(lq.q_act_m), lq.q_act_sh) + _per_channel(lq.q_act_b)
                env[step.act_out] = sat16(np.maximum(t, 0))
        else:
            total = acc.sum(axis=(2, 3))
            q = rq(total, np.asarray(qp.head_m, dtype=np.int64), qp.head_sh)
            logits = np.clip(q + np.asarray(qp.head_b, dtype=np.int64), -(2 ** 31 - 1), 2 ** 31 - 1)
    return logits


__all__ = ["QParams", "LayerQ", "calibrate", "measure_ranges", "add_shortcut", "run_program_int", "frac_bits",
           "multiplier", "rq", "sat16"]
