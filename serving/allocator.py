"""glibc's allocator told to keep request-sized buffers on the heap.

By default glibc serves any allocation above 32 MiB (its largest dynamic mmap threshold) with a
fresh ``mmap`` and returns it with ``munmap`` on free. A 37 MiB tensor request then costs about
9,400 page faults, each zeroing a page, in every copy of it the wire makes (kernel socket buffer ->
grpc/uvicorn buffer -> one ``bytes``): a third of the server's time on that path in a profile.
Raising the mmap threshold past the request limit lets freed buffers be reused without faults;
the trim threshold bounds how much freed memory a process keeps (twice the threshold).
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MIB = 1024 * 1024


def keep_large_buffers(mib: int) -> bool:
    """Serve allocations up to ``mib`` MiB from the heap (0 = glibc's defaults); whether it took."""
    if mib <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): keep that allocator's defaults
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    took = bool(mallopt(_M_MMAP_THRESHOLD, mib * MIB)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * mib * MIB))
    if not took:
        logger.warning("allocator: glibc refused an mmap threshold of %d MiB", mib)
    return took
