"""Per model version statistics, faithful to Triton's ``ModelStatistics`` message.

Per request (success only, as Triton does): ``success``, ``queue`` and ``compute_*`` each add one
count and that request's duration (a batched request adds the whole execution's compute time).
Per failed request: ``fail``. Per execution: ``execution_count`` and ``batch_stats[batch_size]``.
``inference_count`` adds the request's batch size.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StatDuration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, int(seconds * 1e9))


@dataclass(slots=True)
class BatchStat:
    batch_size: int
    compute_input: StatDuration = field(default_factory=StatDuration)
    compute_infer: StatDuration = field(default_factory=StatDuration)
    compute_output: StatDuration = field(default_factory=StatDuration)


@dataclass(slots=True)
class ModelStats:
    name: str
    version: str
    last_inference: int = 0  # ms since the epoch
    inference_count: int = 0
    execution_count: int = 0
    success: StatDuration = field(default_factory=StatDuration)
    fail: StatDuration = field(default_factory=StatDuration)
    queue: StatDuration = field(default_factory=StatDuration)
    compute_input: StatDuration = field(default_factory=StatDuration)
    compute_infer: StatDuration = field(default_factory=StatDuration)
    compute_output: StatDuration = field(default_factory=StatDuration)
    cache_hit: StatDuration = field(default_factory=StatDuration)
    cache_miss: StatDuration = field(default_factory=StatDuration)
    batch_stats: list[BatchStat] = field(default_factory=list)


def _copy(d: StatDuration) -> StatDuration:
    return StatDuration(d.count, d.ns)


class StatsRecorder:
    """Accumulates one version's statistics; methods may be called from any thread."""

    def __init__(self, name: str, version: str) -> None:
        self._stats = ModelStats(name=name, version=version)
        self._batches: dict[int, BatchStat] = {}
        self._lock = threading.Lock()

    def record_success(
        self, batch_size: int, request_s: float, queue_s: float, compute_input_s: float,
        compute_infer_s: float, compute_output_s: float,
    ) -> None:
        with self._lock:
            s = self._stats
            s.last_inference = int(time.time() * 1000)
            s.inference_count += batch_size
            s.success.add(request_s)
            s.queue.add(queue_s)
            s.compute_input.add(compute_input_s)
            s.compute_infer.add(compute_infer_s)
            s.compute_output.add(compute_output_s)

    def record_failure(self, request_s: float) -> None:
        with self._lock:
            self._stats.last_inference = int(time.time() * 1000)
            self._stats.fail.add(request_s)

    def record_execution(
        self, batch_size: int, compute_input_s: float, compute_infer_s: float,
        compute_output_s: float,
    ) -> None:
        with self._lock:
            self._stats.execution_count += 1
            stat = self._batches.get(batch_size)
            if stat is None:
                stat = self._batches[batch_size] = BatchStat(batch_size)
            stat.compute_input.add(compute_input_s)
            stat.compute_infer.add(compute_infer_s)
            stat.compute_output.add(compute_output_s)

    def snapshot(self) -> ModelStats:
        with self._lock:
            s = self._stats
            return ModelStats(
                name=s.name, version=s.version, last_inference=s.last_inference,
                inference_count=s.inference_count, execution_count=s.execution_count,
                success=_copy(s.success), fail=_copy(s.fail), queue=_copy(s.queue),
                compute_input=_copy(s.compute_input), compute_infer=_copy(s.compute_infer),
                compute_output=_copy(s.compute_output), cache_hit=_copy(s.cache_hit),
                cache_miss=_copy(s.cache_miss),
                batch_stats=[
                    BatchStat(b.batch_size, _copy(b.compute_input), _copy(b.compute_infer),
                              _copy(b.compute_output))
                    for _, b in sorted(self._batches.items())
                ],
            )


def stats_to_dict(stats: ModelStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)


def stats_from_dict(doc: dict[str, Any]) -> ModelStats:
    def duration(key: str, src: dict[str, Any]) -> StatDuration:
        part = src.get(key) or {}
        return StatDuration(int(part.get("count", 0)), int(part.get("ns", 0)))

    return ModelStats(
        name=str(doc["name"]), version=str(doc["version"]),
        last_inference=int(doc.get("last_inference", 0)),
        inference_count=int(doc.get("inference_count", 0)),
        execution_count=int(doc.get("execution_count", 0)),
        **{key: duration(key, doc) for key in _DURATIONS},
        batch_stats=[
            BatchStat(int(b["batch_size"]), *(duration(k, b) for k in _BATCH_DURATIONS))
            for b in doc.get("batch_stats", [])
        ],
    )


_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
              "cache_hit", "cache_miss")
_BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def _sum(durations: list[StatDuration]) -> StatDuration:
    return StatDuration(sum(d.count for d in durations), sum(d.ns for d in durations))


def merge_stats(parts: list[ModelStats]) -> ModelStats:
    """One version's statistics over several worker processes: counts and durations add up,
    ``last_inference`` is the latest, batch statistics add per batch size."""
    first = parts[0]
    batches: dict[int, list[BatchStat]] = {}
    for part in parts:
        for b in part.batch_stats:
            batches.setdefault(b.batch_size, []).append(b)
    return ModelStats(
        name=first.name, version=first.version,
        last_inference=max(p.last_inference for p in parts),
        inference_count=sum(p.inference_count for p in parts),
        execution_count=sum(p.execution_count for p in parts),
        **{key: _sum([getattr(p, key) for p in parts]) for key in _DURATIONS},
        batch_stats=[
            BatchStat(size, *(_sum([getattr(b, k) for b in group]) for k in _BATCH_DURATIONS))
            for size, group in sorted(batches.items())
        ],
    )
