"""`onebit summary`: totals against independent arithmetic, and the printed output pinned by snapshots.

Regenerate the snapshots after an intended change of the output with ``ONEBIT_UPDATE_SNAPSHOTS=1``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from onebit.cli import main
from onebit.export.packed import save_packed
from onebit.models.summary import summarize
from onebit.models import WRNConfig, build_model

from conftest import check_snapshot as check_snapshot_file

SNAPSHOTS = Path(__file__).parent / "snapshots"


def expected_counts(depth: int, width: int, classes: int = 10) -> dict[str, int]:
    """Conv weights, MACs, and BN channels/elements of a CIFAR WRN-d-k, counted by hand."""
    n = (depth - 2) // 6
    channels, sizes = [16 * width, 32 * width, 64 * width], [32, 16, 8]
    weights, macs = 3 * 9 * channels[0], 3 * 9 * channels[0] * 32 * 32
    bn = []                                                 # (channels, spatial size) of each BN
    c_in, hw_in = channels[0], 32
    for c, hw in zip(channels, sizes):
        for _ in range(n):
            bn.append((c_in, hw_in))
            weights += 9 * c_in * c
            macs += 9 * c_in * c * hw * hw
            bn.append((c, hw))
            weights += 9 * c * c
            macs += 9 * c * c * hw * hw
            c_in, hw_in = c, hw
    bn.append((c_in, 8))
    weights += c_in * classes
    macs += c_in * classes * 64
    bn.append((classes, 8))
    return {"weights": weights, "macs": macs, "bn_layers": len(bn), "bn_params": sum(2 * c for c, _ in bn),
            "bn_ops": sum(2 * c * hw * hw for c, hw in bn)}


@pytest.mark.parametrize("depth,width,norm,bits", [(20, 10, "none", 1), (8, 1, "bn", 1), (14, 2, "bn", 32)])
def test_totals_match_independent_arithmetic(depth, width, norm, bits):
    s = summarize(WRNConfig(depth=depth, width=width, norm=norm, weight_bits=bits))
    want = expected_counts(depth, width)
    if (depth, width) == (20, 10):
        assert want["weights"] == 26_737_120                # docs/paper.md
    assert s.conv_weights == want["weights"]
    assert s.macs == want["macs"]
    bn_params = want["bn_params"] if norm == "bn" else 0
    assert s.params == want["weights"] + 4 * 3 + bn_params
    assert s.memory_bytes == want["weights"] * bits / 8 + 4 * (4 * 3 + bn_params)
    assert s.memory_fp32_bytes == 4 * s.params
    assert s.compression == pytest.approx(s.memory_fp32_bytes / s.memory_bytes)
    design = (want["bn_layers"], want["bn_params"], want["bn_ops"])
    assert (s.bn_design.layers, s.bn_design.params, s.bn_design.ops) == design
    assert (s.bn.layers, s.bn.params, s.bn.ops) == (design if norm == "bn" else (0, 0, 0))


def test_fp32_edge_convs_are_counted_at_32_bits():
    s = summarize(WRNConfig(depth=8, width=1, binarize_first_last=False))
    bits = {r.name: r.bits for r in s.rows}
    assert bits["stem"] == bits["head"] == 32 and bits["blocks.0.conv1"] == 1
    want = expected_counts(8, 1)
    edge = 27 * 16 + 64 * 10
    assert s.memory_bytes == (want["weights"] - edge) / 8 + 4 * edge + 4 * 12


def check_snapshot(name: str, text: str) -> None:
    check_snapshot_file(SNAPSHOTS / name, text)


def test_snapshot_of_a_packed_bn_model(tmp_path, capsys):
    save_packed(build_model(WRNConfig(depth=8, width=1, norm="bn")), tmp_path / "m.onebit")
    assert main(["summary", str(tmp_path / "m.onebit")]) == 0
    check_snapshot("summary_wrn-8-1-bn-1bit.txt", capsys.readouterr().out)


def test_snapshot_of_the_bn_free_paper_preset(capsys):
    assert main(["summary", "--preset", "cifar10-wrn20-10-srelu-1bit"]) == 0
    check_snapshot("summary_wrn-20-10-srelu-1bit.txt", capsys.readouterr().out)


def test_summary_needs_exactly_one_source(capsys):
    assert main(["summary"]) != 0
    assert main(["summary", "--preset", "no-such-preset"]) != 0
    err = capsys.readouterr().err
    assert "onebit summary: error: give either MODEL or --preset" in err and "no-such-preset" in err
