"""TransformerNet for fast style transfer (Johnson, Alahi, Fei-Fei 2016).

Reflection-padded convolutions, instance normalisation (Ulyanov et al. 2016), residual blocks,
and nearest-upsample + conv instead of transposed convolutions (no checkerboard artefacts).
Input and output are RGB in [0, 1]; the output has exactly the input's size, whatever it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvNormAct(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1,
                 norm: bool = True, relu: bool = True) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride)
        self.norm = nn.InstanceNorm2d(out_ch, affine=True) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(self.pad(x))))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = ConvNormAct(channels, channels, 3)
        self.b = ConvNormAct(channels, channels, 3, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(self.a(x))


class TransformerNet(nn.Module):
    """9x9 conv -> two stride-2 convs -> residual blocks -> two upsample convs -> 9x9 conv -> sigmoid.

    Johnson's network is ``width=32, residual_blocks=5``. Each upsampling step resizes to the size
    its matching downsampling step started from, so odd sizes come back unchanged.
    """

    def __init__(self, width: int = 32, residual_blocks: int = 5) -> None:
        super().__init__()
        w = width
        self.stem = ConvNormAct(3, w, 9)
        self.down1 = ConvNormAct(w, 2 * w, 3, stride=2)
        self.down2 = ConvNormAct(2 * w, 4 * w, 3, stride=2)
        self.res = nn.Sequential(*[ResidualBlock(4 * w) for _ in range(residual_blocks)])
        self.up1 = ConvNormAct(4 * w, 2 * w, 3)
        self.up2 = ConvNormAct(2 * w, w, 3)
        self.out = ConvNormAct(w, 3, 9, norm=False, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.stem(x)
        x1 = self.down1(x0)
        y = self.res(self.down2(x1))
        y = self.up1(F.interpolate(y, size=(x1.shape[2], x1.shape[3]), mode="nearest"))
        y = self.up2(F.interpolate(y, size=(x0.shape[2], x0.shape[3]), mode="nearest"))
        return torch.sigmoid(self.out(y))
