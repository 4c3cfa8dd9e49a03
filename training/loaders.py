"""Seeded in-memory batch iterators and augmentations.

Data sets here are small enough to live in memory as tensors, so a plain generator of index
batches replaces ``DataLoader`` workers: cheaper on a 2-core machine and trivially deterministic
(one ``torch.Generator`` drives shuffling and augmentation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from training.data import normalize, photo_crops

Augment = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]


def random_shift(max_px: int) -> Augment:
    """Translate each image by up to ``max_px`` pixels, zero-filled (the paper's MNIST augmentation)."""

    def apply(x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        n, _, h, w = x.shape
        padded = F.pad(x, [max_px] * 4)
        offsets = torch.randint(0, 2 * max_px + 1, (n, 2), generator=g)
        out = torch.stack([padded[i, :, int(dy):int(dy) + h, int(dx):int(dx) + w]
                           for i, (dy, dx) in enumerate(offsets)])
        return out, y

    return apply


def random_flips(x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Independent horizontal and vertical flips of image and mask together."""
    flips = torch.rand(x.shape[0], 2, generator=g) < 0.5
    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if flips[i, 0]:
            xi, yi = xi.flip(-1), yi.flip(-1)
        if flips[i, 1]:
            xi, yi = xi.flip(-2), yi.flip(-2)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def tensor_batches(x: Tensor, y: Tensor, batch_size: int, mean: list[float], std: list[float],
                   generator: torch.Generator | None = None, augment: Augment | None = None,
                   max_steps: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised batches; shuffled (and augmented) when a generator is given."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for step, start in enumerate(range(0, n, batch_size)):
        if max_steps is not None and step >= max_steps:
            return
        idx = order[start:start + batch_size]
        xb, yb = x[idx], y[idx]
        if augment is not None and generator is not None:
            xb, yb = augment(xb, yb, generator)
        yield normalize(xb, mean, std), yb


def crop_batches(steps: int, batch_size: int, size: int, generator: torch.Generator
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    """Style training: fresh random crops of the content photos (inputs are [0, 1], no target)."""
    for _ in range(steps):
        yield photo_crops(batch_size, size, generator), torch.zeros(batch_size)


def steps_for(n: int, batch_size: int, max_steps: int | None) -> int:
    steps = -(-n // batch_size)
    return steps if max_steps is None else min(steps, max_steps)
