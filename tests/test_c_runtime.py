"""The exported C runtime: builds with the system compiler, matches PyTorch on real CIFAR-10 images,
its SIMD and portable kernels agree bit for bit, and its integer (int16) and 8-bit modes equal their
Python models."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from onebit.data.cifar import load_cifar
from onebit.errors import ConfigError
from onebit.export.c_build import SIMD_VARIANTS, run_make
from onebit.export.c_program import lower, model_fingerprint, run_program
from onebit.export.arena import plan_slots
from onebit.export.c_emit import pack_step_bits
from onebit.export.c_runtime import export_c
from onebit.export.fixed_point import QParams, run_program_int
from onebit.export.int8 import Q8Params, run_program_int8
from onebit.models import ReferenceLayout, WRNConfig, build_model

CC = shutil.which("cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc) on PATH")
STRICT = "-std=c99 -O2 -Wall -Wextra -Werror"
N_IMAGES = 32


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


@pytest.fixture(scope="module")
def cifar(cifar10_dir):
    test = load_cifar("cifar10", cifar10_dir, train=False, download=False)
    train = load_cifar("cifar10", cifar10_dir, train=True, download=False)
    return test.images[:N_IMAGES], train.images[:256]


def make_model(cfg: WRNConfig, calib: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """A random model; BN models get running statistics from real images (as after training)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    if cfg.norm == "bn":
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()
        with torch.no_grad():
            model(calib.float())
    return model.eval()


