"""Bounds on queues, executions, loads and unloads that the core applies to every model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serving.batching.policy import QueueDefaults

if TYPE_CHECKING:
    from serving.settings import Settings


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Defaults match ``Settings``; every timeout is in seconds and 0 turns a watchdog off."""

    queue: QueueDefaults = field(default_factory=QueueDefaults)
    execution_timeout_s: float = 60.0
    load_timeout_s: float = 600.0
    close_timeout_s: float = 30.0
    max_instances: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceLimits:
        return cls(
            queue=QueueDefaults(
                max_queue_size=settings.default_max_queue_size,
                timeout_us=round(settings.default_queue_timeout_seconds * 1e6),
            ),
            execution_timeout_s=settings.execution_timeout_seconds,
            load_timeout_s=settings.model_load_timeout_seconds,
            close_timeout_s=settings.model_close_timeout_seconds,
            max_instances=settings.max_model_instances,
        )
