"""Shared fixtures: where the read-only shared data lives, and small generated datasets."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`-n 2`) every worker is its own process: one torch thread each, so that two workers
# on two cores do not oversubscribe them (and subprocesses the tests start inherit OMP_NUM_THREADS=1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


# Under CI=true a skip means something CI should have provided is missing (the shared data, the cross
# toolchains, QEMU, a C compiler): it fails instead. Only these skips stay skips there -- hardware that a CI
# machine may lack (a GPU, AVX2/AVX-512), and a platform without fork.
CI_ALLOWED_SKIPS = ("CUDA", "GPU", "gpu", "AVX2", "POSIX only", "rewrote snapshot")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(word in reason for word in CI_ALLOWED_SKIPS):
            report.outcome = "failed"
            report.longrepr = f"skipped under CI=true, where it must run: {reason}"


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """The C runtime's compile cache in a folder of this test session (and of this xdist worker), not
    ~/.cache: tests neither read a stale library nor race other sessions over one."""
    old = os.environ.get("ONEBIT_CACHE_DIR")
    os.environ["ONEBIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("onebit-cache"))
    yield
    if old is None:
        os.environ.pop("ONEBIT_CACHE_DIR", None)
    else:
        os.environ["ONEBIT_CACHE_DIR"] = old


def shared_root() -> Path:
    """``$ONEBIT_SHARED`` if set, else the ``shared`` folder beside the repository."""
    return Path(os.environ.get("ONEBIT_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} not found (set ONEBIT_SHARED)")
    return root


@pytest.fixture(scope="session")
def cifar10_dir(shared_dir: Path) -> Path:
    """The folder that holds ``cifar-10-batches-py`` (pass it as data_dir / --data-dir)."""
    root = shared_dir / "data" / "cifar10"
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"CIFAR-10 not found under {root}")
    return root


@pytest.fixture(scope="session")
def reference_models_dir(shared_dir: Path) -> Path:
    root = shared_dir / "reference-models"
    if not root.is_dir():
        pytest.skip(f"reference models not found under {root}")
    return root


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: str = "labels",
                      extra: dict | None = None) -> None:
    """Write one batch file in the official python format (protocol-2 pickle of a dict)."""
    batch = {"data": images.reshape(len(images), -1).astype(np.uint8), label_key: list(labels)}
    batch.update(extra or {})
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def tiny_cifar10(tmp_path: Path) -> Path:
    """A generated CIFAR-10 folder: 5 x 40 training images, 50 test images, random pixels."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", rng.integers(0, 256, (40, 3, 32, 32)),
                          rng.integers(0, 10, 40).tolist())
    write_cifar_batch(folder / "test_batch", rng.integers(0, 256, (50, 3, 32, 32)),
                      rng.integers(0, 10, 50).tolist())
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]},
                                                       protocol=2))
    return tmp_path


@pytest.fixture
def tiny_cifar100(tmp_path: Path) -> Path:
    """A generated CIFAR-100 folder (train 60 images, test 30) with fine and coarse labels."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 60), ("test", 30)):
        fine = rng.integers(0, 100, n).tolist()
        write_cifar_batch(folder / name, rng.integers(0, 256, (n, 3, 32, 32)), fine, "fine_labels",
                          {"coarse_labels": [f // 5 for f in fine]})
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)],
                                                "coarse_label_names": [f"g{i}" for i in range(20)]},
                                               protocol=2))
    return tmp_path


def check_snapshot(path: Path, text: str) -> None:
    """``text`` must equal the snapshot file ``path``. With ``ONEBIT_UPDATE_SNAPSHOTS=1`` (exactly) the
    snapshot is rewritten and the test is skipped, never passed; under ``CI=true`` rewriting is refused."""
    flag = os.environ.get("ONEBIT_UPDATE_SNAPSHOTS", "")
    if flag not in ("", "1"):
        pytest.fail(f"ONEBIT_UPDATE_SNAPSHOTS={flag!r}: set it to 1 to rewrite snapshots, or unset it")
    if flag == "1":
        if os.environ.get("CI") == "true":
            pytest.fail("ONEBIT_UPDATE_SNAPSHOTS=1 under CI=true: snapshots are rewritten by people, not CI")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pytest.skip(f"rewrote snapshot {path.name}; review the diff and rerun without ONEBIT_UPDATE_SNAPSHOTS")
    assert path.is_file(), f"missing snapshot {path}; create it with ONEBIT_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"output differs from {path} (ONEBIT_UPDATE_SNAPSHOTS=1 to accept)"
