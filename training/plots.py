"""Training-curve PNGs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_curves(history: list[dict[str, Any]], path: Path, title: str, metric: str) -> None:
    """Left: training loss per epoch; right: the held-out ``metric`` per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(h["epoch"]) for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    a.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3)
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    a.set_yscale("log")
    a.grid(alpha=0.3)
    b.plot(epochs, [h.get(metric, float("nan")) for h in history], marker="o", ms=3, color="C1")
    b.set_xlabel("epoch")
    b.set_ylabel(metric.replace("_", " "))
    b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
