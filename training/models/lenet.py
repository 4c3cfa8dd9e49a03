"""LeNet-5 (LeCun et al. 1998) in its modern form: two conv/pool stages and three dense layers."""

from __future__ import annotations

from torch import Tensor, nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
_POOLING: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class LeNet5(nn.Module):
    """C1 6@5x5 -> S2 -> C3 16@5x5 -> S4 -> F5 120 -> F6 84 -> classes.

    The 28x28 input is zero-padded by 2 in C1, which is the paper's 32x32 retina.
    ``input_size`` lets the same layout run on other square sizes (>= 12).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        activation: str = "relu",
        pooling: str = "max",
        input_size: int = 28,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {sorted(_POOLING)}, got {pooling!r}")
        act, pool = _ACTIVATIONS[activation], _POOLING[pooling]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), act(), pool(2),
            nn.Conv2d(6, 16, 5), act(), pool(2),
        )
        side = ((input_size // 2) - 4) // 2
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for LeNet-5 (minimum 12)")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), act(),
            nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
