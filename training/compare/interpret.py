"""Interpretability pictures from the served CapsNet checkpoint: pose-perturbation grids (the
same sweep the server's ``/explanations/capsnet`` answers with) and reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from training import data as datasets
from training.checkpoint import load_checkpoint
from training.models.capsnet import CapsNet
from training.models.registry import build_model

# the served explanation's sweep: 11 values in [-0.25, 0.25] added to one pose dimension
STEPS = np.linspace(-0.25, 0.25, 11).astype(np.float32)


def _tiles(images: np.ndarray, cols: int, pad: int = 1, scale: int = 2) -> Image.Image:
    """N x H x W floats in [0, 1] -> one grey grid image, ``cols`` per row."""
    n, h, w = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 128, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
               pad + c * (w + pad):pad + c * (w + pad) + w] = (np.clip(img, 0, 1) * 255 + 0.5
                                                               ).astype(np.uint8)
    out = Image.fromarray(canvas)
    return out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)


@torch.no_grad()
def explanation_images(checkpoint: Path, img_dir: Path, digits: int = 3) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt["arch"], **ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    assert isinstance(model, CapsNet)
    x = datasets.sample_inputs(ckpt["provenance"]["data"], 10, seed=3)
    lengths, poses, recon = model(x)
    pixels = x * ckpt["input"]["std"][0] + ckpt["input"]["mean"][0]
    _tiles(np.concatenate([pixels[:, 0].numpy(), recon[:, 0].numpy()]), cols=10
           ).save(img_dir / "reconstructions.png")
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "grids": [],
                           "reconstruction_mse": float((recon - pixels).pow(2).mean()),
                           "steps": [float(s) for s in STEPS]}
    classes = lengths.argmax(1)
    dims = poses.shape[2]
    for i in range(digits):
        cls = int(classes[i])
        base = torch.zeros_like(poses[i])
        base[cls] = poses[i, cls]
        variants = base.repeat(dims * len(STEPS), 1, 1)
        for d in range(dims):
            for s, step in enumerate(STEPS):
                variants[d * len(STEPS) + s, cls, d] += float(step)
        grid = model.decode(variants)[:, 0].numpy()
        name = f"explanation_{i}.png"
        _tiles(grid, cols=len(STEPS)).save(img_dir / name)
        sweep = grid.reshape(dims, len(STEPS), *grid.shape[1:])
        # how much each dimension changes the picture end to end: mean |recon(+0.25) - recon(-0.25)|
        change = np.abs(sweep[:, -1] - sweep[:, 0]).mean(axis=(1, 2))
        out["grids"].append({"file": name, "predicted": str(ckpt["labels"][cls]),
                             "capsule_length": float(lengths[i, cls]),
                             "dimension_change": [float(c) for c in change]})
    return out
