"""``onebit export --format c``: write a self-contained C99 project that runs a 1-bit WRN.

The folder holds the static runtime (``c_templates/``: onebit.h, onebit.c, the portable / AVX2 / AVX-512
kernels, a command-line demo and a Makefile) and two generated headers:

* ``onebit_config.h``: sizes (input, classes, layers, the activation arena for one worker in float and
  integer mode), the model fingerprint, the integer mode's logit scale.
* ``onebit_model.h``: the sign bits of every convolution as ``static const uint8_t`` arrays (one 32-bit
  little-endian word per (output block of 32 channels, tap); bit j = output channel 32*blk + j; 1 = +c),
  the per-channel affines of the input BN and of any BN (kept as ``max(a x + b, 0)`` activations), the
  fixed-point constants of the integer mode, and the layer table.

Build with ``make`` (``cc -std=c99 -O2 -Wall -Wextra -Werror``, libm only). No float copy of the
weights is made at any time; BN-free models have no BN at all (McDonnell et al. 2019).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from onebit.errors import ConfigError, OnebitError
from onebit.export import c_contract
from onebit.export.c_contract import EXPORT_INFO, NCO, SLOT_ALIGN, kind_name
from onebit.export.c_program import Program, lower, model_fingerprint
from onebit.export.fixed_point import QParams, calibrate
from onebit.export.targets import HOST, get_target
from onebit.nn import unwrap

TEMPLATES = Path(__file__).with_name("c_templates")
STATIC_FILES = ("onebit.h", "onebit_internal.h", "onebit.c", "ob_kernels_portable.h", "ob_kernels_avx2.h",
                "ob_kernels_avx512.h", "ob_kernels_neon.h", "ob_kernels_dsp.h", "ob_output_step.h", "onebit_demo.c",
                "Makefile", "README.txt")
# bare-metal targets (Cortex-M): reset code, linker scripts, semihosting harness, `make firmware`
BARE_METAL_FILES = ("cortex-m/firmware.mk", "cortex-m/onebit_mcu.c", "cortex-m/startup_cortexm.c",
                    "cortex-m/ob_semihost.c", "cortex-m/ob_semihost.h", "cortex-m/boards/cortex-m-sections.ld")
ALIGN = SLOT_ALIGN          # arena slot offsets (c_contract)


def pack_step_bits(signs: np.ndarray, cin_p: int) -> np.ndarray:
    """uint8 bits in the runtime's layout: [block of 32 outputs][ky][kx][ci][4 bytes, little-endian]."""
    cout, cin, k, _ = signs.shape
    blocks = -(-cout // NCO)
    padded = np.ones((blocks * NCO, cin_p, k, k), dtype=bool)
    padded[:cout, :cin] = signs
    arr = padded.reshape(blocks, NCO, cin_p, k, k).transpose(0, 3, 4, 2, 1)
    return np.packbits(arr, axis=-1, bitorder="little").reshape(-1)


@dataclass
class SlotPlan:
    """Arena layout: every tensor's slot, and each slot's byte offset in float and integer mode."""

    slot_of: dict[str, int]
    offsets_f: list[int]
    offsets_i: list[int]
    total_f: int
    total_i: int
    head_slot: int
    overlap: bool = False        # outputs may overwrite rows of their dying input (single-threaded only)


class _NoFit(Exception):
    pass


def _lag_bytes(step: ConvStep, out_row: int, in_row: int) -> int:
    """How far below its input an output may start when it overwrites the input's consumed rows.

    Rows are computed in order (all 32-channel blocks of a row, then the next row); the pixels of
    output row oy (padded row oy + 1) are written while output row oy still reads padded input rows
    from oy * stride - pad + 1 on, so the output's padded rows up to oy + 1 must end at or below that
    input row: ``out_base + (oy + 2) * out_row <= in_base + (oy * stride - pad + 1) * in_row``; the
    zero bottom border row (oh + 1) is written per block, before the next block reads the last rows.
    """
    oh = step.out_hw[0]
    first = [oy * step.stride - step.pad + 1 for oy in range(oh)]
    lag = max((oy + 2) * out_row - first[oy] * in_row for oy in range(oh))
    # the bottom border row (padded row oh + 1) is zeroed per block, while later blocks still read
    # the last row's inputs
    return max(lag, (oh + 2) * out_row - first[-1] * in_row)


def plan_slots(prog: Program, overlap: bool = False) -> SlotPlan:
    """Place every tensor in the arena by liveness (first fit by offset), in float and integer mode.

    Tensors are NHWC with a one-pixel zero border; a tensor lives from the step that writes it to the
    last step that reads it. An identity-shortcut block writes its output R over its input R (each
    element is read before it is written). With ``overlap`` (single-threaded runs, rows in order), the
    activation a step writes may also start below the step's conv input by :func:`_lag_bytes` and
    overwrite the input rows already consumed, when that input dies at the step.
    """
    last_use: dict[str, int] = {}
    for i, step in enumerate(prog.steps):
        for t in (step.src, step.res_src):
            if t:
                last_use[t] = i
    slot_of: dict[str, int] = {}
    order: list[str] = []

    def shape_bytes(t: str, esz: int) -> tuple[int, int]:
        c, h, w = prog.tensors[t]
        return (h + 2) * (w + 2) * c * esz, (w + 2) * c * esz

    def layout(esz: int, top: int | None) -> tuple[dict[str, int], int] | None:
        """First fit from offset 0 up (top None), or highest fit below ``top`` (None if it fails)."""
        off: dict[str, int] = {}
        size: dict[str, int] = {}
        live: set[str] = set()

        def place(t: str, nbytes: int, lag_src: str | None = None, lag: int = 0) -> None:
            size[t] = nbytes
            need = -(-nbytes // ALIGN) * ALIGN
            if top is None:
                cands = sorted({0, *(-(-(off[u] + size[u]) // ALIGN) * ALIGN for u in live)})
            else:
                cands = sorted({top - need, *((off[u] - need) // ALIGN * ALIGN for u in live)}, reverse=True)
            if lag_src is not None and off[lag_src] - lag >= 0:
                cands.insert(0, (off[lag_src] - lag) // ALIGN * ALIGN)
            for c in cands:
                if c < 0 or (top is not None and c + need > top):
                    continue
                clash = [u for u in live if c < off[u] + size[u] and off[u] < c + need]
                if all(u == lag_src and c <= off[u] - lag for u in clash):
                    off[t] = c
                    break
            else:
                raise _NoFit
            live.add(t)

        def place_output(t: str, i: int, step: ConvStep) -> None:
            c, h, w = prog.tensors[t]
            nbytes = (h + 2) * (w + 2) * c * esz
            if overlap and last_use.get(step.src) == i and step.src != step.res_src:
                ci, _, wi = prog.tensors[step.src]
                place(t, nbytes, step.src, _lag_bytes(step, (w + 2) * c * esz, (wi + 2) * ci * esz))
            else:
                place(t, nbytes)

        cx, hx, wx = prog.tensors["x"]
        place("x", (hx + 2) * (wx + 2) * cx * esz)
        for i, step in enumerate(prog.steps):
            if step.epilogue == "head":
                place("@head", step.out_hw[0] * step.out_hw[1] * prog.num_classes * 4)
                continue
            if step.epilogue == "act":
                place_output(step.out, i, step)
            else:
                if step.out and step.res == "identity":      # R in place over R_prev
                    off[step.out], size[step.out] = off[step.res_src], size[step.res_src]
                    live.add(step.out)
                elif step.out:
                    c, h, w = prog.tensors[step.out]
                    place(step.out, (h + 2) * (w + 2) * c * esz)
                place_output(step.act_out, i, step)
            outs = {step.out, step.act_out}
            for u in list(live):                              # inputs whose last reader was this step
                if u not in outs and last_use.get(u, -1) <= i:
                    live.discard(u)
        total = max(off[t] + size[t] for t in off)
        return off, -(-total // ALIGN) * ALIGN

    def best(esz: int) -> tuple[dict[str, int], int]:
        """The smaller of first fit and the smallest arena highest fit manages (bisection on its size)."""
        plan = layout(esz, None)
        lo, hi = 0, plan[1]
        while hi - lo > ALIGN:
            mid = (lo + hi) // 2 // ALIGN * ALIGN
            try:
                got = layout(esz, mid)
                plan, hi = (got, got[1]) if got[1] < plan[1] else (plan, mid)
            except _NoFit:
                lo = mid
        return plan

    off_f, total_f = best(4)
    off_i, total_i = best(2)
    order = [t for t in off_f if t != "@head"]
    slot_of = {t: k for k, t in enumerate(order)}
    return SlotPlan(slot_of=slot_of, offsets_f=[off_f[t] for t in order] + [off_f["@head"]],
                    offsets_i=[off_i[t] for t in order] + [off_i["@head"]], total_f=total_f, total_i=total_i,
                    head_slot=len(order), overlap=overlap)


# ----------------------------------------------------------------------------------------------------
# C text


def _f32(v: float) -> str:
    """Exact C99 literal of ``v`` rounded to float32 (hexadecimal float)."""
    x = float(np.float32(v))
    if x == 0.0:
        return "0.0f"
    return x.hex() + "f"


def _array(ctype: str, name: str, values, per_line: int = 24) -> str:
    arr = np.asarray(values).reshape(-1)
    if ctype == "float":
        items = [_f32(v) for v in arr.tolist()]
        per_line = 6
    else:
        items = [str(int(v)) for v in arr.tolist()]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(items)}] = {{\n    {body}\n}};\n"


def _bytes_array(name: str, data: np.ndarray) -> str:
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    pad = (-len(data)) % 32
    rows = np.pad(data, (0, pad)).reshape(-1, 32).astype(str)
    lines = [",".join(r) for r in rows]
    if pad:
        lines[-1] = ",".join(rows[-1][:32 - pad])
    return (f"static const uint8_t {name}[{len(data)}] = {{\n" + ",\n".join(lines) + "\n};\n")


ACT_KIND = {k: kind_name("ACT", k) for k in c_contract.ACTIVATIONS}
EPI_KIND = {k: kind_name("EPI", k) for k in c_contract.EPILOGUES}
RES_KIND = {k: kind_name("RES", k) for k in c_contract.RESIDUALS}
LAYER_FIELDS = frozenset(c_contract.layer_field_names())


def _model_header(prog: Program, plan: SlotPlan, qp: QParams | None) -> str:
    out = ["/* Generated by onebit export --format c: the model's weights, constants and layer table. */",
           "#ifndef ONEBIT_MODEL_H", "#define ONEBIT_MODEL_H", "", "#include <stddef.h>",
           "#include <stdint.h>", '#include "onebit_config.h"', '#include "onebit_internal.h"', ""]
    out.append(_array("size_t", "ob_slot_f", plan.offsets_f))
    out.append(_array("size_t", "ob_slot_i", plan.offsets_i))
    out.append(_array("float", "ob_in_a", prog.in_a))
    out.append(_array("float", "ob_in_b", prog.in_b))
    out.append(_array("float", "ob_head_a", prog.head_a))
    out.append(_array("float", "ob_head_b", prog.head_b))
    if qp is not None:
        lut = np.asarray(qp.in_lut, dtype=np.int64)
        rows = ",\n".join("    {" + ", ".join(map(str, row)) + "}" for row in lut.tolist())
        out.append(f"static const int16_t ob_in_lut[{prog.in_c}][256] = {{\n{rows}\n}};\n")
        out.append(_array("int32_t", "ob_head_qm", qp.head_m))
        out.append(_array("int32_t", "ob_head_qb", qp.head_b))
    entries = []
    for i, step in enumerate(prog.steps):
        out.append(f"/* {i}: {step.name}: {step.cin}->{step.cout}, {step.k}x{step.k}, stride {step.stride}, "
                   f"{step.in_hw[0]}x{step.in_hw[1]} -> {step.out_hw[0]}x{step.out_hw[1]} */")
        out.append(_bytes_array(f"ob_bits_{i}", pack_step_bits(step.signs, step.cin_p)))
        fields = {
            "cin": step.cin_p, "cout": step.cout, "k": step.k, "stride": step.stride, "pad": step.pad,
            "ih": step.in_hw[0], "iw": step.in_hw[1], "oh": step.out_hw[0], "ow": step.out_hw[1],
            "epi": EPI_KIND[step.epilogue], "act": ACT_KIND[step.act.kind], "res": RES_KIND[step.res],
            "src": plan.slot_of[step.src],
            "dst": plan.slot_of[step.out] if step.out and step.epilogue != "head" else -1,
            "act_dst": plan.slot_of[step.act_out] if step.act_out else -1,
            "res_src": plan.slot_of[step.res_src] if step.res_src else -1,
            "bits": f"ob_bits_{i}", "scale": _f32(step.scale),
        }
        if step.res_src:
            c, h, w = prog.tensors[step.res_src]
            fields.update(res_c=c, res_h=h, res_w=w, res_pad=step.res_pad)
        if step.act.kind == "affine_relu":
            out.append(_array("float", f"ob_act_a_{i}", step.act.a))
            out.append(_array("float", f"ob_act_b_{i}", step.act.b))
            fields.update(act_a=f"ob_act_a_{i}", act_b=f"ob_act_b_{i}")
        if qp is not None:
            lq = qp.layers[i]
            fields.update(q_m=lq.q_m, q_sh=lq.q_sh, q_lo=lq.q_lo, q_res_m=lq.q_res_m, q_res_sh=lq.q_res_sh,
                          q_act_sh=lq.q_act_sh, q_pool_sh=lq.q_pool_sh)
            if lq.q_act_m:
                out.append(_array("int32_t", f"ob_q_act_m_{i}", lq.q_act_m))
                out.append(_array("int32_t", f"ob_q_act_b_{i}", lq.q_act_b))
                fields.update(q_act_m=f"ob_q_act_m_{i}", q_act_b=f"ob_q_act_b_{i}")
            if lq.q_pool_m:
                out.append(_array("int32_t", f"ob_q_pool_m_{i}", lq.q_pool_m))
                fields.update(q_pool_m=f"ob_q_pool_m_{i}")
        assert LAYER_FIELDS.issuperset(fields), sorted(set(fields) - LAYER_FIELDS)
        entries.append("    {" + ", ".join(f".{k} = {v}" for k, v in fields.items()) + "}")
    out.append(f"static const ob_layer ob_layers[ONEBIT_NUM_LAYERS] = {{\n" + ",\n".join(entries) + "\n};\n")
    out.append("#endif")
    return "\n".join(out) + "\n"


def _config_header(prog: Program, plan: SlotPlan, qp: QParams | None, model_id: str, name: str) -> str:
    total_f, total_i = plan.total_f, plan.total_i
    weight_bytes = sum(len(pack_step_bits(s.signs, s.cin_p)) for s in prog.steps)
    lines = [
        "/* Generated by onebit export --format c: sizes and identity of the exported model. */",
        "#ifndef ONEBIT_CONFIG_H", "#define ONEBIT_CONFIG_H", "",
        f'#define ONEBIT_MODEL_ID "{model_id}"',
        f'#define ONEBIT_MODEL_NAME "{name}"',
        f"#define ONEBIT_IN_C {prog.in_c}",
        f"#define ONEBIT_IN_CP {prog.in_c_p}",
        f"#define ONEBIT_IN_H {prog.in_hw[0]}",
        f"#define ONEBIT_IN_W {prog.in_hw[1]}",
        f"#define ONEBIT_NUM_CLASSES {prog.num_classes}",
        f"#define ONEBIT_NUM_LAYERS {len(prog.steps)}",
        f"#define ONEBIT_NUM_SLOTS {len(plan.offsets_f)}",
        f"#define ONEBIT_HEAD_SLOT {plan.head_slot}",
        f"#define ONEBIT_STEM_RELU {int(prog.stem_relu)}",
        f"#define ONEBIT_HEAD_SUM {int(prog.head_pool == 'sum')}",
        f"#define ONEBIT_MACS {prog.macs()}ULL",
        f"#define ONEBIT_WEIGHT_BYTES {weight_bytes}",
        "/* activation arena of one worker, bytes */",
        f"#define ONEBIT_ARENA_BYTES_F {total_f}",
        f"#define ONEBIT_ARENA_BYTES_I {total_i}",
        f"#define ONEBIT_ARENA_BYTES {max(total_f, total_i)}",
        f"#define ONEBIT_HAS_INT {int(qp is not None)}",
        "/* 1: outputs overwrite consumed rows of their input (rows in order: one thread per image) */",
        f"#define ONEBIT_ARENA_OVERLAP {int(plan.overlap)}",
    ]
    if qp is not None:
        lines += [f"#define ONEBIT_HEAD_QSH {qp.head_sh}",
                  f"/* integer mode: real logit = integer logit * 2^-{qp.logit_frac} */",
                  f"#define ONEBIT_LOGIT_SCALE {_f32(2.0 ** -qp.logit_frac)}"]
    else:
        lines += ["#define ONEBIT_HEAD_QSH 1", "#define ONEBIT_LOGIT_SCALE 1.0f"]
    lines += ["", "#endif"]
    return "\n".join(lines) + "\n"


def _write_board_files(out_dir: Path, tgt) -> None:
    """The firmware build for a bare-metal target: harness, reset code, the board's linker script."""
    (out_dir / "cortex-m" / "boards").mkdir(parents=True, exist_ok=True)
    for fname in (*BARE_METAL_FILES, f"cortex-m/boards/{tgt.qemu_machine}.ld"):
        shutil.copyfile(TEMPLATES / fname, out_dir / fname)
    (out_dir / "cortex-m" / "board.mk").write_text(
        f"# Generated by onebit export --format c --target {tgt.name}: the board `make firmware` links for\n"
        f"# (qemu-system-arm -M BOARD) and that `make run-firmware` emulates.\nBOARD = {tgt.qemu_machine}\n")


def _c_string(text: str, limit: int = 64) -> str:
    """``text`` as a C string literal of one word: printable ASCII (spaces become '_', others '?'), at most
    ``limit`` characters; '?' is escaped too, so no trigraph can form."""
    out = []
    for ch in str(text)[:limit]:
        ch = "_" if ch == " " else ch if 32 < ord(ch) < 127 else "?"
        out.append("\\" + ch if ch in '"\\?' else ch)
    return '"' + "".join(out) + '"'


def _classes_header(class_names: list[str] | None, num_classes: int) -> str:
    """onebit_classes.h: the class names the demo prints (ONEBIT_HAVE_CLASS_NAMES 0 if unknown)."""
    head = "/* generated by onebit export --format c: class names for onebit_demo */\n"
    if not class_names:
        return head + "#define ONEBIT_HAVE_CLASS_NAMES 0\nstatic const char *const onebit_class_names[1] = {\"\"};\n"
    if len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for a model with {num_classes} classes")
    body = ",\n".join("    " + _c_string(n) for n in class_names)
    return (head + "#define ONEBIT_HAVE_CLASS_NAMES 1\n"
            f"static const char *const onebit_class_names[{num_classes}] = {{\n{body}\n}};\n")


def export_c(model, out_dir: Path, *, image_size: int = 32, calibration_images=None,
             calibration_count: int = 256, target: str = HOST, arena_overlap: bool | None = None,
             class_names: list[str] | None = None, **options) -> Path:
    """Write the C project for ``model`` into ``out_dir`` and return ``out_dir``.

    ``target`` (:data:`onebit.export.targets.TARGETS`): the CPU that ``make`` builds for.
    ``arena_overlap`` (default: on for bare-metal targets): the smaller arena plan in which outputs
    overwrite consumed input rows; such a build runs one thread per image (see :func:`plan_slots`).

    ``calibration_images`` (uint8 NCHW, e.g. a few hundred training images): enables the integer mode,
    with scales chosen on the first ``calibration_count`` of them; without it only float mode is built.
    ``class_names``: baked into onebit_classes.h so that onebit_demo prints names (else indices only).
    Refuses (ConfigError) models with 32-bit layers: the runtime computes from packed bits only.
    """
    if options:
        raise ConfigError(f"unknown C export options: {sorted(options)}")
    out_dir = Path(out_dir)
    tgt = get_target(target)
    model = unwrap(model)
    prog = lower(model, image_size)
    if any(s.cin_p % 2 for s in prog.steps):
        raise ConfigError("the C runtime needs an even number of channels into every convolution")
    qp = None
    if calibration_images is not None:
        images = torch.as_tensor(np.asarray(calibration_images))[:calibration_count]
        if images.ndim != 4 or tuple(images.shape[1:]) != (prog.in_c, *prog.in_hw):
            raise ConfigError(f"calibration images must be (N, {prog.in_c}, {prog.in_hw[0]}, {prog.in_hw[1]}), "
                              f"got {tuple(images.shape)}")
        qp = calibrate(prog, images)
    plan = plan_slots(prog, overlap=tgt.bare_metal if arena_overlap is None else arena_overlap)
    model_id = model_fingerprint(model)
    name = model.config.name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for fname in STATIC_FILES:
            shutil.copyfile(TEMPLATES / fname, out_dir / fname)
        (out_dir / "onebit_contract.h").write_text(c_contract.contract_header())
        (out_dir / "onebit_config.h").write_text(_config_header(prog, plan, qp, model_id, name))
        (out_dir / "onebit_model.h").write_text(_model_header(prog, plan, qp))
        (out_dir / "onebit_target.mk").write_text(tgt.makefile_fragment())
        if tgt.bare_metal:
            _write_board_files(out_dir, tgt)
        (out_dir / "onebit_classes.h").write_text(_classes_header(class_names, model.config.num_classes))
        meta = {"format": "onebit-c-runtime", "model_id": model_id, "name": name,
                "config": model.config.to_dict(), "image_size": image_size, "target": tgt.name, "macs": prog.macs(),
                "weights": prog.weight_count(), "arena_bytes_float": plan.total_f,
                "arena_bytes_int": plan.total_i, "arena_overlap": plan.overlap,
                "qparams": qp.to_dict() if qp is not None else None,
                "class_names": list(class_names) if class_names else None}
        (out_dir / EXPORT_INFO).write_text(json.dumps(meta, indent=1))
    except OSError as exc:
        raise OnebitError(f"cannot write the C runtime to {out_dir}: {exc}") from None
    return out_dir


def read_export_info(out_dir: Path) -> dict:
    """The ``onebit_model.json`` (``c_contract.EXPORT_INFO``) written by :func:`export_c`."""
    path = Path(out_dir) / EXPORT_INFO
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OnebitError(f"{path}: not a onebit C export ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "onebit-c-runtime":
        raise OnebitError(f"{path}: not a onebit C export")
    return meta
