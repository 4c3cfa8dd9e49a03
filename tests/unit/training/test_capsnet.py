"""CapsNet invariants: routing, squash, zero input, masking, losses."""

from __future__ import annotations

import torch

from training.models.capsnet import CapsNet, capsule_length, margin_loss, squash

TINY = {"num_classes": 5, "conv_channels": 8, "primary_types": 4, "decoder_hidden": [16, 32]}


def test_coupling_coefficients_sum_to_one_over_parents() -> None:
    torch.manual_seed(0)
    model = CapsNet(**TINY)
    u = model.primary(torch.relu(model.conv1(torch.rand(3, 1, 28, 28))))
    for iterations in (1, 3, 5):
        model.digits.routing_iterations = iterations
        poses, coupling = model.digits.route(model.digits.predictions(u))
        assert coupling.shape == (3, u.shape[1], 5)
        torch.testing.assert_close(coupling.sum(dim=2), torch.ones(3, u.shape[1]))
        assert poses.shape == (3, 5, 16)
    # with more than one iteration the coefficients are no longer uniform: routing did something
    assert float(coupling.detach().std()) > 0


def test_squash_keeps_direction_and_length_below_one() -> None:
    # up to |s| ~ 30: beyond that float32 rounds |s|^2 / (1 + |s|^2) to exactly 1
    s = torch.randn(1000, 16) * torch.logspace(-4, 1.5, 1000).unsqueeze(1)
    v = squash(s)
    lengths = v.norm(dim=-1)
    assert float(lengths.max()) < 1.0
    cos = torch.nn.functional.cosine_similarity(v, s, dim=-1)
    assert float(cos[lengths > 1e-6].min()) > 0.999
    expected = s.norm(dim=-1) ** 2 / (1 + s.norm(dim=-1) ** 2)
    torch.testing.assert_close(lengths, expected, rtol=1e-4, atol=1e-6)


def test_all_zero_input_gives_finite_outputs() -> None:
    torch.manual_seed(0)
    model = CapsNet(**TINY).eval()
    with torch.no_grad():
        model.conv1.bias.zero_()
        model.primary.conv.bias.zero_()
        lengths, poses, recon = model(torch.zeros(2, 1, 28, 28))
    assert torch.isfinite(lengths).all() and torch.isfinite(poses).all()
    assert torch.isfinite(recon).all()
    assert torch.isfinite(squash(torch.zeros(4, 16))).all()
    assert torch.isfinite(capsule_length(torch.zeros(4, 16))).all()


def test_reconstruction_is_masked_by_label_or_longest_capsule() -> None:
    torch.manual_seed(0)
    model = CapsNet(**TINY).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        lengths, poses, recon = model(x)
        mask = torch.nn.functional.one_hot(lengths.argmax(1), 5).unsqueeze(-1).float()
        torch.testing.assert_close(recon, model.decode(poses * mask))
        assert recon.shape == (4, 1, 28, 28)
        assert float(recon.min()) >= 0 and float(recon.max()) <= 1
        y = (lengths.argmax(1) + 1) % 5
        _, _, other = model(x, y)
        torch.testing.assert_close(other, model.decode(
            poses * torch.nn.functional.one_hot(y, 5).unsqueeze(-1).float()))
        assert not torch.allclose(other, recon)


def test_margin_loss_matches_the_paper() -> None:
    lengths = torch.tensor([[0.95, 0.05, 0.5]])
    # true class 0 above 0.9: 0; class 1 below 0.1: 0; class 2: 0.5 * (0.5 - 0.1)^2
    torch.testing.assert_close(margin_loss(lengths, torch.tensor([0])), torch.tensor(0.08))
    # true class 2: (0.9 - 0.5)^2 + 0.5 * (0.95 - 0.1)^2
    torch.testing.assert_close(margin_loss(lengths, torch.tensor([2])),
                               torch.tensor(0.16 + 0.5 * 0.85**2))


def test_capsnet_scripts_to_the_same_outputs() -> None:
    model = CapsNet(**TINY).eval()
    scripted = torch.jit.script(model)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        for a, b in zip(model(x), scripted(x), strict=True):
            torch.testing.assert_close(a, b)
