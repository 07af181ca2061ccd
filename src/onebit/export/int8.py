"""8-bit activation mode of the C runtime: uint8 activations with a zero code, calibration, exact model.

Every tensor a convolution reads (the input ``x``, the first conv's output ``T`` of a block, every
activation ``A``) is stored as a byte ``u`` in 0..255 with real value ``s_t (u - z_t)``; the residual
stream ``R`` stays int16 with the integer mode's power-of-two scales (:mod:`onebit.export.fixed_point`),
so it is exactly as wide as in that mode. The shifted ReLU bounds its output below by -1 (McDonnell et
al. 2019, eq. 2), so its tensors use ``s = 1/z`` with an integer zero code ``z``: -1 is the byte 0,
``max(v, -1)`` is the clamp at 0, and the range above is ``(255 - z) / z``, with ``z`` the largest code
that still holds the calibrated maximum. BN + ReLU outputs are >= 0 (``z = 0``); the input takes the
range of its per-channel affine over the 256 pixel values.

With +-1 weights the kernels compute ``acc' = sum s_k u_k`` over the window, whose border cells and
padded channels hold ``z`` (the real 0), so the convolution of the real values is exactly

    acc = sum s_k (u_k - z) = acc' - z * sum_k s_k           (per output channel: a constant)

and the epilogues rescale ``acc`` with the integer mode's ``rq`` into a byte (``clamp(rq(acc) + z_out,
0, 255)``) or into the int16 ``R`` (then ``R`` into the next byte tensor). :func:`run_program_int8` is the
reference implementation (numpy int64); the C runtime's 8-bit mode reproduces its logits bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from onebit.errors import ConfigError
from onebit.export.c_program import Program, conv_pm1, raw_name
from onebit.export.fixed_point import QMAX, QParams, add_shortcut, multiplier, rq, sat16

UMAX = 255


def byte_tensors(prog: Program) -> list[str]:
    """The tensors stored as bytes in 8-bit mode: every convolution's input."""
    return sorted({step.src for step in prog.steps})


def srelu_zero(max_value: float) -> int:
    """Zero code ``z`` (scale ``1/z``) of a shifted-ReLU tensor whose calibrated maximum is ``max_value``:
    the largest ``z`` with ``(255 - z) / z >= max_value``, at least 1."""
    if not math.isfinite(max_value) or max_value <= 0:
        return UMAX
    return int(min(UMAX, max(1, math.floor(UMAX / (1.0 + max_value)))))


def wsum(step) -> np.ndarray:
    """``sum_k s_k`` over each output channel's window as the runtime stores it: the padded input
    channels' bits are +1 and so are those of the padded outputs of the last 32-channel block."""
    from onebit.export.c_contract import NCO

    cout, cin, k, _ = step.signs.shape
    per = np.where(step.signs, 1, -1).reshape(cout, -1).sum(axis=1) + (step.cin_p - cin) * k * k
    full = np.full(step.blocks * NCO, step.cin_p * k * k, dtype=np.int64)
    full[:cout] = per
    return full


@dataclass
class LayerQ8:
    zw: list[int] = field(default_factory=list)   # z_src * sum_k s_k per output channel (block-padded)
    zwn: list[int] = field(default_factory=list)  # zw + 255 * (number of -1 weights): for kernels summing |u - x|
    m: int = 0                                    # acc -> T (srelu 'act') or acc -> R ('res')
    sh: int = 1
    z: int = 0                                    # zero code of the byte output (T or A)
    a_m: int = 0                                  # 'res' + srelu: R -> A
    a_sh: int = 1
    act_m: list[int] = field(default_factory=list)   # affine_relu per channel: acc -> T or R -> A
    act_b: list[int] = field(default_factory=list)
    act_sh: int = 1
    i32: int = 0          # 1: every value of this layer's output step provably fits in int32 (fits_int32)


@dataclass
class Q8Params:
    """The 8-bit mode's constants: byte tensors' scales and zero codes, multipliers, input table, head."""

    scale: dict[str, float]           # byte tensors: real = scale * (u - zero)
    zero: dict[str, int]
    layers: list[LayerQ8]
    in_lut: list[list[int]]           # [channel][pixel 0..255] -> byte
    head_m: list[int]
    head_b: list[int]
    head_sh: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Q8Params":
        d = dict(d)
        d["layers"] = [LayerQ8(**layer) for layer in d["layers"]]
        return cls(**d)


I32 = 2 ** 31 - 1


