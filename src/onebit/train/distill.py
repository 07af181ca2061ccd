"""Knowledge distillation from a trained teacher (Hinton, Vinyals & Dean 2015), for small students.

The teacher (a packed ``.onebit`` model, a checkpoint, or a model released with the reference
implementation, ``*_allparams.mat``, e.g. the WRN-20-10 in ``../shared/reference-models``) is run once over
the student's training images, un-augmented, and its logits are cached (``cache_dir("teacher")``: one file
per teacher file and number format, each image's logits keyed by the image's SHA-256), so that a sweep's
runs, and runs on subsets of the same images, share one pass.
The student then learns from

    loss = (1 - a) * CE(s, y) + a * T^2 * KL(softmax(t / T) || softmax(s / T))

with ``a = distill_weight``, ``T = distill_temperature``, ``s`` the student's logits on the augmented image
and ``t`` the teacher's cached logits of that image un-augmented (the teacher's view of the image, not of its
random translation, flip or cutout). The T^2 factor keeps the soft term's gradient scale independent of T.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from onebit.cache import cache_dir, file_sha256
from onebit.errors import ConfigError, OnebitError
from onebit.safetensors_io import atomic_save, read_safetensors
from onebit.train.precision import native_bf16_cpu


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, weight: float,
                      temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - weight) * CE + weight * T^2 * KL(teacher || student)`` at temperature ``T`` (batch means)."""
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                    reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * temperature ** 2 * soft


SAVE_EVERY = 5_000          # images between partial saves of the cache during a teacher pass


def image_digests(images: torch.Tensor) -> list[bytes]:
    """SHA-256 of each uint8 image's bytes: the key of its cached teacher logits."""
    flat = images.cpu().contiguous().reshape(len(images), -1).numpy()
    return [hashlib.sha256(row.tobytes()).digest() for row in flat]


def teacher_logits(teacher: str | Path, images: torch.Tensor, num_classes: int, batch_size: int = 100,
                   progress: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 logits (N, classes) of ``teacher`` on uint8 ``images`` (N, 3, H, W).

    Computed on ``device`` (bf16 autocast on a GPU or a CPU with native bf16, else float32) for the images
    not yet in the cache, which holds one file per teacher file (SHA-256) and number format, with each
    image's logits keyed by the image's SHA-256: so a validation split, a ``--train-limit`` subset and the
    whole training set share one pass. A long pass saves what it has every ``SAVE_EVERY`` images, so an
    interrupted one continues where it stopped; a damaged cache file is a miss."""
    path = Path(teacher)
    if not path.is_file():
        raise ConfigError(f"teacher {path}: no such model file")
    device = torch.device(device)
    amp = device.type == "cuda" or native_bf16_cpu()[0]
    images = images.cpu().contiguous()
    cached_file = cache_dir("teacher") / f"{file_sha256(path)[:32]}-{'bf16' if amp else 'fp32'}.safetensors"
    known = _read_cache(cached_file, num_classes)
    digests = image_digests(images)
    missing = [i for i, d in enumerate(digests) if d not in known]
    if missing:
        model = _load_teacher(path)
        if model.config.num_classes != num_classes or model.config.arch != "cifar":
            raise ConfigError(f"teacher {path} is a {model.config.name} with {model.config.num_classes} classes; "
                              f"the student needs a CIFAR model with {num_classes}")
        model = model.to(device).to(memory_format=torch.channels_last).eval()
        unsaved = 0
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), \
                tqdm(total=len(missing), disable=not progress, leave=False, unit="img", dynamic_ncols=True,
                     desc=f"teacher {path.name} ({'bf16' if amp else 'float32'}), computed once and cached") as bar:
            for start in range(0, len(missing), batch_size):
                idx = missing[start:start + batch_size]
                x = images[idx].to(device).float().contiguous(memory_format=torch.channels_last)
                for i, row in zip(idx, model(x).float().cpu()):
                    known[digests[i]] = row
                unsaved += len(idx)
                bar.update(len(idx))
                if unsaved >= SAVE_EVERY:
                    _write_cache(cached_file, known, path.name)
                    unsaved = 0
        _write_cache(cached_file, known, path.name)
    if not digests:
        return torch.zeros(0, num_classes)
    return torch.stack([known[d] for d in digests])


def _read_cache(path: Path, num_classes: int) -> dict[bytes, torch.Tensor]:
    """digest -> logits from a cache file; empty when there is none or it is damaged or for other classes."""
    if not path.is_file():
        return {}
    try:
        tensors = read_safetensors(path)[0]
    except OnebitError:
        return {}
    digests, logits = tensors.get("digests"), tensors.get("logits")
    if (digests is None or logits is None or digests.dtype != torch.uint8 or digests.ndim != 2
            or digests.shape[1] != 32 or tuple(logits.shape) != (len(digests), num_classes)):
        return {}
    return {bytes(d.tolist()): row for d, row in zip(digests, logits.float())}


def _write_cache(path: Path, known: dict[bytes, torch.Tensor], teacher_name: str) -> None:
    digests = torch.tensor(list(b"".join(known)), dtype=torch.uint8).reshape(len(known), 32)
    atomic_save({"digests": digests, "logits": torch.stack(list(known.values())).float().contiguous()},
                {"teacher": teacher_name, "images": str(len(known))}, path)


def _load_teacher(path: Path) -> torch.nn.Module:
    """A packed model, a training checkpoint (told apart by the ``format`` metadata field, as
    ``onebit.loading`` does; that module sits above this layer) or a model released with the reference
    implementation (``*.mat``, converted in memory by ``onebit.reference``)."""
    from onebit.export.packed import FORMAT as PACKED_FORMAT, load_packed
    from onebit.reference import import_reference
    from onebit.train.checkpoint import FORMAT as CHECKPOINT_FORMAT, load_checkpoint

    if path.suffix.lower() == ".mat":
        return import_reference(path).model
    _, metadata = read_safetensors(path)
    if metadata.get("format") == PACKED_FORMAT:
        return load_packed(path)[0]
    if metadata.get("format") == CHECKPOINT_FORMAT:
        return load_checkpoint(path).build_model()
    raise ConfigError(f"teacher {path}: not a onebit model file (format {metadata.get('format')!r})")
