"""What both transports do alike for Triton's system and CUDA shared-memory extensions.

Registration, unregistration and status sit behind the model-control gate (see
docs/protocols.md, "System shared memory"): a client that may register a region names any
shared-memory object the server's user can open (or any device allocation whose IPC handle it
holds), and inference then reads it and writes into it. Inference that only names an already
registered region needs nothing more.
"""

from __future__ import annotations

import asyncio

from serving.core.cuda_shm import CudaRegionStatus
from serving.core.service import InferenceService
from serving.core.shm import ShmScope
from serving.core.types import InferResponse
from serving.errors import PermissionDenied, Unsupported
from serving.transport.auth import ModelControlGate

# Outputs up to this many bytes are copied into their regions on the event loop.
INLINE_WRITE_BYTES = 1024 * 1024


def shm_gate(gate: ModelControlGate, authorization: str | None, *, host: str | None = None,
             server: tuple[str, int] | None = None, what: str = "system") -> None:
    """The gate's check, with a message that names shared memory when it is switched off."""
    try:
        gate.check(authorization, host=host, server=server)
    except PermissionDenied as exc:
        if gate.enabled or exc.message.startswith("Host header"):
            raise
        raise PermissionDenied(
            f"{what} shared memory registration is disabled; start the server with "
            "--enable-model-control (and an API token, see docs/protocols.md)") from None


async def write_outputs_off_loop(shm: ShmScope, response: InferResponse) -> None:
    """Copy the outputs bound for regions into them, on a thread when they are large."""
    if shm.output_bytes() <= INLINE_WRITE_BYTES:
        shm.write_outputs(response)
    else:
        await asyncio.to_thread(shm.write_outputs, response)


def _one_process(service: InferenceService) -> None:
    # A core that fans registrations out to its sibling workers overrides the system
    # register; CUDA registrations have no fan-out yet, and a region only one worker opened
    # would answer "Unable to find" on the others.
    if type(service).register_shared_memory is not InferenceService.register_shared_memory:
        raise Unsupported("CUDA shared memory is served by one worker process only: start "
                          "the server with --workers 1 (auto picks one per GPU)")


async def register_cuda(service: InferenceService, name: str, raw_handle: bytes,
                        device_id: int, byte_size: int) -> None:
    """Register a CUDA region; on a thread, since opening a handle may set up a CUDA context."""
    _one_process(service)
    await asyncio.to_thread(service.shared_memory.register_cuda, name, raw_handle, device_id,
                            byte_size)


async def unregister_cuda(service: InferenceService, name: str) -> None:
    await asyncio.to_thread(service.shared_memory.unregister_cuda, name)


def cuda_status(service: InferenceService, name: str) -> list[CudaRegionStatus]:
    return service.shared_memory.cuda_status(name)
