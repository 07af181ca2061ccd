"""The integer mode's arithmetic (onebit.export.fixed_point): the scale chooser, the integer multipliers, the
rounding rescale and saturation, the shortcut, the calibration of a whole program and the exact integer model.

Every expected number is worked out by hand from the module's definitions (written out in the comments):
``frac_bits``: the largest f with ``headroom * max|t| * 2^f <= qmax``, kept in [-16, 24]; ``multiplier``:
``M = floor(m * 2^sh + 1/2)`` with the largest ``sh <= 62`` such that ``max|m| * 2^sh <= 2^31 - 1`` and
``v_max * max|m| * 2^sh <= 2^62``; ``rq(v, M, sh) = floor(v * M / 2^sh + 1/2)``; ``sat16`` clips to +-32767.
The programs are hand-built from 1x1 convolutions on 1x2 images, so every value can be followed on paper.
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from onebit.errors import ConfigError
from onebit.export.c_program import Act, ConvStep, Program, lower, run_program
from onebit.export.fixed_point import (QMAX, LayerQ, QParams, add_shortcut, calibrate, frac_bits, measure_ranges,
                                       multiplier, rq, run_program_int, sat16)
from onebit.models import WRNConfig, build_model

P31 = 2 ** 31


# ------------------------------------------------------------------------------------------- frac_bits

def test_frac_bits_is_the_largest_scale_with_one_bit_of_headroom():
    assert QMAX == 32767
    # 2 * 1 * 2^13 = 16384 <= 32767 < 2 * 2^14: f = 13; each doubling of the range costs one bit
    assert [frac_bits(2.0 ** k) for k in (-1, 0, 1, 2, 3)] == [14, 13, 12, 11, 10]
    assert frac_bits(3.0) == 12                          # 6 * 2^12 = 24576 <= 32767 < 49152
    assert frac_bits(0.75) == 14                         # 1.5 * 2^14 = 24576
    # the range [-16, 24]: 2^-11 -> 24 fits exactly (2^-10 * 2^24 = 16384); 2^-12 would want 25
    assert frac_bits(2.0 ** -11) == 24 and frac_bits(2.0 ** -12) == 24 and frac_bits(1e-30) == 24
    # 2^29 -> -16 fits exactly (2^30 * 2^-16 = 16384); 2^30 would want -17
    assert frac_bits(2.0 ** 29) == -16 and frac_bits(2.0 ** 30) == -16 and frac_bits(1e30) == -16
    # nothing seen, or nonsense: the default 8 fractional bits
    assert [frac_bits(v) for v in (0.0, -1.0, math.inf, math.nan)] == [8, 8, 8, 8]
    # other budgets: int8-like 127 with no headroom: 1 * 2^6 = 64 <= 127 < 128
    assert frac_bits(1.0, qmax=127, headroom=1.0) == 6
    assert frac_bits(1.0, qmax=127) == 5 and frac_bits(1.0, headroom=4.0) == 12
    for max_abs in (0.013, 0.5, 1.7, 77.0, 1000.0):           # the definition, by search
        f = frac_bits(max_abs)
        assert 2 * max_abs * 2.0 ** f <= QMAX < 2 * max_abs * 2.0 ** (f + 1), max_abs


# ------------------------------------------------------------------------------------------ multiplier

def test_multiplier_takes_the_largest_shift_the_int32_and_int64_bounds_allow():
    # 1 * 2^30 < 2^31 - 1 < 2^31: sh = 30, the product bound (2^62 / 1) does not bind
    M, sh = multiplier(1.0, 1.0)
    assert sh == 30 and M.dtype == np.int64 and M.tolist() == [2 ** 30]
    # 0.75 * 2^31 = 1610612736 < 2^31 - 1; 32767 * 0.75 * 2^31 < 2^62
    M, sh = multiplier(0.75, QMAX)
    assert (M.tolist(), sh) == ([1610612736], 31)
    # |v| <= 2^40: 2^40 * 2^sh <= 2^62 -> sh = 22 (the int64 bound binds)
    M, sh = multiplier(1.0, 2.0 ** 40)
    assert (M.tolist(), sh) == ([2 ** 22], 22)
    # |v| < 1 counts as 1 (a calibrated v_max below 1 must not allow more than the int32 bound): same as v_max 1
    M, sh = multiplier(2.0 ** -40, 0.25)
    assert (M.tolist(), sh) == ([2 ** 22], 62)            # 2^-40 * 2^70 fits int32 but the shift stops at 62
    # M may reach 2^31 - 1 exactly: m = (2^31 - 1) / 2^30 keeps sh = 30
    M, sh = multiplier((P31 - 1) / 2 ** 30, 1.0)
    assert (M.tolist(), sh) == ([P31 - 1], 30)
    # float32 factors are rounded in float64: (2^23 + 1) + 1/2 -> 2^23 + 1 (in float32 the sum 2^23 + 1.5 is not
    # representable and rounds to the even 2^23 + 2)
    m32 = np.array([1.0, (2 ** 23 + 1) * 2.0 ** -30], dtype=np.float32)
    assert multiplier(m32, 1.0)[0].tolist() == [2 ** 30, 2 ** 23 + 1]
    # one shift for all: the largest |m| decides, smaller ones keep fewer bits; round half up
    M, sh = multiplier(np.array([1.0, -0.5, 3 * 2.0 ** -31, -3 * 2.0 ** -31, 5 * 2.0 ** -31, 1 / 3]), 1.0)
    # 1.5 -> 2, -1.5 -> -1, 2.5 -> 3 (floor(x + 1/2)), 2^30 / 3 = 357913941.33 -> 357913941
    assert sh == 30 and M.tolist() == [2 ** 30, -(2 ** 29), 2, -1, 3, 357913941]


def test_multiplier_of_zero_and_of_a_factor_too_large_for_the_integer_mode():
    for m in (0.0, [0.0, 0.0], np.zeros(0)):
        M, sh = multiplier(m, 1000.0)
        assert sh == 1 and M.dtype == np.int64 and not M.any()
    assert multiplier([0.0, 0.0], 1.0)[0].shape == (2,) and multiplier(np.zeros(0), 1.0)[0].shape == (0,)
    # 2^29 * 2^1 = 2^30 fits with sh = 1 (the smallest shift the rescale allows)
    M, sh = multiplier(2.0 ** 29, 1.0)
    assert (M.tolist(), sh) == ([2 ** 30], 1)
    for m in (2.0 ** 30, -(2.0 ** 31), 1e12):               # 2^30 * 2 = 2^31 > 2^31 - 1: sh would be 0
        with pytest.raises(ConfigError, match=r"^fixed-point rescale factor .* is out of range for the integer mode$"):
            multiplier(m, 1.0)
    with pytest.raises(ConfigError, match="factor 1.07374e\\+09 is"):
        multiplier(-(2.0 ** 30), 1.0)


def test_multipliers_keep_every_product_inside_int64():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.uniform(-4, 4, 5) * 10.0 ** rng.integers(-6, 3)
        v_max = float(10.0 ** rng.uniform(0, 9))
        M, sh = multiplier(m, v_max)
        assert 1 <= sh <= 62 and np.abs(M).max() <= P31 - 1 and np.abs(M).max() * max(v_max, 1) <= 2 ** 62
        assert np.array_equal(M, [math.floor(Fraction(x) * 2 ** sh + Fraction(1, 2)) for x in m])
        # the shift is the largest allowed: one more bit breaks one of the bounds (or passes 62)
        a = np.abs(m).max()
        assert sh == 62 or a * 2.0 ** (sh + 1) > P31 - 1 or max(v_max, 1) * a * 2.0 ** (sh + 1) > 2.0 ** 62


# ----------------------------------------------------------------------------------------- rq and sat16

def test_rq_rounds_half_up_with_an_arithmetic_shift():
    v = np.array([5, -5, 3, -3, 4, -4, 0, 1, -1])
    # v / 2: 2.5 -> 3, -2.5 -> -2, 1.5 -> 2, -1.5 -> -1, 2, -2, 0, 0.5 -> 1, -0.5 -> 0
    assert rq(v, 1, 1).tolist() == [3, -2, 2, -1, 2, -2, 0, 1, 0]
    assert rq(np.array([7, -7]), 3, 2).tolist() == [5, -5]     # 21/4 = 5.25 -> 5, -5.25 -> -5
    assert rq(np.array([2, 6, -2]), 1, 2).tolist() == [1, 2, 0]  # 0.5 -> 1, 1.5 -> 2, -0.5 -> 0
    # per-element multipliers broadcast; the product is formed in int64 even from int16 input
    v16 = np.array([32767, -32768, 12345], dtype=np.int16)
    m = np.array([P31 - 1, P31 - 1, 3])
    got = rq(v16, m, 31)
    assert got.dtype == np.int64
    expect = [math.floor(Fraction(int(a) * int(b), 2 ** 31) + Fraction(1, 2)) for a, b in zip(v16, m)]
    assert got.tolist() == expect == [32767, -32768, 0]
    big = np.array([2 ** 31 - 5, -(2 ** 31) + 7], dtype=np.int64)
    assert rq(big, 2 ** 30, 45).tolist() == [math.floor(Fraction(int(x) * 2 ** 30, 2 ** 45) + Fraction(1, 2))
                                           for x in big] == [65536, -65536]
    rng = np.random.default_rng(1)
    for sh in (1, 2, 7, 16, 31, 40, 62):
        v = rng.integers(-2 ** 20, 2 ** 20, 300)
        m = rng.integers(-2 ** 30, 2 ** 30, 300) >> max(0, sh - 41)      # |v * m| < 2^62
        assert rq(v, m, sh).tolist() == [math.floor(Fraction(int(a) * int(b), 2 ** sh) + Fraction(1, 2))
                                         for a, b in zip(v, m)], sh


def test_sat16_saturates_symmetrically_at_32767():
    v = np.array([-(2 ** 40), -40000, -32768, -32767, -1, 0, 32766, 32767, 32768, 10 ** 12])
    assert sat16(v).tolist() == [-32767, -32767, -32767, -32767, -1, 0, 32766, 32767, 32767, 32767]


# --------------------------------------------------------------------------------------------- shortcut

def test_identity_shortcut_adds_the_rescaled_previous_r():
    step = SimpleNamespace(res="identity")
    lq = LayerQ(q_res_m=3, q_res_sh=1)
    v = np.array([10, 20, 30])
    # (3 * -3 + 1) >> 1 = -4, (9 + 1) >> 1 = 5, (15 + 1) >> 1 = 8
    assert add_shortcut(step, lq, v, np.array([-3, 3, 5])).tolist() == [6, 25, 38]
    assert add_shortcut(SimpleNamespace(res="none"), lq, v, None).tolist() == [10, 20, 30]


def test_pool_shortcut_sums_real_pixels_and_rescales_by_their_count():
    r_prev = np.stack([np.arange(1, 17).reshape(1, 4, 4), -np.ones((1, 4, 4), dtype=np.int64)])  # (2, 1, 4, 4)
    v = np.zeros((2, 2, 2, 2), dtype=np.int64)
    v[:, 0], v[:, 1] = 1000, 7
    lq = LayerQ(q_pool_m=[0, 0, 0, 0, 40, 0, 60, 0, 0, 90], q_pool_sh=3)
    # padding 1 before: the window of output (oy, ox) is rows/cols 2o-1 .. 2o+1 of the 4x4 input, clipped
    # image 0 (1..16 row by row): (0,0) 1+2+5+6 = 14 over 4 pixels, (0,1) 2+3+4+6+7+8 = 30 over 6,
    # (1,0) 5+6+9+10+13+14 = 57 over 6, (1,1) 6+7+8+10+11+12+14+15+16 = 99 over 9
    # rq: (14*40 + 4) >> 3 = 70, (30*60 + 4) >> 3 = 225, (57*60 + 4) >> 3 = 428, (99*90 + 4) >> 3 = 1114
    # image 1 (all -1): (-160 + 4) >> 3 = -20, (-360 + 4) >> 3 = -45 (twice), (-810 + 4) >> 3 = -101
    got = add_shortcut(SimpleNamespace(res="pool", res_pad=1, out_hw=(2, 2)), lq, v, r_prev)
    assert got[0, 0].tolist() == [[1070, 1225], [1428, 2114]]
    assert got[1, 0].tolist() == [[980, 955], [955, 899]]
    assert (got[:, 1] == 7).all()                           # channels beyond R_prev's get nothing
    assert (v[:, 0] == 1000).all() and (v[:, 1] == 7).all()  # the caller's array is left alone
    # TF 'same' (padding 0 before): windows 2o .. 2o+2: (0,0) 1+2+3+5+6+7+9+10+11 = 54 over 9,
    # (0,1) 3+4+7+8+11+12 = 45 over 6, (1,0) 9+10+11+13+14+15 = 72 over 6, (1,1) 11+12+15+16 = 54 over 4
    # rq: (54*90 + 4) >> 3 = 608, (45*60 + 4) >> 3 = 338, (72*60 + 4) >> 3 = 540, (54*40 + 4) >> 3 = 270
    got = add_shortcut(SimpleNamespace(res="pool", res_pad=0, out_hw=(2, 2)), lq, v, r_prev)
    assert got[0, 0].tolist() == [[1608, 1338], [1540, 1270]]


# ------------------------------------------------------------------------------- hand-built programs

HW = (1, 2)


def conv(name, signs, epilogue, src, act, scale=1.0, **kw) -> ConvStep:
    """A 1x1 convolution of a 1x2 image; ``signs[o][i]`` True = +1."""
    signs = np.array(signs, dtype=bool)
    return ConvStep(name=name, cin=signs.shape[1], cin_p=2, cout=signs.shape[0], k=1, stride=1, pad=0, in_hw=HW,
                    out_hw=HW, scale=scale, signs=signs.reshape(*signs.shape, 1, 1), epilogue=epilogue, src=src,
                    act=act, **kw)


def program(acts: list[Act], in_a=1.0, in_b=0.0, stem_relu=False, head_pool="mean", head_a=(1.0, 1.0),
            head_b=(0.0, 0.0), scales=(1.0, 1.0, 1.0, 1.0)) -> Program:
    """x (1 channel) -> stem (res: r0, a0 = act0(r0)) -> conv1 (act: t1 = act1) -> conv2 (res identity over r0,
    a1 = act2(R1), R1 not stored) -> head (2 classes)."""
    stem = conv("stem", [[True], [False]], "res", "x", acts[0], scales[0], out="r0", act_out="a0")
    c1 = conv("c1", [[True, True], [True, False]], "act", "a0", acts[1], scales[1], out="t1")
    c2 = conv("c2", [[True, False], [False, True]], "res", "t1", acts[2], scales[2], act_out="a1",
              res="identity", res_src="r0")
    head = conv("head", [[True, True], [False, True]], "head", "a1", Act("none"), scales[3])
    return Program(in_c=1, in_c_p=2, in_hw=HW, in_a=np.array([in_a]), in_b=np.array([in_b]), stem_relu=stem_relu,
                   steps=[stem, c1, c2, head], head_a=np.array(head_a), head_b=np.array(head_b),
                   head_pool=head_pool, num_classes=2,
                   tensors={"x": (2, *HW), "r0": (2, *HW), "a0": (2, *HW), "t1": (2, *HW), "a1": (2, *HW)})


def images(*pixel_pairs) -> np.ndarray:
    return np.array(pixel_pairs, dtype=np.uint8).reshape(-1, 1, *HW)


def test_integer_model_of_a_shifted_relu_program_by_hand():
    prog = program([Act("srelu")] * 3)
    qp = QParams(frac={}, logit_frac=0, in_lut=[[200 * p - 20000 for p in range(256)]],
                 layers=[LayerQ(q_m=3, q_sh=1, q_lo=-256), LayerQ(q_m=1, q_sh=1, q_lo=-100),
                         LayerQ(q_m=5, q_sh=2, q_res_m=1, q_res_sh=1, q_lo=-50), LayerQ()],
                 head_m=[3, 1], head_b=[7, -7], head_sh=2)
    # image A, pixels (0, 255): x = (-20000, 31000)
    #  stem: acc = (x, -x); r0 = sat16((3 acc + 1) >> 1) = ch0 (-30000, 46500 -> 32767), ch1 (30000, -46500 -> -32767)
    #        a0 = max(r0, -256) = ch0 (-256, 32767), ch1 (30000, -256)
    #  c1:   acc = (a0_0 + a0_1, a0_0 - a0_1) = (29744, 32511), (-30256, 33023)
    #        t1 = max((acc + 1) >> 1, -100) = (14872, 16256), (-15128 -> -100, 16512)
    #  c2:   acc = (t1_0 - t1_1, t1_1 - t1_0) = (14972, -256), (-14972, 256); (5 acc + 2) >> 2 = (18715, -320),
    #        (-18715, 320); shortcut (r0 + 1) >> 1 = (-15000, 16384), (15000, -16383)
    #        R1 = (3715, 16064), (-3715, -16063); a1 = max(R1, -50) = (3715, 16064), (-50, -50)
    #  head: acc = (a1_0 + a1_1, a1_1 - a1_0) = (3665, 16014), (-3765, -16114); summed over the 2 pixels
    #        (19679, -19879); (3 * 19679 + 2) >> 2 = 14759, (-19879 + 2) >> 2 = -4970; + (7, -7)
    # image B, pixels (100, 101): x = (0, 200)
    #  r0 = (0, 300), (0, -300); a0 = (0, 300), (0, -256); c1 acc = (0, 44), (0, 556); t1 = (0, 22), (0, 278)
    #  c2 acc = (0, -256), (0, 256) -> (0, -320), (0, 320); shortcut (0, 150), (0, -150); R1 = (0, -170), (0, 170)
    #  a1 = (0, -50), (0, 170); head acc (0, 120), (0, 220) -> sums (120, 220) -> (362 >> 2, 222 >> 2) = (90, 55)
    got = run_program_int(prog, qp, images((0, 255), (100, 101)))
    assert got.dtype == np.int64 and got.tolist() == [[14766, -4977], [97, 48]]
    # torch input gives the same
    assert run_program_int(prog, qp, torch.from_numpy(images((0, 255), (100, 101)))).tolist() == got.tolist()


def test_integer_model_of_a_bn_program_by_hand_with_int32_logit_clipping():
    affine = [Act("affine_relu", np.ones(2), np.zeros(2))] * 3
    prog = program(affine)
    qp = QParams(frac={}, logit_frac=0, in_lut=[[p - 128 for p in range(256)]],
                 layers=[LayerQ(q_m=1, q_sh=1, q_act_m=[2, 3], q_act_b=[-10, 5], q_act_sh=1),
                         LayerQ(q_act_m=[1, 4], q_act_b=[0, -100], q_act_sh=2),
                         LayerQ(q_m=1, q_sh=1, q_res_m=3, q_res_sh=1, q_act_m=[1, 1], q_act_b=[1, 2], q_act_sh=1),
                         LayerQ()],
                 head_m=[1, 2], head_b=[P31 - 40, -P31 + 5], head_sh=1)
    # image C, pixels (10, 250): x = (-118, 122)
    #  stem: r0 = (acc + 1) >> 1 = ch0 (-59, 61), ch1 (59, -61)
    #        a0 = relu(((m r0 + 1) >> 1) + b): ch0 (-59 - 10, 61 - 10) -> (0, 51); ch1 (89 + 5, -91 + 5) -> (94, 0)
    #  c1:   acc = (94, 51), (-94, 51); t1 = relu(((m acc + 2) >> 2) + b): ch0 (24, 13); ch1 (-94-100, 51-100) -> 0
    #  c2:   acc = (24, 13), (-24, -13) -> (acc + 1) >> 1 = (12, 7), (-12, -6); shortcut (3 r0 + 1) >> 1 =
    #        (-88, 92), (89, -91); R1 = (-76, 99), (77, -97); a1 = relu(((R1 + 1) >> 1) + (1, 2)) = (0, 51), (41, 0)
    #  head: sums (41 + 51, 41 - 51) = (92, -10); (92 + 1) >> 1 = 46, (-20 + 1) >> 1 = -10; + b: both clip
    # image D, pixels (128, 0): x = (0, -128)
    #  r0 = (0, -64), (0, 64); a0 = (0, 0), (5, 101); c1 acc = (5, 101), (-5, -101); t1 = (1, 25), (0, 0)
    #  c2: (1, 13), (0, -12); shortcut (0, -96), (0, 96); R1 = (1, -83), (0, 84); a1 = (2, 0), (2, 44)
    #  head: sums (4 + 44, 0 + 44) = (48, 44) -> (49 >> 1, 89 >> 1) = (24, 44); + b = (2^31 - 16, -2^31 + 49)
    got = run_program_int(prog, qp, images((10, 250), (128, 0)))
    assert got.tolist() == [[P31 - 1, -(P31 - 1)], [P31 - 16, -P31 + 49]]


# ----------------------------------------------------------------------------------------- calibration

def test_calibration_of_a_shifted_relu_program_by_hand():
    # scales: x 2^-12 (range 2), r0 2^-11 (4), a0 shares r0's (its own range 3 would give 2^-12), t1 2^-13 (1),
    # R1 2^-10 (8), a1 shares R1's; logits 100: largest f with 4 * 100 * 2^f <= 2^31 - 1 -> 22
    prog = program([Act("srelu")] * 3, in_a=300 * 2.0 ** -12, in_b=-38001.5 * 2.0 ** -12, head_a=(1.0, 2.0),
                   head_b=(0.25 + 2.0 ** -23, -0.5 - 2.0 ** -23), scales=(0.5, 0.25, 1.0, 0.5))
    ranges = {"x": 2.0, "r0": 4.0, "a0": 3.0, "t1": 1.0, "a1.raw": 8.0, "a1": 0.5, "logits": 100.0, "@images": 7}
    qp = calibrate(prog, ranges=ranges)
    assert "@images" in ranges                              # the caller's dict is not consumed
    assert qp.frac == {"x": 12, "r0": 11, "a0": 11, "t1": 13, "a1.raw": 10, "a1": 10}
    assert (qp.logit_frac, qp.calibration_images) == (22, 7)
    stem, c1, c2, head = qp.layers
    # stem: acc scale 0.5 * 2^-12 into r0's 2^-11: m = 1/4 -> 2^30 with sh 32 (1/4 * 2^33 > 2^31 - 1)
    assert (stem.q_m, stem.q_sh, stem.q_lo) == (2 ** 30, 32, -(2 ** 11))     # shifted ReLU floor -1 = -2^11
    assert (stem.q_res_m, stem.q_res_sh, stem.q_act_m, stem.q_pool_m) == (0, 1, [], [])
    # c1: 0.25 * 2^-11 into 2^-13: m = 1 -> 2^30, sh 30; floor -2^13
    assert (c1.q_m, c1.q_sh, c1.q_lo, c1.q_act_m) == (2 ** 30, 30, -(2 ** 13), [])
    # c2: 1.0 * 2^-13 into 2^-10: m = 1/8 -> 2^30, sh 33; shortcut r0 2^-11 into 2^-10: m = 1/2 -> 2^30, sh 31
    assert (c2.q_m, c2.q_sh, c2.q_res_m, c2.q_res_sh, c2.q_lo) == (2 ** 30, 33, 2 ** 30, 31, -(2 ** 10))
    assert head == LayerQ()
    # head (mean over 2 pixels): a * 0.5 * 2^-10 / (2 * 2^-22) = a * 2^10 = (1024, 2048) -> sh 19 (2048 * 2^19 =
    # 2^30), M = (2^29, 2^30); b * 2^22: 2^20 + 1/2 -> 2^20 + 1 (half up), -2^21 - 1/2 -> -2^21
    assert (qp.head_m, qp.head_sh, qp.head_b) == ([2 ** 29, 2 ** 30], 19, [2 ** 20 + 1, -(2 ** 21)])
    # input table: (300 p - 38001.5) rounded half up, saturated: p = 127 -> 99, 128 -> 399, 0 -> -32767, 255 -> 32767
    lut = qp.in_lut[0]
    assert len(qp.in_lut) == 1 and len(lut) == 256
    assert (lut[0], lut[126], lut[127], lut[128], lut[235], lut[236], lut[255]) == \
        (-32767, -201, 99, 399, 32499, 32767, 32767)
    assert lut == [max(-32767, min(32767, 300 * p - 38001)) for p in range(256)]
    # logits: the floor 1e-3 on the range, and the clamp of logit_frac to [0, 24]
    assert calibrate(prog, ranges={**ranges, "logits": 0.0}).logit_frac == 24      # 4e-3 * 2^24 < 2^31
    assert all_python_ints(qp.to_dict())
    assert calibrate(prog, ranges={**ranges, "logits": 31.0}).logit_frac == 24      # 124 * 2^24 < 2^31 - 1
    assert calibrate(prog, ranges={**ranges, "logits": 33.0}).logit_frac == 23      # 132 * 2^24 > 2^31 - 1
    assert calibrate(prog, ranges={**ranges, "logits": 2.0 ** 30}).logit_frac == 0
    # exactly at the bound: 4 * L * 2^23 = 2^31 - 1 still fits
    assert calibrate(prog, ranges={**ranges, "logits": (P31 - 1) / 2 ** 25}).logit_frac == 23
    assert calibrate(prog, ranges={**ranges, "logits": 2.0 ** 26}).logit_frac == 2  # 2^28 * 2^2 < 2^31 - 1


def all_python_ints(value) -> bool:
    if isinstance(value, dict):
        return all(all_python_ints(v) for v in value.values())
    if isinstance(value, list):
        return all(all_python_ints(v) for v in value)
    return type(value) is int


def test_calibration_bounds_products_by_the_largest_accumulator():
    """The int64 product bound: |acc| <= k * k * cin_p * 32767 (head: times the pixels it sums). Realistic layers
    never reach it; here c1 is a 3x3 over 2^16 channels and the head sums 2 pixels of 2^18 channels."""
    prog = program([Act("srelu")] * 3, in_a=300 * 2.0 ** -12, in_b=-38001.5 * 2.0 ** -12, head_a=(1.0, 2.0),
                   scales=(0.5, 0.25, 1.0, 0.5))
    prog.steps[1].k, prog.steps[1].cin_p = 3, 2 ** 16
    prog.steps[3].cin_p = 2 ** 18
    ranges = {"x": 2.0, "r0": 4.0, "a0": 3.0, "t1": 1.0, "a1.raw": 8.0, "a1": 0.5, "logits": 100.0}
    qp = calibrate(prog, ranges=ranges)
    # c1: m = 1; 9 * 2^16 * 32767 * 2^sh <= 2^62 -> sh = floor(62 - 34.17) = 27 (the int32 bound alone: 30)
    assert (qp.layers[1].q_m, qp.layers[1].q_sh) == (2 ** 27, 27)
    # head: m = (1024, 2048); 2 * 2^18 * 32767 * 2048 * 2^sh <= 2^62 -> sh = floor(17.00004) = 17 (int32 alone: 19)
    assert (qp.head_m, qp.head_sh) == ([2 ** 27, 2 ** 28], 17)
    assert (qp.layers[0].q_sh, qp.layers[2].q_sh) == (32, 33)        # the others as before


def test_calibration_of_a_bn_program_with_a_pool_shortcut_and_a_summed_head_by_hand():
    prog = program([Act("affine_relu", np.array([2.0, 0.5]), np.array([0.5 + 2.0 ** -12, -1.0])),
                    Act("affine_relu", np.array([1.0, 0.5]), np.array([0.5 + 2.0 ** -15, -0.25 - 2.0 ** -15])),
                    Act("affine_relu", np.array([4.0, 1.0]), np.array([-0.5, 0.75]))],
                   in_a=300 * 2.0 ** -13, in_b=-38001.5 * 2.0 ** -13, stem_relu=True, head_pool="sum",
                   head_a=(1.0, 3.0), head_b=(0.125, -(2.0 ** -26)), scales=(0.5, 0.25, 1.0, 0.5))
    prog.steps[2].res = "pool"
    ranges = {"x": 1.0, "r0": 2.0, "a0": 4.0, "t1": 0.5, "a1.raw": 1.0, "a1": 2.0, "logits": 0.0}
    qp = calibrate(prog, ranges=ranges)
    # no aliases with BN: every tensor its own scale; no @images: 0 calibration images
    assert qp.frac == {"x": 13, "r0": 12, "a0": 11, "t1": 14, "a1.raw": 13, "a1": 12}
    assert (qp.logit_frac, qp.calibration_images) == (24, 0)
    stem, c1, c2, _ = qp.layers
    # stem: 0.5 * 2^-13 into 2^-12: 1/4 -> (2^30, 32); activation a * 2^-12 / 2^-11 = (1, 1/4) -> (2^30, 2^28), sh 30
    # (32767 * 2^30 < 2^62); b / 2^-11 = (1024.5, -2048) -> (1025, -2048)
    assert (stem.q_m, stem.q_sh, stem.q_lo) == (2 ** 30, 32, 0)
    assert (stem.q_act_m, stem.q_act_sh, stem.q_act_b) == ([2 ** 30, 2 ** 28], 30, [1025, -2048])
    # c1: a * 0.25 * 2^-11 / 2^-14 = (2, 1) -> (2^30, 2^29), sh 29; b * 2^14 = (8192.5, -4096.5) -> (8193, -4096)
    assert (c1.q_act_m, c1.q_act_sh, c1.q_act_b, c1.q_m, c1.q_lo) == ([2 ** 30, 2 ** 29], 29, [8193, -4096], 0, 0)
    # c2: 2^-14 into 2^-13: 1/2 -> (2^30, 31); pool: r0 2^-12 into 2^-13 divided by the count n: 2 / n, sh 29
    # (2 * 2^29 = 2^30), rounded half up: 2^30 / 3 = 357913941.33, 2^31 / 10 ... (n = 0 has no pixel: 0)
    assert (c2.q_m, c2.q_sh, c2.q_pool_sh, c2.q_res_m) == (2 ** 30, 31, 29, 0)
    assert c2.q_pool_m == [0, 2 ** 30, 2 ** 29, 357913941, 2 ** 28, 214748365, 178956971, 153391689, 2 ** 27,
                           119304647]
    # activation: a * 2^-13 / 2^-12 = (2, 1/2) -> (2^30, 2^28), sh 29; b * 2^12 = (-2048, 3072)
    assert (c2.q_act_m, c2.q_act_sh, c2.q_act_b) == ([2 ** 30, 2 ** 28], 29, [-2048, 3072])
    # head, summed over 2 pixels into 2^-24: a * 0.5 * 2^-12 / 2^-24 = (2048, 6144) -> sh 18 (6144 * 2^18 < 2^31),
    # M = (2^29, 1610612736); b: the sum adds it once per pixel: b * 2 * 2^24 = (2^22, -1/2 -> 0)
    assert (qp.head_m, qp.head_sh, qp.head_b) == ([2 ** 29, 1610612736], 18, [2 ** 22, 0])
    # stem ReLU before the table: (300 p - 38001.5) clipped at 0 first
    assert qp.in_lut[0] == [max(0, min(32767, 300 * p - 38001)) for p in range(256)]
    # every parameter is a Python int (they are written into JSON and into C arrays)
    assert all_python_ints(qp.to_dict())
    # the same head as a mean: the rescale and the offset per pixel halve
    prog.head_pool = "mean"
    qp = calibrate(prog, ranges=ranges)
    assert (qp.head_m, qp.head_sh, qp.head_b) == ([2 ** 29, 1610612736], 19, [2 ** 21, 0])


def test_measure_ranges_and_calibration_from_images():
    prog = program([Act("srelu")] * 3, in_a=300 * 2.0 ** -12, in_b=-38001.5 * 2.0 ** -12)
    imgs = images((0, 3), (255, 9), (100, 101))
    ranges = measure_ranges(prog, imgs)
    # x = (300 p - 38001.5) / 4096: largest |x| at p = 255: 38498.5 / 4096 (exact in float32)
    assert ranges["x"] == 38498.5 / 4096 and ranges["@images"] == 3.0
    assert set(ranges) == {"x", "r0", "a0", "t1", "a1.raw", "a1", "logits", "@images"}
    # batches of any size see the same maxima
    assert measure_ranges(prog, imgs, batch_size=1) == ranges == measure_ranges(prog, torch.from_numpy(imgs), 2)
    singles = [measure_ranges(prog, imgs[i:i + 1]) for i in range(3)]
    assert all(ranges[k] == max(s[k] for s in singles) for k in ranges if k != "@images")
    assert calibrate(prog, imgs) == calibrate(prog, ranges=ranges) == calibrate(prog, imgs, batch_size=2)
    assert calibrate(prog, imgs).calibration_images == 3
    for bad in (np.zeros((0, 1, 1, 2), np.uint8), np.zeros((1, 2), np.uint8)):
        with pytest.raises(ConfigError, match=r"^calibration needs a non-empty batch of images \(N, C, H, W\)$"):
            measure_ranges(prog, bad)


def test_qparams_survive_a_dict_round_trip():
    qp = QParams(frac={"x": 3}, logit_frac=5, layers=[LayerQ(q_m=7, q_pool_m=[1, 2]), LayerQ(q_act_b=[4])],
                 in_lut=[[1, 2]], head_m=[9], head_b=[-1], head_sh=4, calibration_images=2)
    d = qp.to_dict()
    assert d["layers"][0] == {"q_m": 7, "q_sh": 1, "q_lo": 0, "q_act_m": [], "q_act_b": [], "q_act_sh": 1,
                              "q_res_m": 0, "q_res_sh": 1, "q_pool_m": [1, 2], "q_pool_sh": 1}
    back = QParams.from_dict(d)
    assert back == qp and all(isinstance(layer, LayerQ) for layer in back.layers)
    assert d["layers"][0] == {**LayerQ(q_m=7, q_pool_m=[1, 2]).__dict__}     # from_dict left its input alone


# -------------------------------------------------------------------- the integer model of a real network

def test_integer_logits_of_a_wrn_track_the_float_program():
    """WRN-8-1 (BN-free) and its BN twin: the int16 model's logits, scaled by 2^-logit_frac, stay within 0.1% of
    the largest float32 logit (about 1e-4 here: 16-bit activations) and pick the same class for every image."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 3, 32, 32), generator=g, dtype=torch.uint8)
    for cfg in (WRNConfig(depth=8, width=1), WRNConfig(depth=8, width=1, norm="bn")):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        prog = lower(model)
        qp = calibrate(prog, x[:16])
        got = run_program_int(prog, qp, x).astype(np.float64) * 2.0 ** -qp.logit_frac
        ref = run_program(prog, x).double().numpy()
        scale = np.abs(ref).max()
        assert np.abs(got - ref).max() <= 1e-3 * scale, cfg.name
        assert np.array_equal(got.argmax(1), ref.argmax(1)), cfg.name
