"""CapsNet explanations: what each dimension of the winning capsule's pose vector encodes.

As in figure 4 of Sabour et al. (2017): keep only the predicted class's 16-D pose, add a value
in [-0.25, 0.25] (11 steps) to one dimension at a time, decode every variant with the model's
decoder and tile the reconstructions, one row per dimension.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from serving.tasks.postprocess import to_uint8_hwc

STEPS = np.linspace(-0.25, 0.25, 11).astype(np.float32)


def perturbed_poses(poses: np.ndarray, cls: int) -> np.ndarray:
    """[C, D] poses -> [D * len(STEPS), C, D]: only class ``cls`` non-zero, one dim tweaked."""
    num_classes, dims = poses.shape
    base = np.zeros_like(poses, dtype=np.float32)
    base[cls] = poses[cls]
    out = np.repeat(base[None], dims * len(STEPS), axis=0)
    for d in range(dims):
        for s, step in enumerate(STEPS):
            out[d * len(STEPS) + s, cls, d] += step
    return out


def grid_png(reconstructions: np.ndarray, dims: int, pad: int = 1) -> bytes:
    """[dims * steps, C, H, W] images in [0, 1] -> one PNG, row d = dimension d swept."""
    n, _, h, w = reconstructions.shape
    steps = n // dims
    tiles = [to_uint8_hwc(img) for img in reconstructions]
    channels = 1 if tiles[0].ndim == 2 else tiles[0].shape[2]
    shape = (dims * (h + pad) + pad, steps * (w + pad) + pad)
    canvas = np.full(shape if channels == 1 else (*shape, channels), 128, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, steps)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top:top + h, left:left + w] = tile
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()
