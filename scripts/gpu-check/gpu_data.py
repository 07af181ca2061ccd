"""Pack the largest CIFAR-10 subset that fits the device call's 64 MiB into an ignored folder, losslessly.

A call of the device tool carries the working tree plus named ignored paths, 64 MiB in all; the shared
data (150 MB of training images) does not travel. This packs the 1,000 shared test images and the first
N training images in the official order (so ``onebit train --train-limit N`` on the full data on any
other machine trains on exactly these images), N as large as fits beside the working tree.

Codec (lossless, stdlib + numpy only, so the device's image can decode it): per image and channel the
LOCO-I / JPEG-LS median edge predictor ``MED(a, b, c)`` (a = left, b = above, c = above-left, zero outside
the image), residual ``x - MED`` mod 256; then the red and blue residuals minus the green one mod 256;
then xz (LZMA2, preset 6) over ``labels (uint8) || residuals``, 1,000 images per file. On CIFAR-10 this
takes 56% of the raw 3,072 bytes per image (xz alone on raw pixels: ~90%).

``manifest.json`` names every file with its size and sha256, and the sha256 of the decoded images and
labels of each split, so that :func:`unpack` proves on arrival both that the files are intact and that
decoding reproduced the original bytes.

    python scripts/gpu-check/gpu_data.py pack --data-dir ../shared/data/cifar10 -o .gpu-data   # as many as fit
    python scripts/gpu-check/gpu_data.py verify .gpu-data
    python scripts/gpu-check/gpu_data.py unpack .gpu-data -o /tmp/cifar                         # official format
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import pickle
import subprocess
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

FORMAT = "onebit-cifar10-subset"
VERSION = 1
MANIFEST = "manifest.json"
CHUNK = 1000                      # images per compressed file
XZ_PRESET = 6
MIB = 1 << 20
DEVICE_LIMIT_MIB = 64             # what one device call may carry: working tree + carried paths
IMAGE_BYTES = 3 * 32 * 32


class PackError(Exception):
    """A packed folder is missing, altered, or does not decode to the bytes it was made from."""


# ----- the codec -----
def _med(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The median edge detector of LOCO-I: min(a, b) if c >= max(a, b), max(a, b) if c <= min(a, b),
    else a + b - c."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))


def encode_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, 32, 32) -> uint8 residuals of the same shape (see the module docstring)."""
    x = images.astype(np.int16)
    a = np.zeros_like(x)
    b = np.zeros_like(x)
    c = np.zeros_like(x)
    a[..., :, 1:] = x[..., :, :-1]
    b[..., 1:, :] = x[..., :-1, :]
    c[..., 1:, 1:] = x[..., :-1, :-1]
    r = x - _med(a, b, c)
    r[:, 0] -= r[:, 1]
    r[:, 2] -= r[:, 1]
    return (r % 256).astype(np.uint8)


