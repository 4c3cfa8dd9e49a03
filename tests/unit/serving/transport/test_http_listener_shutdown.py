"""A request still running when the shutdown grace period ends gets 503 (a server-side
condition), not uvicorn's plain-text 500."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from serving.transport.http_listener import HttpListener
from tests.helpers.ports import free_port


async def never_answers(scope: Scope, receive: Receive, send: Send) -> None:
    await asyncio.Event().wait()  # a stuck backend


@pytest.mark.parametrize(("path", "key"), [("/v2/models/m/infer", "error"),
                                           ("/predictions/m", "message")])
def test_requests_cut_by_the_grace_period_get_503(path: str, key: str) -> None:
    async def scenario() -> None:
        port = free_port()
        listener = HttpListener("HTTP", never_answers, "127.0.0.1", port, grace_s=1)
        await listener.start()
        async with httpx.AsyncClient(timeout=20) as client:
            call = asyncio.ensure_future(client.post(f"http://127.0.0.1:{port}{path}",
                                                     content=b"{}"))
            await asyncio.sleep(0.3)
            await listener.stop()
            response = await call
        assert response.status_code == 503, response.text
        assert "shut down before this request finished" in json.loads(response.text)[key]

    asyncio.run(asyncio.wait_for(scenario(), 30))
