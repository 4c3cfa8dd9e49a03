"""InferenceService end to end on the tiny store: validation, classification, stats, control."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.service import InferenceService
from serving.core.types import InferRequest, RequestedOutput, Tensor
from serving.errors import (
    InvalidInput,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
    ServerNotReady,
)
from serving.store import read_model_spec
from tests.unit.serving.conftest import tiny_reference

Body = Callable[[InferenceService], Awaitable[None]]


def with_service(store: Path, body: Body, registry: CollectorRegistry | None = None) -> None:
    async def main() -> None:
        metrics = Metrics(registry or CollectorRegistry(), gpu=False)
        service = InferenceService(ModelRepository(store, reader=read_model_spec, device="cpu"), metrics,
                                   server_version="9.9")
        await service.start()
        try:
            await body(service)
        finally:
            await service.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def image(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)


def request(model: str = "tiny", x: np.ndarray | None = None, **kw: object) -> InferRequest:
    x = image(2) if x is None else x
    return InferRequest(model, [Tensor("input", "FP32", x.shape, x)], **kw)  # type: ignore[arg-type]


def test_infer_returns_reference_outputs_for_onnx_and_torchscript(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        assert s.server_live() and s.server_ready() and s.load_failures() == {}
        x = image(3)
        for name in ("tiny", "tiny_ts", "tiny_ext"):
            r = await s.infer(request(name, x, id="req-7"))
            assert (r.model_name, r.model_version, r.id) == (name, "1", "req-7")
            logits = next(t for t in r.outputs if t.name == "logits")
            assert logits.datatype == "FP32" and logits.shape == (3, 3)
            np.testing.assert_allclose(logits.data, tiny_reference(x), rtol=1e-5, atol=1e-5)
        r = await s.infer(request("tiny_ts", x, outputs=[RequestedOutput("features"),
                                                         RequestedOutput("logits")]))
        assert [t.name for t in r.outputs] == ["features", "logits"]
        fixed = image(1).reshape(1, 1, 4, 4)
        r = await s.infer(request("fixed", fixed))
        assert r.outputs[0].shape == (1, 3)
    with_service(tiny_store, body)


def test_concurrent_requests_are_batched_and_answered_correctly(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        xs = [image(1, seed=i) for i in range(24)]
        results = await asyncio.gather(*[s.infer(request("tiny", x)) for x in xs])
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_allclose(r.outputs[0].data, tiny_reference(x), rtol=1e-5, atol=1e-5)
        stats = s.model_statistics("tiny")[0]
        assert stats.inference_count == 24 and stats.success.count == 24
        assert stats.queue.count == 24 and stats.compute_infer.count == 24
        assert stats.execution_count < 24, "concurrent requests share executions"
        assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == 24
        assert stats.execution_count == sum(b.compute_infer.count for b in stats.batch_stats)
    with_service(tiny_store, body)


def test_classification_extension(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        x = image(2)
        r = await s.infer(request("tiny", x, outputs=[RequestedOutput("logits", class_count=2)]))
        out = r.outputs[0]
        assert out.datatype == "BYTES" and out.shape == (2, 2)
        ref = tiny_reference(x)
        labels = ["cat", "dog", "bird"]
        for row in range(2):
            order = np.argsort(-ref[row])[:2]
            expected = [f"{ref[row, i]:.6f}:{i}:{labels[i]}".encode() for i in order]
            assert list(out.data[row]) == expected
        r = await s.infer(request("tiny_ts", x, outputs=[RequestedOutput("logits", class_count=9)]))
        assert r.outputs[0].shape == (2, 3), "k is capped at the class count"
        assert r.outputs[0].data[0, 0].count(b":") == 1, "no labels.txt -> value:index"
    with_service(tiny_store, body)


@pytest.mark.parametrize(("mutate", "error", "message"), [
    (lambda r: setattr(r, "model_name", "nope"), ModelNotFound, "unknown model: 'nope'"),
    (lambda r: setattr(r, "model_version", "7"), ModelNotFound, "version 7"),
    (lambda r: r.inputs.append(Tensor("extra", "FP32", (2,), np.zeros(2, np.float32))),
     InvalidInput, "unexpected inference input 'extra'"),
    (lambda r: r.inputs.clear(), InvalidInput, "missing 'input'"),
    (lambda r: r.inputs.__setitem__(0, Tensor("input", "INT64", (2, 1, 4, 4),
                                              np.zeros((2, 1, 4, 4), np.int64))),
     InvalidInput, "expected FP32, got INT64"),
    (lambda r: r.inputs.__setitem__(0, Tensor("input", "FP32", (2, 1, 4, 5),
                                              np.zeros((2, 1, 4, 5), np.float32))),
     InvalidInput, r"Expected \[-1, 1, 4, 4\], got \[2, 1, 4, 5\]"),
    (lambda r: r.inputs.__setitem__(0, Tensor("input", "FP32", (9, 1, 4, 4),
                                              np.zeros((9, 1, 4, 4), np.float32))),
     InvalidInput, "batch-size must be <= 8"),
    (lambda r: r.outputs.append(RequestedOutput("probs")), InvalidInput,
     "unexpected inference output 'probs'"),
    (lambda r: r.parameters.__setitem__("priority", "high"), InvalidInput, "'priority' must be"),
])
def test_invalid_requests_get_clear_errors(tiny_store: Path, mutate: Callable[[InferRequest], None],
                                           error: type[Exception], message: str) -> None:
    async def body(s: InferenceService) -> None:
        r = request()
        mutate(r)
        with pytest.raises(error, match=message):
            await s.infer(r)
        assert (await s.infer(request())).outputs, "the model keeps serving"
    with_service(tiny_store, body)


def test_model_without_batch_dim_wants_exact_dims(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        with pytest.raises(InvalidInput, match=r"Expected \[1, 1, 4, 4\]"):
            await s.infer(request("fixed", image(2)))
    with_service(tiny_store, body)


def test_metadata_config_index_and_description(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        meta = s.server_metadata()
        assert meta.name == "capserve" and meta.version == "9.9"
        assert {"classification", "statistics", "model_repository"} <= set(meta.extensions)
        m = s.model_metadata("tiny")
        assert m.platform == "onnxruntime_onnx" and m.versions == ("1",)
        assert m.inputs[0].shape == (-1, 1, 4, 4) and m.outputs[0].shape == (-1, 3)
        assert s.model_metadata("fixed").inputs[0].shape == (1, 1, 4, 4)
        assert s.model_spec("tiny_ts").platform == "pytorch_libtorch"
        assert s.model_spec("tiny").name == "tiny"
        assert s.model_spec("tiny").parameters == {"task": "classification"}
        assert s.model_labels("tiny") == ["cat", "dog", "bird"] and s.model_labels("tiny_ts") == []
        assert s.model_names() == ["fixed", "tiny", "tiny_ext", "tiny_ts"]
        index = {(e.name, e.version): e.state for e in s.repository_index()}
        assert index[("tiny", "1")] == "READY"
        (d,) = s.describe_model("tiny_ts")
        assert (d.instances, d.max_batch_size, d.is_default, d.ready) == (2, 4, True, True)
        assert not s.model_ready("nope") and s.model_ready("tiny", "1")
        with pytest.raises(ModelNotFound):
            s.model_metadata("nope")
    with_service(tiny_store, body)


def test_failed_model_is_recorded_and_others_serve(tiny_store: Path) -> None:
    (tiny_store / "broken").mkdir()
    (tiny_store / "broken" / "config.pbtxt").write_text("max_batch_size: [")
    (tiny_store / "tiny_ext" / "config.pbtxt").write_text(
        (tiny_store / "tiny_ext" / "config.pbtxt").read_text().replace('"input"', '"pixels"'))

    async def body(s: InferenceService) -> None:
        failures = s.load_failures()
        assert set(failures) == {"broken", "tiny_ext"}
        assert "config.pbtxt" in failures["broken"]
        assert "['pixels'] are not in the model" in failures["tiny_ext"]
        assert not s.server_ready()
        assert (await s.infer(request("tiny"))).outputs
        with pytest.raises(ModelNotReady):
            await s.infer(request("tiny_ext"))
        states = {e.name: (e.state, e.reason) for e in s.repository_index()}
        assert states["broken"][0] == "UNAVAILABLE" and states["broken"][1]
        assert [e.name for e in s.repository_index(ready_only=True)] == ["fixed", "tiny", "tiny_ts"]
        with pytest.raises(ModelLoadFailed, match="failed to load 'broken'"):
            await s.load_model("broken")
    with_service(tiny_store, body)


def test_unload_load_and_scale(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        await s.unload_model("tiny")
        assert not s.model_ready("tiny") and s.server_ready(), "an unloaded model is not required"
        (gone,) = s.describe_model("tiny")
        assert not gone.ready and gone.max_batch_size == 8
        assert ("tiny", "1", "UNAVAILABLE") in [(e.name, e.version, e.state)
                                                for e in s.repository_index()]
        with pytest.raises(ModelNotReady):
            await s.infer(request("tiny"))
        await s.load_model("tiny")
        assert s.model_ready("tiny") and s.server_ready()
        await s.infer(request("tiny"))
        await s.scale_model("tiny", "1", 3)
        assert s.describe_model("tiny")[0].instances == 3
        await s.infer(request("tiny"))
        assert s.model_statistics("tiny")[0].success.count == 2, "stats survive a rescale"
        with pytest.raises(InvalidInput):
            await s.scale_model("tiny", "1", 0)
    with_service(tiny_store, body)


def test_drain_refuses_new_work_and_waits_for_running(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        running = [asyncio.ensure_future(s.infer(request("tiny", image(1, i)))) for i in range(6)]
        await asyncio.sleep(0)
        s.begin_drain()
        assert not s.server_ready() and s.server_live()
        with pytest.raises(ServerNotReady):
            await s.infer(request())
        await s.drain(grace_s=30)
        assert all(t.done() and t.exception() is None for t in running)
    with_service(tiny_store, body)


def test_statistics_for_failures_and_unknown_models(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        with pytest.raises(InvalidInput):
            await s.infer(request(outputs=[RequestedOutput("zzz")]))
        await s.infer(request())
        st = s.model_statistics("tiny", "1")[0]
        assert (st.version, st.fail.count, st.success.count, st.inference_count) == ("1", 1, 1, 2)
        assert st.last_inference > 1_600_000_000_000
        assert {x.name for x in s.model_statistics()} == set(s.model_names())
        with pytest.raises(ModelNotFound):
            s.model_statistics("nope")
    with_service(tiny_store, body)
