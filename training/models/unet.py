"""U-Net (Ronneberger, Fischer, Brox 2015) with same-padding convolutions.

Depth, base width and the upsampling kind are configurable. Feature maps are padded (or
resized) to their skip connection's size before concatenation, so any input size works, not
only multiples of 2^depth. Written to be scriptable: no module is passed as an argument and
``forward`` has no data-dependent Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def double_conv(in_ch: int, out_ch: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (in_ch, out_ch):
        layers.append(nn.Conv2d(c_in, out_ch, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Up(nn.Module):
    """Upsample (2x2 transposed conv, or bilinear resize + 1x1 conv), align, concat, convolve."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, resize: bool, batch_norm: bool) -> None:
        super().__init__()
        self.resize = resize
        if resize:
            self.up: nn.Module = nn.Conv2d(in_ch, in_ch // 2, 1)
        else:
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, stride=2)
        self.conv = double_conv(in_ch // 2 + skip_ch, out_ch, batch_norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        h, w = skip.shape[2], skip.shape[3]
        if self.resize:
            x = self.up(F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False))
        else:
            x = self.up(x)
            # floor pooling of an odd side loses one pixel; pad it back at the far edge.
            x = F.pad(x, [0, w - x.shape[3], 0, h - x.shape[2]])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """``depth`` poolings; widths base, 2*base, ... 2^depth*base; 1x1 head to class logits."""

    def __init__(
        self,
        num_classes: int = 3,
        in_channels: int = 1,
        base_width: int = 16,
        depth: int = 3,
        up_mode: str = "upconv",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if up_mode not in ("upconv", "resize"):
            raise ValueError(f"up_mode must be 'upconv' or 'resize', got {up_mode!r}")
        if depth < 1:
            raise ValueError("depth must be >= 1")
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.downs = nn.ModuleList()
        c_in = in_channels
        for w in widths:
            self.downs.append(double_conv(c_in, w, batch_norm))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], up_mode == "resize", batch_norm)
            for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        for i, down in enumerate(self.downs):
            if i > 0:
                x = self.pool(x)
            x = down(x)
            skips.append(x)
        n = len(skips)
        for i, up in enumerate(self.ups):
            x = up(x, skips[n - 2 - i])
        return self.head(x)
