import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import write_cifar_batch
from onebit.data import cifar
from onebit.data.cifar import load_cifar
from onebit.errors import DataError


def test_reads_generated_cifar10(tiny_cifar10):
    train = load_cifar("cifar10", tiny_cifar10, train=True)
    test = load_cifar("cifar10", tiny_cifar10, train=False)
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.labels.shape == (50,) and test.labels.dtype == torch.int64
    assert train.classes[3] == "c3"


def test_reads_cifar100_fine_and_coarse_labels(tiny_cifar100):
    train = load_cifar("cifar100", tiny_cifar100, train=True)
    assert len(train) == 60 and len(train.classes) == 100
    assert torch.equal(train.coarse_labels, train.labels // 5)


def test_image_layout_is_channel_major(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    img = np.zeros((1, 3, 32, 32), np.uint8)
    img[0, 2, 5, 7] = 200  # blue channel, row 5, column 7
    write_cifar_batch(folder / "test_batch", img, [4])
    split = load_cifar("cifar10", tmp_path, train=False)
    assert split.images[0, 2, 5, 7] == 200 and split.images.sum() == 200


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_tampered_file_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Exploit(), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="test_batch.*forbidden global"):
        load_cifar("cifar10", tmp_path, train=False)
    assert not (tmp_path / "pwned").exists()


def test_truncated_batch_names_the_file(tiny_cifar10):
    path = tiny_cifar10 / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar("cifar10", tiny_cifar10, train=True)


def test_wrong_shape_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8),
                                                      "labels": [0, 1]}, protocol=2))
    with pytest.raises(DataError, match="test_batch.*shape"):
        load_cifar("cifar10", tmp_path, train=False)


def test_missing_data_offline_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBIT_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", tmp_path / "nothing", train=False)
    message = str(err.value)
    assert "nothing" in message and "--data-dir" in message and "ONEBIT_DATA" in message
    assert "\n" not in message


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEBIT_OFFLINE", raising=False)
    monkeypatch.setitem(cifar.DATASETS["cifar10"], "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="download failed"):
        load_cifar("cifar10", tmp_path, train=False)
    assert not list(tmp_path.glob("*.tar.gz"))  # no partial archive left behind


def test_data_dir_from_environment(tiny_cifar10, monkeypatch):
    monkeypatch.setenv("ONEBIT_DATA", str(tiny_cifar10))
    assert len(load_cifar("cifar10", None, train=False)) == 50


def test_cli_reports_missing_data_in_one_line(tmp_path):
    env = {**os.environ, "ONEBIT_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "onebit", "train", "--preset", "cifar10-tiny", "--data-dir",
                           str(tmp_path / "none"), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onebit train: error: cifar10 not found")


def test_real_cifar10(cifar10_dir):
    train = load_cifar("cifar10", cifar10_dir, train=True)
    test = load_cifar("cifar10", cifar10_dir, train=False)
    assert len(train) == 50_000 and len(test) == 1000
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    mean = train.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.49139968, 0.48215841, 0.44653091]), atol=1e-5)
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
