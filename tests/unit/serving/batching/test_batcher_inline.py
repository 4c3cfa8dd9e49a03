"""Fast CPU executions answer sooner; slow ones (or failures) keep their guarantees.

Each test asserts what a caller notices: the answers, and that the event loop (which serves every
other request) keeps running while a slow batch executes. How much sooner a fast model answers is
measured in the bench, not asserted here: a timed assertion fails on a busy machine.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batching import BatchPolicy, DynamicBatcher, FakeClock
from serving.errors import BackendError

POLICY = BatchPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=0)
INLINE_BELOW_S = 200e-6
# How long a blocked model waits for the event loop to show it is alive before giving up.
LOOP_WAIT_S = 1.0


class Doubler:
    """y = 2x; the fake clock advances by ``cost_s``, which is what the batcher measures.

    With ``wait_for_loop`` set, each call also blocks until a coroutine on the event loop has
    run (the test sets ``loop_alive`` from one), and records whether that happened in time: a
    call that holds the loop itself can never see it.
    """

    def __init__(self, clock: FakeClock, cost_s: float) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.fail = False
        self.wait_for_loop = False
        self.loop_alive = threading.Event()
        self.saw_loop: list[bool] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.clock.advance(self.cost_s)
        if self.wait_for_loop:
            self.saw_loop.append(self.loop_alive.wait(LOOP_WAIT_S))
            self.loop_alive.clear()
        if self.fail:
            raise RuntimeError("backend exploded")
        return {"y": inputs["x"] * 2}


async def _serial(b: DynamicBatcher, n: int, start: int = 0) -> list[float]:
    """``n`` requests one after another, each answer checked; their latencies in seconds."""
    latencies = []
    for i in range(start, start + n):
        x = np.full((1, 2), float(i), np.float32)
        began = time.perf_counter()
        result = await b.submit({"x": x}, 1)
        latencies.append(time.perf_counter() - began)
        np.testing.assert_array_equal(result.outputs["y"], x * 2)
    return latencies


async def _heartbeat(model: Doubler, stop: asyncio.Event) -> None:
    """Tells a blocked model that the event loop is running, as long as it is."""
    while not stop.is_set():
        if model.wait_for_loop:
            model.loop_alive.set()
        await asyncio.sleep(0.005)


def test_the_event_loop_keeps_running_while_slow_batches_execute() -> None:
    async def body() -> list[bool]:
        clock = FakeClock()
        model = Doubler(clock, cost_s=5e-3)
        model.wait_for_loop = True
        stop = asyncio.Event()
        beat = asyncio.create_task(_heartbeat(model, stop))
        b = DynamicBatcher([model], POLICY, clock=clock, inline_below_s=INLINE_BELOW_S)
        await _serial(b, 4)
        stop.set()
        await beat
        await b.close()
        return model.saw_loop
    assert asyncio.run(body()) == [True] * 4


def test_a_fast_model_that_turns_slow_stops_holding_the_loop() -> None:
    async def body() -> list[bool]:
        clock = FakeClock()
        model = Doubler(clock, cost_s=20e-6)
        stop = asyncio.Event()
        beat = asyncio.create_task(_heartbeat(model, stop))
        b = DynamicBatcher([model], POLICY, clock=clock, inline_below_s=INLINE_BELOW_S)
        await _serial(b, 6)
        model.cost_s, model.wait_for_loop = 5e-3, True
        await _serial(b, 4, start=6)
        stop.set()
        await beat
        await b.close()
        return model.saw_loop
    saw = asyncio.run(body())
    # The batch that first shows the slowdown was decided on the fast measurements; every one
    # after it runs while the loop serves others.
    assert saw[1:] == [True] * 3, saw


def test_inline_failure_fails_that_request_and_the_batcher_goes_on() -> None:
    async def body() -> None:
        clock = FakeClock()
        model = Doubler(clock, cost_s=10e-6)
        b = DynamicBatcher([model], POLICY, clock=clock, inline_below_s=INLINE_BELOW_S)
        await _serial(b, 3)
        model.fail = True
        with pytest.raises(BackendError, match="see the server log"):
            await b.submit({"x": np.zeros((1, 2), np.float32)}, 1)
        model.fail = False
        await _serial(b, 2)
        await b.close()
    asyncio.run(body())
