"""A request body already read (and size-checked) parsed again as a multipart form."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request

from serving.errors import InvalidInput


async def parse_form(request: Request, body: bytes, max_parts: int) -> FormData:
    """The form of ``body``, at most ``max_parts`` files and fields; a 400 when malformed."""
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    replay = Request(request.scope, receive)
    try:
        return await replay.form(max_files=max_parts, max_fields=max_parts)
    except Exception as exc:  # python-multipart raises several types for a malformed body
        raise InvalidInput(f"malformed multipart body: {exc}") from None
