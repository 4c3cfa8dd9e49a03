"""The PNG each model is benchmarked with: deterministic, realistic size, no data download."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageSpec:
    width: int
    height: int
    mode: str  # "L" or "RGB"


def spec_from_parameters(params: dict[str, str]) -> ImageSpec:
    """The image size/colour a model's config.pbtxt parameters ask for (224x224 RGB if absent)."""
    width = int(params.get("input_width") or 224)
    height = int(params.get("input_height") or 224)
    mode = params.get("input_color") or "RGB"
    return ImageSpec(width, height, mode)


def make_png(spec: ImageSpec, seed: int = 0) -> bytes:
    """A smooth scene with texture, so the PNG compresses like a photo or a digit scan would.

    Pure noise would be an unrealistically large PNG; a flat image an unrealistically small one.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:spec.height, 0:spec.width].astype(np.float32)
    if spec.mode == "L":
        # A thick diagonal stroke on black, like a handwritten digit.
        dist = np.abs((xx - spec.width * 0.3) - (yy - spec.height * 0.1) * 0.5)
        stroke = np.clip(255.0 - dist * 60.0, 0, 255) * (yy > spec.height * 0.15)
        pixels = stroke.astype(np.uint8)
    else:
        channels = []
        for c in range(3):
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(xx / (9 + 4 * c) + phase) * np.cos(yy / (13 + 3 * c))
            noise = rng.normal(0, 12, size=wave.shape)
            channels.append(np.clip(128 + 90 * wave + noise, 0, 255))
        pixels = np.stack(channels, axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, spec: ImageSpec, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_png(spec, seed))
    return path
