"""The automatic queue bound counts batch items: "8 batches of work" holds whatever batch size
requests carry (counted in requests, full-batch requests queued 32 times that: at 10x overload
accepted requests waited ~25 s, past their clients' patience)."""

from __future__ import annotations

import asyncio

import pytest

from serving.batching import BatchPolicy, DynamicBatcher, FakeClock, QueuePolicy
from serving.batching.policy import QueueDefaults
from serving.errors import QueueFull
from tests.unit.serving.batching.test_batcher import Model, busy, req, run, settle

# 8 slots x max_batch_size 4 x 1 instance = 32 queued items.
AUTOMATIC = QueueDefaults(min_queue_size=1).fill(QueuePolicy(), 4, 1)


def _batcher(queue: QueuePolicy) -> tuple[DynamicBatcher, Model]:
    model = Model()
    policy = BatchPolicy(max_batch_size=4, dynamic=True, default_queue_policy=queue)
    return DynamicBatcher([model], policy, clock=FakeClock()), model


@pytest.mark.parametrize(("batch", "fit"), [(4, 8), (1, 32), (3, 10)])
def test_the_automatic_bound_holds_eight_batches_of_items(batch: int, fit: int) -> None:
    async def body() -> None:
        b, model = _batcher(AUTOMATIC)
        first, gate = await busy(b, model)
        queued = [req(b, float(i), n=batch) for i in range(fit)]
        await settle()
        with pytest.raises(QueueFull, match="Exceeds maximum queue size"):
            await req(b, 9.0, n=batch)
        model.gate = None
        gate.set()
        await asyncio.gather(first, *queued)
        await req(b, 1.0, n=batch)  # room again once the queue drained
        await b.close()
    run(body)


def test_a_configured_max_queue_size_still_counts_requests() -> None:
    async def body() -> None:
        b, model = _batcher(QueuePolicy(max_queue_size=2))
        first, gate = await busy(b, model)
        queued = [req(b, 1.0, n=4), req(b, 2.0, n=4)]
        await settle()
        with pytest.raises(QueueFull):
            await req(b, 3.0, n=1)
        model.gate = None
        gate.set()
        await asyncio.gather(first, *queued)
        await b.close()
    run(body)


def test_queue_full_says_what_the_next_request_of_one_item_would_get() -> None:
    async def body() -> None:
        b, model = _batcher(AUTOMATIC)
        first, gate = await busy(b, model)
        queued = [req(b, float(i), n=4) for i in range(7)]
        await settle()
        assert not b.queue_full()  # 28 of 32 items
        queued.append(req(b, 5.0, n=4))
        await settle()
        assert b.queue_full()
        with pytest.raises(QueueFull):
            await req(b, 9.0, n=1)
        model.gate = None
        gate.set()
        await asyncio.gather(first, *queued)
        assert not b.queue_full()
        await b.close()
    run(body)
