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
from onebit.export.c_contract import NCO, SLOT_ALIGN, kind_name
from onebit.export.c_program import Program, lower, model_fingerprint
from onebit.export.fixed_point import QParams, calibrate
from onebit.export.targets import HOST, get_target

TEMPLATES = Path(__file__).with_name("c_templates")
STATIC_FILES = ("onebit.h", "onebit_internal.h", "onebit.c", "ob_kernels_portable.h", "ob_kernels_avx2.h",
                "ob_kernels_avx512.h", "ob_kernels_neon.h", "ob_output_step.h", "onebit_demo.c", "Makefile",
                "README.txt")
GENERATED_FILES = ("onebit_contract.h", "onebit_config.h", "onebit_model.h", "onebit_target.mk",
                   "onebit_model.json")
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
    slot_of: dict[str, int]
    bytes_f: list[int]
    bytes_i: list[int]
    head_slot: int

    def offsets(self, sizes: list[int]) -> tuple[list[int], int]:
        offs, total = [], 0
        for size in sizes:
            offs.append(total)
            total += -(-size // ALIGN) * ALIGN
        return offs, total


def plan_slots(prog: Program) -> SlotPlan:
    """Assign every tensor to an arena slot, reusing slots whose tensor is no longer read.

    Tensors are NHWC with a one-pixel zero border. An identity-shortcut block writes its output over its
    input R (each element is read before it is written); every other output gets a slot that none of
    the step's inputs occupies.
    """
    last_use: dict[str, int] = {}
    for i, step in enumerate(prog.steps):
        for t in (step.src, step.res_src):
            if t:
                last_use[t] = i
    holder: list[str | None] = []
    size: list[int] = []
    slot_of: dict[str, int] = {}

    def elems(t: str) -> int:
        c, h, w = prog.tensors[t]
        return (h + 2) * (w + 2) * c

    def alloc(t: str, i: int, taken: set[int]) -> int:
        free = [s for s, h in enumerate(holder)
                if s not in taken and (h is None or last_use.get(h, -1) < i)]
        need = elems(t)
        fits = [s for s in free if size[s] >= need]
        if fits:
            s = min(fits, key=lambda s: size[s])
        elif free:
            s = max(free, key=lambda s: size[s])
        else:
            holder.append(None)
            size.append(0)
            s = len(holder) - 1
        holder[s] = t
        size[s] = max(size[s], need)
        slot_of[t] = s
        return s

    alloc("x", -1, set())
    for i, step in enumerate(prog.steps):
        taken = {slot_of[t] for t in (step.src, step.res_src) if t}
        if step.epilogue == "head":
            continue
        if step.out:
            if step.res == "identity":
                s = slot_of[step.res_src]
                holder[s] = step.out
                slot_of[step.out] = s
                taken.add(s)
            else:
                taken.add(alloc(step.out, i, taken))
        if step.act_out:
            alloc(step.act_out, i, taken)
    head = prog.steps[-1]
    head_elems = head.out_hw[0] * head.out_hw[1] * prog.num_classes
    bytes_f = [4 * n for n in size] + [4 * head_elems]
    bytes_i = [2 * n for n in size] + [4 * head_elems]
    return SlotPlan(slot_of=slot_of, bytes_f=bytes_f, bytes_i=bytes_i, head_slot=len(size))


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
    offs_f, _ = plan.offsets(plan.bytes_f)
    offs_i, _ = plan.offsets(plan.bytes_i)
    out.append(_array("size_t", "ob_slot_f", offs_f))
    out.append(_array("size_t", "ob_slot_i", offs_i))
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
    _, total_f = plan.offsets(plan.bytes_f)
    _, total_i = plan.offsets(plan.bytes_i)
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
        f"#define ONEBIT_NUM_SLOTS {len(plan.bytes_f)}",
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
    ]
    if qp is not None:
        lines += [f"#define ONEBIT_HEAD_QSH {qp.head_sh}",
                  f"/* integer mode: real logit = integer logit * 2^-{qp.logit_frac} */",
                  f"#define ONEBIT_LOGIT_SCALE {_f32(2.0 ** -qp.logit_frac)}"]
    else:
        lines += ["#define ONEBIT_HEAD_QSH 1", "#define ONEBIT_LOGIT_SCALE 1.0f"]
    lines += ["", "#endif"]
    return "\n".join(lines) + "\n"


def export_c(model, out_dir: Path, *, image_size: int = 32, calibration_images=None,
             calibration_count: int = 256, target: str = HOST, **options) -> Path:
    """Write the C project for ``model`` into ``out_dir`` and return ``out_dir``.

    ``target`` (:data:`onebit.export.targets.TARGETS`): the CPU that ``make`` builds for.

    ``calibration_images`` (uint8 NCHW, e.g. a few hundred training images): enables the integer mode,
    with scales chosen on the first ``calibration_count`` of them; without it only float mode is built.
    Refuses (ConfigError) models with 32-bit layers: the runtime computes from packed bits only.
    """
    if options:
        raise ConfigError(f"unknown C export options: {sorted(options)}")
    out_dir = Path(out_dir)
    tgt = get_target(target)
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
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
    plan = plan_slots(prog)
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
        meta = {"format": "onebit-c-runtime", "model_id": model_id, "name": name,
                "config": model.config.to_dict(), "image_size": image_size, "target": tgt.name, "macs": prog.macs(),
                "weights": prog.weight_count(), "arena_bytes_float": plan.offsets(plan.bytes_f)[1],
                "arena_bytes_int": plan.offsets(plan.bytes_i)[1],
                "qparams": qp.to_dict() if qp is not None else None}
        (out_dir / "onebit_model.json").write_text(json.dumps(meta, indent=1))
    except OSError as exc:
        raise OnebitError(f"cannot write the C runtime to {out_dir}: {exc}") from None
    return out_dir


def read_export_info(out_dir: Path) -> dict:
    """The ``onebit_model.json`` written by :func:`export_c`."""
    path = Path(out_dir) / "onebit_model.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OnebitError(f"{path}: not a onebit C export ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "onebit-c-runtime":
        raise OnebitError(f"{path}: not a onebit C export")
    return meta
