"""Per-task losses and held-out metrics, and the loops ``train_one_epoch`` / ``evaluate``.

A :class:`Task` turns a batch into a loss (training) and accumulates held-out metrics
(evaluation); the loops are shared by every task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training import style_loss
from training.models.capsnet import margin_loss, reconstruction_loss
from training.progress import Progress

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]


class Task:
    """Base: classification with cross-entropy."""

    name = "classification"
    main_metric = "test_accuracy"

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y)

    def begin_eval(self) -> None:
        self._correct = 0
        self._count = 0
        self._loss = 0.0

    @torch.no_grad()
    def eval_batch(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        logits = model(x)
        self._loss += float(F.cross_entropy(logits, y, reduction="sum"))
        self._correct += int((logits.argmax(1) == y).sum())
        self._count += int(y.shape[0])

    def end_eval(self) -> dict[str, float]:
        n = max(self._count, 1)
        return {"test_accuracy": self._correct / n, "test_loss": self._loss / n}


@dataclass
class CapsuleTask(Task):
    """Margin loss + 0.0005 x reconstruction (sum of squared errors against the [0, 1] image)."""

    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    recon_weight: float = 0.0005
    name = "capsule_classification"

    def _pixels(self, x: Tensor) -> Tensor:
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x * s + m).mean(dim=1, keepdim=True)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        lengths, _, recon = model(x, y)
        return margin_loss(lengths, y) + reconstruction_loss(recon, self._pixels(x), self.recon_weight)

    def begin_eval(self) -> None:
        super().begin_eval()
        self._recon = 0.0

    @torch.no_grad()
    def eval_batch(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        lengths, _, recon = model(x)  # masked by the prediction, as when served
        self._loss += float(margin_loss(lengths, y)) * y.shape[0]
        self._recon += float((recon - self._pixels(x)).pow(2).mean()) * y.shape[0]
        self._correct += int((lengths.argmax(1) == y).sum())
        self._count += int(y.shape[0])

    def end_eval(self) -> dict[str, float]:
        n = max(self._count, 1)
        return {"test_accuracy": self._correct / n, "test_margin_loss": self._loss / n,
                "test_reconstruction_mse": self._recon / n}


@dataclass
class SegmentationTask(Task):
    """Cross-entropy + soft Dice over foreground classes; IoU/Dice from a whole-set confusion matrix."""

    num_classes: int = 3
    labels: list[str] = field(default_factory=list)
    name = "segmentation"
    main_metric = "test_mean_iou"

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        prob = logits.softmax(1)[:, 1:]
        onehot = F.one_hot(y, self.num_classes).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
        inter = (prob * onehot).sum(dim=(0, 2, 3))
        denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        dice = (2 * inter + 1.0) / (denom + 1.0)
        return F.cross_entropy(logits, y) + (1.0 - dice).mean()

    def begin_eval(self) -> None:
        self._conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def eval_batch(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        pred = model(x).argmax(1)
        k = self.num_classes
        idx = (y.flatten() * k + pred.flatten()).cpu()
        self._conf += torch.bincount(idx, minlength=k * k).view(k, k)

    def end_eval(self) -> dict[str, float]:
        conf = self._conf.double()
        tp = conf.diag()
        fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
        union = tp + fp + fn
        # a class absent from both truth and prediction counts as perfectly segmented
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(tp))
        dice = 2 * iou / (1 + iou)
        out = {"test_mean_iou": float(iou[1:].mean()), "test_mean_dice": float(dice[1:].mean()),
               "test_pixel_accuracy": float(tp.sum() / conf.sum().clamp_min(1))}
        for i, name in enumerate(self.labels[1:], start=1):
            out[f"test_iou_{name}"] = float(iou[i])
        return out


class StyleTask(Task):
    """Perceptual loss: style (Gram) + content (features, low-pass luminance) + total variation.

    Held-out metric: ``style_distance_ratio`` = style distance of the stylised test photos over
    that of the photos themselves (lower is more stylised).
    """

    name = "style_transfer"
    main_metric = "test_style_distance_ratio"

    def __init__(self, loss_net: nn.Module, style: Tensor, style_weight: float = 30.0,
                 content_weight: float = 1.0, lowpass_weight: float = 50.0,
                 tv_weight: float = 1e-3) -> None:
        self.net = loss_net
        with torch.no_grad():
            self.style_grams = [style_loss.gram(f) for f in loss_net(style)]
        self.sw, self.cw, self.lw, self.tw = style_weight, content_weight, lowpass_weight, tv_weight
        self.content_layers: tuple[int, ...] = tuple(getattr(loss_net, "content_layers", (0,)))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out = model(x)
        fo = self.net(out)
        with torch.no_grad():
            fx = self.net(x)
        style = sum((style_loss.gram(f) - g).pow(2).mean()
                    for f, g in zip(fo, self.style_grams, strict=True))
        content = sum(F.mse_loss(fo[i], fx[i]) for i in self.content_layers)
        low = F.mse_loss(style_loss.luminance_lowpass(out), style_loss.luminance_lowpass(x))
        return (self.sw * torch.as_tensor(style) + self.cw * torch.as_tensor(content)
                + self.lw * low + self.tw * style_loss.total_variation(out))

    def begin_eval(self) -> None:
        self._out: list[float] = []
        self._ref: list[float] = []

    @torch.no_grad()
    def eval_batch(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        self._out += style_loss.style_distance(self.net, model(x), self.style_grams).tolist()
        self._ref += style_loss.style_distance(self.net, x, self.style_grams).tolist()

    def end_eval(self) -> dict[str, float]:
        out = sum(self._out) / max(len(self._out), 1)
        ref = sum(self._ref) / max(len(self._ref), 1)
        ratios = [o / r for o, r in zip(self._out, self._ref, strict=True)]
        return {"test_style_distance_ratio": max(ratios) if ratios else float("nan"),
                "test_style_distance_output": out, "test_style_distance_photo": ref}


def train_one_epoch(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                    batches: Iterator[Batch], steps: int, epoch: int, epochs: int,
                    device: torch.device) -> float:
    """One pass over ``steps`` batches; returns the mean training loss."""
    model.train()
    bar = Progress(steps, f"epoch {epoch}/{epochs} train")
    total, n = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss = task.loss(model, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss)} in epoch {epoch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item()
        n += 1
        bar.update(1, f"loss {total / n:.4f}")
    bar.close()
    return total / max(n, 1)


def evaluate(model: nn.Module, task: Task, batches: Iterator[Batch], steps: int,
             device: torch.device, desc: str = "eval") -> dict[str, float]:
    model.eval()
    task.begin_eval()
    bar = Progress(steps, desc)
    with torch.no_grad():
        for x, y in batches:
            task.eval_batch(model, x.to(device), y.to(device))
            bar.update(1)
    bar.close()
    return task.end_eval()
