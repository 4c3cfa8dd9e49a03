"""A small slice of the reliability corpus (bench/reliability) against the shared v2 server:
the server survives it, answers every case, and answers none of them with a 5xx.

The full corpus (10,000 cases, images, TorchServe routes) runs in `make reliability`; this slice
keeps to the surfaces the tiny store serves (v2 HTTP JSON and binary, v2 gRPC, management).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from types import SimpleNamespace

import pytest

from bench.reliability import corpus, fuzz
from tests.helpers.server import ServerProcess
from tests.integration.conftest import API_TOKEN

SURFACES = ("v2-http-json", "v2-http-binary", "v2-grpc", "management-http", "management-grpc")


@pytest.fixture(scope="module")
def answers(v2_server: ServerProcess) -> dict[str, dict[str, Counter[str]]]:
    ctx = fuzz.discover(v2_server.base, ["classifier", "simple"], API_TOKEN)
    cases = [c for c in corpus.generate(7, 700, ctx) if c.surface in SURFACES][:400]
    target = SimpleNamespace(http_port=v2_server.http_port, grpc_target=v2_server.grpc_url,
                             management_port=v2_server.management_port,
                             metrics_port=v2_server.metrics_port)
    tally: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))

    async def run() -> None:
        sender = fuzz.Sender(target, timeout=10.0)
        sem = asyncio.Semaphore(4)

        async def one(case: corpus.Case) -> None:
            async with sem:
                answer = await sender.send(case)
            status = answer.status if answer.outcome == "answered" else answer.outcome
            tally[case.surface][case.kind][status] += 1

        await asyncio.gather(*(one(c) for c in cases))

    asyncio.run(run())
    return tally


def test_server_survives_and_answers_every_case(
        answers: dict[str, dict[str, Counter[str]]], v2_server: ServerProcess) -> None:
    assert v2_server.proc.poll() is None, v2_server.log()[-3000:]
    unanswered = {kind: dict(c) for kinds in answers.values() for kind, c in kinds.items()
                  if c.get("timeout") or (c.get("closed") and not kind.startswith("http/"))}
    assert not unanswered


@pytest.mark.parametrize("surface", SURFACES)
def test_no_5xx(answers: dict[str, dict[str, Counter[str]]], surface: str) -> None:
    failing = {kind: dict(c) for kind, c in answers.get(surface, {}).items()
               if any(fuzz.is_failure(s) for s in c)}
    assert not failing
