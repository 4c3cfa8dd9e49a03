"""``shapes``: a seeded synthetic segmentation set.

Grey 64x64 images: a smooth, textured background with 1-4 overlapping ellipses (class 1) and
rotated rectangles (class 2), each filled with its own texture, plus Gaussian noise. The mask
is exact (later shapes paint over earlier ones in both image and mask). Everything is a pure
function of the seed, so the train and test sets are fixed.
"""

from __future__ import annotations

import numpy as np

LABELS = ["background", "ellipse", "rectangle"]
SIZE = 64
TRAIN_SEED, TEST_SEED = 1000, 2000  # disjoint random streams for the two parts
NOISE = 0.08


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A random stripe or blob pattern with values around 0, amplitude ~0.1."""
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.15, 0.6)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    return rng.uniform(0.03, 0.12) * stripes


def _one(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    gx, gy = rng.uniform(-0.4, 0.4, size=2)
    img = rng.uniform(0.3, 0.7) + (gx * (xx / size - 0.5) + gy * (yy / size - 0.5))
    img = img + _texture(rng, yy, xx)
    mask = np.zeros((size, size), dtype=np.int64)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, 3))
        cy, cx = rng.uniform(0.15, 0.85, size=2) * size
        a, b = rng.uniform(0.1, 0.25, size=2) * size
        t = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0 if cls == 1 else (np.abs(u) <= a) & (np.abs(v) <= b)
        # the fill differs from the mean background by at least 0.2 either way
        level = rng.uniform(0.2, 0.45) * rng.choice([-1.0, 1.0])
        fill = np.clip(img.mean() + level, 0.0, 1.0) + _texture(rng, yy, xx)
        img = np.where(inside, fill, img)
        mask[inside] = cls
    img = img + rng.normal(0.0, NOISE, size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), mask


def generate(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 1, size, size) float32 in [0, 1] and masks (n, size, size) int64."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 1, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=np.int64)
    for i in range(n):
        images[i, 0], masks[i] = _one(rng, size)
    return images, masks
