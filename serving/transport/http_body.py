"""Reading an HTTP request's headers and body, shared by every HTTP route module."""

from __future__ import annotations

from starlette.requests import Request

from serving.errors import PayloadTooLarge
from serving.transport import http_codec as codec

__all__ = ["header", "read_body"]


def header(request: Request, name: str) -> str | None:
    """One request header (``name`` lower-case). Starlette's ``Headers.get`` scans the raw
    list and raises KeyError for every absent header; on the inference path a dict built once
    per request is a measurable share of the per-request cost."""
    scope = request.scope
    found: dict[bytes, bytes] | None = scope.get("capserve.headers")
    if found is None:
        found = scope["capserve.headers"] = dict(scope["headers"])  # ASGI keys are lower-case
    value = found.get(name.encode("latin-1"))
    return None if value is None else value.decode("latin-1")


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, decompressed, refusing (413) anything over ``limit_bytes``."""
    declared = header(request, "content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit_bytes} bytes"
        )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = header(request, "content-encoding")
    return codec.decompress(body, encoding, limit_bytes) if encoding else body
