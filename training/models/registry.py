"""Architecture name -> constructor, used by the training CLI and by the exporter.

``build_model(checkpoint["arch"], **checkpoint["arch_kwargs"])`` rebuilds the module a
checkpoint's ``state_dict`` belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from training.models import classic
from training.models.capsnet import CapsNet
from training.models.lecture import AlexNetLecture, GoogLeNetLecture, VGGLecture
from training.models.lenet import LeNet5
from training.models.transformer_net import TransformerNet
from training.models.unet import UNet

TASKS = ("classification", "segmentation", "style_transfer", "capsule_classification")


class UnknownArchitecture(ValueError):
    """An architecture name the registry does not know; the message lists the valid ones."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown architecture {name!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}")
        self.name = name


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture and what it expects.

    ``color`` is the channel layout it is built for ("L", "RGB"; None: follows the data via an
    ``in_channels`` kwarg). ``size`` is the default training side in pixels, ``min_size`` the
    smallest side that runs. Calling the spec builds the module.
    """

    builder: Callable[..., nn.Module]
    task: str
    color: str | None
    size: int
    min_size: int
    default_data: str
    fully_convolutional: bool = False
    summary: str = ""

    def __call__(self, **kwargs: Any) -> nn.Module:
        return self.builder(**kwargs)


ARCHITECTURES: dict[str, ArchSpec] = {
    "lenet": ArchSpec(LeNet5, "classification", None, 28, 12, "mnist5k",
                      summary="LeNet-5 (LeCun et al. 1998), 61.7 k parameters"),
    "capsnet": ArchSpec(CapsNet, "capsule_classification", None, 28, 17, "mnist5k",
                        summary="CapsNet with dynamic routing (Sabour et al. 2017); reduced by "
                                "default, paper size: conv_channels=256 primary_types=32"),
    "unet": ArchSpec(UNet, "segmentation", None, 64, 1, "shapes", fully_convolutional=True,
                     summary="U-Net (Ronneberger et al. 2015), same padding, any input size"),
    "transformer_net": ArchSpec(TransformerNet, "style_transfer", "RGB", 128, 4, "photos",
                                fully_convolutional=True,
                                summary="fast style transfer network (Johnson et al. 2016)"),
    "alexnet_lecture": ArchSpec(AlexNetLecture, "classification", None, 64, 63, "mnist5k",
                                summary="AlexNet (Krizhevsky et al. 2012) at lecture scale: 11x11/4, "
                                        "5x5, 3x3 convs, LRN, overlapping pools, dropout FCs; "
                                        "narrow widths"),
    "vgg_lecture": ArchSpec(VGGLecture, "classification", None, 32, 32, "mnist5k",
                            summary="VGG-11 (Simonyan and Zisserman 2015, configuration A) at "
                                    "lecture scale: 3x3 conv stacks, widths x 0.25"),
    "googlenet_lecture": ArchSpec(GoogLeNetLecture, "classification", None, 32, 15, "mnist5k",
                                  summary="GoogLeNet (Szegedy et al. 2015) at lecture scale: 7x7/2 "
                                          "stem with LRN, inception modules 3a-3b and 4a-4b with "
                                          "1x1 reductions, global average pool; widths x 0.25"),
    "alexnet": ArchSpec(classic.alexnet, "classification", "RGB", 64, 63, "digits",
                        summary="torchvision AlexNet"),
    "vgg11": ArchSpec(classic.vgg11, "classification", "RGB", 32, 32, "digits",
                      summary="torchvision VGG-11 (width scalable)"),
    "vgg16": ArchSpec(classic.vgg16, "classification", "RGB", 32, 32, "digits",
                      summary="torchvision VGG-16 (width scalable)"),
    "googlenet": ArchSpec(classic.googlenet, "classification", "RGB", 32, 15, "digits",
                          summary="torchvision GoogLeNet / Inception v1"),
    "inception_v3": ArchSpec(classic.inception_v3, "classification", "RGB", 75, 75, "digits",
                             summary="torchvision Inception-v3 (299x299 native)"),
    "resnet18": ArchSpec(classic.resnet18, "classification", "RGB", 32, 16, "digits",
                         summary="torchvision ResNet-18"),
    "resnet50": ArchSpec(classic.resnet50, "classification", "RGB", 32, 32, "digits",
                         summary="torchvision ResNet-50"),
}


def get_spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise UnknownArchitecture(arch) from None


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``arch`` with constructor kwargs (plain JSON values)."""
    return get_spec(arch)(**kwargs)
