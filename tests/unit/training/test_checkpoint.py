"""The checkpoint contract: round trip, validation, and refusal of pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from training.checkpoint import InvalidCheckpoint, load_checkpoint, save_checkpoint
from training.models.registry import build_model

SPEC = {"channels": 1, "height": 28, "width": 28, "color": "L", "mean": [0.13], "std": [0.31],
        "fully_convolutional": False}


def _save(path: Path, **overrides: Any) -> dict[str, Any]:
    model = build_model("lenet", num_classes=10)
    kwargs: dict[str, Any] = dict(
        arch="lenet", arch_kwargs={"num_classes": 10}, task="classification",
        labels=[str(i) for i in range(10)], input_spec=SPEC, state_dict=model.state_dict(),
        metrics={"test_accuracy": 0.5}, provenance={"data": "mnist5k", "epochs": 1, "seed": 0})
    kwargs.update(overrides)
    return save_checkpoint(path, **kwargs)


def test_round_trip_rebuilds_the_same_model(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    saved = _save(path)
    ckpt = load_checkpoint(path)
    assert ckpt["arch"] == "lenet" and ckpt["labels"] == saved["labels"]
    assert ckpt["input"] == SPEC and ckpt["metrics"] == {"test_accuracy": 0.5}
    assert "torch" in ckpt["provenance"]["versions"] and ckpt["provenance"]["created"]
    model = build_model(ckpt["arch"], **ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    x = torch.rand(3, 1, 28, 28)
    ref = build_model("lenet", num_classes=10)
    ref.load_state_dict(saved["state_dict"])
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    # the contract: plain torch.load with weights_only works on its own
    assert torch.load(path, weights_only=True)["format"] == "capserve-checkpoint"


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_smuggled_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    good = _save(tmp_path / "good.pt")
    good["provenance"] = {"note": _Payload(marker)}
    torch.save(good, path)
    with pytest.raises(InvalidCheckpoint, match="not a safe checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    # sanity: the payload is real - an unrestricted unpickler would have run it
    with open(path, "rb") as fh:
        data = fh.read()
    assert b"system" in data
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"arch": "nonexistent"}, "unknown arch"),
    ({"task": "detection"}, "unknown task"),
    ({"input_spec": {**SPEC, "color": "CMYK"}}, "color"),
    ({"input_spec": {**SPEC, "mean": [0.1, 0.2]}}, "mean/std"),
    ({"arch_kwargs": {"act": object()}}, "plain JSON"),
])
def test_invalid_contents_are_refused_on_save(tmp_path: Path, change: dict[str, Any],
                                              message: str) -> None:
    with pytest.raises(InvalidCheckpoint, match=message):
        _save(tmp_path / "bad.pt", **change)


def test_load_reports_missing_keys_and_non_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "partial.pt"
    torch.save({"format": "capserve-checkpoint", "arch": "lenet"}, path)
    with pytest.raises(InvalidCheckpoint, match="missing keys"):
        load_checkpoint(path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip and not a pickle")
    with pytest.raises(InvalidCheckpoint):
        load_checkpoint(junk)
