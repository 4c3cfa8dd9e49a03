"""Two workers' gRPC servers in one process, sharing a real load board and Unix sockets.

The core is a stand-in that takes 50 ms per request and names the worker that ran it in the
answer's id; the servers, the forwarding, the board and the sockets are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from serving.core.shm import SharedMemoryRegistry
from serving.core.types import InferRequest, InferResponse
from serving.errors import InvalidInput
from serving.generated import grpc_service_pb2 as pb
from serving.transport.auth import ModelControlGate
from serving.transport.grpc_peers import FORWARDED_KEY, WORKER_KEY, PeerForwarder, peer_socket
from serving.transport.grpc_service import create_grpc_server
from serving.workers.board import LoadBoard, board_path

RUN_S = 0.05
INFER = "/inference.GRPCInferenceService/ModelInfer"


class Worker:
    """Just enough of a worker's core: it counts its running requests on the board."""

    shared_memory = SharedMemoryRegistry()

    def __init__(self, board: LoadBoard, slot: int) -> None:
        self.board, self.slot = board, slot
        self.draining = False
        self.ran: list[str] = []

    @contextlib.contextmanager
    def admission(self, relayed: bool = False) -> Iterator[None]:
        yield

    def admitted(self) -> bool:
        return not self.draining

    def refuse_if_full(self, name: str, version: str = "") -> None:
        """Never full."""

    async def infer(self, request: InferRequest) -> InferResponse:
        self.board.add_running(self.slot, 1)
        try:
            await asyncio.sleep(RUN_S)
            if request.model_name == "bad":
                raise InvalidInput("unexpected shape for input 'x' (on purpose)")
            self.ran.append(request.id)
            return InferResponse(request.model_name, "1", [], id=f"{request.id}@{self.slot}")
        finally:
            self.board.add_running(self.slot, -1)


@contextlib.asynccontextmanager
async def two_workers(tmp_path: Path) -> AsyncIterator[tuple[list[Worker], list[aio.Server],
                                                            aio.Channel]]:
    LoadBoard.create(board_path(tmp_path), 2)
    board = LoadBoard.attach(board_path(tmp_path))
    workers = [Worker(board, i) for i in range(2)]
    servers, forwarders, ports = [], [], []
    for w in workers:
        peers = PeerForwarder(board, w.slot, str(tmp_path), 4 << 20)
        server, _ = create_grpc_server(w, ModelControlGate(False, None), 4 << 20,  # type: ignore[arg-type]
                                       peers=peers, worker=w.slot)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.add_insecure_port(f"unix:{peer_socket(str(tmp_path), w.slot)}")
        await server.start()
        board.set_open(w.slot, True)
        servers.append(server)
        forwarders.append(peers)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            yield workers, servers, channel  # the client's one connection reaches worker 0
    finally:
        for server in servers:
            await server.stop(0)
        for peers in forwarders:
            await peers.close()
        board.close()


def _request(i: int, model: str = "m") -> bytes:
    return pb.ModelInferRequest(model_name=model, id=str(i)).SerializeToString()


async def _infer(channel: aio.Channel, data: bytes,
                 metadata: tuple[tuple[str, str], ...] = ()) -> tuple[str, str]:
    """(answer id, capserve-worker of the trailing metadata)."""
    call = channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)(
        data, timeout=10, metadata=metadata)
    answer = await call
    trailing = dict(await call.trailing_metadata() or ())
    return answer.id, str(trailing.get(WORKER_KEY, ""))


