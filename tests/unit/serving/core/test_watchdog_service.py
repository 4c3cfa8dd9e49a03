"""The core's watchdogs and lifecycle on the tiny store: a backend that hangs, a load that
hangs, drain admission, model-control serialisation, failed reloads and readiness."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import serving.core.loaded as loaded_module
from serving.core.limits import ServiceLimits
from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.service import InferenceService
from serving.errors import (
    BackendError,
    InvalidInput,
    ModelLoadFailed,
    ModelNotReady,
    RequestTimeout,
    ServerNotReady,
)
from serving.store import read_model_spec
from tests.unit.serving.core.test_core_service import image, request

Body = Callable[[InferenceService], Awaitable[None]]


def with_service(store: Path, body: Body, **limits: Any) -> None:
    async def main() -> None:
        repo = ModelRepository(store, reader=read_model_spec, device="cpu", limits=ServiceLimits(**limits))
        service = InferenceService(repo, Metrics(CollectorRegistry(), gpu=False),
                                   server_version="9.9")
        await service.start()
        try:
            await body(service)
        finally:
            await service.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def hang(service: InferenceService, model: str = "tiny") -> threading.Event:
    """Make every instance of ``model`` block in its backend call until the event is set."""
    release = threading.Event()
    for backend in service._repo.resolve(model).backends:
        real = backend.run

        def run(inputs: Any, outputs: Any, real: Any = real) -> Any:
            release.wait(20)
            return real(inputs, outputs)

        backend.run = run  # type: ignore[method-assign]
    return release


def test_a_hung_backend_fails_its_request_and_turns_liveness_and_readiness_false(
        tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        release = hang(s)
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="execution timeout"):
            await s.infer(request("tiny"))
        assert time.monotonic() - started < 5
        assert s.stuck_instances() == {"tiny/1": 1}
        assert not s.server_live() and not s.server_ready()
        assert (await s.infer(request("tiny_ts"))).outputs, "other models still serve"
        release.set()
        for _ in range(200):
            if s.server_live():
                break
            await asyncio.sleep(0.01)
        assert s.server_live() and s.server_ready()
        assert (await s.infer(request("tiny"))).outputs
    with_service(tiny_store, body, execution_timeout_s=0.3)


def test_unload_of_a_hung_model_is_bounded(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        release = hang(s)
        running = asyncio.ensure_future(s.infer(request("tiny")))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await s.unload_model("tiny")
        assert time.monotonic() - started < 3
        with pytest.raises(ModelNotReady, match="unloaded while running"):
            await running
        release.set()
    with_service(tiny_store, body, execution_timeout_s=0, close_timeout_s=0.3)


def test_close_after_a_spent_drain_does_not_wait_for_a_hung_backend(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        release = hang(s)
        running = asyncio.ensure_future(s.infer(request("tiny")))
        await asyncio.sleep(0.05)
        s.begin_drain()
        await s.drain(grace_s=0.2)
        started = time.monotonic()
        await s.close()
        assert time.monotonic() - started < 2.5
        with pytest.raises(ModelNotReady):
            await running
        release.set()
    with_service(tiny_store, body, execution_timeout_s=0, close_timeout_s=30)


def test_a_hung_load_is_bounded_and_reported(tiny_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(s: InferenceService) -> None:
        real = loaded_module.create_backend
        release = threading.Event()

        def slow(spec: Any) -> Any:
            release.wait(20)
            return real(spec)

        monkeypatch.setattr(loaded_module, "create_backend", slow)
        started = time.monotonic()
        with pytest.raises(ModelLoadFailed, match="did not finish within 0.3 s"):
            await s.load_model("fixed")
        assert time.monotonic() - started < 3
        assert s.model_ready("fixed"), "the version that served before goes on serving"
        assert s.server_ready()
        states = {(e.name, e.version): (e.state, e.reason) for e in s.repository_index()}
        state, reason = states[("fixed", "1")]
        assert state == "READY" and "reload failed" in reason and "did not finish" in reason
        release.set()
    with_service(tiny_store, body, load_timeout_s=0.3)


def test_failed_hot_reload_keeps_readiness_while_the_old_version_serves(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        (tiny_store / "tiny" / "1" / "model.onnx").write_bytes(b"not a model")
        with pytest.raises(ModelLoadFailed):
            await s.load_model("tiny")
        assert s.server_ready() and s.model_ready("tiny")
        assert (await s.infer(request("tiny"))).outputs
        (entry,) = [e for e in s.repository_index() if e.name == "tiny"]
        assert entry.state == "READY" and entry.reason.startswith("reload failed")
    with_service(tiny_store, body)


def test_admitted_requests_finish_during_a_drain_new_ones_are_refused(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        uploaded = asyncio.Event()

        async def slow_upload() -> np.ndarray:
            with s.admission():  # the transport admits it when the request arrives
                await uploaded.wait()  # body still uploading / image decoding
                response = await s.infer(request("tiny"))
                return response.outputs[0].data

        accepted = asyncio.ensure_future(slow_upload())
        await asyncio.sleep(0)
        s.begin_drain()
        drained = asyncio.ensure_future(s.drain(grace_s=10))
        await asyncio.sleep(0.05)
        assert not drained.done(), "the drain waits for the admitted request"
        with pytest.raises(ServerNotReady):
            await s.infer(request("tiny"))
        # Arrived after the drain began: refused even though the transport admitted it.
        with s.admission(), pytest.raises(ServerNotReady):
            await s.infer(request("tiny"))
        uploaded.set()
        assert (await accepted).shape == (2, 3)
        await asyncio.wait_for(drained, 5)
    with_service(tiny_store, body)


def test_a_relayed_request_holds_the_drain_but_is_not_counted_twice(tiny_store: Path) -> None:
    """A request another worker accepted and handed over: this worker's drain waits for it, and
    the in-flight gauge (summed over workers) leaves it to the worker that holds the client."""
    async def body(s: InferenceService) -> None:
        gauge = s._metrics.inflight_requests
        release = asyncio.Event()

        async def held(relayed: bool) -> None:
            with s.admission(relayed):
                await release.wait()
                await s.infer(request("tiny"))

        tasks = [asyncio.ensure_future(held(True)), asyncio.ensure_future(held(True)),
                 asyncio.ensure_future(held(False))]
        await asyncio.sleep(0.01)
        assert gauge._value.get() == 1  # only the request this worker's client sent
        s.begin_drain()
        drained = asyncio.ensure_future(s.drain(grace_s=10))
        await asyncio.sleep(0.05)
        assert not drained.done(), "the drain waits for the relayed requests too"
        release.set()
        await asyncio.gather(*tasks)
        await asyncio.wait_for(drained, 5)
        assert gauge._value.get() == 0
    with_service(tiny_store, body)


def test_scale_is_bounded_and_serialised_with_unload(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        with pytest.raises(InvalidInput, match="between 1 and 4"):
            await s.scale_model("tiny", "1", 5)
        scale = asyncio.ensure_future(s.scale_model("tiny", "1", 2))
        await asyncio.sleep(0)
        unload = asyncio.ensure_future(s.unload_model("tiny"))
        await asyncio.gather(scale, unload, return_exceptions=True)
        # The unload ran after the rescale: the model stays unloaded (no resurrected version).
        assert not s.model_ready("tiny")
        with pytest.raises(ModelNotReady):
            await s.infer(request("tiny"))
    with_service(tiny_store, body, max_instances=4)


def test_internal_failures_reach_the_client_without_their_detail(tiny_store: Path) -> None:
    async def body(s: InferenceService) -> None:
        for backend in s._repo.resolve("tiny").backends:
            def boom(inputs: Any, outputs: Any) -> Any:
                raise RuntimeError("/secret/path/model.onnx: bad node")
            backend.run = boom  # type: ignore[method-assign]
        with pytest.raises(BackendError) as exc:
            await s.infer(request("tiny", image(1)))
        assert "/secret" not in str(exc.value) and "see the server log" in str(exc.value)
    with_service(tiny_store, body)
