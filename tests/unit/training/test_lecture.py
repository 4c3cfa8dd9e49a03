"""The lecture-scale AlexNet, VGG and GoogLeNet keep the papers' topology at small widths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.models.lecture import (
    AlexNetLecture,
    GoogLeNetLecture,
    Inception,
    LocalResponseNorm,
    VGGLecture,
)
from training.models.registry import build_model


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("channels", [3, 24, 64])
def test_lrn_matches_torch(channels: int) -> None:
    x = torch.rand(2, channels, 5, 5) * 4
    ref = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x)
    assert torch.allclose(LocalResponseNorm(channels)(x), ref, atol=1e-6)


def test_alexnet_has_the_papers_filters_lrn_and_dropout() -> None:
    model = AlexNetLecture()
    convs = _convs(model)
    assert [c.kernel_size[0] for c in convs] == [11, 5, 3, 3, 3]
    assert convs[0].stride == (4, 4)
    assert sum(isinstance(m, LocalResponseNorm) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)  # overlapping
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="too small"):
        AlexNetLecture(input_size=40)


@pytest.mark.parametrize("depth,convs", [(11, 8), (16, 13)])
def test_vgg_is_only_3x3_stacks(depth: int, convs: int) -> None:
    model = VGGLecture(depth=depth)
    layers = _convs(model)
    assert len(layers) == convs and all(c.kernel_size == (3, 3) for c in layers)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_googlenet_inception_modules_reduce_with_1x1_first() -> None:
    model = GoogLeNetLecture()
    modules = [m for m in model.modules() if isinstance(m, Inception)]
    assert len(modules) == 4
    for m in modules:
        assert m.b1[0].kernel_size == (1, 1)
        assert [c.kernel_size for c in _convs(m.b3)] == [(1, 1), (3, 3)]
        assert [c.kernel_size for c in _convs(m.b5)] == [(1, 1), (5, 5)]
        assert _convs(m.bp)[0].kernel_size == (1, 1)
        assert m.b3[0][0].out_channels < m.b3[0][0].in_channels  # a reduction
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch,side", [("alexnet_lecture", 64), ("vgg_lecture", 32),
                                       ("googlenet_lecture", 32)])
def test_lecture_nets_are_small_and_expose_penultimate_features(arch: str, side: int) -> None:
    model = build_model(arch, num_classes=10, in_channels=1, input_size=side).eval()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # < 4 MB of float32
    x = torch.rand(3, 1, side, side)
    feats = model.features(x)
    assert feats.ndim == 2 and feats.shape[0] == 3
    assert torch.allclose(model.classifier(feats), model(x))
