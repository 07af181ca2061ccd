"""ImageNet: ImageFolder reading, crops, the 25-crop evaluation, the WRN-18 model, presets, and training a
few steps on a generated folder of small JPEGs, in one process and on 2 gloo ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, write_file

from onebit.cli import main as cli_main
from onebit.data.imagenet import (ImageFolderDataset, MultiCrop, eval_transform, load_image_folder, read_image,
                                  train_transform)
from onebit.errors import ConfigError, DataError
from onebit.models import WRNConfig, build_model
from onebit.presets import get_preset
from onebit.train.config import TrainConfig
from onebit.train.evaluation import predict_batches
from onebit.data.splits import load_splits
from onebit.train.loop import train
from test_distributed import assert_same_run, cli_args, torchrun

CLASSES = ("n01440764", "n01443537", "n01484850")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> None:
    """Small JPEGs of varied sizes whose brightness ramp depends on the class (so it is learnable)."""
    gen = torch.Generator().manual_seed(seed)
    for split, count in per_class.items():
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (int(v) for v in torch.randint(40, 72, (2,), generator=gen))
                ramp = torch.linspace(0, 255, w)[None, None, :] * (c + 1) / len(CLASSES)
                img = (ramp + torch.randint(0, 50, (3, h, w), generator=gen)).clamp(0, 255).to(torch.uint8)
                write_file(str(folder / f"{name}_{i}.JPEG"), encode_jpeg(img, quality=90))


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    write_folder(root, {"train": 6, "val": 2})
    return root


def tiny_run(root: Path, **kw) -> dict:
    return dict(dataset="imagenet", data_dir=str(root), classes=3, depth=10, width=1, weight_bits=32,
                epochs=2, batch_size=7, crop_size=32, resize_size=40, translate=0, cutout=0, lr=0.02,
                device="cpu", num_threads=1, eval_batch_size=5, workers=0, amp=False, **kw)


def test_image_folder_lists_classes_and_labels(tiny_imagenet):
    train_split = load_image_folder(tiny_imagenet, train=True)
    assert train_split.classes == list(CLASSES) and len(train_split) == 18
    assert train_split.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    image = read_image(train_split.paths[0])
    assert image.dtype == torch.uint8 and image.shape[0] == 3


def test_bad_folders_raise_data_errors(tmp_path, tiny_imagenet):
    with pytest.raises(DataError, match="train/ and val/"):
        load_image_folder(tmp_path / "nothing", train=True)
    (tiny_imagenet / "val" / "n99999999").mkdir()
    with pytest.raises(DataError, match="different class folders"):
        load_image_folder(tiny_imagenet, train=False)
    bad = tiny_imagenet / "train" / CLASSES[0] / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="cannot decode image .*broken.JPEG"):
        read_image(str(bad))


def test_imagenet_config_errors(tiny_imagenet):
    with pytest.raises(ConfigError, match="translate and cutout are CIFAR augmentations"):
        TrainConfig(dataset="imagenet", depth=18)
    with pytest.raises(ConfigError, match="pass --classes 3"):
        cfg = TrainConfig(**{**tiny_run(tiny_imagenet), "classes": 0})
        load_splits(cfg.dataset, cfg.data_dir, batch_size=cfg.batch_size, num_classes=cfg.num_classes)
    with pytest.raises(ConfigError, match="crop_size"):
        TrainConfig(**{**tiny_run(tiny_imagenet), "resize_size": 30})


def test_crops_shapes_seeds_and_the_25_crops(tiny_imagenet):
    split = load_image_folder(tiny_imagenet, train=True)
    train_set = ImageFolderDataset(split, train_transform(32))
    a, label = train_set[(4, 1234)]
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8 and label == 0
    assert torch.equal(a, train_set[(4, 1234)][0])                       # the seed fixes the augmentation
    assert any(not torch.equal(a, train_set[(4, s)][0]) for s in range(5))
    image = read_image(split.paths[7])
    crops = MultiCrop(32)(image)
    assert crops.shape == (25, 3, 32, 32)
    # scales 32 * (7, 8, 9, 10, 11) / 7; crops per scale: 4 corners then the centre. The centre crop at
    # the second scale is the single-crop evaluation (resize 37 = round(32 * 8 / 7)).
    assert torch.equal(crops[9], eval_transform(32, 37)(image))
    assert torch.equal(crops[4], eval_transform(32, 32)(image))


def test_25_crop_prediction_averages_the_softmax():
    torch.manual_seed(0)
    model = build_model(WRNConfig(depth=10, width=1, arch="imagenet", num_classes=3))
    x = torch.randint(0, 256, (2, 25, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 2])
    (logits, labels), = list(predict_batches(model, [(x, y)], torch.device("cpu")))
    probs = model.eval()(x.flatten(0, 1)).softmax(1).view(2, 25, 3).mean(1)
    torch.testing.assert_close(logits.exp(), probs)
    assert torch.equal(labels, y)


def test_imagenet_wrn18_shape_and_size():
    cfg = WRNConfig(depth=18, width=10, norm="bn", arch="imagenet", num_classes=1000)
    with torch.device("meta"):
        model = build_model(cfg)
    assert cfg.name == "imagenet-wrn-18-2.5-bn-1bit" and cfg.stage_channels == (160, 320, 640, 1280)
    weights = sum(c.weight.numel() for _, c in model.conv_layers())
    assert weights == 69_962_720 and weights / 8 < 10e6                  # ICLR 2018: "less than 10 MB"
    assert model.stem.kernel_size == (7, 7) and model.stem.stride == (2, 2)
    assert model.blocks[0].act1[0].affine and model.head_bn.affine        # learned BN scale and offset
    small = build_model(WRNConfig(depth=10, width=1, norm="none", arch="imagenet", num_classes=5))
    assert small(torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)).shape == (2, 5)
    with pytest.raises(ValueError, match="8n\\+2"):
        WRNConfig(depth=20, arch="imagenet")


def test_imagenet_presets_follow_the_paper():
    for tag in ("bn", "srelu"):
        for bits in (1, 32):
            cfg = get_preset(f"imagenet-wrn18-2.5-{tag}-{bits}bit")
            assert cfg.model_config().name == f"imagenet-wrn-18-2.5-{tag}-{bits}bit"
            assert (cfg.epochs, cfg.schedule, cfg.first_cycle, cfg.weight_decay) == (62, "restarts", 2, 1e-4)
            assert cfg.num_classes == 1000 and cfg.crop_size == 224


def test_train_then_eval_with_25_crops(tiny_imagenet, tmp_path, capsys):
    result = train(TrainConfig(**tiny_run(tiny_imagenet, norm="bn", val_size=3)), tmp_path / "run",
                   progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and {"val_acc", "test_acc", "test_top5"} <= set(rows[0])
    assert 0.0 <= result["test_acc"] <= 1.0
    assert cli_main(["eval", str(tmp_path / "run"), "--json", "--device", "cpu"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["count"] == 6 and single["top1"] == pytest.approx(result["test_acc"], abs=1e-6)
    assert cli_main(["eval", str(tmp_path / "run"), "--json", "--crops", "25", "--device", "cpu"]) == 0
    multi = json.loads(capsys.readouterr().out)
    assert multi["crops"] == 25 and multi["count"] == 6 and len(multi["per_class"]) == 3
    # the same evaluation computed here from torchvision's primitives: shorter side at 32 * (7..11) / 7,
    # four corners + centre at each scale, softmax averaged over the 25 crops
    from torchvision.transforms.v2 import functional as TF

    from onebit.loading import load_model_file

    model, _ = load_model_file(tmp_path / "run")
    split = load_image_folder(tiny_imagenet, train=False)
    losses, hits = [], 0
    with torch.no_grad():
        for path, label in zip(split.paths, split.labels.tolist()):
            image = read_image(path)
            crops = [c for s in range(7, 12) for c in TF.five_crop(TF.resize(image, round(32 * s / 7), antialias=True), 32)]
            assert len(crops) == 25
            probs = model(torch.stack(crops).float()).softmax(1).mean(0)
            losses.append(-float(probs[label].clamp_min(1e-30).log()))
            hits += int(probs.argmax()) == label
    assert multi["top1"] == pytest.approx(hits / 6, abs=1e-6)
    assert multi["loss"] == pytest.approx(sum(losses) / 6, rel=1e-4)
    assert multi["loss"] != pytest.approx(single["loss"], rel=1e-6)     # 25 crops are not the centre crop


def test_two_gloo_ranks_with_loader_workers_match_one_process(tiny_imagenet, tmp_path):
    """BN-free design (the input BN is synchronised); rank slices of 4 + 3; one worker process per rank."""
    options = tiny_run(tiny_imagenet, norm="none")
    train(TrainConfig(**options), tmp_path / "single", progress=False)
    torchrun(*cli_args({**options, "workers": 1}), "--run-dir", str(tmp_path / "multi"))
    assert_same_run(tmp_path / "single", tmp_path / "multi", 1e-4)            # measured: 1.6e-6
