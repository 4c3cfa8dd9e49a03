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
from serving.core.shm import INLINE_COPY_BYTES, ShmScope
from serving.core.types import InferResponse
from serving.errors import PermissionDenied
from serving.transport.auth import ModelControlGate


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
    if shm.output_bytes() <= INLINE_COPY_BYTES:
        shm.write_outputs(response)
    else:
        await asyncio.to_thread(shm.write_outputs, response)


def cuda_status(service: InferenceService, name: str) -> list[CudaRegionStatus]:
    return service.shared_memory.cuda_status(name)
