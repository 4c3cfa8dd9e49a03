"""The ImageNet-era classics built through torchvision's own constructors, never with weights.

Each builder takes any class count. Where the stock network is far too large for a lecture
demo or a unit test, a width knob shrinks it while keeping the layer pattern (VGG's conv
configuration, AlexNet's classifier). Auxiliary heads are off by default: they only exist in
training mode and change the output type, which the training loop and exporters do not expect.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models.vgg import make_layers

_VGG_CFG: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _classifier(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


def alexnet(num_classes: int = 1000, hidden: int = 4096, dropout: float = 0.5) -> nn.Module:
    """torchvision AlexNet; ``hidden`` < 4096 narrows the two dense layers (input >= 63x63)."""
    model = tvm.alexnet(weights=None, num_classes=num_classes, dropout=dropout)
    if hidden != 4096:
        model.classifier = _classifier(256 * 6 * 6, hidden, num_classes, dropout)
    return model


def vgg(depth: int = 16, num_classes: int = 1000, width: float = 1.0, hidden: int = 4096,
        batch_norm: bool = False, dropout: float = 0.5) -> nn.Module:
    """torchvision VGG-11/16 from its conv configuration, every conv width scaled by ``width``."""
    if depth not in _VGG_CFG:
        raise ValueError(f"VGG depth must be one of {sorted(_VGG_CFG)}, got {depth}")
    cfg = [v if isinstance(v, str) else max(1, round(v * width)) for v in _VGG_CFG[depth]]
    model = tvm.VGG(make_layers(cfg, batch_norm=batch_norm), num_classes=num_classes,
                    init_weights=True, dropout=dropout)
    last = int(cfg[-2])
    if last != 512 or hidden != 4096:
        model.classifier = _classifier(last * 7 * 7, hidden, num_classes, dropout)
    return model


def vgg11(**kwargs: Any) -> nn.Module:
    return vgg(depth=11, **kwargs)


def vgg16(**kwargs: Any) -> nn.Module:
    return vgg(depth=16, **kwargs)


class _MainOutput(nn.Module):
    """Returns only the main logits even in training mode (when aux heads are enabled)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if isinstance(out, Tensor):
            return out
        return out[0]


def googlenet(num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.2) -> nn.Module:
    """torchvision GoogLeNet (Inception v1), input >= 15x15. With aux heads the module still
    returns only the main logits; the aux heads then only add parameters for fine-tuning."""
    model = tvm.googlenet(weights=None, num_classes=num_classes, aux_logits=aux_logits,
                          transform_input=False, init_weights=True, dropout=dropout)
    return _MainOutput(model) if aux_logits else model


def inception_v3(num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.5) -> nn.Module:
    """torchvision Inception-v3; designed for 299x299, works from 75x75 (aux heads off)."""
    model = tvm.inception_v3(weights=None, num_classes=num_classes, aux_logits=aux_logits,
                             transform_input=False, init_weights=True, dropout=dropout)
    return _MainOutput(model) if aux_logits else model


def resnet18(num_classes: int = 1000, small_input: bool = False) -> nn.Module:
    """torchvision ResNet-18. ``small_input`` swaps the 7x7/2 stem and max-pool for a 3x3/1 conv,
    the usual CIFAR-sized variant, so 32x32 inputs keep spatial detail."""
    return _small_stem(tvm.resnet18(weights=None, num_classes=num_classes), small_input)


def resnet50(num_classes: int = 1000, small_input: bool = False) -> nn.Module:
    """torchvision ResNet-50 (see :func:`resnet18` for ``small_input``)."""
    return _small_stem(tvm.resnet50(weights=None, num_classes=num_classes), small_input)


def _small_stem(model: tvm.ResNet, small_input: bool) -> nn.Module:
    if small_input:
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())


__all__ = ["alexnet", "googlenet", "inception_v3", "parameter_count", "resnet18", "resnet50",
           "vgg11", "vgg16"]
