import math

import pytest
import torch

from onebit.nn import BinaryConv2d, ShiftedReLU, he_scale, sign_ste


def test_sign_ste_value_is_scaled_sign_with_sign_zero_positive():
    w = torch.tensor([-2.0, -0.0, 0.0, 1e-9, 3.0])
    out = sign_ste(w, 0.5)
    assert out.tolist() == [-0.5, 0.5, 0.5, 0.5, 0.5]


def test_sign_ste_gradient_is_identity_unscaled_unclipped():
    w = torch.tensor([-5.0, -0.3, 0.0, 0.7, 9.0], requires_grad=True)
    upstream = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0])
    (sign_ste(w, 0.25) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # no factor c, no clipping of |w| > 1


def test_binary_conv_uses_c_times_sign_and_passes_gradient_straight_through():
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 6, 3, weight_bits=1)
    c = math.sqrt(2 / (3 * 3 * 4))
    assert conv.scale == pytest.approx(c) == pytest.approx(he_scale(3, 3, 4))
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    expected_w = torch.where(conv.weight >= 0, c, -c).detach()
    out = conv(x)
    reference = torch.nn.functional.conv2d(x, expected_w, padding=1)
    assert torch.allclose(out, reference, atol=1e-6)
    # gradient w.r.t. latent w equals gradient w.r.t. the effective weight
    w_eff = expected_w.clone().requires_grad_(True)
    torch.nn.functional.conv2d(x.detach(), w_eff, padding=1).square().sum().backward()
    conv(x.detach()).square().sum().backward()
    assert torch.allclose(conv.weight.grad, w_eff.grad, atol=1e-5)


def test_full_precision_conv_uses_latent_weight():
    conv = BinaryConv2d(3, 5, 3, weight_bits=32)
    x = torch.randn(1, 3, 6, 6)
    assert torch.allclose(conv(x), torch.nn.functional.conv2d(x, conv.weight, padding=1))


def test_he_normal_init_std():
    torch.manual_seed(0)
    conv = BinaryConv2d(64, 64, 3)
    assert conv.weight.std().item() == pytest.approx(he_scale(3, 3, 64), rel=0.02)
    assert abs(conv.weight.mean().item()) < 0.05 * he_scale(3, 3, 64)      # zero-mean (He-normal)


def test_invalid_weight_bits():
    with pytest.raises(ValueError, match="weight_bits"):
        BinaryConv2d(3, 3, 3, weight_bits=2)


def test_shifted_relu():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 2.0])
    assert ShiftedReLU()(x).tolist() == [-1.0, -1.0, -0.5, 0.0, 2.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_shifted_relu_gradient_is_clamp_min_s(dtype):
    """The fast backward (ReLU's kernel) passes the gradient exactly where clamp_min's does, x > -1: not at -1
    itself nor below, from its upper neighbour in the dtype on, and on random values."""
    minus_one = torch.tensor(-1.0, dtype=dtype)
    below = torch.nextafter(minus_one, torch.tensor(-2.0, dtype=dtype))
    above = torch.nextafter(minus_one, torch.tensor(0.0, dtype=dtype))
    torch.manual_seed(0)
    x = torch.cat([torch.stack([below, minus_one, above, -2 * minus_one]), torch.randn(4092).to(dtype) - 1])
    x = x.reshape(4, 4, 16, 16).to(memory_format=torch.channels_last)    # as in training (channels_last)
    grad = torch.randn(x.shape).to(dtype)
    ours = x.clone().requires_grad_()
    ShiftedReLU()(ours).backward(grad)
    ref = x.clone().requires_grad_()
    torch.clamp_min(ref, -1.0).backward(grad)
    assert torch.equal(ours.grad, ref.grad)
    assert ours.grad.flatten()[:4].tolist() == [0.0, 0.0, *grad.flatten()[2:4].tolist()]   # -1 and below: 0
    with torch.no_grad():                                   # no autograd: plain clamp_min
        assert torch.equal(ShiftedReLU()(x), torch.clamp_min(x, -1.0))


@pytest.mark.parametrize("kernel, stride, size", [(3, 1, 8), (3, 2, 8), (3, 2, 9), (1, 1, 6), (1, 2, 6), (5, 1, 7)])
@pytest.mark.parametrize("pad_mode", ["symmetric", "tf_same"])
def test_binary_conv_geometry_in_both_padding_modes(kernel, stride, size, pad_mode):
    """Output equals conv2d with c * sign(w): symmetric padding k // 2, or TensorFlow 'same' for strided
    convolutions (the extra row and column after: 0 before / 1 after on even inputs, 1 / 1 on odd)."""
    torch.manual_seed(1)
    conv = BinaryConv2d(3, 5, kernel, stride=stride, pad_mode=pad_mode)
    assert conv.bias is None and conv.padding == (kernel // 2, kernel // 2) and conv.stride == (stride, stride)
    assert conv.weight_bits == 1 and conv.pad_mode == pad_mode
    x = torch.randn(2, 3, size, size)
    w = torch.where(conv.weight >= 0, conv.scale, -conv.scale)
    if pad_mode == "tf_same" and stride > 1 and kernel > 1:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        assert (total // 2, total - total // 2) == ((0, 1) if size % 2 == 0 else (1, 1))
        ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (total // 2, total - total // 2) * 2), w,
                                         stride=stride)
    else:
        ref = torch.nn.functional.conv2d(x, w, stride=stride, padding=kernel // 2)
    out = conv(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-6)
    assert f"weight_bits=1, scale={conv.scale:.5f}" in repr(conv)


def test_tf_same_pad_adds_nothing_when_the_kernel_fits():
    from onebit.nn.layers import tf_same_pad

    x = torch.randn(1, 2, 6, 6)
    assert torch.equal(tf_same_pad(x, 1, 2), x)                     # 1x1 stride 2: no padding at all
    assert tf_same_pad(x, 3, 2).shape[-2:] == (7, 7)                # 0 before, 1 after


def test_sign_ste_keeps_the_weight_dtype_and_bad_options_are_named():
    w = torch.tensor([-1.0, 2.0], dtype=torch.bfloat16)
    assert sign_ste(w, 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="weight_bits must be 1 or 32, got 2"):
        BinaryConv2d(3, 3, 3, weight_bits=2)
    with pytest.raises(ValueError, match="pad_mode must be 'symmetric' or 'tf_same', got 'same'"):
        BinaryConv2d(3, 3, 3, pad_mode="same")
