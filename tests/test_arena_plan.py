"""The arena planner: tensors that are live together never share bytes, except an identity block's R
(written in place) and, in the overlap plan, an output over the already-consumed rows of its dying
input, which must start at least the lag below it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from onebit.export.arena import ALIGN, lag_bytes, plan_slots, pool_lag_bytes, stream_rows, streamable
from onebit.export.c_program import Act, ConvStep, Program, lower
from onebit.models import ReferenceLayout, WRNConfig, build_model


def spans(prog, plan, mode):
    """(start, end, row bytes) of every tensor in ``mode`` ('float', 'int' or 'int8': bytes for the
    convolutions' inputs, int16 for the residual stream)."""
    offsets = {"float": plan.offsets_f, "int": plan.offsets_i, "int8": plan.offsets_8}[mode]
    inputs = {st.src for st in prog.steps}
    out = {}
    for t, slot in plan.slot_of.items():
        c, h, w = prog.tensors[t]
        esz = {"float": 4, "int": 2, "int8": 1 if t in inputs else 2}[mode]
        out[t] = (offsets[slot], offsets[slot] + (h + 2) * (w + 2) * c * esz, (w + 2) * c * esz)
    return out


@pytest.mark.parametrize("cfg", [WRNConfig(depth=8, width=1), WRNConfig(depth=14, width=2),
                                 WRNConfig(depth=8, width=1, norm="bn",
                                           reference=ReferenceLayout(pad_mode="tf_same"))],
                         ids=["8-1", "14-2", "bn-tf-8-1"])
@pytest.mark.parametrize("overlap", [False, True])
def test_live_tensors_never_collide(cfg, overlap):
    prog = lower(build_model(cfg))
    plan = plan_slots(prog, overlap=overlap)
    last = {}
    for i, st in enumerate(prog.steps):
        for t in (st.src, st.res_src):
            if t:
                last[t] = i
    assert plan.total_8 < plan.total_i < plan.total_f           # bytes for conv inputs, int16, float32
    assert plan.overlap is overlap and plan.head_slot == len(plan.slot_of)
    for values in (plan.offsets_f, plan.offsets_i, plan.offsets_8, [plan.total_f, plan.total_i, plan.total_8]):
        # c_contract: every slot starts at a multiple of SLOT_ALIGN (integers: they become C literals)
        assert all(type(v) is int and v >= 0 and v % ALIGN == 0 for v in values), values
    assert plan.stream8 is overlap                              # every WRN streams its 8-bit blocks on bare metal
    for mode, total, offsets in (("int", plan.total_i, plan.offsets_i), ("float", plan.total_f, plan.offsets_f),
                                 ("int8", plan.total_8, plan.offsets_8))[:2 if overlap else 3]:
        sp = spans(prog, plan, mode)
        assert max(e for _, e, _ in sp.values()) <= total
        head_off = offsets[plan.head_slot]
        for i, st in enumerate(prog.steps):
            if st.epilogue == "head":                            # partial sums beside the last A
                lo, hi, _ = sp[st.src]
                head_bytes = st.out_hw[0] * st.out_hw[1] * prog.num_classes * 4
                assert head_off >= hi or head_off + head_bytes <= lo
                assert head_off + head_bytes <= total
                continue
            written = [t for t in (st.out, st.act_out) if t]
            defined = {"x"} | {t for s in prog.steps[:i] for t in (s.out, s.act_out) if t}
            live = {t for t in defined if t not in written and last.get(t, -1) >= i}
            for t in written:
                lo, hi, row = sp[t]
                for u in live:
                    ulo, uhi, urow = sp[u]
                    if hi <= ulo or lo >= uhi:
                        continue
                    if st.res == "identity" and t == st.out and u == st.res_src:
                        assert lo == ulo                            # in place, element by element
                    else:
                        assert overlap and u == st.src and last[u] == i, (t, u)
                        assert lo <= ulo - lag_bytes(st, row, urow)
            if len(written) == 2 and st.res != "identity":
                a, b = sp[written[0]], sp[written[1]]
                assert a[1] <= b[0] or b[1] <= a[0]


@pytest.mark.parametrize("cfg", [WRNConfig(depth=8, width=1), WRNConfig(depth=14, width=2),
                                 WRNConfig(depth=8, width=1, norm="bn",
                                           reference=ReferenceLayout(pad_mode="tf_same"))],
                         ids=["8-1", "14-2", "bn-tf-8-1"])
def test_streamed_8bit_plan_never_collides(cfg):
    """The streamed 8-bit plan (onebit.c, ONEBIT_STREAM8): while a block runs, its k-row windows of A and T, the R
    it reads and the R it writes (and, in the last block, the head's A row and partial sums) never share bytes,
    except an identity block's R (in place) and a pool block's R, which starts at least pool_lag_bytes below the
    R it pools; the stem's R starts at least lag_bytes below the input it consumes."""
    prog = lower(build_model(cfg))
    plan = plan_slots(prog, overlap=True)
    assert plan.stream8 and streamable(prog)
    rows = stream_rows(prog)
    off = {t: plan.offsets_8[k] for t, k in plan.slot_of.items()}
    assert all(v % ALIGN == 0 and v >= 0 for v in plan.offsets_8)

    def span(t):
        c, h, w = prog.tensors[t]
        row = (w + 2) * c * (2 if t.startswith("r") else 1)
        return off[t], off[t] + rows.get(t, h + 2) * row, row

    def disjoint(a, b):
        return a[1] <= b[0] or b[1] <= a[0]

    stem = prog.steps[0]
    (xlo, xhi, xrow), (rlo, rhi, rrow) = span("x"), span(stem.out)
    assert disjoint((xlo, xhi), (rlo, rhi)) or rlo <= xlo - lag_bytes(stem, rrow, xrow)
    ends = [xhi, rhi]
    for b in range((len(prog.steps) - 2) // 2):
        c1, c2 = prog.steps[2 * b + 1], prog.steps[2 * b + 2]
        r_prev = prog.steps[2 * b].out
        windows = [span(c1.src), span(c1.out)]
        assert [w[1] - w[0] for w in windows] == [3 * windows[0][2], 3 * windows[1][2]]
        if not c2.out:
            head = prog.steps[-1]
            windows += [span(c2.act_out), (plan.offsets_8[plan.head_slot], plan.offsets_8[plan.head_slot] +
                                           head.out_hw[0] * head.out_hw[1] * prog.num_classes * 4)]
        spans_ = windows + [span(r_prev)]
        if c2.out and c2.res == "identity":
            assert off[c2.out] == off[r_prev]
        elif c2.out:
            (olo, ohi, orow), (ilo, ihi, irow) = span(c2.out), span(r_prev)
            assert disjoint((olo, ohi), (ilo, ihi)) or olo <= ilo - pool_lag_bytes(c2, orow, irow)
            spans_.append(span(c2.out)[:2])
        for i, a in enumerate(windows):
            for b_ in spans_[i + 1:]:
                assert disjoint(a[:2], b_[:2]), (b, a, b_)
        ends += [e for _, e, *rest in spans_]
    assert max(ends) <= plan.total_8


def test_pool_lag_bytes_by_hand():
    """A pool block's output row oy reads R_prev's padded rows from 2 oy - res_pad + 1 on:
    ``out_base + (oy + 2) * out_row <= in_base + (2 oy - res_pad + 1) * in_row``, and the bottom border row."""
    step = SimpleNamespace(out_hw=(3, 3), res_pad=1)
    # rows of 40 over rows of 100: first rows (0, 2, 4): 80, 120 - 200, 160 - 400; border 200 - 400
    assert pool_lag_bytes(step, 40, 100) == 80
    # res_pad 0 ('tf_same'): first rows (1, 3, 5): 80 - 100, ...: the bottom border 200 - 500 < 0; max -20
    assert pool_lag_bytes(SimpleNamespace(out_hw=(3, 3), res_pad=0), 40, 100) == -20


def test_streamed_8bit_plan_halves_the_integer_arena():
    """Issue 21's memory goal: WRN-8-1's 8-bit arena at most half of the integer mode's (bare metal)."""
    from onebit.bench.firmware import stream_lower_bound

    prog = lower(build_model(WRNConfig(depth=8, width=1)))
    plan = plan_slots(prog, overlap=True)
    assert plan.stream8 and plan.total_8 <= plan.total_i // 2
    # the limit: the first pool block, 16 -> 32 channels: R_prev 34 x 34 x 16 x 2 = 36,992 plus its lag 2,304
    # (pool_lag_bytes: output row 0's 2 rows of 18 x 32 x 2 = 1,152 before input row 0), windows of 3 rows of A
    # (34 x 16) and T (18 x 32): 1,632 + 1,728. The plan is 544 B above it: the stem's input ends 408 B above R0
    # (x + lag_bytes = 4,624 + 32,776 > 36,992), which the pool block's lag shifts up with R0, and alignment
    assert stream_lower_bound(prog) == 36_992 + 2_304 + 1_632 + 1_728
    assert stream_lower_bound(prog) <= plan.total_8 <= stream_lower_bound(prog) + 9 * ALIGN
    assert not plan_slots(chain_program(), overlap=True).stream8     # no stored R before its block


def test_overlap_plan_meets_the_wrn_8_1_targets():
    plan = plan_slots(lower(build_model(WRNConfig(depth=8, width=1))), overlap=True)
    assert plan.total_i <= 100_000 and plan.total_f <= 200_000
    host = plan_slots(lower(build_model(WRNConfig(depth=8, width=1))))
    assert host.total_i < 134_272 and host.total_f < 265_984     # smaller than the old slot plan too


def test_overlap_plan_computes_what_the_plain_plan_computes(tmp_path, cifar10_dir):
    """A host build of the overlapping plan (one thread) gives the Python fixed-point model's logits."""
    import json
    import shutil
    import subprocess

    import numpy as np
    import torch

    from onebit.data.cifar import load_cifar
    from onebit.export.c_runtime import export_c
    from onebit.export.fixed_point import QParams, run_program_int

    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) on PATH")
    images = load_cifar("cifar10", cifar10_dir, train=False, download=False).images[:8]
    calib = load_cifar("cifar10", cifar10_dir, train=True, download=False).images[:128]
    torch.manual_seed(0)
    model = build_model(WRNConfig(depth=8, width=2)).eval()      # 2-4 blocks of 32 channels per layer
    out = export_c(model, tmp_path / "c", calibration_images=calib, arena_overlap=True)
    (out / "images.bin").write_bytes(images.numpy().tobytes())
    subprocess.run(["make", "-C", str(out), "portable"], check=True, capture_output=True)
    text = subprocess.run([str(out / "onebit_demo"), "--int", "--raw", str(out / "images.bin")], check=True,
                          capture_output=True, text=True).stdout
    got = np.array([[int(v) for v in line.split()[2:]] for line in text.strip().splitlines()])
    qp = QParams.from_dict(json.loads((out / "onebit_model.json").read_text())["qparams"])
    assert np.array_equal(got, run_program_int(lower(model), qp, images))


# ------------------------------------------------------------------------------------- exact, by hand

def test_lag_bytes_by_hand():
    """``out_base + (oy + 2) * out_row <= in_base + (oy * stride - pad + 1) * in_row`` for every output row oy,
    and the zero bottom border row: ``(oh + 2) * out_row <= in_base + first row of the last window * in_row``."""
    step = SimpleNamespace(out_hw=(2, 6), stride=1, pad=1)
    # equal rows: first rows (0, 1): rows 2r - 0 = 2r, 3r - r = 2r; border 4r - r = 3r
    assert lag_bytes(step, 256, 256) == 768
    # out 100, in 60 bytes a row: 200, 300 - 60 = 240; border 400 - 60 = 340
    assert lag_bytes(step, 100, 60) == 340
    # 6 rows (non-square: the height counts, not the width): first rows 0..5: border 8 * 100 - 5 * 60 = 500
    assert lag_bytes(SimpleNamespace(out_hw=(6, 2), stride=1, pad=1), 100, 60) == 500
    # stride 2, pad 1, 3 rows of 40 over input rows of 100: first rows (0, 2, 4): 80, 120 - 200, 160 - 400;
    # border 200 - 400: the first row decides
    assert lag_bytes(SimpleNamespace(out_hw=(3, 5), stride=2, pad=1), 40, 100) == 80
    # TF 'same' stride 2 has no padding before: first rows (1, 3): 100 - 100 = 0, 150 - 300; border 200 - 300
    assert lag_bytes(SimpleNamespace(out_hw=(2, 2), stride=2, pad=0), 50, 100) == 0


def chain_program() -> Program:
    """x -> stem (res, no shortcut: a0) -> c1 (act: t1) -> c2 (res, no shortcut: a1) -> head, every tensor
    (8 channels, 2 x 6) = 4 x 8 x 8 = 256 elements with its border, rows of 64 elements."""
    def step(name, epilogue, src, **kw):
        return ConvStep(name=name, cin=8, cin_p=8, cout=8, k=3, stride=1, pad=1, in_hw=(2, 6), out_hw=(2, 6),
                        scale=1.0, signs=np.zeros((8, 8, 3, 3), dtype=bool), epilogue=epilogue, src=src,
                        act=Act("srelu"), **kw)

    steps = [step("stem", "res", "x", act_out="a0"), step("c1", "act", "a0", out="t1"),
             step("c2", "res", "t1", act_out="a1"), step("head", "head", "a1")]
    return Program(in_c=8, in_c_p=8, in_hw=(2, 6), in_a=np.ones(8), in_b=np.zeros(8), stem_relu=False,
                   steps=steps, head_a=np.ones(12), head_b=np.zeros(12), head_pool="mean", num_classes=12,
                   tensors={t: (8, 2, 6) for t in ("x", "a0", "t1", "a1")})


def test_plan_of_a_chain_by_hand():
    """Sizes: float 1024 bytes a tensor (rows 256), int16 512 (rows 128), 8-bit 256 (rows 64: all four are
    convolution inputs); the head's partial sums 2 x 6 x 12 classes x 4 bytes = 576 in every mode."""
    prog = chain_program()
    plan = plan_slots(prog)                                 # default: no overlap
    assert plan.slot_of == {"x": 0, "a0": 1, "t1": 2, "a1": 3} and plan.head_slot == 4 and plan.overlap is False
    # first fit: x at 0, a0 after it, t1 back at 0 (x is dead), a1 after t1, the head beside a1:
    # float: a1 [1024, 2048) leaves [0, 1024) for the head; int16: a1 [512, 1024), the head [0, 576) would
    # overlap it: after a1 at 1024; 8-bit: a1 [256, 512), the head after it at 512.
    # Placing top-down below any smaller top fails (x at the top, a0 under it leave no room).
    assert (plan.offsets_f, plan.total_f) == ([0, 1024, 0, 1024, 0], 2048)
    assert (plan.offsets_i, plan.total_i) == ([0, 512, 0, 512, 1024], 1600)
    assert (plan.offsets_8, plan.total_8) == ([0, 256, 0, 256, 512], 1088)
    assert plan_slots(prog, overlap=False) == plan

    # overlap: a step's output may start lag_bytes = 3 rows below its dying input (test_lag_bytes_by_hand), and
    # that position is tried first. float (lag 768): a0 at 1024 lets t1 start at 256 (over a0's first rows);
    # a1 cannot start 768 below t1 (256 - 768 < 0) and goes after it at 1280; the head fits at 0: 2304,
    # larger than the plain plan's 2048, which is therefore the one kept in float mode.
    # int16 (lag 384): a0 at 512, t1 at 128, a1 after t1 at 640, the head at 0: 1152.
    # 8-bit (lag 192): first fit gives x 0, a0 256, t1 64, a1 320, the head after a1 at 576: 1152; placed
    # top-down below 832 each output goes 3 rows under its input (x 576, a0 384, t1 192, a1 0) and the head
    # [256, 832) sits on the dead x and a0: 832 bytes, the smallest top that works (768 fails: a1 would be at -64,
    # and above t1 it meets the head).
    plan = plan_slots(prog, overlap=True)
    assert plan.overlap is True and plan.slot_of == {"x": 0, "a0": 1, "t1": 2, "a1": 3}
    assert (plan.offsets_f, plan.total_f) == ([0, 1024, 0, 1024, 0], 2048)
    assert (plan.offsets_i, plan.total_i) == ([0, 512, 128, 640, 0], 1152)
    assert (plan.offsets_8, plan.total_8) == ([576, 384, 192, 0, 256], 832)


@pytest.mark.parametrize("cfg", [WRNConfig(depth=8, width=1), WRNConfig(depth=14, width=2)], ids=["8-1", "14-2"])
def test_overlap_plan_is_never_larger_than_the_plain_plan(cfg):
    prog = lower(build_model(cfg))
    plain, overlap = plan_slots(prog), plan_slots(prog, overlap=True)
    for mode in ("total_f", "total_i", "total_8"):
        assert getattr(overlap, mode) <= getattr(plain, mode), mode
