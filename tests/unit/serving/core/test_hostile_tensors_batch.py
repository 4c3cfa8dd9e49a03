"""One bad item fails only itself: a non-UTF-8 BYTES request sharing a batch with a good one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry

from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.service import InferenceService
from serving.core.types import InferRequest, InferResponse, Tensor
from serving.errors import InvalidInput
from serving.store import read_model_spec


def _batched_strings(store: Path) -> None:
    """An Identity over strings whose batcher waits long enough for two requests to meet."""
    model_dir = store / "strings"
    (model_dir / "1").mkdir(parents=True)
    x = helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["N", 1])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["N", 1])
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
                              "strings", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input { name: "INPUT0" data_type: TYPE_STRING dims: [ 1 ] }\n'
        'output { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 1 ] }\n'
        "dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
    )


def _request(item: bytes) -> InferRequest:
    data = np.array([[item]], dtype=object)
    return InferRequest("strings", [Tensor("INPUT0", "BYTES", (1, 1), data)])


def test_a_non_utf8_request_fails_alone_and_its_batch_mate_succeeds(tmp_path: Path) -> None:
    _batched_strings(tmp_path)

    async def main() -> list[InferResponse | BaseException]:
        service = InferenceService(ModelRepository(tmp_path, reader=read_model_spec, device="cpu"),
                                   Metrics(CollectorRegistry(), gpu=False), server_version="0")
        await service.start()
        try:
            # The first request runs alone (an idle model never holds a lone request); the
            # others queue behind it and leave as one batch.
            items = [b"first", b"caf\xc3\xa9", b"\xff\xfe bad", b"last"]
            return await asyncio.gather(*(service.infer(_request(i)) for i in items),
                                        return_exceptions=True)
        finally:
            await service.close()

    first, good, bad, last = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert isinstance(good, InferResponse), good
    assert good.outputs[0].data.tolist() == [["café".encode()]]
    assert isinstance(first, InferResponse) and isinstance(last, InferResponse), (first, last)
    assert isinstance(bad, InvalidInput)
    assert "'INPUT0' element 0 is not valid UTF-8" in bad.message
