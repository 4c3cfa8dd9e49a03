"""Lecture-scale AlexNet, VGG and GoogLeNet: the papers' topologies with narrow widths.

Each keeps what the lecture points at and shrinks only the channel counts, so a checkpoint is
well under a few MB and trains on digits in CPU-minutes:

* AlexNet (Krizhevsky et al. 2012): 11x11/4, 5x5 and three 3x3 convolutions, ReLU, local
  response normalisation after the first two, overlapping 3x3/2 max-pooling, two dropout FC
  layers. The grouped (two-GPU) convolutions of the paper are not kept.
* VGG (Simonyan and Zisserman 2015): configuration A (VGG-11) or D (VGG-16), only 3x3
  convolutions in stacks between 2x2 max-pools, three FC layers with dropout.
* GoogLeNet (Szegedy et al. 2015): a 7x7/2 stem with LRN, then inception modules (parallel
  1x1, 1x1->3x3, 1x1->5x5 and 3x3-pool->1x1 branches, the 1x1 convolutions reducing depth
  first), global average pooling, dropout 0.4 and one linear classifier. The auxiliary
  classifiers only help very deep nets train and exist only in training mode; they are left out.

All take ``in_channels`` and ``input_size`` so they train on grey digits resized to the side
each needs; each has a ``features(x)`` method returning the penultimate activations, which the
capsule comparison probes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class LocalResponseNorm(nn.Module):
    """Across-channel LRN, b_c = a_c / (k + alpha/n * sum of a^2 over n neighbouring channels)^beta,
    with the paper's constants. Same values as ``nn.LocalResponseNorm``; the channel window sum
    is a 1x1 convolution with a fixed 0/1 band, which on one CPU thread costs a fraction of
    torch's avg_pool3d formulation and exports as a plain Conv."""

    band: Tensor

    def __init__(self, channels: int, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                 k: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.k, self.size = alpha, beta, k, size
        idx = torch.arange(channels)
        # torch's window for channel c: c - size//2 .. c + (size-1)//2
        offset = idx[None, :] - idx[:, None]
        band = ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).float()
        self.register_buffer("band", band.view(channels, channels, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        window = F.conv2d(x * x, self.band)
        return x / (self.k + (self.alpha / self.size) * window).pow(self.beta)


def _lrn(channels: int) -> LocalResponseNorm:
    return LocalResponseNorm(channels)


def _pool_out(side: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (side + 2 * padding - kernel) // stride + 1


class AlexNetLecture(nn.Module):
    """conv 11x11/4 - LRN - pool - conv 5x5 - LRN - pool - 3 x conv 3x3 - pool - FC - FC - FC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 64,
                 widths: Sequence[int] = (24, 64, 96, 96, 64), hidden: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"AlexNet has five convolutions, got {len(widths)} widths")
        w1, w2, w3, w4, w5 = (int(w) for w in widths)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w1, 11, stride=4, padding=2), nn.ReLU(inplace=True), _lrn(w1),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(w1, w2, 5, padding=2), nn.ReLU(inplace=True), _lrn(w2), nn.MaxPool2d(3, 2),
            nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w3, w4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w4, w5, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        side = _pool_out(input_size, 11, 4, 2)
        for _ in range(3):
            side = _pool_out(side, 3, 2)
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for AlexNet (minimum 63)")
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(w5 * side * side, hidden),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class VGGLecture(nn.Module):
    """VGG configuration A (depth 11) or D (16) with every width scaled by ``width``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 32,
                 depth: int = 11, width: float = 0.25, hidden: int = 256, dropout: float = 0.5,
                 batch_norm: bool = False) -> None:
        super().__init__()
        if depth not in _VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(_VGG_CONFIGS)}, got {depth}")
        layers: list[nn.Module] = []
        channels, side = in_channels, input_size
        for v in _VGG_CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                side //= 2
                continue
            out = max(1, round(int(v) * width))
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for VGG (minimum 32)")
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class Inception(nn.Module):
    """Four parallel branches concatenated on channels; 1x1 convolutions reduce depth before
    the 3x3 and 5x5 ones and after the max-pool (the paper's "dimension reductions")."""

    def __init__(self, in_channels: int, c1: int, r3: int, c3: int, r5: int, c5: int,
                 pool_proj: int) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True))

        self.b1 = conv(in_channels, c1, 1)
        self.b3 = nn.Sequential(conv(in_channels, r3, 1), conv(r3, c3, 3))
        self.b5 = nn.Sequential(conv(in_channels, r5, 1), conv(r5, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), conv(in_channels, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


# (c1, r3, c3, r5, c5, pool_proj) of the paper's modules 3a, 3b, 4a, 4b; "M" = 3x3/2 max-pool
_GOOGLENET_MODULES: tuple[tuple[int, ...] | str, ...] = (
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
)


class GoogLeNetLecture(nn.Module):
    """Stem (7x7/2 conv, pool, LRN, 1x1 and 3x3 convs, LRN), inception 3a-3b, pool, 4a-4b,
    global average pool, dropout, linear. Widths are the paper's times ``width``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 32,
                 width: float = 0.25, dropout: float = 0.4) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(1, round(c * width))

        if input_size < 15:
            raise ValueError(f"input_size {input_size} is too small for GoogLeNet (minimum 15)")
        stem = w(64)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 7, stride=2, padding=3), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1), _lrn(stem),
            nn.Conv2d(stem, stem, 1), nn.ReLU(inplace=True),
            nn.Conv2d(stem, w(192), 3, padding=1), nn.ReLU(inplace=True), _lrn(w(192)),
        )
        blocks: list[nn.Module] = []
        channels = w(192)
        for spec in _GOOGLENET_MODULES:
            if spec == "M":
                blocks.append(nn.MaxPool2d(3, 2, padding=1))
                continue
            module = Inception(channels, *(w(int(c)) for c in spec))
            blocks.append(module)
            channels = module.out_channels
        self.inception = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.classifier = nn.Linear(channels, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.pool(self.inception(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
