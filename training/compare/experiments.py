"""The measurements behind docs/capsules.md; every number lands in one JSON-ready dict.

All models see the same grey 28x28 held-out digits, transformed at 28x28 and only then resized
to the side each architecture needs, so every model is tested on the same pixels. Training here
has no augmentation: the invariance tests ask what each architecture gets for free.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training import data as datasets
from training.models.capsnet import CapsNet, margin_loss, reconstruction_loss
from training.models.lenet import LeNet5
from training.models.registry import build_model, get_spec

log = logging.getLogger(__name__)

# display name -> architecture; the order is the order of every table
MODELS: dict[str, str] = {"lenet": "lenet", "alexnet": "alexnet_lecture", "vgg": "vgg_lecture",
                          "googlenet": "googlenet_lecture", "capsnet": "capsnet"}


@dataclass(frozen=True)
class Plan:
    """What one run measures. ``steps`` maps digits per class to training steps."""

    per_class: tuple[int, ...] = (1, 5, 20, 100, 400)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: dict[int, int] = field(default_factory=lambda: {1: 50, 5: 100, 20: 150, 100: 300,
                                                           400: 500})
    models: tuple[str, ...] = tuple(MODELS)
    batch_size: int = 64
    # each model's learning rate is the one of its default checkpoint's recipe
    lr: dict[str, float] = field(default_factory=lambda: {"lenet": 2e-3, "alexnet": 1e-3,
                                                          "vgg": 1e-3, "googlenet": 3e-3,
                                                          "capsnet": 2e-3})
    test_limit: int | None = None  # None: all 1,000 held-out digits
    shifts: tuple[int, ...] = (0, 2, 4, 6, 8)
    rotations: tuple[int, ...] = (0, 15, 30, 45, 60)
    scales: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2)
    probe_digits: int = 200
    probe_shifts: tuple[int, ...] = (-4, -3, -2, -1, 0, 1, 2, 3, 4)
    probe_angles: tuple[int, ...] = (-30, -20, -10, 0, 10, 20, 30)
    picasso_examples: int = 6

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = {str(k): v for k, v in self.steps.items()}
        return out


FULL = Plan()
QUICK = Plan(per_class=(1, 5), seeds=(0,), steps={1: 4, 5: 4}, test_limit=100,
             shifts=(0, 4, 8), rotations=(0, 30, 60), scales=(0.8, 1.0), probe_digits=20,
             probe_shifts=(-2, 0, 2), probe_angles=(-20, 0, 20), picasso_examples=3)


# -- data and transforms (all on [0, 1] grey N x 1 x 28 x 28 tensors)

def subset(y: Tensor, per_class: int, seed: int) -> Tensor:
    """Indices of ``per_class`` training digits of every class, drawn with ``seed``."""
    g = torch.Generator().manual_seed(10_000 + seed)
    picks = []
    for cls in range(int(y.max()) + 1):
        idx = torch.nonzero(y == cls).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks)


def shift(x: Tensor, dx: int, dy: int = 0) -> Tensor:
    """Integer translation with zero fill (content leaving the frame is lost)."""
    n = max(abs(dx), abs(dy))
    if n == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, [n, n, n, n])
    return padded[..., n - dy:n - dy + h, n - dx:n - dx + w]


def shift_each(x: Tensor, d: int) -> Tensor:
    """Shift by ``d`` px, the direction (right, left, down, up) cycling over the batch."""
    moves = ((d, 0), (-d, 0), (0, d), (0, -d))
    return torch.cat([shift(x[i:i + 1], *moves[i % 4]) for i in range(x.shape[0])]) if d else x


def affine(x: Tensor, degrees: float = 0.0, scale: float = 1.0) -> Tensor:
    """Rotation (counter-clockwise) and scaling about the image centre, bilinear, zero fill."""
    a = math.radians(degrees)
    c, s = math.cos(a) / scale, math.sin(a) / scale
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# quadrant order after the swap, reading TL, TR, BL, BR: the Picasso rearrangements
PICASSO = {"swap top/bottom": (2, 3, 0, 1), "swap left/right": (1, 0, 3, 2),
           "swap diagonals": (3, 2, 1, 0)}


def rearrange(x: Tensor, order: Sequence[int]) -> Tensor:
    """Cut the image into quadrants and put them back in ``order`` (same parts, wrong places)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    q = [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]
    q = [q[i] for i in order]
    return torch.cat([torch.cat(q[:2], -1), torch.cat(q[2:], -1)], -2)