def _rq_ok(v_max: float, m: int | list[int], sh: int) -> float | None:
    """The largest |rq(v, m, sh)| for |v| <= v_max, or None when the 32-bit form of rq cannot compute it
    exactly: for sh < 32 the C runtime shifts v left by 32 - sh first (ob_rq_hi), which must fit in int32."""
    ms = m if isinstance(m, list) else [m]
    m_max = max((abs(int(x)) for x in ms), default=0)
    if sh < 32 and v_max * 2 ** (32 - sh) > I32:
        return None
    return v_max * m_max / 2 ** sh + 1


def fits_int32(step, lq: "LayerQ8", l16) -> bool:
    """Whether every operand, rescale and sum of ``step``'s output step stays within int32 for any input
    (bounds: |acc - zw| <= 255 * taps, |R| <= 32767, a pool window sums <= 9 values), so that the C runtime
    may run it in 32-bit arithmetic with the same results (ob_out8_s32); else it uses int64."""
    acc_max = UMAX * step.k * step.k * step.cin_p
    bounds = []
    if step.epilogue == "head":
        return False
    if step.epilogue == "act":
        bounds.append(_rq_ok(acc_max, lq.m, lq.sh) if step.act.kind == "srelu"
                      else _rq_ok(acc_max, lq.act_m, lq.act_sh))
    else:
        first = _rq_ok(acc_max, lq.m, lq.sh)
        if step.res == "identity":
            second = _rq_ok(QMAX, l16.q_res_m, l16.q_res_sh)
        elif step.res == "pool":
            second = _rq_ok(9 * QMAX, l16.q_pool_m, l16.q_pool_sh)
        else:
            second = 0.0
        bounds += [first, second, None if first is None or second is None else first + second]
        bounds.append(_rq_ok(QMAX, lq.a_m, lq.a_sh) if step.act.kind == "srelu"
                      else _rq_ok(QMAX, lq.act_m, lq.act_sh))
    return all(b is not None and b + 2 * UMAX + max(map(abs, lq.act_b), default=0) < I32 for b in bounds)


def _input_range(prog: Program) -> tuple[float, float]:
    pixels = np.arange(256, dtype=np.float64)
    v = np.asarray(prog.in_a, dtype=np.float64)[:, None] * pixels + np.asarray(prog.in_b, dtype=np.float64)[:, None]
    if prog.stem_relu:
        v = np.maximum(v, 0.0)
    return float(min(v.min(), 0.0)), float(max(v.max(), 0.0))


