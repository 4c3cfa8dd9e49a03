"""Batcher watchdogs and overload defaults: execution timeout, bounded close, generic errors,
default queue bound and timeout. Fake clock for the timers; the held model is a real thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from google.protobuf import text_format

from serving.batching import BatchPolicy, DynamicBatcher, FakeClock, QueuePolicy, policy_from_config
from serving.batching.policy import BatchConfig, QueueDefaults
from serving.errors import BackendError, ModelNotReady, QueueFull, RequestTimeout
from serving.generated import model_config_pb2
from serving.logs import request_id_var
from serving.store.reader import batch_config
from tests.unit.serving.batching.test_batcher import Model, busy, dyn, req, run, settle, until


def make_watched(timeout_s: float, instances: int = 1) -> tuple[DynamicBatcher, Model, FakeClock]:
    model, clock = Model(), FakeClock()
    batcher = DynamicBatcher([model] * instances, dyn(max_queue_delay_us=0), clock=clock,
                             execution_timeout_s=timeout_s)
    return batcher, model, clock


def test_a_run_past_the_execution_timeout_fails_its_requests_and_marks_the_instance_stuck() -> None:
    async def body() -> None:
        b, model, clock = make_watched(5.0)
        first, gate = await busy(b, model)
        clock.advance(4.9)
        await settle()
        assert not first.done() and b.stuck == 0
        clock.advance(0.2)
        with pytest.raises(RequestTimeout, match="execution timeout of 5 s"):
            await first
        assert b.stuck == 1
        # The stuck instance takes no new work: the next request waits in the queue.
        model.entered.clear()
        waiting = req(b, 3.0)
        await settle()
        assert b.queued == 1 and not model.entered.is_set()
        model.gate = None
        gate.set()  # the call returns: the instance is usable again and serves the queue
        result = await waiting
        assert result.outputs["y"][0, 0] == 6.0 and b.stuck == 0
        await b.close()
    run(body)


def test_without_a_watchdog_a_long_run_is_waited_for() -> None:
    async def body() -> None:
        b, model, clock = make_watched(0.0)
        first, gate = await busy(b, model)
        clock.advance(3600)
        await settle()
        assert not first.done() and b.stuck == 0
        model.gate = None
        gate.set()
        assert (await first).outputs["y"][0, 0] == -2.0
        await b.close()
    run(body)


def test_close_is_bounded_and_fails_what_still_runs() -> None:
    async def body() -> None:
        b, model, _ = make_watched(0.0)
        first, gate = await busy(b, model)
        queued = req(b, 1.0)
        await settle()
        started = time.monotonic()
        await b.close(timeout_s=0.2)
        assert time.monotonic() - started < 2.0
        with pytest.raises(ModelNotReady, match="unloaded while running"):
            await first
        with pytest.raises(ModelNotReady, match="was unloaded"):
            await queued
        # Its thread is a daemon, so a call that never returns cannot hold the process.
        held = [t for t in threading.enumerate() if t.name.startswith("infer-model")]
        assert held and all(t.daemon for t in held)
        assert b.busy_threads == 1
        model.gate = None
        gate.set()
        await until(lambda: b.busy_threads == 0)
    run(body)


def test_backend_exception_text_never_reaches_the_client() -> None:
    async def body() -> None:
        b, model, _ = make_watched(0.0)
        model.fail_when = lambda x: True
        request_id_var.set("req-42")
        with pytest.raises(BackendError) as exc:
            await req(b, 7.0)
        message = str(exc.value)
        assert "exploded" not in message and "RuntimeError" not in message
        assert message == "inference failed on model 'model'; see the server log (request id req-42)"
        await b.close()
    run(body)


def parse(text: str) -> BatchConfig:
    return batch_config(text_format.Parse(text, model_config_pb2.ModelConfig()))


@pytest.mark.parametrize(("text", "instances", "bound"), [
    ("max_batch_size: 8 dynamic_batching {}", 2, 128),  # 8 x 8 x 2 = 128
    ("max_batch_size: 2 dynamic_batching {}", 1, 64),  # 8 x 2 = 16, raised to the minimum
    ("max_batch_size: 32 dynamic_batching {}", 2, 512),
    ("max_batch_size: 64 dynamic_batching {}", 8, 1024),  # capped
    ("max_batch_size: 0", 1, 64),  # no batching, no dynamic_batching block: bounded too
])
def test_a_config_without_queue_policy_gets_the_default_bound_and_timeout(
        text: str, instances: int, bound: int) -> None:
    policy = policy_from_config(parse(text), instances=instances, defaults=QueueDefaults())
    assert policy.queue_policy(0) == QueuePolicy(max_queue_size=bound,
                                                 default_timeout_us=30_000_000,
                                                 max_queue_items=bound)


def test_the_config_own_queue_policy_wins_over_the_defaults() -> None:
    policy = policy_from_config(parse("""
        max_batch_size: 8
        dynamic_batching {
          priority_levels: 2 default_priority_level: 1
          default_queue_policy { max_queue_size: 3 default_timeout_microseconds: 500 }
          priority_queue_policy { key: 2 value: { allow_timeout_override: true } }
        }"""), instances=1, defaults=QueueDefaults(timeout_us=7))
    assert policy.queue_policy(0) == QueuePolicy(max_queue_size=3, default_timeout_us=500)
    assert policy.queue_policy(1) == QueuePolicy(max_queue_size=64, default_timeout_us=7,
                                                 allow_timeout_override=True, max_queue_items=64)


def test_default_bound_refuses_at_once_and_default_timeout_expires() -> None:
    async def body() -> None:
        model, clock = Model(), FakeClock()
        policy = BatchPolicy(max_batch_size=1, default_queue_policy=QueueDefaults(
            min_queue_size=2, max_queue_size_cap=2, timeout_us=1_000_000).fill(QueuePolicy(), 1, 1))
        b = DynamicBatcher([model], policy, clock=clock)
        first, gate = await busy(b, model)
        waiting = [req(b, float(i)) for i in range(2)]
        await settle()
        started = time.monotonic()
        with pytest.raises(QueueFull):
            await req(b, 9.0)
        assert time.monotonic() - started < 0.1, "overload is refused at once"
        clock.advance(1.01)
        for w in waiting:
            with pytest.raises(RequestTimeout):
                await w
        model.gate = None
        gate.set()
        await first
        await b.close()
    run(body)


def test_triton_semantics_without_defaults_stay_unbounded() -> None:
    policy = policy_from_config(parse("max_batch_size: 8 dynamic_batching {}"))
    assert policy.queue_policy(0) == QueuePolicy()
    assert np.isfinite(QueueDefaults().queue_size(8, 1))
