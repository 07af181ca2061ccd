"""Evaluation: a model's predictions on a labelled image set and their top-1 / top-5 accuracy, loss and
per-class accuracy.

The one place that scores a model: training (``metric_sums`` of each rank's share, summed over ranks),
``onebit eval`` (``evaluate``, ``evaluate_image_folder``) and, through training, sweeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from onebit.data.imagenet import ImageFolderSplit
from onebit.train.precision import inference_autocast
from onebit.train.sources import split_batches


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    per_class: list[float]
    count: int
    logits: torch.Tensor | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "per_class": self.per_class,
                "count": self.count}


@torch.no_grad()
def predict_batches(model: nn.Module, batches, device: torch.device, amp: bool = False,
                    channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 logits, labels) per batch on ``device``; 25-crop batches give log of the mean softmax."""
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            crops = x.shape[1] if x.dim() == 5 else 1
            x = x.flatten(0, 1) if crops > 1 else x
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with inference_autocast(device.type, amp):
                logits = model(x).float()
            if crops > 1:
                probs = logits.softmax(1).view(-1, crops, logits.shape[1]).mean(1)
                logits = probs.clamp_min(1e-30).log()
            yield logits, y
    finally:
        model.train(was_training)


def _progress(items, total: int, progress: bool | None, min_total: int = 2):
    """``items`` with a bar on stderr: progress True: always, None: only when stderr is a terminal."""
    from tqdm.auto import tqdm

    off = True if progress is False or total < min_total else (None if progress is None else False)
    return tqdm(items, total=total, desc="evaluating", unit="batch", disable=off, leave=False, dynamic_ncols=True)


def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500,
                   device: torch.device | str = "cpu", amp: bool = False,
                   progress: bool | None = False) -> torch.Tensor:
    """Float32 logits of ``model`` (eval mode) on ``images`` (uint8 or float, N,C,H,W) on CPU.

    ``progress``: a bar over the batches on stderr (None: only when stderr is a terminal)."""
    device = torch.device(device)
    batches = ((images[start:start + batch_size].to(device, non_blocking=True), None)
               for start in range(0, len(images), batch_size))
    outs = [logits.cpu() for logits, _ in _progress(predict_batches(model, batches, device, amp),
                                                    -(-len(images) // batch_size), progress)]
    return torch.cat(outs) if outs else torch.empty(0)


def top5_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image: is the label among the 5 highest logits (all of them with fewer than 5 classes)?"""
    k = min(5, logits.shape[1])
    return (logits.topk(k, 1).indices == labels[:, None]).any(1)


def metric_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[summed cross-entropy, top-1 hits, top-5 hits, count] of one batch, as a float64 tensor."""
    top5 = top5_hits(logits, labels)
    return torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                        (logits.argmax(1) == labels).sum().double(), top5.sum().double(),
                        torch.tensor(float(len(labels)), dtype=torch.float64, device=logits.device)])


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> EvalResult:
    labels = labels.cpu()
    num_classes = num_classes or logits.shape[1]
    pred = logits.argmax(1)
    top5 = top5_hits(logits, labels)
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        per_class.append(float((pred[mask] == c).float().mean()) if mask.any() else float("nan"))
    return EvalResult(
        top1=float((pred == labels).float().mean()) if len(labels) else float("nan"),
        top5=float(top5.float().mean()) if len(labels) else float("nan"),
        loss=float(F.cross_entropy(logits, labels)) if len(labels) else float("nan"),
        per_class=per_class,
        count=len(labels),
        logits=logits,
    )


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
             device: torch.device | str = "cpu", amp: bool = False, progress: bool | None = False) -> EvalResult:
    """Run ``model`` over the images and score its predictions."""
    logits = predict_logits(model, images, batch_size, device, amp, progress)
    return accuracy_from_logits(logits, labels, getattr(getattr(model, "config", None), "num_classes", None))


def evaluate_image_folder(model: nn.Module, split: ImageFolderSplit, batch_size: int, device: torch.device,
                          crops: int = 1, crop_size: int = 224, resize_size: int = 256,
                          workers: int | None = None, amp: bool = False,
                          progress: bool | None = False) -> EvalResult:
    """Top-1 / top-5 / per-class accuracy of ``model`` on an ImageFolder split (1 or 25 crops).

    ``progress``: a bar over the batches on stderr (None: only when stderr is a terminal)."""
    logits, labels = [], []
    batches = split_batches(split, batch_size, device=device, crops=crops, crop_size=crop_size,
                            resize_size=resize_size, workers=workers)
    for lg, y in _progress(predict_batches(model, batches, device, amp), -(-len(split) // batch_size), progress,
                           min_total=1):
        logits.append(lg.cpu())
        labels.append(y.cpu())
    return accuracy_from_logits(torch.cat(logits), torch.cat(labels), len(split.classes))
