"""What the numbers were measured on: CPU model, core count, memory, tool versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

_PACKAGES = ("torch", "torchvision", "onnxruntime-gpu", "onnxruntime", "grpcio", "numpy",
             "pillow", "torchserve", "torch-model-archiver", "tritonclient", "py-spy", "uvicorn",
             "starlette")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    return info


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def versions(perf_analyzer: str | None = None) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if shutil.which("java"):
        found["java"] = _first_line(["java", "-version"])
    if shutil.which("wrk"):
        found["wrk"] = _first_line(["wrk", "--version"]).split(" Copyright")[0]
    if shutil.which("hey"):
        found["hey"] = "debian package " + (_dpkg_version("hey") or "?")
    if perf_analyzer:
        found["perf_analyzer"] = "tritonclient 2.41.0 wheel"
    commit = _first_line(["git", "rev-parse", "--short", "HEAD"])
    if commit:
        found["capserve_commit"] = commit
    return found


def _dpkg_version(package: str) -> str:
    return _first_line(["dpkg-query", "-W", "-f=${Version}", package])
