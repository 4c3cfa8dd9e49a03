"""Fast CPU executions run on the event loop; slow ones (or failures) keep their guarantees."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving.batching import BatchPolicy, DynamicBatcher, FakeClock
from serving.errors import BackendError


class ThreadRecorder:
    """y = 2x, recording which thread ran each batch; the fake clock advances by ``cost_s``."""

    def __init__(self, clock: FakeClock, cost_s: float) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.threads: list[int] = []
        self.fail = False

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        self.clock.advance(self.cost_s)
        if self.fail:
            raise RuntimeError("backend exploded")
        return {"y": inputs["x"] * 2}


POLICY = BatchPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=0)


async def _serial(b: DynamicBatcher, n: int) -> None:
    for i in range(n):
        x = np.full((1, 2), float(i), np.float32)
        result = await b.submit({"x": x}, 1)
        np.testing.assert_array_equal(result.outputs["y"], x * 2)


def test_fast_runs_move_onto_the_event_loop_after_measuring() -> None:
    async def body() -> None:
        clock = FakeClock()
        model = ThreadRecorder(clock, cost_s=20e-6)
        b = DynamicBatcher([model], POLICY, clock=clock, inline_below_s=200e-6)
        await _serial(b, 6)
        loop_thread = threading.get_ident()
        # The first run has no measurement yet, so it goes to an executor thread.
        assert model.threads[0] != loop_thread
        assert model.threads[-1] == loop_thread
        await b.close()
    asyncio.run(body())


def test_slow_runs_stay_on_executor_threads() -> None:
    async def body() -> None:
        clock = FakeClock()
        model = ThreadRecorder(clock, cost_s=5e-3)
        b = DynamicBatcher([model], POLICY, clock=clock, inline_below_s=200e-6)
        await _serial(b, 5)
        assert threading.get_ident() not in model.threads
        await b.close()
    asyncio.run(body())


def test_inline_failure_fails_that_request_and_the_batcher_goes_on() -> None:
    async def body() -> None:
        clock = FakeClock()
        model = ThreadRecorder(clock, cost_s=10e-6)
        b = DynamicBatcher([model], POLICY, clock=clock, inline_below_s=200e-6)
        await _serial(b, 3)
        model.fail = True
        with pytest.raises(BackendError, match="see the server log"):
            await b.submit({"x": np.zeros((1, 2), np.float32)}, 1)
        model.fail = False
        await _serial(b, 2)
        await b.close()
    asyncio.run(body())
