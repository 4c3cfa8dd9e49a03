"""Dynamic batching with Triton semantics: one :class:`DynamicBatcher` per model version."""

from serving.batching.batcher import BatchObserver, BatchResult, DynamicBatcher, Runner
from serving.batching.clock import Clock, FakeClock, MonotonicClock
from serving.batching.policy import BatchConfig, BatchPolicy, QueuePolicy, policy_from_config

__all__ = [
    "BatchConfig",
    "BatchObserver",
    "BatchPolicy",
    "BatchResult",
    "Clock",
    "DynamicBatcher",
    "FakeClock",
    "MonotonicClock",
    "QueuePolicy",
    "Runner",
    "policy_from_config",
]