def test_one_connection_runs_on_both_workers_and_the_answer_says_where(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_workers(tmp_path) as (workers, _, channel):
            answers = await asyncio.gather(*(_infer(channel, _request(i)) for i in range(8)))
            ran_on = [answer_id.split("@")[1] for answer_id, _ in answers]
            assert [a for a, _ in answers] == [f"{i}@{w}" for i, w in enumerate(ran_on)]
            assert [w for _, w in answers] == ran_on  # the trailing metadata is the truth
            assert sorted(set(ran_on)) == ["0", "1"]
            assert abs(len(workers[0].ran) - len(workers[1].ran)) <= 2  # balanced, not 7/1

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_an_error_on_the_peer_reaches_the_client_unchanged(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_workers(tmp_path) as (workers, _, channel):
            busy = asyncio.ensure_future(_infer(channel, _request(0)))  # worker 0 runs one
            await asyncio.sleep(RUN_S / 5)
            call = channel.unary_unary(INFER)(_request(1, "bad"), timeout=10)
            with pytest.raises(aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details() == "unexpected shape for input 'x' (on purpose)"
            assert dict(caught.value.trailing_metadata() or ())[WORKER_KEY] == "1"
            assert (await busy)[1] == "0"

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_draining_or_gone_peer_leaves_the_request_to_the_worker_that_has_it(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_workers(tmp_path) as (workers, servers, channel):
            workers[1].draining = True  # open on the board a moment longer than it should be
            answers = await asyncio.gather(*(_infer(channel, _request(i)) for i in range(4)))
            assert {w for _, w in answers} == {"0"} and len(workers[0].ran) == 4
            workers[1].draining = False
            await servers[1].stop(0)  # gone, and the board still says open
            answers = await asyncio.gather(*(_infer(channel, _request(i)) for i in range(4)))
            assert {w for _, w in answers} == {"0"} and len(workers[0].ran) == 8
            assert workers[1].ran == []

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_forwarded_request_is_never_forwarded_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_workers(tmp_path) as (workers, _, _channel):
            workers[1].board.add_running(1, 5)  # worker 1 looks far busier than worker 0
            async with aio.insecure_channel(f"unix:{peer_socket(str(tmp_path), 1)}") as peer:
                call = peer.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)(
                    _request(7), timeout=10, metadata=((FORWARDED_KEY, "0"),))
                assert (await call).id == "7@1"
                initial = dict(await call.initial_metadata() or ())
                assert initial[WORKER_KEY] == "1" and initial["capserve-taken"] == "1"
                # Without the marker the same worker hands it to idle worker 0.
                assert (await _infer(peer, _request(8)))[0] == "8@0"

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_closed_peer_gets_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_workers(tmp_path) as (workers, _, channel):
            workers[0].board.set_open(1, False)
            answers = await asyncio.gather(*(_infer(channel, _request(i)) for i in range(4)))
            assert {w for _, w in answers} == {"0"} and workers[1].ran == []

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_stream_requests_of_one_stream_spread_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_workers(tmp_path) as (workers, _, channel):
            call = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                response_deserializer=pb.ModelStreamInferResponse.FromString)

            async def messages() -> AsyncIterator[bytes]:
                for i in range(8):
                    yield _request(i)
                yield _request(99, "bad")

            answers = [r async for r in call(messages(), timeout=10)]
            ids = sorted(r.infer_response.id for r in answers if not r.error_message)
            assert [i.split("@")[0] for i in ids] == [str(i) for i in range(8)]
            assert {i.split("@")[1] for i in ids} == {"0", "1"}
            errors = [r.error_message for r in answers if r.error_message]
            assert errors == ["unexpected shape for input 'x' (on purpose)"]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_board_is_shared_between_attachments_and_reset_clears_a_slot(tmp_path: Path) -> None:
    LoadBoard.create(board_path(tmp_path), 3)
    a, b = LoadBoard.attach(board_path(tmp_path)), LoadBoard.attach(board_path(tmp_path))
    assert a.slots == 3 and not b.is_open(2) and b.running(2) == 0
    a.set_open(2, True)
    a.add_running(2, 3)
    a.add_running(2, -1)
    assert b.is_open(2) and b.running(2) == 2 and not b.is_open(1)
    b.reset(2)  # the supervisor, for a worker that died
    assert not a.is_open(2) and a.running(2) == 0
    a.add_running(2, -1)  # never below zero
    assert b.running(2) == 0
    assert (board_path(tmp_path).stat().st_mode & 0o777) == 0o600
    a.close()
    b.close()
    (tmp_path / "junk").write_bytes(b"123")
    with pytest.raises(ValueError, match="not a load board"):
        LoadBoard.attach(tmp_path / "junk")
