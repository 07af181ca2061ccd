"""ONNX export: standard graph, weights baked in as c*sign(w), onnxruntime matches PyTorch on real images."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from onebit.cli import main
from onebit.export.onnx_export import export_onnx
from onebit.export.packed import save_packed
from onebit.models import ReferenceLayout, WRNConfig, build_model


@pytest.fixture(scope="module")
def images(cifar10_dir) -> torch.Tensor:
    from onebit.data.cifar import load_cifar

    return load_cifar("cifar10", cifar10_dir, train=False, download=False).images[:100]


def calibrated(cfg: WRNConfig, images: torch.Tensor) -> torch.nn.Module:
    """A fresh model whose BN statistics are set from real images, as after training."""
    torch.manual_seed(0)
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(images.float())
    return model.eval()


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.float().numpy()})[0]


@pytest.mark.parametrize("cfg", [WRNConfig(depth=8, width=2, norm="bn"),
                                 WRNConfig(depth=14, width=1, norm="none", binarize_first_last=False),
                                 WRNConfig(depth=8, width=1, norm="bn",
                                           reference=ReferenceLayout(pad_mode="tf_same", stem_relu=True))],
                         ids=["bn", "srelu-fp32-edges", "bn-tf-same"])
def test_onnx_matches_pytorch_on_real_images(tmp_path, images, cfg):
    model = calibrated(cfg, images[:64])
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert {n.op_type for n in proto.graph.node} <= {"Conv", "BatchNormalization", "Relu", "Clip", "Max", "Add",
                                                     "AveragePool", "Pad", "Div", "Mul", "ReduceMean",
                                                     "ReduceSum", "Concat", "Constant", "Reshape", "Cast"}
    with torch.no_grad():
        want = model(images).numpy()
    got = run_onnx(path, images)
    assert got.shape == want.shape == (len(images), 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(run_onnx(path, images[:1]), want[:1], rtol=0, atol=1e-4)   # dynamic batch


def test_binarized_weights_are_baked_in_as_plus_minus_c(tmp_path):
    model = build_model(WRNConfig(depth=8, width=1, binarize_first_last=False)).eval()
    export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    weights = {}
    for node in proto.graph.node:
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            weights[w.shape] = weights.get(w.shape, []) + [w]
    assert sum(len(v) for v in weights.values()) == len(model.conv_layers())
    for name, conv in model.conv_layers():
        candidates = weights[tuple(conv.weight.shape)]
        if conv.weight_bits == 1:
            c = math.sqrt(2 / (conv.weight[0].numel()))
            expect = np.where(conv.weight.detach().numpy() >= 0, c, -c).astype(np.float32)
        else:
            expect = conv.weight.detach().numpy()
        assert any(np.array_equal(w, expect) for w in candidates), name


def test_cli_exports_onnx_from_a_packed_model(tmp_path, images, capsys):
    model = calibrated(WRNConfig(depth=8, width=1, norm="none"), images[:64])
    save_packed(model, tmp_path / "m.onebit")
    assert main(["export", str(tmp_path / "m.onebit"), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "ONNX opset" in capsys.readouterr().out
    with torch.no_grad():
        want = model(images[:50]).numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", images[:50]), want, rtol=0, atol=1e-4)
