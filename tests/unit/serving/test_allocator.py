"""A large buffer freed and allocated again costs no fresh page faults once tuned.

Each case runs in its own interpreter: mallopt changes the whole process's allocator.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import resource, sys
from serving.allocator import keep_large_buffers
took = keep_large_buffers(int(sys.argv[1]))
buf = bytearray(40 * 1024 * 1024); del buf  # the first one faults in either case
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    buf = bytearray(40 * 1024 * 1024); del buf
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mib: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(mib)], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    return out[0], int(out[1])


def test_reused_buffers_do_not_fault_again() -> None:
    took, tuned = _faults(80)
    assert took == "True"
    _, default = _faults(0)
    # 3 x 40 MiB in 4 KiB pages is about 30,000 faults when each buffer is a fresh mapping.
    assert default > 20_000, default
    assert tuned < default // 10, (tuned, default)


def test_zero_keeps_the_defaults() -> None:
    assert _faults(0)[0] == "False"
