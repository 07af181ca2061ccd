"""The contract between the Python side (exporter, ctypes binding) and the C runtime, written once.

``onebit export --format c`` writes ``onebit_contract.h`` from these definitions (:func:`contract_header`);
the C sources (onebit.h, onebit_internal.h, onebit.c, the kernels) use only its names, and the exporter
(c_runtime.py, c_program.py) and the binding (runtime/binding.py) import the same values from here:

* the channel block: ``NCO`` = 32 output channels per block of packed sign bits, one little-endian 32-bit
  word (``TAP_BYTES`` = 4 bytes) per (block, ky, kx, ci) tap;
* the arena: ``onebit_run`` refuses arenas not aligned to ``ARENA_ALIGN`` bytes; every activation slot
  starts at a multiple of ``SLOT_ALIGN`` bytes (a cache line) from the arena's start;
* the arithmetic modes, the error codes;
* the layer table (``ob_layer``): its fields and the epilogue / activation / shortcut kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

NCO = 32
TAP_BYTES = NCO // 8
ARENA_ALIGN = 16
SLOT_ALIGN = 64

MODES = {"float": 0, "int": 1, "int8": 2}
# The exported project's description (model id, config, arena sizes, scales): export_c writes it; the
# binding, `onebit export` (to recognise a previous export) and the benchmark read it.
EXPORT_INFO = "onebit_model.json"


@dataclass(frozen=True)
class ErrorCode:
    name: str
    value: int
    meaning: str


ERRORS = (
    ErrorCode("ONEBIT_OK", 0, "success"),
    ErrorCode("ONEBIT_EARENA", -1, f"arena too small, or not {ARENA_ALIGN}-byte aligned"),
    ErrorCode("ONEBIT_EARGS", -2, "bad mode, count or pointer"),
    ErrorCode("ONEBIT_ENOINT", -3, "exported without this integer mode (no calibration)"),
    ErrorCode("ONEBIT_ETHREAD", -4, "a worker thread could not be started"),
)
ERROR_MEANING = {e.value: e.meaning for e in ERRORS}

# kinds written into the layer table; C names OB_<GROUP>_<KIND>, numbered in this order
EPILOGUES = ("act", "res", "head")              # T = act(c acc) | R = c acc + shortcut, A = act(R) | logits
ACTIVATIONS = ("none", "srelu", "affine_relu")  # v | max(v, -1) | max(a v + b, 0)
RESIDUALS = ("none", "identity", "pool")        # no shortcut | R_prev | 3x3 stride-2 average pool of R_prev


def kind_name(group: str, kind: str) -> str:
    """C name of a layer-table kind: ``kind_name('ACT', 'srelu') == 'OB_ACT_SRELU'``."""
    return f"OB_{group}_{kind.upper()}"


# ob_layer, one line per group: ((C type, field names), ...), comment. c_runtime.py fills the table with
# designated initializers of these names.
LAYER_FIELDS = (
    ((("int", ("cin", "cout", "k", "stride", "pad")),), "cin as stored (even), pad = padding before (top/left)"),
    ((("int", ("ih", "iw", "oh", "ow")),), ""),
    ((("int", ("epi", "act", "res")),), "OB_EPI_*, OB_ACT_*, OB_RES_*"),
    ((("int", ("src", "dst", "act_dst", "res_src")),), "arena slots, -1 = none"),
    ((("int", ("res_c", "res_h", "res_w", "res_pad")),), "shortcut source (pool: 3x3 stride 2, `res_pad` before)"),
    ((("const uint8_t *", ("bits",)),), "sign bits, layout above"),
    ((("float", ("scale",)),), "c = sqrt(2 / (k*k*C_in))"),
    ((("const float *", ("act_a", "act_b")),), "OB_ACT_AFFINE_RELU: max(a*v + b, 0) per output channel"),
    ((("int32_t", ("q_m",)), ("int", ("q_sh",))),
     "int mode: rq(v, m, sh) = (v*m + 2^(sh-1)) >> sh (int64), acc -> T or R"),
    ((("int32_t", ("q_lo",)),), "-1 in the activation's scale (srelu)"),
    ((("const int32_t *", ("q_act_m", "q_act_b")), ("int", ("q_act_sh",))), "affine_relu, per channel"),
    ((("int32_t", ("q_res_m",)), ("int", ("q_res_sh",))), "identity shortcut: R_prev scale -> R scale"),
    ((("const int32_t *", ("q_pool_m",)), ("int", ("q_pool_sh",))), "pool: by real-pixel count 0..9"),
    ((("const int32_t *", ("q8_zw", "q8_zwn")),),
     "int8 mode, per output channel (block-padded): z_src * sum of the signs; + 255 * the -1 weights"),
    ((("int32_t", ("q8_m",)), ("int", ("q8_sh",))), "int8 mode: acc -> T (srelu) or acc -> R"),
    ((("int32_t", ("q8_z",)),), "int8 mode: zero code of the byte output (T or A)"),
    ((("int32_t", ("q8_a_m",)), ("int", ("q8_a_sh",))), "int8 mode, srelu after R: R -> A"),
    ((("const int32_t *", ("q8_act_m", "q8_act_b")), ("int", ("q8_act_sh",))), "int8 mode, affine_relu, per channel"),
    ((("int", ("q8_i32",)),), "int8 mode: 1 if the output step provably fits in 32-bit arithmetic"),
)


def layer_field_names() -> list[str]:
    return [n for decls, _ in LAYER_FIELDS for _, names in decls for n in names]


def _declaration(decls) -> str:
    parts = []
    for ctype, names in decls:
        star = ctype.endswith("*")
        base = ctype[:-1].rstrip() if star else ctype
        parts.append(base + " " + ", ".join(("*" if star else "") + n for n in names) + ";")
    return " ".join(parts)


def _enum(group: str, kinds: tuple[str, ...]) -> str:
    return "enum { " + ", ".join(f"{kind_name(group, k)} = {i}" for i, k in enumerate(kinds)) + " };"


def _defines(items) -> list[str]:
    lines = [f"#define {name} {value}" for name, value, _ in items]
    width = max(map(len, lines)) + 2
    return [f"{line:<{width}}/* {c} */" for line, (_, _, c) in zip(lines, items)]


def contract_header() -> str:
    """Text of ``onebit_contract.h``."""
    decls = [(_declaration(d), c) for d, c in LAYER_FIELDS]
    width = max(len(d) for d, _ in decls)
    fields = [f"    {d:<{width}}{'  /* ' + c + ' */' if c else ''}".rstrip() for d, c in decls]
    lines = [
        "/* Generated by onebit export --format c from onebit/export/c_contract.py: the constants and the layer",
        " * table shared by the exporter, the Python binding and the C runtime. Do not edit. */",
        "#ifndef ONEBIT_CONTRACT_H", "#define ONEBIT_CONTRACT_H", "", "#include <stdint.h>", "",
        "/* arithmetic modes */",
        *[f"#define ONEBIT_{m.upper()} {v}" for m, v in MODES.items()],
        "", "/* error codes of onebit_run / onebit_infer */",
        *_defines([(e.name, f"({e.value})" if e.value < 0 else e.value, e.meaning) for e in ERRORS]), "",
        *_defines([("ONEBIT_ARENA_ALIGN", ARENA_ALIGN, "arena pointer alignment onebit_run requires, bytes"),
                   ("OB_SLOT_ALIGN", SLOT_ALIGN, "every arena slot offset is a multiple of this, bytes"),
                   ("OB_NCO", NCO, "output channels per block of packed sign bits"),
                   ("OB_TAP_BYTES", TAP_BYTES, "bytes of sign bits per (block, ky, kx, ci): one word")]),
        "",
        _enum("EPI", EPILOGUES), _enum("ACT", ACTIVATIONS), _enum("RES", RESIDUALS), "",
        "/* One convolution with its fused epilogue. Activation buffers are NHWC with a one-pixel zero border:",
        " * element (y, x, c) of an H x W x C tensor is at ((y + 1) * (W + 2) + x + 1) * C + c.",
        " * Weights: bits[((blk * k + ky) * k + kx) * cin + ci][OB_TAP_BYTES]; bit j of the little-endian word",
        " * is output channel OB_NCO * blk + j, 1 = +c, 0 = -c. */",
        "typedef struct {", *fields, "} ob_layer;", "", "#endif",
    ]
    return "\n".join(lines) + "\n"
