"""Temporary stores for the sections: copies of default models, and a model that never finishes.

The stuck model is an ONNX ``Loop`` with a huge constant trip count around a one-element add:
tiny in memory, it keeps its execution thread busy for as long as the run needs (the way the
integration tests' slow model is built, with onnx.helper, but unbounded).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def copy_models(source: Path, dest: Path, names: list[str]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(source / name, dest / name, symlinks=False)
    return dest


def write_stuck_model(model_dir: Path, iterations: int = 10**10) -> None:
    trips = numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips")
    keep_going = numpy_helper.from_array(np.array(True), "keep_going")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one_b"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(np.ones((1, 1), dtype=np.float32), "one_b")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body)],
        "stuck",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[trips, keep_going],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        "instance_group [ { count: 1 } ]\n")
