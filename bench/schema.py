"""The result schema of a benchmark sitting, written as JSON under ``bench/results/``.

Every number a table or plot shows comes from these records, so the smoke test can check that
a run produced each field and no errors without knowing how the numbers were measured.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class LoadRun:
    """One load-generator run against one server, model, endpoint and concurrency."""

    server: str  # "capserve" | "torchserve"
    model: str
    client: str  # "hey", "wrk", "perf_analyzer", "grpc_asyncio"
    endpoint: str  # "/predictions", "v2-grpc", "v2-http-binary", "Predictions-grpc"
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_batch_size: float | None = None  # capserve only, from its Prometheus metrics
    # CPU time of the whole server process tree (supervisor, workers; TorchServe's JVM and its
    # Python workers) per request of this run, from /proc: the figure that holds on any machine.
    server_cpu_us: float | None = None
    note: str = ""


@dataclass
class CeilingRun:
    """The same model run in-process (no server) at a fixed batch size."""

    runtime: str  # "onnxruntime" | "torchscript"
    model: str
    batch: int
    threads: int
    iterations: int
    items_per_s: float
    p50_ms: float  # per batch


@dataclass
class DecodeRun:
    image: str
    width: int
    height: int
    mode: str
    png_bytes: int
    decodes_per_s: float


@dataclass
class Skipped:
    """A part of the sitting that did not run, and why (never silently dropped)."""

    part: str
    reason: str


@dataclass
class Results:
    schema_version: int
    started: str
    finished: str
    smoke: bool
    machine: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    load: list[LoadRun] = field(default_factory=list)
    ceiling: list[CeilingRun] = field(default_factory=list)
    decode: list[DecodeRun] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    def total_errors(self) -> int:
        return sum(run.errors for run in self.load)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)


def field_names(cls: type) -> list[str]:
    """The JSON keys a record of ``cls`` always carries (the smoke test checks them)."""
    return [f.name for f in dataclasses.fields(cls)]


def load_results(path: Path) -> Results:
    raw = json.loads(path.read_text())
    return Results(
        **{k: v for k, v in raw.items() if k not in {"load", "ceiling", "decode", "skipped"}},
        load=[LoadRun(**r) for r in raw.get("load", [])],
        ceiling=[CeilingRun(**r) for r in raw.get("ceiling", [])],
        decode=[DecodeRun(**r) for r in raw.get("decode", [])],
        skipped=[Skipped(**r) for r in raw.get("skipped", [])],
    )
