"""Knowledge distillation from a trained teacher (Hinton, Vinyals & Dean 2015), for small students.

The teacher (any onebit model file: a packed ``.onebit`` -- e.g. an imported reference WRN-20-10 -- or a
checkpoint) is run once over the student's training images, un-augmented, and its logits are cached
(``cache_dir("teacher")``, keyed by the teacher file's and the images' SHA-256), so that a sweep's runs share
one pass (the cache key also names the number format the teacher ran in). The student then learns from

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


def teacher_logits(teacher: str | Path, images: torch.Tensor, num_classes: int, batch_size: int = 100,
                   progress: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 logits (N, classes) of ``teacher`` on uint8 ``images`` (N, 3, H, W), computed on ``device``
    (bf16 autocast on a GPU or a CPU with native bf16, else float32) or taken from the cache, which keys
    them by the teacher file's and the images' SHA-256 and that number format."""
    path = Path(teacher)
    if not path.is_file():
        raise ConfigError(f"teacher {path}: no such model file")
    device = torch.device(device)
    amp = device.type == "cuda" or native_bf16_cpu()[0]
    images = images.cpu().contiguous()
    key = hashlib.sha256(f"{file_sha256(path)} {hashlib.sha256(images.numpy().tobytes()).hexdigest()} "
                         f"{'bf16' if amp else 'fp32'}".encode())
    cached = cache_dir("teacher") / f"{key.hexdigest()[:32]}.safetensors"
    if cached.is_file():
        try:
            logits = read_safetensors(cached)[0].get("logits")
        except OnebitError:                  # a damaged cache file is a miss: computed again and replaced
            logits = None
        if logits is not None and tuple(logits.shape) == (len(images), num_classes):
            return logits
    model = _load_teacher(path)
    if model.config.num_classes != num_classes or model.config.arch != "cifar":
        raise ConfigError(f"teacher {path} is a {model.config.name} with {model.config.num_classes} classes; "
                          f"the student needs a CIFAR model with {num_classes}")
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    out = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for start in tqdm(range(0, len(images), batch_size), disable=not progress, leave=False,
                          desc=f"teacher {path.name} ({'bf16' if amp else 'float32'}), computed once and cached",
                          unit="batch", dynamic_ncols=True):
            x = images[start:start + batch_size].to(device).float().contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu())
    logits = torch.cat(out) if out else torch.zeros(0, num_classes)
    atomic_save({"logits": logits}, {"teacher": path.name, "images": str(len(images))}, cached)
    return logits


def _load_teacher(path: Path) -> torch.nn.Module:
    """A packed model or a training checkpoint, told apart by the ``format`` metadata field (as
    ``onebit.loading`` does; that module sits above this layer)."""
    from onebit.export.packed import FORMAT as PACKED_FORMAT, load_packed
    from onebit.train.checkpoint import FORMAT as CHECKPOINT_FORMAT, load_checkpoint

    _, metadata = read_safetensors(path)
    if metadata.get("format") == PACKED_FORMAT:
        return load_packed(path)[0]
    if metadata.get("format") == CHECKPOINT_FORMAT:
        return load_checkpoint(path).build_model()
    raise ConfigError(f"teacher {path}: not a onebit model file (format {metadata.get('format')!r})")
