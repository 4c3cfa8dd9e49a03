"""Load for the overload, shutdown, swap and soak sections: keep-alive HTTP/1.1 connections
sending prepared requests, closed loop (N outstanding) or open loop (a fixed arrival rate)."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from dataclasses import dataclass, field

from bench.reliability import clients


@dataclass
class Sample:
    sent: float  # seconds since the run started
    status: str  # "200", "503" ... or "timeout" / "closed"
    seconds: float


@dataclass
class LoadRun:
    samples: list[Sample] = field(default_factory=list)
    skipped: int = 0  # open loop: arrivals the client could not send (every connection busy)
    unanswered_at_stop: int = 0
    hung: int = 0  # still unanswered ``hang_after`` seconds after the load stopped
    seconds: float = 0.0
    examples: dict[str, str] = field(default_factory=dict)  # first answer body per non-200

    def add(self, sent: float, answer: clients.Answer) -> None:
        status = answer.status if answer.outcome == "answered" else answer.outcome
        self.samples.append(Sample(sent, status, answer.seconds))
        if status != "200" and status not in self.examples:
            self.examples[status] = answer.body[:200].decode(errors="replace")

    def count(self, status: str) -> int:
        return sum(1 for s in self.samples if s.status == status)

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            out[s.status] = out.get(s.status, 0) + 1
        return out

    def rate(self, status: str = "200") -> float:
        return self.count(status) / self.seconds if self.seconds else 0.0


def v2_binary_request(model: str, input_name: str, batch: int, host: str,
                      dims: tuple[int, ...] = (1, 28, 28), output: str = "logits") -> bytes:
    """A valid keep-alive v2 infer request with its input in the binary extension."""
    count = batch
    for d in dims:
        count *= d
    raw = struct.pack(f"<{count}f", *([0.25] * count))
    doc: dict[str, object] = {"inputs": [{"name": input_name, "datatype": "FP32",
                                          "shape": [batch, *dims],
                                          "parameters": {"binary_data_size": len(raw)}}]}
    if output:
        doc["outputs"] = [{"name": output, "parameters": {"binary_data": True}}]
    else:
        doc["parameters"] = {"binary_data_output": True}
    head = json.dumps(doc).encode()
    headers = (("Content-Type", "application/octet-stream"),
               ("Inference-Header-Content-Length", str(len(head))))
    return clients.build_http("POST", f"/v2/models/{model}/infer", headers, head + raw, host,
                              keep_alive=True)


async def closed_loop(port: int, payloads: list[bytes], concurrency: int, stop: asyncio.Event,
                      timeout: float) -> LoadRun:
    """``concurrency`` connections, each sending its next request as soon as one is answered."""
    run = LoadRun()
    start = time.perf_counter()

    async def one(index: int) -> None:
        conn = clients.KeepAlive(port)
        i = index
        while not stop.is_set():
            payload = payloads[i % len(payloads)]
            i += concurrency
            sent = time.perf_counter() - start
            answer = await conn.send(payload, timeout)
            run.add(sent, answer)
            if answer.outcome != "answered":
                await asyncio.sleep(0.05)  # a refused connection must not spin the loop
        conn.close()

    await asyncio.gather(*(one(i) for i in range(concurrency)))
    run.seconds = time.perf_counter() - start
    return run


async def open_loop(port: int, payload: bytes, rate: float, seconds: float, timeout: float,
                    max_connections: int, hang_after: float) -> LoadRun:
    """Arrivals at ``rate`` per second for ``seconds``, each on an idle keep-alive connection.

    An arrival that finds every connection busy (and the pool at its cap) is counted as
    skipped: the offered rate actually reached is part of the result."""
    run = LoadRun()
    idle: list[clients.KeepAlive] = []
    opened = 0
    pending: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def one(conn: clients.KeepAlive, sent: float) -> None:
        run.add(sent, await conn.send(payload, timeout))
        idle.append(conn)

    total = int(rate * seconds)
    launched = 0
    while launched < total:
        now = time.perf_counter() - start
        due = min(total, int(now * rate) + 1)
        while launched < due:
            launched += 1
            if idle:
                conn = idle.pop()
            elif opened < max_connections:
                opened += 1
                conn = clients.KeepAlive(port)
            else:
                run.skipped += 1
                continue
            task = asyncio.create_task(one(conn, now))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(0.001)
    run.seconds = time.perf_counter() - start
    run.unanswered_at_stop = len(pending)
    if pending:
        await asyncio.wait(set(pending), timeout=hang_after)
    run.hung = len(pending)
    for task in list(pending):
        task.cancel()
    for conn in idle:
        conn.close()
    return run
