"""Send the corpus to a running server, a few cases at a time, and tally the answers by kind.

A server that dies is a crash: the cases in flight at that moment are kept as suspects, the
server is restarted and the run goes on, so one hole does not hide the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

from bench.reliability import clients, images
from bench.reliability.corpus import Case, Context, ModelInfo
from bench.reliability.server import RelServer
from bench.servers import http_get

logger = logging.getLogger(__name__)

# Codes that mean the server failed rather than the request: what the report lists.
HTTP_FAILURES = {"500", "502", "504", "505", "507", "508"}
GRPC_FAILURES = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}
# 5xx codes the protocol gives on purpose (unsupported extension, unavailable): counted apart.
BY_DESIGN = {"501", "503", "UNIMPLEMENTED", "UNAVAILABLE"}


def is_failure(status: str) -> bool:
    return status in HTTP_FAILURES or status in GRPC_FAILURES


@dataclass
class KindTally:
    count: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    example_failure: str = ""
    failure_answer: str = ""
    example_timeout: str = ""


@dataclass
class FuzzResult:
    cases: int = 0
    crashes: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    kinds: dict[str, KindTally] = field(default_factory=lambda: defaultdict(KindTally))
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    fds_before: int = 0
    fds_after: int = 0
    seconds: float = 0.0

    def failures(self) -> int:
        return sum(n for t in self.kinds.values() for s, n in t.statuses.items() if is_failure(s))

    def count_of(self, pred: Callable[[str], bool]) -> int:
        return sum(n for t in self.kinds.values() for s, n in t.statuses.items() if pred(s))

    def failing_kinds(self) -> list[tuple[str, KindTally]]:
        return sorted(((k, t) for k, t in self.kinds.items()
                       if any(is_failure(s) for s in t.statuses)), key=lambda kv: kv[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases, "crashes": self.crashes, "seconds": round(self.seconds, 1),
            "failures_5xx": self.failures(),
            "by_design_5xx": self.count_of(lambda s: s in BY_DESIGN),
            "timeouts": self.count_of(lambda s: s == "timeout"),
            "closed_without_answer": self.count_of(lambda s: s == "closed"),
            "p99_answer_ms": percentile(self.latencies, 99) * 1e3,
            "p50_answer_ms": percentile(self.latencies, 50) * 1e3,
            "rss_before_mb": self.rss_before / 2**20, "rss_after_mb": self.rss_after / 2**20,
            "rss_peak_mb": self.rss_peak / 2**20,
            "fds_before": self.fds_before, "fds_after": self.fds_after,
            "kinds": {k: {"count": t.count, "statuses": dict(t.statuses),
                          "example_failure": t.example_failure,
                          "failure_answer": t.failure_answer,
                          "example_timeout": t.example_timeout}
                      for k, t in sorted(self.kinds.items())},
        }


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def discover(base: str, names: Iterable[str], token: str) -> Context:
    """Each model's first input from its v2 metadata (``base``: http://host:port), and the
    image pools."""
    models = []
    for name in names:
        status, body = http_get(f"{base}/v2/models/{name}")
        if status != 200:
            continue
        meta = json.loads(body)
        inp = meta["inputs"][0]
        shape = list(inp["shape"])
        batched = bool(shape) and shape[0] == -1 and len(shape) > 1
        dims = tuple(shape[1:] if batched else shape)
        models.append(ModelInfo(name, inp["name"], inp["datatype"], dims, 32 if batched else 0,
                                tuple(meta.get("versions") or ["1"])))
    if not models:
        raise RuntimeError("no model answered its metadata")
    return Context(models, token, list(images.valid_images()), list(images.bombs()))


class Sender:
    """Sends one case to the right port with the right client."""

    def __init__(self, server: Any, timeout: float) -> None:
        """``server``: anything with http_port, management_port, metrics_port, grpc_target."""
        self.server = server
        self.timeout = timeout
        self.channel: grpc.aio.Channel | None = None

    def retarget(self, server: Any) -> None:
        self.server = server
        self.channel = None

    async def send(self, case: Case) -> clients.Answer:
        if case.transport == "http":
            port = {"http": self.server.http_port, "management": self.server.management_port,
                    "metrics": self.server.metrics_port}[case.port]
            payload = clients.build_http(case.method, case.path, case.headers, case.body,
                                         f"127.0.0.1:{port}", case.content_length)
            # Closing the write side reads as a disconnect (which cancels the request), so it
            # is done only where the body is shorter than its header says.
            return await clients.http_once(port, payload, self.timeout,
                                           half_close=case.content_length is not None)
        if self.channel is None:
            self.channel = clients.grpc_channel(self.server.grpc_target)
        if case.transport == "grpc-unary":
            return await clients.grpc_unary(self.channel, case.method, case.body, case.headers,
                                            self.timeout)
        return await clients.grpc_stream(self.channel, case.method, case.stream, case.headers,
                                         self.timeout, client_stream=case.transport == "grpc-stream")


def _record(result: FuzzResult, case: Case, answer: clients.Answer) -> None:
    tally = result.kinds[case.kind]
    tally.count += 1
    status = answer.status if answer.outcome == "answered" else answer.outcome
    tally.statuses[status] += 1
    if answer.outcome == "answered":
        result.latencies.append(answer.seconds)
    if is_failure(status) and not tally.example_failure:
        tally.example_failure = case.describe()
        tally.failure_answer = f"{status}: {answer.body[:200]!r}"
    if status == "timeout" and not tally.example_timeout:
        tally.example_timeout = case.describe()


async def run_corpus(cases: Iterable[Case], server: RelServer,
                     restart: Callable[[], RelServer], concurrency: int,
                     timeout: float) -> tuple[FuzzResult, RelServer]:
    """Every case sent, at most ``concurrency`` at once; returns the tally and the live server."""
    result = FuzzResult()
    start = time.monotonic()
    before = server.usage()
    result.rss_before, result.fds_before = before.rss_bytes, before.fds
    sender = Sender(server, timeout)
    in_flight: dict[int, Case] = {}
    queue: asyncio.Queue[tuple[int, Case] | None] = asyncio.Queue(maxsize=concurrency * 2)
    lock = asyncio.Lock()
    peak = 0

    async def check_alive() -> None:
        nonlocal server, peak
        async with lock:
            if server.alive():
                return
            peak = max(peak, server.peak_rss)
            crash = {"exit_code": server.proc.returncode,
                     "killed_for_memory": server.killed_for_memory,
                     "in_flight": sorted({c.kind for c in in_flight.values()}),
                     "examples": [c.describe() for c in list(in_flight.values())[:5]],
                     "log_tail": server.log_tail(1500)}
            result.crashes.append(crash)
            logger.error("server died (exit %s) with %s in flight", crash["exit_code"],
                         crash["in_flight"])
            server.stop()
            server = await asyncio.to_thread(restart)
            sender.retarget(server)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            index, case = item
            in_flight[index] = case
            answer = await sender.send(case)
            if answer.outcome != "answered" and not server.alive():
                await check_alive()
            _record(result, case, answer)
            del in_flight[index]
            result.cases += 1
            if result.cases % 500 == 0:
                logger.info("corpus: %d cases sent", result.cases)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    for index, case in enumerate(cases):
        await queue.put((index, case))
        if index % 25 == 0 and not server.alive():
            await check_alive()
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    await check_alive()
    await asyncio.sleep(1.0)  # let answers already sent be freed before measuring
    after = server.usage()
    result.rss_after, result.fds_after = after.rss_bytes, after.fds
    result.rss_peak = max(peak, server.peak_rss)
    result.seconds = time.monotonic() - start
    return result, server
