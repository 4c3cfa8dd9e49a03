"""Metrics move by the right amounts and parse as Prometheus text."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from serving.core.gpu import GpuCollector
from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.service import InferenceService
from serving.core.types import InferRequest, RequestedOutput, Tensor
from serving.errors import FailureReason, InvalidInput
from serving.store import read_model_spec


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


MV = (("model", "tiny"), ("version", "1"))


def test_request_batch_and_failure_families_move_by_the_right_amounts(tiny_store: Path) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, gpu=False)

    async def main() -> None:
        service = InferenceService(ModelRepository(tiny_store, reader=read_model_spec, device="cpu"), metrics,
                                   server_version="1")
        await service.start()
        x = np.zeros((3, 1, 4, 4), np.float32)
        await service.infer(InferRequest("tiny", [Tensor("input", "FP32", x.shape, x)]))
        with contextlib.suppress(InvalidInput):
            await service.infer(InferRequest("tiny", [Tensor("input", "FP32", x.shape, x)],
                                             outputs=[RequestedOutput("nope")]))
        await service.close()

    asyncio.run(main())
    s = samples(metrics)
    assert s[("capserve_request_success_total", MV)] == 1
    assert s[("capserve_inference_count_total", MV)] == 3
    assert s[("capserve_execution_count_total", MV)] == 1
    assert s[("capserve_request_failure_total", tuple(sorted((*MV, ("reason", "invalid")))))] == 1
    assert s[("capserve_request_duration_seconds_count", MV)] == 2
    assert s[("capserve_queue_duration_seconds_count", MV)] == 1
    for stage in ("input", "infer", "output"):
        assert s[(f"capserve_compute_{stage}_duration_seconds_count", MV)] == 1
    assert s[("capserve_batch_size_bucket", tuple(sorted((*MV, ("le", "2.0")))))] == 0
    assert s[("capserve_batch_size_bucket", tuple(sorted((*MV, ("le", "4.0")))))] == 1
    assert s[("capserve_pending_requests", MV)] == 0
    assert s[("capserve_inflight_requests", ())] == 0
    assert s[("capserve_model_ready", MV)] == 0, "closed service: no longer ready"
    assert s[("capserve_model_load_duration_seconds", MV)] > 0
    assert any(name.startswith("process_") for name, _ in s)


def test_methods_and_large_values_render_without_exponents() -> None:
    metrics = Metrics(CollectorRegistry(), process=False, gpu=False)
    metrics.request_failed("m", "2", FailureReason.TIMEOUT, 0.5)
    metrics.model_state("m", "2", True, load_seconds=81559224320.0)
    text = metrics.exposition().decode()
    assert 'capserve_model_load_duration_seconds{model="m",version="2"} 81559224320\n' in text
    assert 'capserve_request_failure_total{model="m",reason="timeout",version="2"} 1.0' in text
    list(text_string_to_metric_families(text))


def test_gpu_collector_is_absent_or_reports_every_gpu() -> None:
    collector = GpuCollector.create()
    if collector is None:  # no GPU here: nothing registered, nothing harmful
        text = Metrics(CollectorRegistry(), process=False).exposition().decode()
        assert "capserve_gpu_" not in text and "nv_gpu_" not in text
        return
    families = {f.name: f for f in collector.collect()}
    assert {"capserve_gpu_utilization_ratio", "nv_gpu_memory_total_bytes"} <= set(families)
    assert all(s.labels["gpu_uuid"] for s in families["nv_gpu_memory_total_bytes"].samples)
    collector.close()
