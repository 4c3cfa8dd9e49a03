"""How the long-running processes count stop signals (serving/signals.py), each case in a
child process, since a second signal ends the process at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    from serving.signals import stop_on_signals

    async def main() -> None:
        stop = stop_on_signals(force_on_second=sys.argv[1] == "force")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        print("stopping" if stop.is_set() else "running", flush=True)
        await asyncio.sleep(float(sys.argv[2]))
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.2)
        print("drained", flush=True)

    asyncio.run(main())
""")


def _run(mode: str, gap_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, mode, str(gap_s)], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize(("mode", "gap_s", "code", "out"), [
    ("force", 0.0, 0, "stopping\ndrained\n"),  # one request sent twice (make, systemd)
    ("force", 0.8, 1, "stopping\n"),  # a real second signal: out at once
    ("keep", 0.8, 0, "stopping\ndrained\n"),  # a worker: its supervisor ends the drain
])
def test_a_repeat_is_the_same_request_unless_it_comes_later(mode: str, gap_s: float, code: int,
                                                             out: str) -> None:
    done = _run(mode, gap_s)
    assert (done.returncode, done.stdout) == (code, out), done.stderr
    assert ("second signal, exiting without draining" in done.stderr) == (code == 1)
