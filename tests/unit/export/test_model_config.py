"""The execution bound the exporter writes for models whose image sides the client picks."""

from __future__ import annotations

from export.mar import task_document
from export.model_config import Scheduling, build_config
from export.spec import InputSpec, ModelSpec, model_spec


def _spec(fully_convolutional: bool, task: str = "segmentation") -> ModelSpec:
    inp = InputSpec(channels=1, height=64, width=64, color="L", mean=(0.5,), std=(0.5,),
                    fully_convolutional=fully_convolutional)
    return model_spec(task, ["bg", "fg"], inp, {"source_checkpoint": "x.pt"})


def test_a_fully_convolutional_model_gets_a_quarter_of_a_full_batch_at_max_side() -> None:
    spec = _spec(True)
    cfg = build_config("unet", "onnx", spec, Scheduling(max_batch_size=32))
    assert cfg.parameters["max_side"].string_value == "512"
    assert cfg.parameters["max_batch_elements"].string_value == str(32 * 512 * 512 // 4)
    doc = task_document(spec, 32)
    assert doc["max_batch_elements"] == str(32 * 512 * 512 // 4)


def test_a_fixed_size_model_gets_no_bound_beyond_max_batch_size() -> None:
    spec = _spec(False)
    cfg = build_config("seg", "onnx", spec, Scheduling(max_batch_size=32))
    assert "max_batch_elements" not in cfg.parameters
    assert "max_batch_elements" not in task_document(spec, 32)