# -- models

@dataclass
class Trained:
    name: str
    arch: str
    module: nn.Module
    size: int
    mean: list[float]
    std: list[float]

    @property
    def capsule(self) -> bool:
        return isinstance(self.module, CapsNet)

    def inputs(self, x28: Tensor) -> Tensor:
        return datasets.normalize(datasets.adapt(x28, "L", self.size), self.mean, self.std)

    @torch.no_grad()
    def scores(self, x28: Tensor, batch: int = 250) -> Tensor:
        """Per-class confidence: softmax probability (CNNs) or capsule length (CapsNet)."""
        self.module.eval()
        outs = []
        for i in range(0, x28.shape[0], batch):
            out = self.module(self.inputs(x28[i:i + batch]))
            outs.append(out[0] if self.capsule else F.softmax(out, dim=1))
        return torch.cat(outs)

    @torch.no_grad()
    def features(self, x28: Tensor, cls: Tensor) -> Tensor:
        """CapsNet: the 16-D pose of capsule ``cls``; a CNN: its penultimate activations."""
        self.module.eval()
        x = self.inputs(x28)
        if isinstance(self.module, CapsNet):
            poses = self.module.encode(x)
            return poses[torch.arange(x.shape[0]), cls]
        if isinstance(self.module, LeNet5):  # everything but the last linear layer
            head: nn.Sequential = self.module.classifier
            body: nn.Sequential = self.module.features
            return head[:-1](body(x))
        net: Any = self.module  # the lecture CNNs' features() method
        return net.features(x)


def build(name: str, size: int | None = None) -> nn.Module:
    spec = get_spec(MODELS[name])
    return build_model(MODELS[name], num_classes=10, in_channels=1,
                       input_size=size or spec.size)


def _loss(model: nn.Module, x: Tensor, y: Tensor, pixels: Tensor) -> Tensor:
    if isinstance(model, CapsNet):
        lengths, _, recon = model(x, y)
        return margin_loss(lengths, y) + reconstruction_loss(recon, pixels)
    return F.cross_entropy(model(x), y)


