"""Drivers for the third-party HTTP load generators (Debian's ``hey`` and ``wrk``).

Both POST the same PNG body to ``/predictions/{model}`` on either server; their own summaries
are parsed, so the numbers are the tools' and not ours.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

from bench.schema import LoadRun

logger = logging.getLogger(__name__)

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


class LoadGenError(RuntimeError):
    """A load generator could not run or its output could not be read."""


def available(tool: str) -> bool:
    return shutil.which(tool) is not None


def parse_hey(text: str) -> dict[str, float | str]:
    """Throughput, percentiles, response and error counts from hey's summary output."""
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if rps is None:
        raise LoadGenError(f"hey printed no summary:\n{text[-2000:]}")
    pct = {int(p): float(v) * 1e3 for p, v in
           re.findall(r"^\s*(\d+)%+ in ([\d.]+) secs", text, re.M)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
    errors_section = text.split("Error distribution:", 1)
    transport_errors = 0
    if len(errors_section) == 2:
        transport_errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors_section[1], re.M))
    first_error = ""
    if len(errors_section) == 2:
        first = re.search(r"^\s*\[\d+\]\s*(.+)$", errors_section[1], re.M)
        first_error = first.group(1).strip()[:200] if first else ""
    ok = sum(n for c, n in codes.items() if 200 <= c < 300)
    bad_status = sum(n for c, n in codes.items() if not 200 <= c < 300)
    return {
        "rps": float(rps.group(1)),
        "requests": float(ok + bad_status + transport_errors),
        "errors": float(bad_status + transport_errors),
        "p50": pct.get(50, float("nan")),
        "p90": pct.get(90, float("nan")),
        "p99": pct.get(99, float("nan")),
        "note": "; ".join(filter(None, [
            ", ".join(f"HTTP {c}: {n}" for c, n in sorted(codes.items()) if not 200 <= c < 300),
            first_error])),
    }


def run_hey(url: str, body: Path, concurrency: int, duration_s: float, server: str,
            model: str) -> LoadRun:
    seconds = max(1, round(duration_s))
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
           "-T", "image/png", "-D", str(body), "-t", "30", url]
    logger.info("hey c=%d %ss -> %s", concurrency, seconds, url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90)
    if out.returncode != 0:
        raise LoadGenError(f"hey exited {out.returncode}: {out.stderr[-2000:]}")
    parsed = parse_hey(out.stdout)
    return LoadRun(server=server, model=model, client="hey", endpoint="/predictions",
                   concurrency=concurrency, duration_s=float(seconds),
                   requests=int(parsed["requests"]), errors=int(parsed["errors"]),
                   throughput_rps=float(parsed["rps"]), p50_ms=float(parsed["p50"]),
                   p90_ms=float(parsed["p90"]), p99_ms=float(parsed["p99"]),
                   note=str(parsed["note"]))


def parse_wrk(text: str) -> dict[str, float | str]:
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise LoadGenError(f"wrk printed no result line:\n{text[-2000:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(int(raw[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "requests": float(raw["requests"]),
        "errors": float(errors),
        "p50": raw["p50_us"] / 1e3,
        "p90": raw["p90_us"] / 1e3,
        "p99": raw["p99_us"] / 1e3,
        "note": f"non-2xx responses: {raw['status']}" if raw["status"] else "",
    }


def run_wrk(url: str, body: Path, concurrency: int, duration_s: float, server: str,
            model: str, work: Path) -> LoadRun:
    script = work / "post_png.lua"
    script.write_text(_WRK_SCRIPT)
    seconds = max(1, round(duration_s))
    # wrk needs at least one connection per thread; two threads keep it off a single core.
    threads = min(2, concurrency)
    cmd = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s",
           "--timeout", "30s", "-s", str(script), url]
    logger.info("wrk c=%d %ss -> %s", concurrency, seconds, url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90,
                         env={"BENCH_BODY": str(body), "PATH": "/usr/bin:/bin"})
    if out.returncode != 0:
        raise LoadGenError(f"wrk exited {out.returncode}: {out.stderr[-2000:]}")
    parsed = parse_wrk(out.stdout)
    return LoadRun(server=server, model=model, client="wrk", endpoint="/predictions",
                   concurrency=concurrency, duration_s=float(seconds),
                   requests=int(parsed["requests"]), errors=int(parsed["errors"]),
                   throughput_rps=float(parsed["rps"]), p50_ms=float(parsed["p50"]),
                   p90_ms=float(parsed["p90"]), p99_ms=float(parsed["p99"]),
                   note=str(parsed["note"]))
