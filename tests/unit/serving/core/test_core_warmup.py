"""config.pbtxt ``model_warmup``: samples run on every instance before READY; bad samples fail
the load with a reason that names the sample and the field."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from serving.core.repository import ModelRepository
from serving.core.types import InferRequest, Tensor
from serving.store import read_model_spec
from tests.unit.serving.conftest import tiny_reference


def _warm(name: str, batch: int, body: str, count: int = 0) -> str:
    return (f'model_warmup {{ name: "{name}" batch_size: {batch} count: {count} '
            f'inputs {{ key: "input" value {{ data_type: TYPE_FP32 {body} }} }} }}\n')


def _add(store: Path, model: str, text: str) -> None:
    path = store / model / "config.pbtxt"
    path.write_text(path.read_text() + text)


def _load(store: Path, model: str) -> ModelRepository:
    repo = ModelRepository(store, reader=read_model_spec, device="cpu")
    repo.scan()
    asyncio.run(repo.load(model))
    return repo


def test_every_instance_runs_every_sample_before_serving(
        tiny_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    _add(tiny_store, "tiny_ts", _warm("zeros", 4, "dims: [1, 4, 4] zero_data: true", count=3)
         + _warm("noise", 1, "dims: [1, 4, 4] random_data: true"))
    with caplog.at_level(logging.INFO, logger="serving.core.warmup"):
        repo = _load(tiny_store, "tiny_ts")
    runs = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
    assert sum("'zeros' x3" in m for m in runs) == 2  # two instances
    assert sum("'noise' x1" in m for m in runs) == 2  # count 0 means once
    x = np.ones((2, 1, 4, 4), np.float32)
    for backend in repo.resolve("tiny_ts").backends:
        got = backend.run({"input": x}, ["logits"])["logits"]
        np.testing.assert_allclose(got, tiny_reference(x), rtol=1e-5, atol=1e-5)


def test_a_sample_the_model_cannot_run_fails_the_load(tiny_store: Path) -> None:
    _add(tiny_store, "tiny", _warm("wrong", 2, "dims: [1, 5, 5] zero_data: true"))
    with pytest.raises(ValueError, match=r"model_warmup 'wrong' failed on cpu"):
        _load(tiny_store, "tiny")


@pytest.mark.parametrize(("text", "reason"), [
    (_warm("big", 9, "dims: [1, 4, 4] zero_data: true"),
     r"model_warmup 'big': batch_size 9 must be 1..8"),
    ('model_warmup { name: "none" batch_size: 1 }\n',
     r"model_warmup 'none': inputs must be exactly the config inputs \(missing \['input'\]"),
    ('model_warmup { name: "int" batch_size: 1 inputs { key: "input" value { '
     'data_type: TYPE_INT32 dims: [1, 4, 4] zero_data: true } } }\n',
     r"model_warmup 'int': input 'input' is INT32 but the config declares FP32"),
    (_warm("var", 1, "dims: [1, -1, 4] zero_data: true"),
     r"model_warmup 'var': input 'input' dims \[1, -1, 4\] must all be fixed"),
    (_warm("escape", 1, 'dims: [1, 4, 4] input_data_file: "../config.pbtxt"'),
     r"model_warmup 'escape': input 'input' file '../config.pbtxt' is outside"),
    (_warm("absent", 1, 'dims: [1, 4, 4] input_data_file: "absent.bin"'),
     r"model_warmup 'absent': input 'input' file 'absent.bin': No such file"),
])
def test_bad_samples_are_refused_by_name(tiny_store: Path, text: str, reason: str) -> None:
    _add(tiny_store, "tiny", text)
    with pytest.raises(ValueError, match=reason):
        _load(tiny_store, "tiny")


def test_data_files_hold_one_sample_or_the_whole_batch(tiny_store: Path) -> None:
    folder = tiny_store / "tiny" / "warmup"
    folder.mkdir()
    (folder / "one.bin").write_bytes(np.arange(16, dtype="<f4").tobytes())
    (folder / "short.bin").write_bytes(b"\0" * 10)
    _add(tiny_store, "tiny", _warm("one", 4, 'dims: [1, 4, 4] input_data_file: "one.bin"'))
    repo = _load(tiny_store, "tiny")
    assert repo.resolve("tiny").version == "1"
    _add(tiny_store, "tiny", _warm("short", 2, 'dims: [1, 4, 4] input_data_file: "short.bin"'))
    with pytest.raises(ValueError, match=r"'short.bin' holds 10 bytes; shape \[2, 1, 4, 4\]"):
        _load(tiny_store, "tiny")


def test_the_served_answer_is_unchanged_by_warmup(tiny_store: Path) -> None:
    from prometheus_client import CollectorRegistry

    from serving.core.metrics import Metrics
    from serving.core.service import InferenceService

    _add(tiny_store, "tiny", _warm("zeros", 8, "dims: [1, 4, 4] zero_data: true"))
    x = np.full((1, 1, 4, 4), 0.5, np.float32)

    async def main() -> np.ndarray:
        service = InferenceService(ModelRepository(tiny_store, reader=read_model_spec, device="cpu"),
                                   Metrics(CollectorRegistry(), process=False, gpu=False),
                                   server_version="t")
        await service.start()
        try:
            res = await service.infer(InferRequest(model_name="tiny", inputs=[
                Tensor("input", "FP32", x.shape, x)]))
        finally:
            await service.close()
        return np.asarray(res.outputs[0].data)

    np.testing.assert_allclose(asyncio.run(main()), tiny_reference(x), rtol=1e-5, atol=1e-5)


def test_a_model_without_batching_needs_the_whole_tensor_in_its_file(tmp_path: Path) -> None:
    from google.protobuf import text_format

    from serving.core.warmup import warmup_samples
    from serving.generated import model_config_pb2
    from serving.store.reader import spec_of

    message = text_format.Parse(
        'name: "m" max_batch_size: 0 input { name: "x" data_type: TYPE_FP32 dims: [2, 4] } '
        'model_warmup { name: "row" inputs { key: "x" value { data_type: TYPE_FP32 dims: [2, 4] '
        'input_data_file: "row.bin" } } }', model_config_pb2.ModelConfig())
    config = spec_of(message)
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "row.bin").write_bytes(np.arange(4, dtype="<f4").tobytes())
    with pytest.raises(ValueError, match=r"'row.bin' holds 16 bytes; shape \[2, 4\]"):
        warmup_samples(config, tmp_path)
    (tmp_path / "warmup" / "row.bin").write_bytes(np.arange(8, dtype="<f4").tobytes())
    ((_, _, inputs),) = warmup_samples(config, tmp_path)
    assert inputs["x"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