def train(name: str, x28: Tensor, y: Tensor, steps: int, seed: int, plan: Plan,
          mean: list[float], std: list[float]) -> Trained:
    """Adam with cosine decay for ``steps`` steps of shuffled batches, no augmentation."""
    torch.manual_seed(seed)
    model = build(name)
    size = get_spec(MODELS[name]).size
    trained = Trained(name, MODELS[name], model, size, mean, std)
    x = trained.inputs(x28)
    opt = torch.optim.Adam(model.parameters(), lr=plan.lr[name])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0))))
    g = torch.Generator().manual_seed(seed)
    batch = min(plan.batch_size, x.shape[0])
    order = torch.randperm(x.shape[0], generator=g)
    pos = 0
    model.train()
    for _ in range(steps):
        if pos + batch > x.shape[0]:
            order, pos = torch.randperm(x.shape[0], generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        loss = _loss(model, x[idx], y[idx], x28[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return trained


def accuracy(model: Trained, x28: Tensor, y: Tensor) -> float:
    return float((model.scores(x28).argmax(1) == y).float().mean())


# -- the experiments

def few_examples(plan: Plan, ds: datasets.ImageSet, test_x: Tensor, test_y: Tensor,
                 keep: Callable[[str, int, int, Trained], None]) -> dict[str, Any]:
    """Test accuracy per model, digits per class and seed; ``keep`` sees every trained model."""
    out: dict[str, Any] = {}
    for name in plan.models:
        rows: dict[str, Any] = {}
        for k in plan.per_class:
            accs = []
            t0 = time.process_time()
            for seed in plan.seeds:
                idx = subset(ds.train_y, k, seed)
                model = train(name, ds.train_x[idx], ds.train_y[idx], plan.steps[k], seed, plan,
                              ds.mean, ds.std)
                accs.append(accuracy(model, test_x, test_y))
                keep(name, k, seed, model)
            rows[str(k)] = {"accuracies": accs, "mean": float(np.mean(accs)),
                            "std": float(np.std(accs)), "cpu_seconds": time.process_time() - t0}
            log.info("few examples: %s, %d per class: %.3f +/- %.3f", name, k, np.mean(accs),
                     np.std(accs))
        out[name] = rows
    return out


def invariance(models: dict[str, Trained], plan: Plan, x: Tensor, y: Tensor) -> dict[str, Any]:
    """Accuracy on shifted (by d px, in one of four directions each), rotated and scaled
    held-out digits."""
    out: dict[str, Any] = {}
    for name, m in models.items():
        out[name] = {
            "shift": {str(d): accuracy(m, shift_each(x, d), y) for d in plan.shifts},
            "rotation": {str(r): accuracy(m, affine(x, degrees=r), y) for r in plan.rotations},
            "scale": {str(s): accuracy(m, affine(x, scale=s), y) for s in plan.scales},
        }
    return out


def picasso(models: dict[str, Trained], x: Tensor, y: Tensor) -> dict[str, Any]:
    """For each rearrangement: how often the original class still wins, and its mean score."""
    out: dict[str, Any] = {}
    for name, m in models.items():
        rows = {}
        for label, order in {"original": (0, 1, 2, 3), **PICASSO}.items():
            scores = m.scores(rearrange(x, order))
            rows[label] = {"still_original": float((scores.argmax(1) == y).float().mean()),
                           "confidence": float(scores[torch.arange(len(y)), y].mean())}
        out[name] = rows
    return out


def _probe_r2(feats: np.ndarray, target: np.ndarray, groups: np.ndarray, dims: int = 16
              ) -> tuple[float, float]:
    """Held-out R^2 of a least-squares linear map features -> target (fit on the even digits,
    scored on the odd ones), after PCA to ``dims`` so every model gets the same number of
    inputs; and the largest |Pearson r| of one (PCA) dimension with the target."""
    fit, test = groups % 2 == 0, groups % 2 == 1
    mu = feats[fit].mean(0)
    _, _, vt = np.linalg.svd(feats[fit] - mu, full_matrices=False)
    z = (feats - mu) @ vt[:dims].T
    a = np.c_[z, np.ones(len(z))]
    coef, *_ = np.linalg.lstsq(a[fit], target[fit], rcond=None)
    pred = a[test] @ coef
    ss = float(((target[test] - target[test].mean()) ** 2).sum())
    r2 = 1.0 - float(((target[test] - pred) ** 2).sum()) / ss if ss > 0 else float("nan")
    corr = [abs(float(np.corrcoef(z[:, j], target)[0, 1])) for j in range(z.shape[1])
            if z[:, j].std() > 1e-12]
    return r2, max(corr, default=float("nan"))


def pose_probe(models: dict[str, Trained], plan: Plan, x: Tensor, y: Tensor) -> dict[str, Any]:
    """How linearly each model's features follow a horizontal shift and a rotation of the input,
    on digits it classifies right when untransformed; CapsNet: the winning capsule's pose."""
    out: dict[str, Any] = {}
    for name, m in models.items():
        right = torch.nonzero(m.scores(x).argmax(1) == y).flatten()[:plan.probe_digits]
        xs, ys = x[right], y[right]
        groups = np.arange(len(right))
        row: dict[str, Any] = {"digits": len(right)}
        for kind, values in (("shift", plan.probe_shifts), ("rotation", plan.probe_angles)):
            feats, target, group = [], [], []
            for v in values:
                moved = shift(xs, int(v)) if kind == "shift" else affine(xs, degrees=float(v))
                feats.append(m.features(moved, ys).numpy().astype(np.float64))
                target.append(np.full(len(right), float(v)))
                group.append(groups)
            r2, corr = _probe_r2(np.concatenate(feats), np.concatenate(target),
                                 np.concatenate(group))
            row[kind] = {"r2": r2, "max_abs_corr": corr}
        row["feature_dims"] = int(m.features(xs[:1], ys[:1]).shape[1])
        out[name] = row
    return out


def pose_traces(model: Trained, x: Tensor, y: Tensor, values: Sequence[int], dims: int = 3
                ) -> dict[str, Any]:
    """Mean of the capsule pose dimensions most correlated with a horizontal shift, per shift."""
    feats = np.stack([model.features(shift(x, int(v)), y).numpy() for v in values])  # V, N, D
    target = np.repeat(np.asarray(values, float)[:, None], x.shape[0], 1).ravel()
    flat = feats.reshape(-1, feats.shape[-1])
    corr = [abs(float(np.corrcoef(flat[:, j], target)[0, 1])) if flat[:, j].std() > 0 else 0.0
            for j in range(flat.shape[1])]
    top = [int(j) for j in np.argsort(corr)[::-1][:dims]]
    return {"shifts": list(values), "dims": top,
            "means": [[float(feats[i, :, j].mean()) for i in range(len(values))] for j in top],
            "corr": [corr[j] for j in top]}
