"""DynamicBatcher rules on a fake clock: no test waits out a delay or a timeout."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from serving.batching import BatchPolicy, DynamicBatcher, FakeClock, QueuePolicy
from serving.errors import BackendError, InvalidInput, ModelNotReady, QueueFull, RequestTimeout

DELAY_US = 2000


class Model:
    """A real runner (y = 2x) that can be held busy and records every batch it ran."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_when: Callable[[np.ndarray], bool] = lambda x: False
        self.bad_dim0 = False

    def hold(self) -> threading.Event:
        self.gate = threading.Event()
        return self.gate

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.copy())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_when(x):
            raise RuntimeError("backend exploded")
        y = x * 2
        return {"y": y[:-1] if self.bad_dim0 else y}

    @property
    def sizes(self) -> list[int]:
        return [b.shape[0] for b in self.batches]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


async def settle() -> None:
    """Let callbacks already due on the loop run (no clock involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def make(policy: BatchPolicy, instances: int = 1, **kw: Any) -> tuple[DynamicBatcher, Model, FakeClock]:
    model = Model()
    clock = FakeClock()
    return DynamicBatcher([model] * instances, policy, clock=clock, **kw), model, clock


def dyn(**kw: Any) -> BatchPolicy:
    base: dict[str, Any] = {"max_batch_size": 8, "dynamic": True, "max_queue_delay_us": DELAY_US}
    base.update(kw)
    return BatchPolicy(**base)


def req(b: DynamicBatcher, value: float, n: int = 1, width: int = 3, **kw: Any) -> asyncio.Task[Any]:
    x = np.full((n, width), value, dtype=np.float32)
    return asyncio.ensure_future(b.submit({"x": x}, n, **kw))


async def arrive(b: DynamicBatcher, value: float, **kw: Any) -> asyncio.Task[Any]:
    """Submit and let the request reach the queue at the current (fake) time."""
    task = req(b, value, **kw)
    await settle()
    return task


async def busy(b: DynamicBatcher, model: Model) -> tuple[asyncio.Task[Any], threading.Event]:
    """Occupy the only instance with a held request."""
    gate = model.hold()
    first = req(b, -1.0)
    await until(model.entered.is_set)
    return first, gate


def test_lone_request_runs_at_once_without_waiting_for_the_delay() -> None:
    async def body() -> None:
        b, model, clock = make(dyn())
        result = await req(b, 3.0)
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 3), 6.0, np.float32))
        assert model.sizes == [1] and clock.pending_timers() == 0
        await b.close()
    run(body)


GAP = 0.0001  # 100 us between arrivals


def test_batch_keeps_filling_while_requests_arrive_but_the_delay_bounds_it() -> None:
    async def body() -> None:
        b, model, clock = make(dyn(max_batch_size=64))
        first, gate = await busy(b, model)
        clock.advance(GAP)
        tasks = [await arrive(b, 0.0)]
        clock.advance(GAP)
        tasks.append(await arrive(b, 1.0))
        model.gate = None
        gate.set()
        await first
        await settle()
        assert model.sizes == [1], "a small batch is held while requests keep arriving"
        for i in range(2, 40):
            clock.advance(GAP)
            if b.queued == 0:
                break
            tasks.append(await arrive(b, float(i)))
        results = await asyncio.gather(*tasks)
        # held from the head's arrival until the 2 ms delay (20 arrivals 0.1 ms apart; the
        # float clock may let a 21st slip in at the boundary)
        assert model.sizes[1] in (20, 21)
        assert results[0].queue_s == pytest.approx(DELAY_US / 1e6, abs=1e-6)
        np.testing.assert_array_equal(results[1].outputs["y"], np.full((1, 3), 2.0, np.float32))
        await b.close()
    run(body)


def test_held_batch_goes_once_arrivals_pause() -> None:
    async def body() -> None:
        b, model, clock = make(dyn())
        first, gate = await busy(b, model)
        clock.advance(GAP)
        tasks = [await arrive(b, 1.0)]
        clock.advance(GAP)
        tasks.append(await arrive(b, 2.0))
        model.gate = None
        gate.set()
        await first
        clock.advance(GAP)
        await settle()
        assert model.sizes == [1]
        clock.advance(GAP)  # 2 gaps without an arrival: nothing more is coming
        results = await asyncio.gather(*tasks)
        assert model.sizes == [1, 2]
        assert results[0].queue_s == pytest.approx(3 * GAP)
        assert results[0].queue_s < DELAY_US / 1e6
        await b.close()
    run(body)


def test_burst_that_arrived_during_a_run_goes_when_the_instance_frees() -> None:
    async def body() -> None:
        b, model, clock = make(dyn())
        first, gate = await busy(b, model)
        clock.advance(DELAY_US / 2 / 1e6)
        tasks = [await arrive(b, float(i)) for i in range(5)]  # clients answered together
        clock.advance(DELAY_US / 4 / 1e6)
        model.gate = None
        gate.set()
        await asyncio.gather(first, *tasks)
        assert model.sizes == [1, 5]
        await b.close()
    run(body)


def test_full_batch_runs_without_delay_and_rest_follows() -> None:
    async def body() -> None:
        b, model, _ = make(dyn(max_batch_size=4))
        first, gate = await busy(b, model)
        tasks = [req(b, float(i)) for i in range(5)]
        await settle()
        model.gate = None
        gate.set()
        await first
        results = await asyncio.gather(*tasks)
        assert model.sizes == [1, 4, 1]
        for i, r in enumerate(results):
            assert r.outputs["y"][0, 0] == 2.0 * i
        await b.close()
    run(body)


def test_preferred_batch_size_is_sent_immediately() -> None:
    async def body() -> None:
        b, model, _ = make(dyn(preferred_batch_sizes=(2,), max_queue_delay_us=10**9))
        first, gate = await busy(b, model)
        tasks = [req(b, float(i)) for i in range(3)]
        await settle()
        model.gate = None
        gate.set()
        await asyncio.gather(first, *tasks)
        assert model.sizes == [1, 2, 1]
        await b.close()
    run(body)


def test_request_larger_than_max_batch_size_is_invalid() -> None:
    async def body() -> None:
        b, _, _ = make(dyn(max_batch_size=4))
        with pytest.raises(InvalidInput, match="batch-size must be <= 4"):
            await req(b, 1.0, n=5)
        await b.close()
    run(body)


def test_element_bound_caps_a_batch_and_sends_it_without_waiting() -> None:
    """max_batch_elements 12 with rows of 3: at most 4 rows per execution, whatever
    max_batch_size allows, and a batch at its bound goes without waiting out the delay."""
    async def body() -> None:
        b, model, clock = make(dyn(max_batch_size=32, max_batch_elements=12,
                                   max_queue_delay_us=10**9))
        first, gate = await busy(b, model)
        tasks = [req(b, float(i), n=n) for i, n in enumerate((2, 1, 2, 3, 1))]
        await settle()
        model.gate = None
        gate.set()
        results = await asyncio.gather(first, *tasks)
        # 2+1 (the next 2 would make 18 elements), 2 (then 3 would make 15), 3+1
        assert model.sizes == [1, 3, 2, 4]
        assert all(n * 3 <= 12 for n in model.sizes)
        for i, r in enumerate(results[1:]):
            assert (r.outputs["y"] == 2.0 * i).all()
        assert clock.pending_timers() == 0
        await b.close()
    run(body)


def test_a_request_over_the_element_bound_is_refused_naming_it() -> None:
    async def body() -> None:
        b, model, _ = make(dyn(max_batch_size=32, max_batch_elements=12))
        with pytest.raises(InvalidInput, match="15 elements.*12, its config parameter "
                                               "max_batch_elements"):
            await req(b, 1.0, n=5)
        assert (await req(b, 1.0, n=4)).outputs["y"].shape == (4, 3)  # at the bound: runs
        assert model.sizes == [4] and b.queued == 0
        await b.close()
    run(body)


def test_full_queue_rejects_at_once_and_frees_up_after() -> None:
    async def body() -> None:
        policy = dyn(max_queue_delay_us=0, default_queue_policy=QueuePolicy(max_queue_size=2))
        b, model, _ = make(policy)
        first, gate = await busy(b, model)
        queued = [req(b, 1.0), req(b, 2.0)]
        await settle()
        with pytest.raises(QueueFull, match="Exceeds maximum queue size"):
            await req(b, 3.0)
        model.gate = None
        gate.set()
        await asyncio.gather(first, *queued)
        assert (await req(b, 4.0)).outputs["y"][0, 0] == 8.0
        await b.close()
    run(body)


def test_default_queue_timeout_rejects_a_waiting_request() -> None:
    async def body() -> None:
        b, model, clock = make(dyn(default_queue_policy=QueuePolicy(default_timeout_us=1000)))
        first, gate = await busy(b, model)
        waiting = req(b, 1.0)
        await settle()
        clock.advance(0.0009)
        await settle()
        assert not waiting.done()
        clock.advance(0.0002)
        with pytest.raises(RequestTimeout, match="Request timeout expired"):
            await waiting
        assert b.queued == 0
        model.gate = None
        gate.set()
        await first
        assert model.sizes == [1], "a timed-out request never runs"
        await b.close()
    run(body)


def test_request_timeout_only_counts_when_override_is_allowed() -> None:
    async def body() -> None:
        for allow, expires in ((True, True), (False, False)):
            b, model, clock = make(dyn(default_queue_policy=QueuePolicy(allow_timeout_override=allow)))
            first, gate = await busy(b, model)
            waiting = req(b, 1.0, timeout_us=500)
            await settle()
            clock.advance(0.001)
            await settle()
            assert waiting.done() is expires
            model.gate = None
            gate.set()
            await first
            if expires:
                with pytest.raises(RequestTimeout):
                    await waiting
            else:
                clock.advance(DELAY_US / 1e6)
                await waiting
            await b.close()
    run(body)


def test_higher_priority_runs_first_fifo_within_a_level() -> None:
    async def body() -> None:
        policy = dyn(max_batch_size=1, priority_levels=2, default_priority_level=2)
        b, model, _ = make(policy)
        first, gate = await busy(b, model)
        tasks = [req(b, 1.0), req(b, 2.0, priority=2), req(b, 3.0, priority=1),
                 req(b, 4.0, priority=9), req(b, 5.0, priority=1)]
        await settle()
        model.gate = None
        gate.set()
        await asyncio.gather(first, *tasks)
        order = [float(x[0, 0]) for x in model.batches[1:]]
        assert order == [3.0, 5.0, 1.0, 2.0, 4.0]  # priority 9 is out of range -> default level
        await b.close()
    run(body)


def test_negative_priority_is_invalid() -> None:
    async def body() -> None:
        b, _, _ = make(dyn(priority_levels=2, default_priority_level=1))
        with pytest.raises(InvalidInput, match="priority"):
            await req(b, 1.0, priority=-1)
        await b.close()
    run(body)


def test_free_instance_takes_a_lone_request_while_another_is_busy() -> None:
    async def body() -> None:
        b, model, _ = make(dyn(), instances=2)
        first, gate = await busy(b, model)
        model.gate = None  # the next run is not held
        second = await req(b, 5.0)
        assert second.outputs["y"][0, 0] == 10.0 and not first.done()
        gate.set()
        await first
        await b.close()
    run(body)


def test_a_failing_batch_fails_only_its_requests() -> None:
    async def body() -> None:
        b, model, _ = make(dyn(max_queue_delay_us=0))
        model.fail_when = lambda x: bool((x == 7.0).any())
        with pytest.raises(BackendError, match="see the server log"):
            await req(b, 7.0)
        assert (await req(b, 1.0)).outputs["y"][0, 0] == 2.0
        first, gate = await busy(b, model)
        bad, good = req(b, 7.0, n=2), req(b, 2.0, width=5)
        await settle()
        model.gate = None
        gate.set()
        await first
        with pytest.raises(BackendError):
            await bad
        assert (await good).outputs["y"].shape == (1, 5)
        await b.close()
    run(body)


def test_cancelled_caller_frees_its_slot_and_is_not_run() -> None:
    async def body() -> None:
        pending: list[int] = []

        class Observer:
            def pending_changed(self, delta: int) -> None:
                pending.append(delta)

            def execution_finished(self, *args: float) -> None:
                pass

        b, model, clock = make(dyn(default_queue_policy=QueuePolicy(max_queue_size=1)),
                               observer=Observer())
        first, gate = await busy(b, model)
        doomed = req(b, 9.0)
        await settle()
        doomed.cancel()
        await settle()
        assert b.queued == 0 and sum(pending) == 0
        replacement = req(b, 3.0)  # the slot is free again
        await settle()
        model.gate = None
        gate.set()
        await first
        clock.advance(DELAY_US / 1e6)
        assert (await replacement).outputs["y"][0, 0] == 6.0
        assert 9.0 not in [float(x[0, 0]) for x in model.batches]
        await b.close()
    run(body)


def test_different_shapes_never_share_a_batch() -> None:
    async def body() -> None:
        b, model, _ = make(dyn(max_queue_delay_us=0))
        first, gate = await busy(b, model)
        tasks = [req(b, 1.0, width=3), req(b, 2.0, width=5), req(b, 3.0, width=3)]
        await settle()
        model.gate = None
        gate.set()
        results = await asyncio.gather(first, *tasks)
        assert [x.shape for x in model.batches[1:]] == [(2, 3), (1, 5)]
        assert results[2].outputs["y"].shape == (1, 5)
        await b.close()
    run(body)


def test_output_dim0_must_match_the_batch() -> None:
    async def body() -> None:
        b, model, _ = make(dyn(max_queue_delay_us=0))
        first, gate = await busy(b, model)
        tasks = [req(b, 1.0), req(b, 2.0, n=2)]
        await settle()
        model.bad_dim0 = True
        model.gate = None
        gate.set()
        outcomes = await asyncio.gather(first, *tasks, return_exceptions=True)
        assert all(isinstance(o, BackendError) for o in outcomes[1:])
        assert "dim 0 must be the batch size 3" in str(outcomes[1])
        await b.close()
    run(body)


def test_without_dynamic_batching_requests_run_one_by_one() -> None:
    async def body() -> None:
        b, model, _ = make(BatchPolicy(max_batch_size=8, dynamic=False))
        first, gate = await busy(b, model)
        tasks = [req(b, 1.0), req(b, 2.0)]
        await settle()
        model.gate = None
        gate.set()
        await asyncio.gather(first, *tasks)
        assert model.sizes == [1, 1, 1]
        await b.close()
    run(body)


def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    async def body() -> None:
        b, model, _ = make(dyn())
        first, gate = await busy(b, model)
        queued = req(b, 1.0)
        await settle()
        closing = asyncio.ensure_future(b.close())
        with pytest.raises(ModelNotReady):
            await queued
        with pytest.raises(ModelNotReady):
            await req(b, 2.0)
        model.gate = None
        gate.set()
        await first  # the running batch still completes
        await closing
    run(body)
