"""``photos``: content images for style transfer, and procedural style images.

Only photos that ship inside installed wheels are used: scikit-learn's two sample images and
the scikit-image samples that are bundled in its wheel (others in ``skimage.data`` are fetched
from the network on first use and are deliberately not touched). The files are read directly
from the package folders, never through a fetcher.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (package, file). Train and held-out test photos are fixed.
TRAIN_PHOTOS = {
    "china": ("sklearn", "china.jpg"),
    "astronaut": ("skimage", "astronaut.png"),
    "chelsea": ("skimage", "chelsea.png"),
    "rocket": ("skimage", "rocket.jpg"),
    "motorcycle": ("skimage", "motorcycle_left.png"),
    "hubble": ("skimage", "hubble_deep_field.jpg"),
}
TEST_PHOTOS = {
    "flower": ("sklearn", "flower.jpg"),
    "coffee": ("skimage", "coffee.png"),
}
STYLES = ("mosaic",)


def _package_dir(package: str) -> Path:
    if package == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images"
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_photo(name: str) -> np.ndarray:
    """A bundled photo as float32 RGB (H, W, 3) in [0, 1]."""
    table = {**TRAIN_PHOTOS, **TEST_PHOTOS}
    package, filename = table[name]
    with Image.open(_package_dir(package) / filename) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def load_image_file(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def mosaic(size: int = 256, cells: int = 60, border: int = 4, seed: int = 0) -> np.ndarray:
    """A Voronoi 'stained glass' mosaic: saturated cell colours with black borders."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, size, size=(cells, 2))
    hues = rng.uniform(0, 1, size=cells)
    colours = np.array([colorsys.hsv_to_rgb(h, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
                        for h in hues], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2  # H, W, cells
    order = np.argsort(d, axis=-1)
    nearest, second = order[..., 0], order[..., 1]
    d1 = np.sqrt(np.take_along_axis(d, nearest[..., None], -1)[..., 0])
    d2 = np.sqrt(np.take_along_axis(d, second[..., None], -1)[..., 0])
    img = colours[nearest]
    img[(d2 - d1) < border] = 0.0  # near the bisector of two cells: a border stroke
    return img


def style_image(style: str, size: int = 256) -> np.ndarray:
    """``mosaic`` (procedural) or a path to an image file, as float32 RGB in [0, 1]."""
    if style == "mosaic":
        return mosaic(size)
    path = Path(style)
    if not path.is_file():
        raise ValueError(f"style must be one of {list(STYLES)} or an image file; {style!r} is neither")
    return load_image_file(path)
