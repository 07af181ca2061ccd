"""Importing the reference implementation's released models (.mat) and checking them on CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from onebit.cli import main
from onebit.data.cifar import load_cifar
from onebit.export.packed import load_packed, save_packed
from onebit.models import ReferenceLayout, WRNConfig, WideResNet
from onebit.reference import KERAS, MATCONVNET, ReferenceImportError, import_reference

KERAS_C10 = "CIFAR10_allparams.mat"
MCN_C10 = "TrainedWideResNet20-10_CIFAR10_1-bit-per-weight-4MB.mat"
KERAS_C100 = "CIFAR100_allparams.mat"
MCN_C100 = "TrainedWideResNet20-10_CIFAR100_1-bit-per-weight-4MB.mat"
PUBLISHED = {KERAS_C10: 96.25, MCN_C10: 96.18}
# The two CIFAR-100 models agree on ~50% of the first 64 CIFAR-10 test images (chance: ~1%; 74-77 distinct
# classes predicted); a wrong layout or padding convention in either importer drops this towards chance.
AGREEMENT_MIN = 0.3


def reference_file(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def logits_of(model: torch.nn.Module, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    model = model.eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return torch.cat([model(images[i:i + batch].float().contiguous(memory_format=torch.channels_last))
                          for i in range(0, len(images), batch)])


@pytest.fixture(scope="module")
def cifar10_test(cifar10_dir: Path):
    return load_cifar("cifar10", cifar10_dir, train=False, download=False)


@pytest.fixture(scope="module")
def keras_c10(reference_models_dir: Path):
    return import_reference(reference_file(reference_models_dir, KERAS_C10))


@pytest.fixture(scope="module")
def mcn_c10(reference_models_dir: Path):
    return import_reference(reference_file(reference_models_dir, MCN_C10))


def test_detected_architecture(keras_c10, mcn_c10):
    for imported, fmt in ((keras_c10, KERAS), (mcn_c10, MATCONVNET)):
        cfg = imported.model.config
        assert imported.source_format == fmt
        assert (cfg.depth, cfg.width, cfg.num_classes, cfg.norm, cfg.weight_bits) == (20, 10, 10, "bn", 1)
        assert sum(c.weight.numel() for _, c in imported.model.conv_layers()) == 26_737_120
    assert keras_c10.model.config.reference == ReferenceLayout(pad_mode="tf_same", stem_relu=False)
    assert (mcn_c10.model.config.reference.pad_mode, mcn_c10.model.config.reference.stem_relu) == (
        "symmetric", True)
    assert mcn_c10.model.config.reference.head_pool == "sum"


def test_weights_follow_the_files_layout(reference_models_dir: Path, keras_c10, mcn_c10):
    """Keras (1, kh, kw, C_in, C_out) and MatConvNet (kh, kw, C_in, C_out) bits -> (C_out, C_in, kh, kw),
    bit 1 -> +c; BN statistics in forward order (MatConvNet sigma -> var = sigma^2 - eps)."""
    keras = scipy.io.loadmat(str(reference_file(reference_models_dir, KERAS_C10)))
    stem = keras_c10.model.stem
    c = (2 / 27) ** 0.5
    assert stem.weight[5, 2, 0, 1].item() == pytest.approx(c if keras["conv2d"][0, 0, 1, 2, 5] else -c)
    assert torch.equal(keras_c10.model.blocks[3].conv2.weight > 0,
                       torch.from_numpy(keras["conv2d_8"][0].transpose(3, 2, 0, 1) == 1))
    assert torch.allclose(keras_c10.model.head_bn.running_var,
                          torch.from_numpy(keras["batch_normalization_v1_104"][1]))
    mcn = scipy.io.loadmat(str(reference_file(reference_models_dir, MCN_C10)))
    bits = mcn["BinaryWeights"][0, 13]
    assert torch.equal(mcn_c10.model.blocks[6].conv1.weight > 0,
                       torch.from_numpy(bits.transpose(3, 2, 0, 1) == 1))
    sigma = torch.from_numpy(mcn["Moments"][2, 0][:, 1]).double()
    bn = mcn_c10.model.blocks[0].act2[0]
    assert torch.allclose((bn.running_var.double() + bn.eps).sqrt(), sigma, rtol=1e-6)
    assert torch.allclose(mcn_c10.model.input_bn.weight, torch.from_numpy(mcn["BNG"][0, 0].ravel()))


@pytest.mark.slow
@pytest.mark.parametrize("name", [KERAS_C10, MCN_C10])
def test_cifar10_accuracy_matches_published(name, request, cifar10_test):
    """1000 test images: standard error ~0.6 points; the published figures are on all 10,000."""
    imported = request.getfixturevalue("keras_c10" if name == KERAS_C10 else "mcn_c10")
    logits = logits_of(imported.model, cifar10_test.images)
    assert torch.isfinite(logits).all()
    accuracy = 100 * (logits.argmax(1) == cifar10_test.labels).double().mean().item()
    assert abs(accuracy - PUBLISHED[name]) <= 0.5, f"{name}: {accuracy:.2f}% vs published {PUBLISHED[name]}%"


def test_packed_round_trip_gives_identical_outputs(tmp_path: Path, keras_c10, mcn_c10, cifar10_test):
    images = cifar10_test.images[:8]
    for imported in (keras_c10, mcn_c10):
        path = tmp_path / "model.onebit"
        save_packed(imported.model, path, extra_metadata=imported.metadata())
        reloaded, info = load_packed(path)
        assert reloaded.config == imported.model.config
        assert info["extra"]["source_format"] == imported.source_format
        assert torch.equal(logits_of(reloaded, images), logits_of(imported.model, images))


def test_cli_import_with_check(tmp_path: Path, reference_models_dir: Path, capsys):
    out = tmp_path / "c10.onebit"
    assert main(["import-reference", str(reference_file(reference_models_dir, MCN_C10)), "-o", str(out),
                 "--check"]) == 0
    printed = capsys.readouterr().out
    assert "MatConvNet model, WRN-20-10, 10 classes" in printed and "check:" in printed
    assert 3_300_000 < out.stat().st_size < 3_500_000          # 26.7 M bits = 3.34 MB plus BN statistics


def test_cifar100_models_are_sane(reference_models_dir: Path, cifar10_test):
    """No CIFAR-100 data here: finite logits, and both CIFAR-100 models agree far above chance (1%)."""
    images = cifar10_test.images[:64]
    keras = import_reference(reference_file(reference_models_dir, KERAS_C100)).model
    mcn = import_reference(reference_file(reference_models_dir, MCN_C100)).model
    assert keras.config.num_classes == mcn.config.num_classes == 100
    a, b = logits_of(keras, images), logits_of(mcn, images)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a.argmax(1) == b.argmax(1)).double().mean().item() > AGREEMENT_MIN


def test_01weights_file_explains_missing_bn_statistics(tmp_path: Path, reference_models_dir: Path, capsys):
    path = reference_file(reference_models_dir, "CIFAR10_01weights.mat")
    with pytest.raises(ReferenceImportError, match="BN statistics|batch-norm statistics"):
        import_reference(path)
    assert main(["import-reference", str(path), "-o", str(tmp_path / "x.onebit")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("onebit import-reference: error:") and "_allparams.mat" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "x.onebit").exists()


def test_unknown_or_broken_files_give_clean_errors(tmp_path: Path, capsys):
    other = tmp_path / "other.mat"
    scipy.io.savemat(str(other), {"foo": np.zeros((2, 3)), "bar": np.ones(4)})
    with pytest.raises(ReferenceImportError, match="not a released reference model"):
        import_reference(other)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"this is not a MATLAB file" * 10)
    with pytest.raises(ReferenceImportError, match="not a readable MATLAB"):
        import_reference(garbage)
    with pytest.raises(ReferenceImportError, match="no such file"):
        import_reference(tmp_path / "missing.mat")
    assert main(["import-reference", str(other), "-o", str(tmp_path / "o.onebit")]) == 1
    assert "not a released reference model" in capsys.readouterr().err


def _keras_mat_of(model: WideResNet) -> dict[str, np.ndarray]:
    """A model written in the tf.keras *_allparams.mat layout (for synthetic files)."""
    mat: dict[str, np.ndarray] = {}
    for i, (_, conv) in enumerate(model.conv_layers()):
        bits = (conv.weight.detach() >= 0).permute(2, 3, 1, 0).numpy().astype(np.uint8)
        mat["conv2d" if i == 0 else f"conv2d_{i}"] = bits[None]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for i, bn in enumerate(bns):
        stats = [bn.running_mean, bn.running_var]
        if bn.affine:
            stats = [bn.weight.detach(), bn.bias.detach()] + stats
        mat[f"batch_normalization_v1_{7 + i}"] = torch.stack(stats).numpy()
    return mat


def test_synthetic_keras_file_round_trips_exactly(tmp_path: Path):
    """A small WRN-8-1 written in the Keras layout is imported with the same outputs (layout, BN order)."""
    torch.manual_seed(0)
    model = WideResNet(WRNConfig(depth=8, width=1, num_classes=10, norm="bn",
                                 reference=ReferenceLayout(pad_mode="tf_same"))).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.affine:
            torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
    model.input_bn.running_mean.fill_(120.0)
    model.input_bn.running_var.fill_(4000.0)
    path = tmp_path / "small_allparams.mat"
    scipy.io.savemat(str(path), _keras_mat_of(model))
    imported = import_reference(path)
    assert (imported.model.config.depth, imported.model.config.width) == (8, 1)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = model(images)
    assert torch.allclose(imported.model(images), expected, atol=1e-5)

    mat = _keras_mat_of(model)
    mat["conv2d_3"] = mat["conv2d_3"][..., :4]                # wrong C_out
    scipy.io.savemat(str(path), mat)
    with pytest.raises(ReferenceImportError, match="conv layer 4 .* has shape"):
        import_reference(path)
