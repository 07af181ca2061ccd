"""The arena planner: tensors that are live together never share bytes, except an identity block's R
(written in place) and, in the overlap plan, an output over the already-consumed rows of its dying
input, which must start at least the lag below it."""

from __future__ import annotations

import pytest

from onebit.export.c_program import lower
from onebit.export.arena import lag_bytes, plan_slots
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
    assert plan.total_8 <= plan.total_i <= plan.total_f
    for mode, total, offsets in (("int", plan.total_i, plan.offsets_i), ("float", plan.total_f, plan.offsets_f),
                                 ("int8", plan.total_8, plan.offsets_8)):
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
