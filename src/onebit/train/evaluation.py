"""Evaluation: top-1 / top-5 accuracy, loss and per-class accuracy of a model on a labelled image set."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


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
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500,
                   device: torch.device | str = "cpu", amp: bool = False) -> torch.Tensor:
    """Float32 logits of ``model`` (eval mode) on ``images`` (uint8 or float, N,C,H,W) on CPU."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            outs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> EvalResult:
    labels = labels.cpu()
    num_classes = num_classes or logits.shape[1]
    pred = logits.argmax(1)
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, 1).indices == labels[:, None]).any(1)
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
             device: torch.device | str = "cpu", amp: bool = False) -> EvalResult:
    """Run ``model`` over the images and score its predictions."""
    logits = predict_logits(model, images, batch_size, device, amp)
    return accuracy_from_logits(logits, labels, getattr(getattr(model, "config", None), "num_classes", None))
