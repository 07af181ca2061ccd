"""Model summary: per-layer parameters, bits per weight, memory and MACs, and the cost of BN at inference.

Counting rules (per image: ``in_channels x 32 x 32`` for CIFAR nets, ``x 224 x 224`` for ImageNet nets):

* conv: parameters = ``C_out * C_in * kh * kw``; MACs = ``H_out * W_out * C_out * C_in * kh * kw``;
  stored at 1 bit per weight (binarized; the scale c follows from the shape and is not stored) or 32.
* BN: stored values at 32 bits: gamma, beta, mean and variance (4 per channel) for BNs with learned
  scale/offset (the stem's input BN; ImageNet BN nets), mean and variance (2 per channel) otherwise.
  At inference a BN folds into a per-channel affine ``y = a * x + b``: 2 parameters per channel and
  2 operations (multiply, add) per activation element. Both designs have the input BN; the other BN
  layers are what the BN design (McDonnell, ICLR 2018) adds over the BN-free design (McDonnell et al.
  2019), whose head scale 1/T folds into the head conv's scale c at no cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from onebit.models import WRNConfig, WideResNet
from onebit.nn import BinaryConv2d

IMAGE_SIZES = {"cifar": 32, "imagenet": 224}


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]     # (C, H, W) for one image
    params: int
    bits: int                         # bits per stored value
    macs: int                         # multiply-accumulates (convolutions only; 0 for BN)
    bn_ops: int = 0                   # operations of a BN that is not the input BN (2 per element)

    @property
    def memory_bits(self) -> int:
        return self.params * self.bits


@dataclass(frozen=True)
class BNCost:
    """Inference cost of the BN layers other than the input BN."""

    layers: int
    params: int
    ops: int


@dataclass(frozen=True)
class ModelSummary:
    name: str
    config: WRNConfig
    input_shape: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    bn: BNCost                        # this model's BN layers besides the input BN
    bn_design: BNCost                 # the BN design of the same depth/width/bits

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def conv_weights(self) -> int:
        return sum(r.params for r in self.rows if r.macs)

    @property
    def memory_bytes(self) -> float:
        """Memory at the stored bit-widths."""
        return sum(r.memory_bits for r in self.rows) / 8

    @property
    def memory_fp32_bytes(self) -> int:
        """Memory if every stored value were 32-bit."""
        return self.params * 4

    @property
    def compression(self) -> float:
        return self.memory_fp32_bytes / self.memory_bytes

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)


def _layer_rows(cfg: WRNConfig, image_size: int) -> tuple[list[LayerRow], tuple[int, ...]]:
    with torch.device("meta"):
        model = WideResNet(cfg)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (BinaryConv2d, nn.BatchNorm2d))]
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=n: shapes.__setitem__(name, tuple(out.shape[1:])))
             for n, m in layers]
    input_shape = (cfg.in_channels, image_size, image_size)
    with torch.no_grad():
        model.eval()(torch.empty((1, *input_shape), device="meta"))
    for h in hooks:
        h.remove()
    rows = []
    for name, m in layers:
        out = shapes[name]
        if isinstance(m, BinaryConv2d):
            kh, kw = m.kernel_size
            params = m.weight.numel()
            kind = f"conv {kh}x{kw}/{m.stride[0]}"
            rows.append(LayerRow(name, kind, out, params, m.weight_bits, out[1] * out[2] * params))
        else:
            kind, params = ("BN (learned affine)", 4 * m.num_features) if m.affine else \
                ("BN (statistics)", 2 * m.num_features)
            ops = 0 if m is model.input_bn else 2 * out[0] * out[1] * out[2]
            rows.append(LayerRow(name, kind, out, params, 32, 0, ops))
    return rows, input_shape


def _bn_cost(rows: list[LayerRow]) -> BNCost:
    """BN layers besides the input BN: 2 folded parameters per channel, 2 ops per activation element."""
    extra = [r for r in rows if r.bn_ops]
    return BNCost(len(extra), sum(2 * r.output_shape[0] for r in extra), sum(r.bn_ops for r in extra))


def summarize(model: WideResNet | WRNConfig, image_size: int | None = None) -> ModelSummary:
    """Per-layer rows and totals of a model (or of the architecture a config describes).

    Only the architecture matters, so the model is rebuilt from its config on the meta device (no memory,
    no weights touched). ``image_size`` defaults to 32 for CIFAR nets and 224 for ImageNet nets.
    """
    cfg = model.config if isinstance(model, WideResNet) else model
    image_size = image_size or IMAGE_SIZES.get(cfg.arch, 32)
    rows, input_shape = _layer_rows(cfg, image_size)
    bn_cfg = cfg if cfg.norm == "bn" else replace(cfg, norm="bn", temperature=None)
    bn_design = _bn_cost(rows if cfg.norm == "bn" else _layer_rows(bn_cfg, image_size)[0])
    return ModelSummary(cfg.name, cfg, input_shape, tuple(rows), _bn_cost(rows), bn_design)


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def _human(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.2f} KiB"


def format_summary(s: ModelSummary) -> str:
    """The summary as a plain-text table followed by totals."""
    header = ("layer", "kind", "output", "params", "bits", "memory (B)", "MACs")
    table = [header] + [
        (r.name, r.kind, "x".join(map(str, r.output_shape)), _num(r.params), str(r.bits),
         _num(r.memory_bits / 8), _num(r.macs) if r.macs else "-")
        for r in s.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    left = {0, 1}

    def line(row: tuple[str, ...]) -> str:
        cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    cfg = s.config
    design = ("BN + ReLU (ICLR 2018)" if cfg.norm == "bn"
              else f"shifted ReLU, no BN, T = {cfg.temperature:g} (2019)")
    edge = "" if cfg.binarize_first_last or cfg.weight_bits == 32 else ", first and last conv 32-bit"
    out = [f"{s.name}: WRN-{cfg.depth}-{cfg.width}, {cfg.weight_bits}-bit weights{edge}, {design}, "
           f"{cfg.num_classes} classes, input {'x'.join(map(str, s.input_shape))}",
           rule, line(header), rule, *(line(r) for r in table[1:]), rule]
    bn_bytes = s.bn_design.params * 4
    totals = [
        ("parameters", f"{_num(s.params)} ({_num(s.conv_weights)} conv weights)"),
        ("memory at stored bit-widths", f"{_num(s.memory_bytes)} B ({_human(s.memory_bytes)})"),
        ("memory if all 32-bit", f"{_num(s.memory_fp32_bytes)} B ({_human(s.memory_fp32_bytes)})"),
        ("compression ratio", f"{s.compression:.2f}x"),
        ("MACs per image", f"{_num(s.macs)}"),
    ]
    cost = (f"+{_num(s.bn_design.params)} parameters ({_num(bn_bytes)} B at 32 bits), "
            f"+{_num(s.bn_design.ops)} ops per image ({100 * s.bn_design.ops / s.macs:.3f}% of the MACs)")
    totals.append(("BN layers besides input BN", str(s.bn.layers)))
    if cfg.norm == "bn":
        totals.append(("BN cost over BN-free design", cost))
    else:
        totals.append(("BN design would add", f"{cost} in {s.bn_design.layers} BN layers"))
    key_width = max(len(k) for k, _ in totals)
    out += [f"{k + ':':<{key_width + 1}}  {v}" for k, v in totals]
    return "\n".join(out) + "\n"
