"""The config.pbtxt a ``.mar`` archive is served with says what export's config.pbtxt says.

Export writes ``capserve_task.json`` into the archive and ``config.pbtxt`` into the Triton
store; the server rebuilds the config from the task file. Both sides build the ModelConfig
message, and for the same model they agree on every field the archive carries.
"""

from __future__ import annotations

import json

from google.protobuf import json_format, text_format

from export.mar import TASK_FILE as EXPORT_TASK_FILE
from export.mar import task_document
from export.model_config import Scheduling, build_config, config_text
from export.spec import ModelSpec, TensorSpec
from serving.archives.mar import NOT_PARAMETERS, TASK_FILE
from serving.archives.materialize import config_text as archive_config_text
from serving.archives.task_doc import check_task_document
from serving.generated import model_config_pb2 as pb

SPEC = ModelSpec(
    task="classification",
    inputs=(TensorSpec("input", (1, 28, 28), image=True),),
    outputs=(TensorSpec("logits", (10,), label_filename="labels.txt"),),
    parameters={"task": "classification", "input_color": "L", "mean": "0.5", "std": "0.5"},
    labels=tuple(str(i) for i in range(10)),
)


def _as_dict(text: str) -> dict[str, object]:
    msg = text_format.Parse(text, pb.ModelConfig())
    return json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))


def test_archive_config_matches_the_exported_one() -> None:
    exported = _as_dict(config_text(build_config("lenet", "torchscript", SPEC, Scheduling())))
    served = _as_dict(archive_config_text("lenet", "pytorch_libtorch",
                                          task_document(SPEC, 32), has_labels=True))
    # Written by export only: capserve_task.json has no place for them.
    exported.pop("default_model_filename")
    exported["dynamic_batching"].pop("default_queue_policy")  # type: ignore[attr-defined]
    assert served == exported


def test_export_and_serving_name_the_task_file_alike() -> None:
    assert EXPORT_TASK_FILE == TASK_FILE
    doc = task_document(SPEC, 32)
    assert set(doc) - set(SPEC.parameters) <= set(NOT_PARAMETERS)


FC_SPEC = ModelSpec(
    task="segmentation",
    inputs=(TensorSpec("input", (1, -1, -1), image=True),),
    outputs=(TensorSpec("logits", (2, -1, -1)),),
    parameters={"task": "segmentation", "input_color": "L", "mean": "0.5", "std": "0.5",
                "resize": "none", "max_side": "512"},
    labels=("bg", "fg"),
)


def test_a_fully_convolutional_archive_keeps_the_execution_bound() -> None:
    """unet.mar served from its task file has the max_batch_elements its exported config has
    (the archive's allowlist accepts the key)."""
    doc = check_task_document(task_document(FC_SPEC, 32), "unet.mar")
    exported = _as_dict(config_text(build_config("unet", "onnx", FC_SPEC, Scheduling())))
    served = _as_dict(archive_config_text("unet", "onnxruntime_onnx", doc, has_labels=True))
    bound = {"string_value": str(32 * 512 * 512 // 4)}
    assert served["parameters"]["max_batch_elements"] == bound  # type: ignore[index]
    assert exported["parameters"]["max_batch_elements"] == bound  # type: ignore[index]
