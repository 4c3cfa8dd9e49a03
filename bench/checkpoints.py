"""Random-weight checkpoints (the project's checkpoint contract) for benchmark-only models."""

from __future__ import annotations

from pathlib import Path

_IMAGENET = {"channels": 3, "height": 224, "width": 224, "color": "RGB",
             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
             "fully_convolutional": False}


def write_random_checkpoint(path: Path, arch: str, num_classes: int = 1000,
                            seed: int = 0) -> Path:
    """Write a checkpoint for ``arch`` with seeded random weights and 224x224 RGB input.

    Throughput does not depend on the weights' values, so benchmarks need no trained weights
    (and no download).
    """
    import torch

    from training.checkpoint import save_checkpoint
    from training.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes).eval()
    save_checkpoint(
        path, arch=arch, arch_kwargs={"num_classes": num_classes}, task="classification",
        labels=[f"class_{i}" for i in range(num_classes)], input_spec=dict(_IMAGENET),
        state_dict=model.state_dict(), metrics={},
        provenance={"data": "random-weights", "epochs": 0, "seed": seed, "batch_size": 0,
                    "lr": 0.0},
    )
    return path
