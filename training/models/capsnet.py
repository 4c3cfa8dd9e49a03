"""CapsNet with dynamic routing (Sabour, Frosst, Hinton 2017).

conv -> PrimaryCaps (squashed conv capsules) -> DigitCaps (routing-by-agreement) -> lengths,
plus a reconstruction decoder fed with the pose vectors masked to one class.

The paper's network is ``CapsNet(conv_channels=256, primary_types=32)`` (8.2 M parameters);
the defaults here are the reduced CPU-trainable variant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ONNX optimisers fold `x + eps` away for |eps| <= 1e-8, which turns squash into 0/0 on an
# all-zero input; a clamp with 1e-7 survives every exporter we use.
EPS = 1e-7


# (eps is a default argument rather than a global so that torch.jit.script accepts it)
def squash(s: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """v = |s|^2 / (1 + |s|^2) * s / |s|: keeps the direction, maps the length into [0, 1)."""
    n2 = (s * s).sum(dim=dim, keepdim=True)
    return s * (n2 / (1.0 + n2)) / torch.sqrt(n2.clamp_min(eps))


def capsule_length(v: Tensor, eps: float = EPS) -> Tensor:
    """Euclidean length over the last axis, safe at zero."""
    return torch.sqrt((v * v).sum(dim=-1).clamp_min(eps))


class PrimaryCaps(nn.Module):
    """A strided convolution whose channels are grouped into ``types`` capsules of ``dim`` values."""

    def __init__(self, in_channels: int, types: int, dim: int, kernel: int = 9, stride: int = 2) -> None:
        super().__init__()
        self.types, self.dim = types, dim
        self.conv = nn.Conv2d(in_channels, types * dim, kernel, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        u = self.conv(x)  # N, types*dim, H, W
        h, w = u.shape[2], u.shape[3]
        u = u.view(n, self.types, self.dim, h, w).permute(0, 1, 3, 4, 2)
        return squash(u.reshape(n, self.types * h * w, self.dim))


class DigitCaps(nn.Module):
    """One 16x8 transform per (primary capsule, class) and routing-by-agreement between them."""

    def __init__(self, num_primary: int, num_classes: int, in_dim: int, out_dim: int,
                 routing_iterations: int = 3) -> None:
        super().__init__()
        if routing_iterations < 1:
            raise ValueError("routing_iterations must be >= 1")
        self.routing_iterations = routing_iterations
        self.weight = nn.Parameter(0.01 * torch.randn(num_primary, num_classes, out_dim, in_dim))

    def predictions(self, u: Tensor) -> Tensor:
        """Votes u_hat = W_ij u_i of every primary capsule i for every class pose j, laid out
        (N, C, P, out) so that routing is batched matrix products."""
        p, c, d_out, d_in = self.weight.shape
        # one (C*out x in) @ (in x N) product per primary capsule: P large, well-shaped matmuls
        votes = torch.matmul(self.weight.reshape(p, c * d_out, d_in), u.permute(1, 2, 0))
        # one contiguous copy here saves a copy in every routing product below
        return votes.reshape(p, c, d_out, -1).permute(3, 1, 0, 2).contiguous()

    def route(self, u_hat: Tensor) -> tuple[Tensor, Tensor]:
        """Dynamic routing over votes (N, C, P, out).

        Returns the class poses (N, C, out) and the final coupling coefficients (N, P, C). The
        logits start at zero for every sample; coefficients are a softmax over the parent
        (class) axis, so each primary capsule distributes exactly one unit of vote.
        """
        n, c, p = u_hat.shape[0], u_hat.shape[1], u_hat.shape[2]
        b = torch.zeros(n, c, 1, p, dtype=u_hat.dtype, device=u_hat.device)
        coupling = F.softmax(b, dim=1)
        v = squash(torch.matmul(coupling, u_hat))  # (N, C, 1, P) @ (N, C, P, out) -> (N, C, 1, out)
        for _ in range(self.routing_iterations - 1):
            b = b + torch.matmul(v, u_hat.transpose(2, 3))  # agreement u_hat . v: (N, C, 1, P)
            coupling = F.softmax(b, dim=1)
            v = squash(torch.matmul(coupling, u_hat))
        return v.squeeze(2), coupling.squeeze(2).transpose(1, 2)

    def forward(self, u: Tensor) -> Tensor:
        return self.route(self.predictions(u))[0]


class CapsuleDecoder(nn.Module):
    """FC 512 -> FC 1024 -> FC H*W sigmoid, from masked poses (N, C, D) to an image (N, 1, H, W)."""

    def __init__(self, num_classes: int, pose_dim: int, height: int, width: int,
                 hidden: tuple[int, int] = (512, 1024)) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.net = nn.Sequential(
            nn.Linear(num_classes * pose_dim, hidden[0]), nn.ReLU(inplace=True),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(inplace=True),
            nn.Linear(hidden[1], height * width), nn.Sigmoid(),
        )

    def forward(self, poses: Tensor) -> Tensor:
        out = self.net(poses.flatten(1))
        return out.view(poses.shape[0], 1, self.height, self.width)


class CapsNet(nn.Module):
    """forward(x, y=None) -> (lengths N x C, poses N x C x D, reconstruction N x 1 x H x W).

    The reconstruction is decoded from the poses masked to the true class ``y`` when given
    (training), else to the longest capsule.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        conv_channels: int = 64,
        primary_types: int = 16,
        primary_dim: int = 8,
        pose_dim: int = 16,
        routing_iterations: int = 3,
        decoder_hidden: Sequence[int] = (512, 1024),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, conv_channels, 9)
        self.primary = PrimaryCaps(conv_channels, primary_types, primary_dim)
        side = (input_size - 8 - 9) // 2 + 1
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for CapsNet (minimum 17)")
        self.digits = DigitCaps(primary_types * side * side, num_classes, primary_dim, pose_dim,
                                routing_iterations)
        self.decoder = CapsuleDecoder(num_classes, pose_dim, input_size, input_size,
                                      (int(decoder_hidden[0]), int(decoder_hidden[1])))

    def encode(self, x: Tensor) -> Tensor:
        """Class poses (N, C, D)."""
        return self.digits(self.primary(F.relu(self.conv1(x))))

    def decode(self, masked_poses: Tensor) -> Tensor:
        """Reconstruction from poses already masked to one class (N, C, D) -> (N, 1, H, W)."""
        return self.decoder(masked_poses)

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        poses = self.encode(x)
        lengths = capsule_length(poses)
        index = lengths.argmax(dim=1) if y is None else y
        mask = torch.zeros_like(lengths).scatter(1, index.unsqueeze(1), 1.0)
        recon = self.decoder(poses * mask.unsqueeze(-1))
        return lengths, poses, recon


def margin_loss(lengths: Tensor, target: Tensor, m_pos: float = 0.9, m_neg: float = 0.1,
                lam: float = 0.5) -> Tensor:
    """Sum over classes of the paper's margin loss, mean over the batch."""
    t = F.one_hot(target, lengths.shape[1]).to(lengths.dtype)
    pos = t * F.relu(m_pos - lengths).pow(2)
    neg = lam * (1.0 - t) * F.relu(lengths - m_neg).pow(2)
    return (pos + neg).sum(dim=1).mean()


def reconstruction_loss(recon: Tensor, image: Tensor, weight: float = 0.0005) -> Tensor:
    """Sum of squared pixel errors per image (paper), mean over the batch, times ``weight``."""
    return weight * (recon - image).pow(2).flatten(1).sum(dim=1).mean()
