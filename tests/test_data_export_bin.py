"""`onebit data export-bin` writes what the C demo reads, and the demo names classes, rejects bad numbers
and empty files; `onebit eval` names its engine."""

from __future__ import annotations

import pickle
import subprocess

import numpy as np
import pytest
import torch

from onebit.cli import main
from onebit.data.cifar import load_cifar
from onebit.export.c_build import SIMD_VARIANTS
from onebit.export.packed import save_packed
from onebit.models import WRNConfig, build_model
from conftest import write_cifar_batch
from test_c_runtime import build, demo_rows, needs_cc


def test_export_bin_writes_the_raw_layout_and_cifar_records(tiny_cifar10, tmp_path, capsys):
    out, labels = tmp_path / "test.bin", tmp_path / "labels.bin"
    assert main(["data", "export-bin", "--split", "test", "--data-dir", str(tiny_cifar10), "--limit", "7",
                 "-o", str(out), "--labels", str(labels)]) == 0
    assert "7 cifar10 test images" in capsys.readouterr().out
    split = load_cifar("cifar10", tiny_cifar10, train=False, download=False)
    raw = np.frombuffer(out.read_bytes(), dtype=np.uint8)
    assert np.array_equal(raw.reshape(7, 3, 32, 32), split.images[:7].numpy())
    records = np.frombuffer(labels.read_bytes(), dtype=np.uint8).reshape(7, 1 + 3072)
    assert np.array_equal(records[:, 0], split.labels[:7].numpy())
    assert np.array_equal(records[:, 1:], raw.reshape(7, 3072))
    # an existing file is replaced only with --force; the whole training split (5 x 40 images) without --limit
    assert main(["data", "export-bin", "--split", "train", "--data-dir", str(tiny_cifar10), "-o", str(out)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err and out.stat().st_size == 7 * 3072
    assert main(["data", "export-bin", "--split", "train", "--data-dir", str(tiny_cifar10), "-o", str(out),
                 "--force"]) == 0
    assert out.stat().st_size == 200 * 3072 and not list(tmp_path.glob("*.tmp"))


def test_export_bin_bad_input_is_one_line(tiny_cifar10, tmp_path, capsys):
    assert main(["data", "export-bin", "--data-dir", str(tiny_cifar10), "--limit", "-1", "-o",
                 str(tmp_path / "x.bin")]) == 1
    assert main(["data", "export-bin", "--data-dir", str(tiny_cifar10), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("onebit data: error: --limit must be >= 0")
    assert err[1] == f"onebit data: error: {tmp_path} is a folder; give a file name"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A WRN-8-1 exported to C with the class names of a generated CIFAR-10 folder, its demo built."""
    root = tmp_path_factory.mktemp("demo")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_cifar_batch(folder / "test_batch", rng.integers(0, 256, (12, 3, 32, 32)), rng.integers(0, 10, 12).tolist())
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"name{i}" for i in range(10)]}))
    torch.manual_seed(0)
    model = build_model(WRNConfig(depth=8, width=1)).eval()
    save_packed(model, root / "m.onebit")
    assert main(["export", str(root / "m.onebit"), "--format", "c", "-o", str(root / "c"),
                 "--data-dir", str(root)]) == 0
    assert main(["data", "export-bin", "--data-dir", str(root), "-o", str(root / "test.bin"),
                 "--labels", str(root / "labels.bin")]) == 0
    return root, model, build(root / "c", "demo", SIMD_VARIANTS["portable"])


@needs_cc
def test_demo_prints_class_names_and_accuracy(demo):
    root, model, exe = demo
    split = load_cifar("cifar10", root, train=False, download=False)
    with torch.no_grad():
        expect = model(split.images).argmax(1).numpy()
    out = subprocess.run([str(exe), str(root / "test.bin")], capture_output=True, text=True, check=True).stdout
    rows = demo_rows(out)
    assert [r[1] for r in rows] == expect.tolist()
    assert [r[2] for r in rows] == [f"name{p}" for p in expect]
    out = subprocess.run([str(exe), "--labels", "--quiet", str(root / "labels.bin")], capture_output=True,
                         text=True, check=True).stdout
    hits = int((expect == split.labels.numpy()).sum())
    assert out.strip() == f"accuracy {hits / 12:.4f} ({hits}/12)"


@needs_cc
@pytest.mark.parametrize("args", [["--bench", "4294967297"], ["--bench", "12x"], ["--batch", "-1"],
                                  ["--threads", "0"], ["--max", ""], ["--bench", "99999999999999999999"]])
def test_demo_rejects_junk_and_overflowing_numbers(demo, args):
    root, _, exe = demo
    res = subprocess.run([str(exe), *args, str(root / "test.bin")], capture_output=True, text=True)
    assert res.returncode == 2
    assert f"onebit_demo: {args[0]}: expected an integer in" in res.stderr


@needs_cc
@pytest.mark.parametrize("labels", [False, True])
def test_demo_empty_image_file_is_an_error(demo, labels):
    root, _, exe = demo
    (root / "empty.bin").write_bytes(b"")
    res = subprocess.run([str(exe), *(["--labels"] if labels else []), str(root / "empty.bin")],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "holds no complete image" in res.stderr


@needs_cc
def test_demo_without_known_class_names_prints_indices(tmp_path, demo):
    root, model, _ = demo
    from onebit.export.c_runtime import export_c

    out = export_c(model, tmp_path / "c")               # no class names given
    assert "#define ONEBIT_HAVE_CLASS_NAMES 0" in (out / "onebit_classes.h").read_text()
    exe = build(out, "demo", SIMD_VARIANTS["portable"])
    res = subprocess.run([str(exe), "--max", "2", str(root / "test.bin")], capture_output=True, text=True,
                         check=True)
    assert [r[2] for r in demo_rows(res.stdout)] == [None, None]


def test_class_names_are_safe_c_strings(tmp_path):
    from onebit.export.c_emit import classes_header

    text = classes_header(['a "quoted" \\ name', "??=trigraph", "caf\u00e9 au lait"] + ["x"] * 7, 10)
    assert '"a_\\"quoted\\"_\\\\_name"' in text
    assert '"\\?\\?=trigraph"' in text
    assert '"caf\\?_au_lait"' in text