def calibrate_int8(prog: Program, ranges: dict[str, float], qp: QParams) -> Q8Params:
    """The 8-bit mode from the calibrated ``ranges`` (largest ``|t|`` per tensor) and the integer mode
    ``qp`` whose int16 ``R`` scales (and shortcut multipliers, logit scale) it shares."""
    if any(step.cin_p % 4 for step in prog.steps):
        raise ConfigError("the 8-bit mode needs a multiple of 4 channels into every convolution")
    producer = {}
    for step in prog.steps:
        if step.epilogue == "act":
            producer[step.out] = step.act.kind
        elif step.epilogue == "res":
            producer[step.act_out] = step.act.kind
    scale: dict[str, float] = {}
    zero: dict[str, int] = {}
    for t in byte_tensors(prog):
        if t == "x":
            lo, hi = _input_range(prog)
            s = (hi - lo) / UMAX if hi > lo else 1.0
            scale[t], zero[t] = s, int(min(UMAX, max(0, round(-lo / s))))
        elif producer[t] == "srelu":
            zero[t] = srelu_zero(ranges.get(t, 0.0))
            scale[t] = 1.0 / zero[t]
        else:
            hi = ranges.get(t, 0.0)
            scale[t], zero[t] = (hi / UMAX if hi > 0 else 1.0), 0
    s_r = {name: 2.0 ** -f for name, f in qp.frac.items()}

    layers: list[LayerQ8] = []
    head_m = head_b = None
    head_sh = 1
    for step in prog.steps:
        ws = wsum(step)
        taps = step.k * step.k * step.cin_p
        lq = LayerQ8(zw=(zero[step.src] * ws).tolist(), zwn=(zero[step.src] * ws + UMAX * (taps - ws) // 2).tolist())
        acc_scale = step.scale * scale[step.src]
        acc_max = step.k * step.k * step.cin_p * UMAX
        if step.epilogue == "act":
            t = step.out
            lq.z = zero[t]
            if step.act.kind == "srelu":
                M, lq.sh = multiplier(acc_scale / scale[t], acc_max)
                lq.m = int(M[0])
            else:
                M, lq.act_sh = multiplier(step.act.a * acc_scale / scale[t], acc_max)
                lq.act_m = M.tolist()
                lq.act_b = np.floor(step.act.b / scale[t] + 0.5).astype(np.int64).tolist()
        elif step.epilogue == "res":
            r, a = raw_name(step), step.act_out
            M, lq.sh = multiplier(acc_scale / s_r[r], acc_max)
            lq.m = int(M[0])
            lq.z = zero[a]
            if step.act.kind == "srelu":
                M, lq.a_sh = multiplier(s_r[r] / scale[a], QMAX)
                lq.a_m = int(M[0])
            else:
                M, lq.act_sh = multiplier(step.act.a * s_r[r] / scale[a], QMAX)
                lq.act_m = M.tolist()
                lq.act_b = np.floor(step.act.b / scale[a] + 0.5).astype(np.int64).tolist()
        else:
            npix = step.out_hw[0] * step.out_hw[1]
            pool_div = 1 if prog.head_pool == "sum" else npix
            s_logit = 2.0 ** -qp.logit_frac
            M, head_sh = multiplier(prog.head_a * acc_scale / (pool_div * s_logit), npix * acc_max)
            head_m = M.tolist()
            head_b = np.floor(prog.head_b * (npix / pool_div) / s_logit + 0.5).astype(np.int64).tolist()
        layers.append(lq)
    for step, lq, l16 in zip(prog.steps, layers, qp.layers):
        lq.i32 = int(fits_int32(step, lq, l16))

    pixels = np.arange(256, dtype=np.float64)
    lut = []
    for c in range(prog.in_c):
        v = prog.in_a[c] * pixels + prog.in_b[c]
        if prog.stem_relu:
            v = np.maximum(v, 0.0)
        lut.append(np.clip(np.floor(v / scale["x"] + 0.5) + zero["x"], 0, UMAX).astype(np.int64).tolist())
    return Q8Params(scale=scale, zero=zero, layers=layers, in_lut=lut, head_m=head_m, head_b=head_b,
                    head_sh=head_sh)


# ----------------------------------------------------------------------------------------------------
# The exact reference model of the 8-bit arithmetic.


def _byte(v: np.ndarray) -> np.ndarray:
    return np.clip(v, 0, UMAX)


def _per_channel(v: list[int]) -> np.ndarray:
    return np.asarray(v, dtype=np.int64).reshape(1, -1, 1, 1)


def run_program_int8(prog: Program, qp: QParams, q8: Q8Params, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Integer logits (int64, scale ``2^-qp.logit_frac``) of ``images`` (uint8 NCHW) in 8-bit mode,
    bit-exact with the C runtime. Byte tensors are held as their codes; ``acc`` is the convolution of
    ``u - z`` (the kernels' ``acc'`` minus ``zw``)."""
    img = np.asarray(images).astype(np.int64)
    lut = np.asarray(q8.in_lut, dtype=np.int64)
    x = np.stack([lut[c][img[:, c]] for c in range(prog.in_c)], axis=1)
    x = np.pad(x, ((0, 0), (0, prog.in_c_p - prog.in_c), (0, 0), (0, 0)), constant_values=q8.zero["x"])
    env = {"x": x}
    logits = None
    for step, lq, l16 in zip(prog.steps, q8.layers, qp.layers):
        centred = torch.from_numpy((env[step.src] - q8.zero[step.src]).astype(np.float64))
        acc = conv_pm1(step, centred).numpy().astype(np.int64)     # integers < 2^53: exact
        if step.epilogue == "act":
            if step.act.kind == "srelu":
                env[step.out] = _byte(rq(acc, lq.m, lq.sh) + lq.z)
            else:
                env[step.out] = _byte(rq(acc, _per_channel(lq.act_m), lq.act_sh) + _per_channel(lq.act_b))
        elif step.epilogue == "res":
            r = sat16(add_shortcut(step, l16, rq(acc, lq.m, lq.sh), env.get(step.res_src)))
            if step.out:
                env[step.out] = r
            if step.act.kind == "srelu":
                env[step.act_out] = _byte(rq(r, lq.a_m, lq.a_sh) + lq.z)
            else:
                env[step.act_out] = _byte(rq(r, _per_channel(lq.act_m), lq.act_sh) + _per_channel(lq.act_b))
        else:
            total = acc.sum(axis=(2, 3))
            q = rq(total, np.asarray(q8.head_m, dtype=np.int64), q8.head_sh)
            logits = np.clip(q + np.asarray(q8.head_b, dtype=np.int64), -(2 ** 31 - 1), 2 ** 31 - 1)
    return logits


__all__ = ["Q8Params", "LayerQ8", "calibrate_int8", "run_program_int8", "byte_tensors", "srelu_zero", "wsum",
           "fits_int32", "UMAX"]
