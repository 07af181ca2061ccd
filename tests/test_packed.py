"""The packed .onebit model file: layout, round trip, size, identical predictions, validation, fuzzing."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from onebit.cli import main
from onebit.errors import OnebitError
from onebit.export.packed import FORMAT, PackedModelError, load_packed, pack_bits, save_packed, unpack_bits
from onebit.loading import load_model_file
from onebit.models import WRNConfig, build_model
from onebit.train.checkpoint import save_checkpoint

WRN_20_10_CONV_WEIGHTS = 26_737_120


def calibrated(cfg: WRNConfig, images: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """A fresh model with realistic BN statistics (as after training) and a non-trivial input BN affine."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        model.input_bn.weight.uniform_(0.5, 1.5)
        model.input_bn.bias.uniform_(-0.5, 0.5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None                       # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(images.float())
    return model.eval()


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The documented sha256 metadata field, computed independently of the implementation."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        dtype = {torch.uint8: "U8", torch.float32: "F32"}.get(t.dtype, str(t.dtype))
        h.update(f"{name}\0{dtype}\0{list(t.shape)}\0".encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(f"{metadata['model_config']}\0{metadata['extra']}".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- layout

def test_bit_layout_is_numpy_packbits_msb_first_over_cout_cin_kh_kw(tmp_path):
    model = build_model(WRNConfig(depth=8, width=1))
    w = model.stem.weight                           # (16, 3, 3, 3)
    with torch.no_grad():
        w.fill_(-1.0)
        w[0, 0, 0, 0] = 0.0                         # sign(0) = +1 -> bit 1, MSB of byte 0
        w[0, 0, 2, 2] = 0.3                         # flat index 8 -> MSB of byte 1
        w[0, 0, 2, 1] = 0.1                         # flat index 7 -> LSB of byte 0
        w[15, 2, 2, 2] = 2.0                        # last weight -> LSB of the last byte
    save_packed(model, tmp_path / "m.onebit")
    tensors, metadata = read_raw(tmp_path / "m.onebit")
    bits = tensors["stem.bits"]
    assert bits.dtype == torch.uint8 and bits.shape == (16 * 3 * 9 // 8,)
    assert bits[0].item() == 0b1000_0001 and bits[1].item() == 0b1000_0000
    assert bits[-1].item() == 0b0000_0001 and int(bits[2:-1].sum()) == 0
    assert "stem.weight" not in tensors and not any(k.endswith("scale") for k in tensors)
    assert metadata["format"] == FORMAT and metadata["version"] == "1"
    assert json.loads(metadata["model_config"]) == model.config.to_dict()
    assert metadata["sha256"] == checksum(tensors, metadata)

    loaded, _ = load_packed(tmp_path / "m.onebit")
    c = math.sqrt(2 / 27)
    expected = torch.where(w >= 0, c, -c)
    assert torch.equal(loaded.stem.effective_weight(), expected)


def test_pack_and_unpack_bits_by_hand():
    # w >= 0 -> 1, MSB first, padding bits 0: 1 0 1 0 1 1 0 1 | 0 1 0 0 0 0 0 0
    w = torch.tensor([0.0, -1.0, 2.0, -0.5, 3.0, 3.0, -2.0, 1e-9, -1e-9, 5.0, -5.0], requires_grad=True)
    bits = pack_bits(w)
    assert bits.dtype == torch.uint8 and bits.tolist() == [0b1010_1101, 0b0100_0000]
    # C order over (C_out, C_in, kh, kw): the last index varies fastest
    assert pack_bits(torch.tensor([[[[1.0, -1.0]], [[-1.0, -1.0]]], [[[1.0, 1.0]], [[-1.0, 1.0]]]])).tolist() == \
        [0b1000_1101]
    expect = [0.5, -0.5, 0.5, -0.5, 0.5, 0.5, -0.5, 0.5, -0.5, 0.5, -0.5]
    got = unpack_bits(bits, (11,), 0.5)
    assert got.dtype == torch.float32 and got.shape == (11,) and got.tolist() == expect
    # 11 weights of 16 bits: the 5 padding bits are ignored on reading, whatever they hold
    got = unpack_bits(torch.tensor([0b1010_1101, 0b0101_1111], dtype=torch.uint8), (1, 11, 1, 1), 0.5)
    assert got.shape == (1, 11, 1, 1) and got.reshape(-1).tolist() == expect
    c = math.sqrt(2 / 27)                                   # not exact in float32: c and -c as float32 values
    got = unpack_bits(torch.tensor([0b1100_0000], dtype=torch.uint8), (1, 3), c)
    assert got.dtype == torch.float32 and got.tolist() == [[float(torch.tensor(c)), float(torch.tensor(c)),
                                                            -float(torch.tensor(c))]]


def test_save_packed_needs_a_wide_resnet(tmp_path):
    with pytest.raises(TypeError, match=r"^save_packed needs a WideResNet, got Linear$"):
        save_packed(torch.nn.Linear(2, 2), tmp_path / "x.onebit")
    assert not (tmp_path / "x.onebit").exists()


def test_metadata_is_canonical_json_and_float64_models_are_stored_as_float32(tmp_path):
    cfg = WRNConfig(depth=8, width=1, norm="bn")
    model = calibrated(cfg, random_images(8)).double()
    save_packed(model, tmp_path / "m.onebit", extra_metadata={"b": 1, "a": [2, "x"]})
    tensors, metadata = read_raw(tmp_path / "m.onebit")
    # sorted keys: the same model and extra always give the same bytes (and checksum)
    assert metadata["model_config"] == json.dumps(cfg.to_dict(), sort_keys=True)
    assert list(json.loads(metadata["model_config"])) == sorted(cfg.to_dict())
    assert metadata["extra"] == '{"a": [2, "x"], "b": 1}'
    assert {t.dtype for k, t in tensors.items() if not k.endswith(".bits")} == {torch.float32}
    assert torch.equal(tensors["input_bn.weight"], model.input_bn.weight.detach().float())
    loaded, info = load_packed(tmp_path / "m.onebit")
    assert info == {"format": "onebit-packed", "version": "1", "model_config": cfg.to_dict(),
                    "extra": {"a": [2, "x"], "b": 1}}
    save_packed(build_model(WRNConfig(depth=8, width=1)), tmp_path / "n.onebit")
    assert read_raw(tmp_path / "n.onebit")[1]["extra"] == "{}" and load_packed(tmp_path / "n.onebit")[1]["extra"] == {}


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_round_trip_identical_outputs(tmp_path, norm):
    cfg = WRNConfig(depth=14, width=1, norm=norm)
    model = calibrated(cfg, random_images(32))
    save_packed(model, tmp_path / "m.onebit", extra_metadata={"note": "hello", "acc": 0.5})
    loaded, metadata = load_packed(tmp_path / "m.onebit")
    assert metadata["extra"] == {"note": "hello", "acc": 0.5}
    assert loaded.config == cfg and not loaded.training
    for (name, a), (_, b) in zip(model.conv_layers(), loaded.conv_layers()):
        assert torch.equal(a.weight >= 0, b.weight >= 0), name
        assert torch.allclose(a.effective_weight(), b.effective_weight(), rtol=0, atol=1e-7), name
    tensors, _ = read_raw(tmp_path / "m.onebit")
    bn_stats = [k for k in tensors if k.endswith("running_mean") and k != "input_bn.running_mean"]
    assert (len(bn_stats) > 0) == (norm == "bn")
    for key, value in model.state_dict().items():
        if not key.endswith(".weight") or key.startswith("input_bn"):
            assert torch.equal(loaded.state_dict()[key], value) or "num_batches" in key, key
    x = random_images(16, seed=1)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.argmax(1), b.argmax(1))


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_wrn_20_10_file_size(tmp_path, norm):
    model = build_model(WRNConfig(depth=20, width=10, norm=norm))
    assert sum(m.weight.numel() for _, m in model.conv_layers()) == WRN_20_10_CONV_WEIGHTS
    save_packed(model, tmp_path / "m.onebit")
    size = (tmp_path / "m.onebit").stat().st_size
    assert WRN_20_10_CONV_WEIGHTS / 8 < size <= WRN_20_10_CONV_WEIGHTS / 8 + 64 * 1024


def test_fp32_edge_convs_and_32_bit_models_keep_float_weights(tmp_path):
    model = build_model(WRNConfig(depth=8, width=1, binarize_first_last=False))
    save_packed(model, tmp_path / "edge.onebit")
    tensors, _ = read_raw(tmp_path / "edge.onebit")
    assert tensors["stem.weight"].dtype == torch.float32 and tensors["head.weight"].dtype == torch.float32
    assert torch.equal(tensors["stem.weight"], model.stem.weight.detach())
    assert "blocks.0.conv1.bits" in tensors and "stem.bits" not in tensors
    loaded, _ = load_packed(tmp_path / "edge.onebit")
    assert torch.equal(loaded.head.weight, model.head.weight)

    model32 = build_model(WRNConfig(depth=8, width=1, weight_bits=32, norm="bn"))
    save_packed(model32, tmp_path / "fp.onebit")
    tensors, _ = read_raw(tmp_path / "fp.onebit")
    assert not any(k.endswith(".bits") for k in tensors)
    loaded, _ = load_packed(tmp_path / "fp.onebit")
    for (_, a), (_, b) in zip(model32.conv_layers(), loaded.conv_layers()):
        assert torch.equal(a.weight, b.weight)


# ------------------------------------------------------------------------- identical predictions, CLI

@pytest.fixture(scope="module")
def cifar10_test(cifar10_dir):
    from onebit.data.cifar import load_cifar

    return load_cifar("cifar10", cifar10_dir, train=False, download=False)


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_packed_model_predicts_like_the_checkpoint_on_the_test_set(tmp_path, cifar10_test, norm):
    from onebit.train.evaluation import predict_logits

    cfg = WRNConfig(depth=8, width=1, norm=norm)
    model = calibrated(cfg, cifar10_test.images[:200])
    save_checkpoint(tmp_path / "run" / "checkpoint.safetensors", model, cfg, state={"epoch": 3})
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.onebit")]) == 0
    from_ckpt, _ = load_model_file(tmp_path / "run")
    packed, info = load_model_file(tmp_path / "m.onebit")
    assert info["kind"] == "packed" and info["extra"]["state"]["epoch"] == 3   # missing fields: start values
    a = predict_logits(from_ckpt, cifar10_test.images)
    b = predict_logits(packed, cifar10_test.images)
    assert len(a) == len(cifar10_test.images)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert len(a.argmax(1).unique()) > 1            # a model that distinguishes images


def test_cli_eval_and_reexport_of_a_packed_model(tmp_path, tiny_cifar10, capsys, monkeypatch):
    # the export adds the class names of a dataset it finds on disk ($ONEBIT_DATA): none here, so that the
    # re-export is byte for byte the file it read
    monkeypatch.setenv("ONEBIT_DATA", str(tmp_path / "no-data"))
    model = calibrated(WRNConfig(depth=8, width=1), random_images(32))
    save_packed(model, tmp_path / "a.onebit", extra_metadata={"origin": "test"})
    assert main(["export", str(tmp_path / "a.onebit"), "-o", str(tmp_path / "b.onebit")]) == 0
    assert load_packed(tmp_path / "b.onebit")[1]["extra"] == {"origin": "test"}
    (ta, ma), (tb, mb) = read_raw(tmp_path / "a.onebit"), read_raw(tmp_path / "b.onebit")
    assert ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "b.onebit"), "--data-dir", str(tiny_cifar10), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 50


# ----------------------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("packed") / "small.onebit"
    save_packed(calibrated(WRNConfig(depth=8, width=1, norm="bn"), random_images(16)), path)
    return path


def rewrite(path: Path, out: Path, tensors=None, metadata=None, fix_checksum=True) -> Path:
    orig_tensors, orig_metadata = read_raw(path)
    tensors = orig_tensors if tensors is None else tensors
    metadata = dict(orig_metadata if metadata is None else metadata)
    if fix_checksum and "model_config" in metadata and "extra" in metadata:
        metadata["sha256"] = checksum(tensors, metadata)
    save_file(tensors, str(out), metadata=metadata)
    return out


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(PackedModelError) as info:
        load_packed(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_errors_name_the_problem(tmp_path, small_file):
    data = small_file.read_bytes()
    (tmp_path / "trunc.onebit").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "trunc.onebit", "truncated or corrupt")
    (tmp_path / "empty.onebit").write_bytes(b"")
    expect_error(tmp_path / "empty.onebit", "truncated or corrupt")
    flipped = bytearray(data)
    flipped[-5] ^= 0x10                                 # inside the last tensor's data
    (tmp_path / "flip.onebit").write_bytes(bytes(flipped))
    assert expect_error(tmp_path / "flip.onebit").endswith(": checksum mismatch: the file is corrupt")
    expect_error(tmp_path / "missing.onebit", "no such file")

    _, meta = read_raw(small_file)
    tensors, _ = read_raw(small_file)
    expect_error(rewrite(small_file, tmp_path / "v2.onebit", metadata={**meta, "version": "2"}),
                 "version '2' is not supported")
    expect_error(rewrite(small_file, tmp_path / "fmt.onebit", metadata={**meta, "format": "x"}),
                 "not a packed onebit model")
    save_checkpoint(tmp_path / "ckpt.safetensors", build_model(WRNConfig(depth=8, width=1)),
                    WRNConfig(depth=8, width=1))
    expect_error(tmp_path / "ckpt.safetensors", "not a packed onebit model", "onebit-checkpoint")
    expect_error(rewrite(small_file, tmp_path / "cfg.onebit", metadata={**meta, "model_config": "{"}),
                 "model_config is not valid JSON")
    bad = {**json.loads(meta["model_config"]), "width": "1"}
    message = expect_error(rewrite(small_file, tmp_path / "w.onebit",
                                   metadata={**meta, "model_config": json.dumps(bad)}),
                           "model_config.width has the wrong type")
    assert message.startswith(f"{tmp_path / 'w.onebit'}: model_config.width") and "JSON" not in message
    bad = {**json.loads(meta["model_config"]), "depth": 9}
    expect_error(rewrite(small_file, tmp_path / "d.onebit", metadata={**meta, "model_config": json.dumps(bad)}),
                 "model_config is invalid", "6n+2")
    bad = {**json.loads(meta["model_config"]), "in_channels": 0}          # found by fuzzing
    expect_error(rewrite(small_file, tmp_path / "c0.onebit", metadata={**meta, "model_config": json.dumps(bad)}),
                 "model_config.in_channels = 0 is out of range")
    bad = {**json.loads(meta["model_config"]), "pad_mode": "rymmetric"}   # found by fuzzing
    expect_error(rewrite(small_file, tmp_path / "p.onebit", metadata={**meta, "model_config": json.dumps(bad)}),
                 "rymmetric")
    bad = {**json.loads(meta["model_config"]), "width": 2}
    expect_error(rewrite(small_file, tmp_path / "w2.onebit", metadata={**meta, "model_config": json.dumps(bad)}),
                 "has shape", "expected")
    no_head = {k: v for k, v in tensors.items() if k != "head.bits"}
    expect_error(rewrite(small_file, tmp_path / "m.onebit", tensors=no_head), "'head.bits' is missing")
    expect_error(rewrite(small_file, tmp_path / "u.onebit", tensors={**tensors, "evil": torch.zeros(1)}),
                 "unexpected tensor 'evil'")
    wrong_dtype = {**tensors, "stem.bits": tensors["stem.bits"].float()}
    expect_error(rewrite(small_file, tmp_path / "t.onebit", tensors=wrong_dtype), "dtype F32, expected U8")
    no_sum = {k: v for k, v in meta.items() if k != "sha256"}
    expect_error(rewrite(small_file, tmp_path / "s.onebit", metadata=no_sum, fix_checksum=False),
                 "'sha256' is missing")


def test_bad_metadata_and_constants_name_the_problem(tmp_path, small_file):
    tensors, meta = read_raw(small_file)
    for extra, problem in (("{", "metadata field 'extra' is not valid JSON ("),
                           ("[1, 2]", "metadata field 'extra' is not a JSON object")):
        path = rewrite(small_file, tmp_path / "e.onebit", metadata={**meta, "extra": extra})
        assert expect_error(path).startswith(f"{path}: {problem}")
    deep = {**json.loads(meta["model_config"]), "depth": 200}          # 6n+2, but the file has too few tensors
    path = rewrite(small_file, tmp_path / "deep.onebit", metadata={**meta, "model_config": json.dumps(deep)})
    assert expect_error(path) == f"{path}: model_config depth 200 needs more tensors than the file's {len(tensors)}"
    # a NaN that the checksum covers (the file is consistent, its constants are not)
    nan = {**tensors, "input_bn.running_mean": torch.full_like(tensors["input_bn.running_mean"], math.nan)}
    path = rewrite(small_file, tmp_path / "nan.onebit", tensors=nan)
    assert expect_error(path) == f"{path}: tensor 'input_bn.running_mean' holds NaN or infinite values"
    neg = {**tensors, "blocks.0.act1.0.running_var": -tensors["blocks.0.act1.0.running_var"]}
    path = rewrite(small_file, tmp_path / "neg.onebit", tensors=neg)
    assert expect_error(path) == f"{path}: tensor 'blocks.0.act1.0.running_var' holds negative variances"


def test_cli_reports_a_bad_file_in_one_line(tmp_path, small_file, capsys):
    (tmp_path / "bad.onebit").write_bytes(small_file.read_bytes()[:100])
    assert main(["export", str(tmp_path / "bad.onebit"), "-o", str(tmp_path / "x.onebit")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("onebit export: error:") and "\n" not in err


# ------------------------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                         inner, max_size=3),
                           max_leaves=8)


def load_or_packed_error(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.onebit"
        path.write_bytes(data)
        try:
            return load_packed(path)[0]
        except PackedModelError as exc:
            assert str(exc) and "\n" not in str(exc)
            return None


@FUZZ
@given(cut=st.integers(min_value=0), flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4))
def test_fuzz_truncations_and_bit_flips(small_file, cut, flips):
    data = small_file.read_bytes()
    truncated = data[: cut % len(data)]
    assert load_or_packed_error(truncated) is None
    flipped = bytearray(data)
    for position in flips:
        flipped[(position // 8) % len(data)] ^= 1 << (position % 8)
    model = load_or_packed_error(bytes(flipped))
    if model is not None:                    # a flip that changed nothing the format depends on
        reference, _ = load_packed(small_file)
        for (k, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), k


@FUZZ
@given(data=st.data())
def test_fuzz_hostile_metadata_and_shapes(small_file, data):
    tensors, meta = read_raw(small_file)
    config = json.loads(meta["model_config"])
    choice = data.draw(st.sampled_from(["config_value", "config_json", "extra", "tensor", "meta_field"]))
    if choice == "config_value":
        key = data.draw(st.sampled_from(sorted(config) + ["unknown_key"]))
        config[key] = data.draw(json_values | st.integers(-2**70, 2**70) | st.sampled_from([0, 2, 14, 2**21]))
        meta["model_config"] = json.dumps(config)
    elif choice == "config_json":
        meta["model_config"] = data.draw(st.text(max_size=40) | json_values.map(json.dumps))
    elif choice == "extra":
        meta["extra"] = data.draw(st.text(max_size=40) | json_values.map(json.dumps))
    elif choice == "tensor":
        name = data.draw(st.sampled_from(sorted(tensors) + ["new.bits"]))
        shape = data.draw(st.lists(st.integers(0, 40), max_size=3))
        dtype = data.draw(st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.int64]))
        tensors[name] = torch.zeros(shape, dtype=dtype)
        if data.draw(st.booleans()):
            del tensors[data.draw(st.sampled_from(sorted(tensors)))]
    else:
        key = data.draw(st.sampled_from(["format", "version", "sha256", "model_config", "extra"]))
        if data.draw(st.booleans()):
            meta.pop(key)
        else:
            meta[key] = data.draw(st.text(max_size=20))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.onebit"
        try:
            rewrite(small_file, path, tensors, meta, fix_checksum=data.draw(st.booleans()))
        except (ValueError, TypeError, RuntimeError):
            return                           # safetensors itself refuses to write such a file
        try:
            model, _ = load_packed(path)
        except PackedModelError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            # only a file whose checksum matches its content loads (this test's own checksum, not the loader's)
            saved_tensors, saved_meta = read_raw(path)
            assert saved_meta["sha256"] == checksum(saved_tensors, saved_meta)
            assert isinstance(model, torch.nn.Module)


def test_load_model_file_errors_are_onebit_errors(tmp_path, small_file):
    (tmp_path / "t.onebit").write_bytes(small_file.read_bytes()[:-3])
    with pytest.raises(OnebitError):
        load_model_file(tmp_path / "t.onebit")
