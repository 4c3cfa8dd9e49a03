"""Loss networks for fast style transfer without downloading a pretrained VGG.

The default is a frozen, seeded, random-weight multi-scale filter bank (random shallow
features carry texture statistics well: Ustyuzhaninov et al. 2016; He et al. 2016). Six
branches of 32 unit-norm Gaussian filters, kernels 3/5/7 at full resolution, 5/9 at 1/2 and
7 at 1/4. The filters are *not* zero-mean: zero-mean filters are blind to colour and the
stylised output comes out washed out. A user with a local VGG-16 weights file may use it instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BRANCHES = ((3, 1), (5, 1), (7, 1), (5, 2), (9, 2), (7, 4))  # (kernel, downscale)


class RandomFeatureNet(nn.Module):
    """features(x) -> one ReLU map per branch. ``content_layers``: the small-kernel full-res maps."""

    content_layers = (0, 1)

    def __init__(self, filters: int = 32, seed: int = 1234) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList()
        for k, _ in _BRANCHES:
            w = torch.randn(filters, 3, k, k, generator=g)
            w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            self.weights.append(nn.Parameter(w, requires_grad=False))

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for (k, scale), w in zip(_BRANCHES, self.weights, strict=True):
            xi = F.avg_pool2d(x, scale) if scale > 1 else x
            out.append(F.relu(F.conv2d(F.pad(xi, [k // 2] * 4, mode="reflect"), w)))
        return out


class VGGFeatures(nn.Module):
    """VGG-16 relu1_2, relu2_2, relu3_3, relu4_3 from a local torchvision state_dict file."""

    content_layers = (1,)

    def __init__(self, weights_file: str | Path) -> None:
        super().__init__()
        from torchvision.models import vgg16

        net = vgg16(weights=None)
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.slices = nn.ModuleList(net.features[a:b] for a, b in ((0, 4), (4, 9), (9, 16), (16, 23)))
        for p in self.parameters():
            p.requires_grad_(False)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out


def gram(f: Tensor) -> Tensor:
    """Channel co-occurrence (N, C, C), normalised by the number of positions."""
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def style_distance(net: nn.Module, images: Tensor, style_grams: list[Tensor]) -> Tensor:
    """Per image: sum over layers of the mean squared difference of Gram matrices to the style."""
    feats = net(images)
    total = torch.zeros(images.shape[0], device=images.device)
    for f, g in zip(feats, style_grams, strict=True):
        total = total + (gram(f) - g).pow(2).flatten(1).mean(dim=1)
    return total


def luminance_lowpass(x: Tensor) -> Tensor:
    lum = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return F.avg_pool2d(lum, 4)


def total_variation(x: Tensor) -> Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()