def build(out: Path, name: str, simd: str = "", threads: int = 1, cflags: str | None = None) -> Path:
    """``make onebit_demo`` in the export (its Makefile is the one build path) with these SIMD flags and
    threads, -Werror, renamed to ``name`` so that variants sit side by side."""
    (out / "onebit_demo").unlink(missing_ok=True)
    run_make(out, "onebit_demo", CC=CC, SIMD=simd, THREADS=threads, WERROR="-Werror",
             **({"CFLAGS": cflags} if cflags is not None else {}))
    return (out / "onebit_demo").rename(out / name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def demo_rows(stdout: str) -> list[tuple[int, int, str | None, list[float]]]:
    """The demo's per-image lines: (index, predicted class, class name or None, logits)."""
    rows = []
    for line in stdout.strip().splitlines():
        r = line.split()
        if r[0] == "accuracy":
            continue
        named = len(r) > 2 and not _is_number(r[2])
        rows.append((int(r[0]), int(r[1]), r[2] if named else None, [float(v) for v in r[3 if named else 2:]]))
    return rows


def run_demo(exe: Path, images: Path, *args: str) -> np.ndarray:
    out = subprocess.run([str(exe), *args, str(images)], check=True, capture_output=True, text=True).stdout
    rows = demo_rows(out)
    return np.array([r[3] for r in rows]), np.array([r[1] for r in rows])


def export_and_write(model, tmp: Path, images: torch.Tensor, calib: torch.Tensor, size: int = 32) -> Path:
    out = export_c(model, tmp / "c", calibration_images=calib, image_size=size)
    (out / "images.bin").write_bytes(images.numpy().tobytes())
    return out


def check_float(exe: Path, out: Path, model, images: torch.Tensor, *args: str) -> np.ndarray:
    logits, preds = run_demo(exe, out / "images.bin", *args)
    with torch.no_grad():
        ref = model(images).numpy()
    assert logits.shape == ref.shape
    assert np.array_equal(preds, ref.argmax(1))
    assert np.abs(logits - ref).max() <= 1e-3 * np.abs(ref).max()
    return logits


@needs_cc
@pytest.mark.parametrize("cfg", [
    WRNConfig(depth=8, width=1),                                  # BN-free
    WRNConfig(depth=8, width=1, norm="bn"),                       # BN kept as per-channel affines
    WRNConfig(depth=8, width=1, norm="bn",
              reference=ReferenceLayout(pad_mode="tf_same", stem_relu=True, head_pool="sum")),
], ids=["srelu-8-1", "bn-8-1", "bn-tf-same-8-1"])
def test_portable_build_matches_pytorch_and_int_matches_python(cfg, cifar, tmp_path):
    images, calib = cifar
    model = make_model(cfg, calib)
    out = export_and_write(model, tmp_path, images, calib)
    exe = build(out, "demo_strict", cflags=STRICT)       # exactly the strict C99 command, no SIMD flags
    check_float(exe, out, model, images)
    q, _ = run_demo(exe, out / "images.bin", "--int", "--raw")
    info = json.loads((out / "onebit_model.json").read_text())
    qp, q8 = QParams.from_dict(info["qparams"]), Q8Params.from_dict(info["q8params"])
    expect = run_program_int(lower(model), qp, images)
    assert np.array_equal(q.astype(np.int64), expect)
    q8_logits, _ = run_demo(exe, out / "images.bin", "--int8", "--raw")
    expect8 = run_program_int8(lower(model), qp, q8, images)
    assert np.array_equal(q8_logits.astype(np.int64), expect8)
    # the integer modes track the float model (random nets have near ties, so only most must agree)
    with torch.no_grad():
        ref = model(images).numpy()
    assert (expect.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert (expect8.argmax(1) == ref.argmax(1)).mean() >= 0.8


@needs_cc
@pytest.mark.parametrize("cfg", [
    WRNConfig(depth=8, width=1),                                  # identity, then two pool blocks
    WRNConfig(depth=8, width=1, norm="bn",                        # BN affines; no padding before stride 2
              reference=ReferenceLayout(pad_mode="tf_same", stem_relu=True, head_pool="sum")),
    WRNConfig(depth=14, width=2),                                 # two blocks a stage, 32-128 channels
], ids=["srelu-8-1", "bn-tf-same-8-1", "srelu-14-2"])
def test_streamed_int8_blocks_match_python(cfg, cifar, tmp_path):
    """A bare-metal plan runs the 8-bit mode block by block, row by row (ONEBIT_STREAM8): the portable and the
    native SIMD builds give the Python 8-bit model's logits, in less than half the integer mode's arena."""
    images, calib = cifar
    model = make_model(cfg, calib)
    out = export_c(model, tmp_path / "c", calibration_images=calib, arena_overlap=True)
    (out / "images.bin").write_bytes(images.numpy().tobytes())
    assert "#define ONEBIT_STREAM8 1" in (out / "onebit_config.h").read_text()
    info = json.loads((out / "onebit_model.json").read_text())
    assert info["arena_bytes_int8"] <= info["arena_bytes_int"] / 2
    expect = run_program_int8(lower(model), QParams.from_dict(info["qparams"]), Q8Params.from_dict(info["q8params"]),
                              images)
    for name, simd, cflags in (("portable", "", STRICT), ("native", "-march=native", None)):
        got, _ = run_demo(build(out, name, simd=simd, cflags=cflags), out / "images.bin", "--int8", "--raw")
        assert np.array_equal(got.astype(np.int64), expect), name


@needs_cc
def test_simd_kernels_identical_to_portable(cifar, tmp_path):
    flags = cpu_flags()
    variants = {"portable": SIMD_VARIANTS["portable"]}
    if {"avx2", "fma"} <= flags:
        variants["avx2"] = SIMD_VARIANTS["avx2"]
        if "avx_vnni" in flags:                 # the 8-bit kernel's vpdpbusd on 256-bit vectors
            variants["avx2-vnni"] = SIMD_VARIANTS["avx2"] + " -mavxvnni"
    if {"avx512f", "avx512bw"} <= flags:
        variants["avx512"] = "-mavx2 -mfma -mavx512f -mavx512bw"
        if "avx512_vnni" in flags and "bmi2" in flags:
            variants["avx512-vnni"] = SIMD_VARIANTS["native"] + " -DONEBIT_NO_AMX"
            if "avx512vbmi" in flags:           # the 8-bit kernel's other weight path (BMI2 pdep)
                variants["avx512-vnni-pdep"] = SIMD_VARIANTS["native"] + " -mno-avx512vbmi -DONEBIT_NO_AMX"
            if "amx_int8" in flags:             # the 8-bit kernel on AMX tiles (where Linux grants them)
                variants["avx512-amx"] = SIMD_VARIANTS["native"]
                # an AMX build where the tile state is refused: the VNNI kernel over the AMX build's 32-pixel tiles
                variants["avx512-vnni-refused"] = SIMD_VARIANTS["native"] + " -DONEBIT_TEST_AMX_REFUSED"
    if len(variants) == 1:
        pytest.skip("this CPU has neither AVX2+FMA nor AVX-512")
    images, calib = cifar
    # 20x20 crops: output widths 20, 10, 5 leave partial pixel tiles; 16 and 10 channels partial blocks
    images, calib = images[:, :, 6:26, 6:26].contiguous(), calib[:, :, 6:26, 6:26].contiguous()
    model = make_model(WRNConfig(depth=8, width=1, norm="none"), calib, seed=1)
    out = export_and_write(model, tmp_path, images, calib, size=20)
    results = {}
    for name, extra in variants.items():
        exe = build(out, f"demo_{name}", extra)
        bench = subprocess.run([str(exe), "--bench", "1", str(out / "images.bin")], capture_output=True,
                               text=True, check=True).stdout
        assert re.search(r"kernels (\w+)", bench).group(1) == name.split("-")[0]
        bench8 = subprocess.run([str(exe), "--bench", "1", "--int8", str(out / "images.bin")], capture_output=True,
                                text=True, check=True).stdout
        assert re.search(r"kernels ([\w-]+)", bench8).group(1) == name.removesuffix("-pdep").removesuffix("-refused")
        results[name] = (run_demo(exe, out / "images.bin")[0], run_demo(exe, out / "images.bin", "--int", "--raw")[0],
                         run_demo(exe, out / "images.bin", "--int8", "--raw")[0])
    base_f, base_q, base_8 = results.pop("portable")
    for name, (f, q, q8) in results.items():
        assert np.array_equal(f, base_f), name                  # bit-identical float logits
        assert np.array_equal(q, base_q), name
        assert np.array_equal(q8, base_8), name
    check_float(build(out, "demo_native", SIMD_VARIANTS["native"]), out, model, images)


@needs_cc
def test_amx_channel_steps_identical_to_portable(cifar, tmp_path):
    """The AMX kernel's channel steps: 48 channels a tap (tiles narrower than 64 bytes), 96 by kernel row
    (3 x 96 = 288 bytes: four steps of 64 and a last one overlapping, its repeated rows zeroed), 192 a tap
    (three whole steps), the stem's 4 by row (12 bytes). WRN-8-1 (above) has 16 and 32 by row (48; 64 + 32)."""
    if "amx_int8" not in cpu_flags():
        pytest.skip("this CPU has no AMX-INT8")
    images, calib = cifar
    images, calib = images[:8, :, 6:26, 6:26].contiguous(), calib[:, :, 6:26, 6:26].contiguous()
    model = make_model(WRNConfig(depth=8, width=3, norm="none"), calib, seed=2)
    out = export_and_write(model, tmp_path, images, calib, size=20)
    amx, portable = build(out, "demo_amx", SIMD_VARIANTS["native"]), build(out, "demo_portable", SIMD_VARIANTS["portable"])
    bench8 = subprocess.run([str(amx), "--bench", "1", "--int8", str(out / "images.bin")], capture_output=True,
                            text=True, check=True).stdout
    assert "kernels avx512-amx" in bench8
    assert np.array_equal(run_demo(amx, out / "images.bin", "--int8", "--raw")[0],
                          run_demo(portable, out / "images.bin", "--int8", "--raw")[0])


@needs_cc
def test_threads_give_identical_results(cifar, tmp_path):
    images, calib = cifar
    model = make_model(WRNConfig(depth=8, width=2), calib)
    out = export_and_write(model, tmp_path, images[:8], calib)
    exe = build(out, "demo_threads", SIMD_VARIANTS["native"], threads=3)
    one = run_demo(exe, out / "images.bin")[0]
    (out / "truncated.bin").write_bytes((out / "images.bin").read_bytes()[:5000])
    bad = subprocess.run([str(exe), str(out / "truncated.bin")], capture_output=True, text=True)
    assert bad.returncode != 0 and "truncated" in bad.stderr
    for threads in ("2", "3"):
        assert np.array_equal(run_demo(exe, out / "images.bin", "--threads", threads)[0], one)
        for mode in ("--int", "--int8"):
            assert np.array_equal(run_demo(exe, out / "images.bin", mode, "--raw", "--threads", threads)[0],
                                  run_demo(exe, out / "images.bin", mode, "--raw")[0])


def test_lowered_program_matches_model(cifar):
    images, calib = cifar
    for cfg in (WRNConfig(depth=8, width=1), WRNConfig(depth=8, width=1, norm="bn",
                                                          reference=ReferenceLayout(pad_mode="tf_same"))):
        model = make_model(cfg, calib)
        with torch.no_grad():
            ref = model(images[:8])
        got = run_program(lower(model), images[:8])
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_bit_layout_and_arena_plan():
    signs = np.zeros((40, 3, 3, 3), dtype=bool)
    signs[33, 2, 1, 0] = True                     # block 1, output 1; tap (ky=1, kx=0), channel 2
    bits = pack_step_bits(signs, cin_p=4)
    words = bits.reshape(2, 3, 3, 4, 4)           # [block][ky][kx][ci][byte]
    assert words[1, 1, 0, 2, 0] == 0b10           # bit j of the little-endian word = output 32 * blk + j
    assert (words[1, :, :, :, 1:] == 0xFF).all()  # outputs 40..63 are padding (bit 1)
    assert words[0, :, :, :3].max() == 0 and words[0, :, :, 3].min() == 0xFF   # padded input channel
    prog = lower(build_model(WRNConfig(depth=14, width=2)))
    plan = plan_slots(prog)
    assert plan.slot_of["x"] == 0
    for step in prog.steps[:-1]:                  # no step writes a slot it reads (except in place)
        reads = {plan.slot_of[t] for t in (step.src, step.res_src) if t}
        assert plan.slot_of[step.act_out or step.out] not in reads


def test_refuses_32bit_layers_and_fingerprint_tracks_weights(tmp_path):
    with pytest.raises(ConfigError, match="1-bit"):
        export_c(build_model(WRNConfig(depth=8, width=1, binarize_first_last=False)), tmp_path / "a")
    with pytest.raises(ConfigError, match="1-bit"):
        export_c(build_model(WRNConfig(depth=8, width=1, weight_bits=32)), tmp_path / "b")
    a = build_model(WRNConfig(depth=8, width=1))
    fp = model_fingerprint(a)
    with torch.no_grad():
        a.stem.weight.mul_(3.0)                    # same signs: same fingerprint
    assert model_fingerprint(a) == fp
    with torch.no_grad():
        a.stem.weight[0, 0, 0, 0] *= -1
    assert model_fingerprint(a) != fp


@needs_cc
def test_demo_refuses_labels_outside_the_classes_and_raw_without_int(tmp_path):
    torch.manual_seed(0)
    model = build_model(WRNConfig(depth=8, width=1)).eval()
    out = export_c(model, tmp_path / "c")
    exe = build(out, "demo")
    images = torch.randint(0, 256, (3, 3 * 32 * 32), dtype=torch.uint8)
    good = torch.cat([torch.tensor([[1], [9], [0]], dtype=torch.uint8), images], 1)
    (tmp_path / "good.bin").write_bytes(good.numpy().tobytes())
    res = subprocess.run([str(exe), "--labels", str(tmp_path / "good.bin")], capture_output=True, text=True)
    assert res.returncode == 0 and "accuracy" in res.stdout
    bad = good.clone()
    bad[1, 0] = 10                                   # one past the last class of CIFAR-10
    (tmp_path / "bad.bin").write_bytes(bad.numpy().tobytes())
    res = subprocess.run([str(exe), "--labels", str(tmp_path / "bad.bin")], capture_output=True, text=True)
    assert res.returncode == 1 and "accuracy" not in res.stdout
    assert res.stderr.strip().count("\n") == 0 and "image 1 has label 10, outside the model's 10 classes" in res.stderr
    res = subprocess.run([str(exe), "--raw", str(tmp_path / "good.bin")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == "" and "--raw prints an integer mode's logits" in res.stderr
    res = subprocess.run([str(exe), "--int8", str(tmp_path / "good.bin")], capture_output=True, text=True)
    assert res.returncode == 1 and "no such integer mode (export with --calibrate N)" in res.stderr


def test_rq_in_32_bits_equals_the_int64_rescale():
    """ob_rq_hi's two forms (onebit.c) give rq(v, m, sh) exactly wherever the exporter allows them."""
    from onebit.export.fixed_point import rq
    from onebit.export.int8 import I32, _rq_ok

    rng = np.random.default_rng(0)
    for sh in (20, 28, 31, 32, 33, 40, 62):
        m = int(rng.integers(1, 2 ** 31 - 1))
        v_max = 2 ** 20 if _rq_ok(2 ** 20, m, sh) is not None else 2 ** (sh - 2)
        assert _rq_ok(v_max, m, sh) is not None
        v = rng.integers(-v_max, v_max + 1, 2000, dtype=np.int64)
        if sh >= 33:
            got = (((v * m) >> 32) + (1 << (sh - 33))) >> (sh - 32)
        else:
            got = ((v << (32 - sh)) * m + (1 << 31)) >> 32
        assert np.array_equal(got, rq(v, m, sh)), sh
        assert np.abs(got).max() < I32
    assert _rq_ok(2 ** 25, 1, 20) is None                  # v << 12 would not fit in int32


@needs_cc
def test_int8_output_step_in_int64_where_32_bits_are_not_proven(cifar, tmp_path, monkeypatch):
    """Layers the exporter cannot prove 32-bit safe run the int64 output step: same logits as Python."""
    from onebit.export import int8

    images, calib = cifar
    monkeypatch.setattr(int8, "fits_int32", lambda *args: False)
    for cfg in (WRNConfig(depth=8, width=1, norm="bn"), WRNConfig(depth=8, width=1)):
        model = make_model(cfg, calib)
        for overlap in (False, True):                      # layer at a time; streamed blocks (A from R)
            out = export_c(model, tmp_path / f"c-{cfg.norm}-{overlap}", calibration_images=calib,
                           arena_overlap=overlap)
            (out / "images.bin").write_bytes(images[:8].numpy().tobytes())
            info = json.loads((out / "onebit_model.json").read_text())
            assert not any(layer["i32"] for layer in info["q8params"]["layers"])
            exe = build(out, "demo_int64", cflags=STRICT)
            q8, _ = run_demo(exe, out / "images.bin", "--int8", "--raw")
            expect = run_program_int8(lower(model), QParams.from_dict(info["qparams"]),
                                      Q8Params.from_dict(info["q8params"]), images[:8])
            assert np.array_equal(q8.astype(np.int64), expect), (cfg.norm, overlap)
