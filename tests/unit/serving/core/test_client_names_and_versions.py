"""Client-chosen names and versions of any length or script are NOT_FOUND with a short message,
on every route (they were server errors: ``int`` refuses over 4300 digits, and a message quoting
a 10,000-character name does not fit in a gRPC trailer)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc import aio

from serving.core.repository import ModelRepository
from serving.core.validation import check_version
from serving.core.versions import available_versions
from serving.errors import MESSAGE_BYTES, InvalidInput, ModelNotFound, bounded_message
from serving.store import read_model_spec
from serving.transport.errors import grpc_errors

ODD_VERSIONS = ["9" * 5000, "9" * 20, "²", "١", "1.5", "-1", " 1"]


@pytest.mark.parametrize("version", ODD_VERSIONS, ids=lambda v: f"{v[:6]!r}x{len(v)}")
def test_odd_versions_are_not_found_before_any_integer_conversion(
        tiny_store: Path, version: str) -> None:
    repo = ModelRepository(tiny_store, reader=read_model_spec, device="cpu")
    repo.scan()

    async def main() -> None:
        await repo.load("tiny")
        with pytest.raises(ModelNotFound, match="at most 19 digits") as caught:
            repo.resolve("tiny", version)
        assert len(caught.value.message) < 600
        with pytest.raises(ModelNotFound):
            repo.set_default_version("tiny", version)
        for old in repo.unload("tiny"):
            await old.close()

    asyncio.run(main())


def test_versions_of_up_to_19_digits_are_versions() -> None:
    assert check_version("m", "9" * 19) == "9" * 19
    assert check_version("m", "007") == "007"
    assert check_version("m", "") == ""


def test_messages_quote_long_names_shortened_and_keep_their_end(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, reader=read_model_spec, device="cpu")
    with pytest.raises(ModelNotFound) as caught:
        repo.entry("x" * 10_000)
    assert "(10000 characters)" in caught.value.message
    assert caught.value.message.endswith("is not found")
    long = bounded_message("²" * 10_000 + " is the reason")
    assert len(long.encode()) <= MESSAGE_BYTES and long.endswith(" is the reason")
    assert len(InvalidInput("é" * 50_000).message.encode()) <= MESSAGE_BYTES


class _Echo:
    """A unary method that fails with whatever error the request names."""

    @grpc_errors
    async def fail(self, request: bytes, context: aio.ServicerContext) -> bytes:
        raise ModelNotFound(f"Request for unknown model: '{request.decode()}' is not found")


def test_a_not_found_for_a_huge_non_ascii_name_reaches_a_grpc_client_as_not_found() -> None:
    async def scenario() -> None:
        server = aio.server()
        handler = grpc.unary_unary_rpc_method_handler(_Echo().fail)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.T", {"Fail": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(aio.AioRpcError) as caught:
                    await channel.unary_unary("/t.T/Fail")(("²" * 5000).encode(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
            assert (caught.value.details() or "").endswith("is not found")
        finally:
            await server.stop(0)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_folders_that_are_not_version_numbers_are_not_versions(tmp_path: Path) -> None:
    # An archive or a careless copy can leave such folders beside the real versions.
    for name in ("1", "12", "²", "١", "9" * 250, "x"):
        (tmp_path / name).mkdir()
    assert available_versions(tmp_path) == [1, 12]
