"""The shared loops as units: ``train_one_epoch`` learns and refuses a non-finite loss,
``evaluate`` reports the task's held-out metrics without touching the weights."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from training.engine import Batch, Task, evaluate, train_one_epoch

CPU = torch.device("cpu")


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[Batch]:
    return ((x[i:i + size], y[i:i + size]) for i in range(0, len(x), size))


def _separable(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    return x, (x[:, 0] > 0).long()


def test_train_one_epoch_lowers_the_loss_and_steps_the_schedule() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    x, y = _separable()
    losses = [train_one_epoch(model, Task(), opt, sched, _batches(x, y, 16), 4, e, 5, CPU)
              for e in range(1, 6)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] / 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.9 ** 20)  # once per batch
    metrics = evaluate(model, Task(), _batches(x, y, 16), 4, CPU)
    assert metrics["test_accuracy"] == 1.0


def test_train_one_epoch_stops_on_a_non_finite_loss() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _separable(8)
    with pytest.raises(FloatingPointError, match="training loss became nan in epoch 3"):
        train_one_epoch(model, Task(), opt, None, _batches(x, y, 4), 2, 3, 3, CPU)


def test_evaluate_reports_accuracy_and_mean_loss_and_keeps_the_weights() -> None:
    model = nn.Identity()  # the inputs are the logits
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 1, 1, 1])  # the third is wrong
    metrics = evaluate(model, Task(), _batches(logits, y, 3), 2, CPU)
    expected_loss = sum(-math.log(math.exp(row[int(t)]) / sum(math.exp(v) for v in row))
                        for row, t in zip(logits.tolist(), y.tolist(), strict=True)) / 4
    assert metrics == {"test_accuracy": 0.75, "test_loss": pytest.approx(expected_loss)}

    lin = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    first = evaluate(lin, Task(), _batches(logits, y, 2), 2, CPU)
    assert first == evaluate(lin, Task(), _batches(logits, y, 2), 2, CPU)  # dropout off
    assert all(torch.equal(before[k], v) for k, v in lin.state_dict().items())