def decode_images(residuals: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_images`: a raster scan over pixel positions, each step vectorised over all
    images and channels (held contiguously, so every step reads and writes one dense vector)."""
    r = residuals.astype(np.int16)
    r[:, 0] += r[:, 1]
    r[:, 2] += r[:, 1]
    r %= 256
    n, ch, h, w = r.shape
    r = np.ascontiguousarray(r.transpose(2, 3, 0, 1).reshape(h, w, n * ch))
    x = np.zeros((h + 1, w + 1, n * ch), dtype=np.int16)     # one zero row above and column left
    for i in range(h):
        for j in range(w):
            x[i + 1, j + 1] = (r[i, j] + _med(x[i + 1, j], x[i, j + 1], x[i, j])) % 256
    return np.ascontiguousarray(x[1:, 1:].reshape(h, w, n, ch).transpose(2, 3, 0, 1)).astype(np.uint8)


def _compress_chunk(args: tuple[np.ndarray, np.ndarray]) -> bytes:
    images, labels = args
    return lzma.compress(labels.astype(np.uint8).tobytes() + encode_images(images).tobytes(), preset=XZ_PRESET)


def _decompress_chunk(data: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
    raw = lzma.decompress(data)
    if len(raw) != count * (1 + IMAGE_BYTES):
        raise PackError(f"a chunk decodes to {len(raw)} bytes, expected {count * (1 + IMAGE_BYTES)}")
    labels = np.frombuffer(raw[:count], dtype=np.uint8).astype(np.int64)
    residuals = np.frombuffer(raw[count:], dtype=np.uint8).reshape(count, 3, 32, 32)
    return decode_images(residuals), labels


def split_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the uint8 images (C order) followed by the labels as int64 little-endian."""
    h = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.asarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----- how much may travel -----
def traveling_bytes(repo: Path, exclude: Path | None = None) -> int:
    """Bytes of what a device call sends besides carried paths: tracked files and untracked files that
    git does not ignore (``exclude``, the pack folder itself, not counted)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.split(b"\0")):
        path = repo / os.fsdecode(name)
        if exclude is not None and exclude.resolve() in path.resolve().parents:
            continue
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


# ----- packing -----
def pack(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], classes: list[str],
         out: Path, budget_bytes: int, max_train: int | None = None, workers: int | None = None,
         chunk: int = CHUNK) -> dict:
    """Write the test split and whole ``chunk``-image files of the training prefix into ``out`` while the
    folder stays within ``budget_bytes``; returns the manifest. ``max_train`` caps the training images
    (then the last file may hold fewer)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.xz"):
        old.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    train_x, train_y = train
    limit = len(train_y) if max_train is None else min(max_train, len(train_y))
    jobs = [("test", 0, len(test[1]))] + [("train", s, min(chunk, limit - s)) for s in range(0, limit, chunk)]
    files, used = [], 0
    reserve = 8192                # for the manifest
    workers = workers or os.cpu_count() or 1

    def arrays(split: str, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        return test if split == "test" else (train_x[first:first + count], train_y[first:first + count])

    with ProcessPoolExecutor(max_workers=workers) as pool:
        todo = iter(jobs)
        pending: deque = deque()

        def submit_next() -> None:
            job = next(todo, None)
            if job is not None:
                pending.append((job, pool.submit(_compress_chunk, arrays(*job))))

        for _ in range(workers):      # a sliding window: nothing is compressed far past the budget
            submit_next()
        while pending:
            (split, first, count), future = pending.popleft()
            blob = future.result()
            if used + len(blob) + reserve > budget_bytes:
                if split == "test":
                    raise PackError(f"the {count} test images alone need {len(blob)} bytes, over the "
                                    f"{budget_bytes}-byte budget")
                for _, rest in pending:
                    rest.cancel()
                break
            name = "test.xz" if split == "test" else f"train-{first // chunk:03d}.xz"
            (out / name).write_bytes(blob)
            used += len(blob)
            files.append({"name": name, "split": split, "first": first, "count": count, "bytes": len(blob),
                          "sha256": hashlib.sha256(blob).hexdigest()})
            submit_next()
    n_train = sum(f["count"] for f in files if f["split"] == "train")
    manifest = {
        "format": FORMAT, "version": VERSION,
        "codec": f"MED residual, red/blue minus green, xz preset {XZ_PRESET}, labels first",
        "source": "CIFAR-10 official python batches: the first train_images training images in "
                  "data_batch_1..5 order, and the test images in test_batch order",
        "train_images": n_train, "test_images": int(len(test[1])), "classes": list(classes),
        "raw_sha256": {"train": split_digest(train_x[:n_train], train_y[:n_train]),
                       "test": split_digest(*test)},
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ----- checking and unpacking on arrival -----
def verify(folder: Path) -> dict:
    """Check the manifest and every file's size and sha256; returns the manifest or raises PackError."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PackError(f"{path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise PackError(f"{path}: not a {FORMAT} v{VERSION} manifest")
    names = set()
    for entry in manifest["files"]:
        name = entry["name"]
        if "/" in name or name.startswith(".") or name in names:
            raise PackError(f"{path}: bad file name {name!r}")
        names.add(name)
        f = folder / name
        if not f.is_file():
            raise PackError(f"{f}: missing")
        if f.stat().st_size != entry["bytes"]:
            raise PackError(f"{f}: {f.stat().st_size} bytes, manifest says {entry['bytes']}")
        if file_sha256(f) != entry["sha256"]:
            raise PackError(f"{f}: sha256 differs from the manifest (file altered or truncated)")
    for split in ("train", "test"):
        got = sum(e["count"] for e in manifest["files"] if e["split"] == split)
        if got != manifest[f"{split}_images"]:
            raise PackError(f"{path}: files hold {got} {split} images, manifest says "
                            f"{manifest[f'{split}_images']}")
    return manifest


def _decode_file(args: tuple[Path, int]) -> tuple[np.ndarray, np.ndarray]:
    path, count = args
    return _decompress_chunk(path.read_bytes(), count)


def load(folder: Path, workers: int | None = None) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Verify and decode: (manifest, {split: (uint8 images, int64 labels)}), checked against the raw
    sha256 of the original bytes. Files are decoded by ``workers`` processes (default: all cores)."""
    manifest = verify(folder)
    splits = {}
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for split in ("train", "test"):
            entries = sorted((e for e in manifest["files"] if e["split"] == split), key=lambda e: e["first"])
            parts = list(pool.map(_decode_file, [(folder / e["name"], e["count"]) for e in entries]))
            x = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 3, 32, 32), np.uint8)
            y = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
            if split_digest(x, y) != manifest["raw_sha256"][split]:
                raise PackError(f"{folder}: decoded {split} images differ from the packed originals")
            splits[split] = (x, y)
    return manifest, splits


def write_official(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]) -> Path:
    """Write ``root/cifar-10-batches-py`` in the official format (5 training batches, test_batch, meta),
    which ``onebit.data.cifar.load_cifar`` reads; returns ``root``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        batch = {"data": x.reshape(len(x), -1), "labels": [int(v) for v in y]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    tx, ty = splits["train"]
    for i, (xs, ys) in enumerate(zip(np.array_split(tx, 5), np.array_split(ty, 5)), start=1):
        dump(f"data_batch_{i}", xs, ys)
    dump("test_batch", *splits["test"])
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}, protocol=2))
    return root


def unpack(folder: Path, root: Path, workers: int | None = None) -> dict:
    """Verify, decode and write the official format under ``root``; returns the manifest."""
    manifest, splits = load(folder, workers)
    write_official(root, splits, manifest["classes"])
    return manifest


# ----- command line -----
def _load_source(data_dir: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from onebit.data.cifar import load_cifar

    train = load_cifar("cifar10", data_dir, train=True, download=False)
    test = load_cifar("cifar10", data_dir, train=False, download=False)
    return ((train.images.numpy(), train.labels.numpy()), (test.images.numpy(), test.labels.numpy()),
            train.classes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack the largest subset that fits")
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("-o", "--output", type=Path, default=Path(".gpu-data"))
    p.add_argument("--limit-mib", type=float, default=DEVICE_LIMIT_MIB, help="what one call may carry")
    p.add_argument("--reserve-mib", type=float, default=2.0,
                   help="left free for the working tree to grow and for other carried paths")
    p.add_argument("--max-train", type=int, default=None, help="pack at most this many training images")
    p.add_argument("--workers", type=int, default=None, help="compressing processes (default: all cores)")
    v = sub.add_parser("verify", help="check a packed folder's files against its manifest")
    v.add_argument("folder", type=Path)
    u = sub.add_parser("unpack", help="verify, decode and write the official python format")
    u.add_argument("folder", type=Path)
    u.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "pack":
            repo = Path(__file__).resolve().parents[2]
            tree = traveling_bytes(repo, exclude=args.output)
            budget = int((args.limit_mib - args.reserve_mib) * MIB) - tree
            train, test, classes = _load_source(args.data_dir)
            m = pack(train, test, classes, args.output, budget, args.max_train, args.workers)
            used = sum(f["bytes"] for f in m["files"])
            print(f"packed {m['train_images']} training + {m['test_images']} test images into {args.output}: "
                  f"{used / MIB:.2f} MiB ({used / ((m['train_images'] + m['test_images']) * IMAGE_BYTES):.1%} "
                  f"of raw); working tree {tree / MIB:.2f} MiB; budget {budget / MIB:.2f} MiB")
        elif args.cmd == "verify":
            m = verify(args.folder)
            print(f"{args.folder}: {m['train_images']} training + {m['test_images']} test images, files intact")
        else:
            m = unpack(args.folder, args.output)
            print(f"unpacked {m['train_images']} training + {m['test_images']} test images into {args.output}")
    except (PackError, OSError) as exc:
        print(f"gpu_data {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
