import pytest
import torch
from torch import nn

from onebit.models import WRNConfig, build_model, default_temperature
from onebit.nn import BinaryConv2d, ShiftedReLU


def conv_weight_count(model):
    return sum(conv.weight.numel() for _, conv in model.conv_layers())


def test_wrn_20_10_has_the_papers_conv_weight_count():
    model = build_model(WRNConfig(depth=20, width=10))
    assert conv_weight_count(model) == 26_737_120
    assert len(model.conv_layers()) == 20  # stem + 18 block convs + 1x1 head


@pytest.mark.parametrize("depth", [7, 9, 10, 2, 0])
def test_impossible_depth_is_a_clear_error(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        WRNConfig(depth=depth)


@pytest.mark.parametrize("norm", ["bn", "none"])
@pytest.mark.parametrize("bits", [1, 32])
def test_both_designs_forward_and_backward(norm, bits):
    model = build_model(WRNConfig(depth=8, width=1, norm=norm, weight_bits=bits, num_classes=7))
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = model(x)
    assert out.shape == (3, 7)
    out.sum().backward()
    # every conv's latent weight gets the gradient of its effective weight (straight through, unscaled):
    # the same as in a 32-bit twin whose weights are those effective weights
    twin = build_model(WRNConfig(depth=8, width=1, norm=norm, weight_bits=32, num_classes=7,
                                 temperature=model.config.temperature))
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for (_, a), (_, b) in zip(model.conv_layers(), twin.conv_layers()):
            b.weight.copy_(a.effective_weight())
    twin(x).sum().backward()
    for (name, a), (_, b) in zip(model.conv_layers(), twin.conv_layers()):
        assert a.weight.grad is not None and a.weight.grad.abs().sum() > 0, name
        assert torch.allclose(a.weight.grad, b.weight.grad, rtol=1e-4, atol=1e-6), name


def test_bn_free_design_has_only_the_input_bn_and_uses_temperature():
    model = build_model(WRNConfig(depth=14, width=2, norm="none"))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == [model.input_bn] and model.input_bn.affine
    assert sum(isinstance(m, ShiftedReLU) for m in model.modules()) == 2 * 6 + 1
    assert model.inv_temperature == pytest.approx(1 / 40)


def test_bn_design_uses_bn_without_scale_or_offset():
    model = build_model(WRNConfig(depth=8, width=1, norm="bn"))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m is not model.input_bn]
    assert len(bns) == 2 * 3 + 1 + 1  # two per block, head act, head BN
    assert not any(m.affine for m in bns)


def test_temperature_defaults_follow_the_paper():
    assert default_temperature(10, 1) == 40 and default_temperature(10, 32) == 80
    assert default_temperature(100, 1) == default_temperature(100, 32) == 25
    assert WRNConfig(norm="none", num_classes=100).temperature == 25


def test_downsampling_shortcut_is_avgpool_plus_zero_channels():
    model = build_model(WRNConfig(depth=8, width=1, norm="none"))
    block = model.blocks[1]  # first block of stage 2
    assert block.conv1.stride == (2, 2)
    x = torch.randn(2, 16, 32, 32)
    short = block.shortcut(x)
    assert short.shape == (2, 32, 16, 16)
    assert torch.count_nonzero(short[:, 16:]) == 0
    # interior output pixel = mean of its 3x3 window
    assert torch.allclose(short[:, :16, 1, 1], x[:, :, 1:4, 1:4].mean((2, 3)), atol=1e-6)
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0


def test_first_and_last_conv_can_stay_full_precision():
    model = build_model(WRNConfig(depth=8, width=1, binarize_first_last=False))
    convs = [c for _, c in model.conv_layers()]
    assert convs[0].weight_bits == 32 and convs[-1].weight_bits == 32
    assert all(c.weight_bits == 1 for c in convs[1:-1])


def test_config_round_trip_and_unknown_keys():
    cfg = WRNConfig(depth=14, width=3, norm="bn", weight_bits=32, num_classes=100)
    assert WRNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        WRNConfig.from_dict({**cfg.to_dict(), "evil": 1})


def test_all_convs_are_binary_conv():
    model = build_model(WRNConfig(depth=8, width=1))
    assert not [m for m in model.modules() if isinstance(m, nn.Conv2d) and not isinstance(m, BinaryConv2d)]


@pytest.mark.parametrize("bad", [{"pad_mode": "rymmetric"}, {"in_channels": 0}, {"head_pool": "max"},
                                 {"arch": "vgg"}, {"norm": "ln"}, {"temperature": -1.0}])
def test_invalid_config_values_are_clear_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        WRNConfig.from_dict(bad)
