"""Batching and queue policy: what a model's config says (:class:`BatchConfig`, read at the
store edge), and what the batcher runs by (:class:`BatchPolicy`, with the server's defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton ``ModelQueuePolicy`` (timeout action REJECT only)."""

    max_queue_size: int = 0  # 0 = unbounded
    default_timeout_us: int = 0  # 0 = no timeout
    allow_timeout_override: bool = False
    # capserve's automatic bound counts queued batch items, not requests: "8 batches of work"
    # whatever batch size the requests carry. 0 = none (a config's max_queue_size counts
    # requests, as Triton's does).
    max_queue_items: int = 0

    def timeout_us(self, requested_us: int) -> int:
        """Effective queue timeout: a request may only lower the default, and only when allowed."""
        if requested_us < 0:
            raise InvalidInput(f"request timeout must be >= 0 microseconds, got {requested_us}")
        lowers = self.default_timeout_us == 0 or requested_us < self.default_timeout_us
        if self.allow_timeout_override and requested_us > 0 and lowers:
            return requested_us
        return self.default_timeout_us


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When to form batches; ``max_batch_size == 0`` means the model has no batch dimension."""

    max_batch_size: int = 0
    dynamic: bool = False  # False: every request runs on its own (Triton's default scheduler)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    priority_levels: int = 0  # 0 = one level
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    level_policies: dict[int, QueuePolicy] = field(default_factory=dict)
    # Most input elements (all inputs together) one execution holds; 0 = no bound but
    # max_batch_size. A model whose input sizes the client picks (fully convolutional) has a
    # working memory that grows with them: the bound keeps one execution's memory to the
    # operator's choice, where max_batch_size alone would allow full batches of the largest
    # images (config parameter max_batch_elements; docs/batching.md).
    max_batch_elements: int = 0

    @property
    def levels(self) -> int:
        return max(1, self.priority_levels)

    def level_for(self, priority: int) -> int:
        """0-based queue index of a request ``priority`` (0 or out of range = the default level)."""
        if priority < 0:
            raise InvalidInput(f"request priority must be >= 0, got {priority}")
        if self.priority_levels == 0:
            return 0
        default = self.default_priority_level or self.priority_levels
        level = priority if 0 < priority <= self.priority_levels else default
        return level - 1

    def queue_policy(self, level_index: int) -> QueuePolicy:
        return self.level_policies.get(level_index + 1, self.default_queue_policy)


@dataclass(frozen=True, slots=True)
class QueueDefaults:
    """Queue bound and timeout for configs that set none (Triton's default is unbounded and
    no timeout, so an overloaded model would queue without limit and answer nothing quickly).

    ``max_queue_size`` 0 means automatic: ``slots_per_batch`` x ``max_batch_size`` (1 for a
    model without batching) x instances, kept within ``[min_queue_size, max_queue_size_cap]``;
    a cap of 0 turns the automatic bound off (unbounded, as Triton). The automatic bound counts
    queued batch items (a request of batch 32 takes 32): counted in requests, requests of a
    full batch each queued 32 times the work meant, ~25 s of capsnet at 10x overload, so
    accepted requests waited until their clients had given up.
    """

    max_queue_size: int = 0
    # Eight full batches per instance: eight clients each sending full batches (perf_analyzer
    # -b 32 --concurrency-range 8) are never refused; still under a second of work for capsnet.
    slots_per_batch: int = 8
    min_queue_size: int = 64
    max_queue_size_cap: int = 1024
    timeout_us: int = 30_000_000  # 0 = no default timeout

    def queue_size(self, max_batch_size: int, instances: int) -> int:
        if self.max_queue_size > 0:
            return self.max_queue_size
        if self.max_queue_size_cap <= 0:
            return 0
        wanted = self.slots_per_batch * max(1, max_batch_size) * max(1, instances)
        return max(self.min_queue_size, min(self.max_queue_size_cap, wanted))

    def fill(self, policy: QueuePolicy, max_batch_size: int, instances: int) -> QueuePolicy:
        """``policy`` with its unset fields (0; proto3 cannot tell unset from 0) defaulted."""
        automatic = not policy.max_queue_size and not self.max_queue_size
        size = policy.max_queue_size or self.queue_size(max_batch_size, instances)
        return QueuePolicy(
            max_queue_size=size,
            default_timeout_us=policy.default_timeout_us or self.timeout_us,
            allow_timeout_override=policy.allow_timeout_override,
            max_queue_items=size if automatic else 0,
        )


# Triton's own defaults: no bound, no timeout.
_TRITON = QueueDefaults(max_queue_size=0, min_queue_size=0, max_queue_size_cap=0, timeout_us=0)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """A config's batching fields as plain data (``dynamic_batching`` absent: ``dynamic`` False)."""

    max_batch_size: int = 0
    dynamic: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    level_policies: tuple[tuple[int, QueuePolicy], ...] = ()
    max_batch_elements: int = 0  # parameter max_batch_elements (see BatchPolicy)


def policy_from_config(
    config: BatchConfig, *, instances: int = 1, defaults: QueueDefaults | None = None,
) -> BatchPolicy:
    """Build the policy; raises ``ValueError`` for settings Triton would also refuse.

    With ``defaults`` every queue gets a bound and a timeout: the config's own, else those of
    ``defaults`` (the server always passes them); without, Triton's unbounded queues.
    """
    defaults = defaults or _TRITON
    mbs = config.max_batch_size
    if mbs < 0:
        raise ValueError(f"max_batch_size must be >= 0, got {mbs}")
    elements = config.max_batch_elements
    if elements < 0:
        raise ValueError(f"parameter max_batch_elements must be >= 0, got {elements}")
    if not config.dynamic:
        return BatchPolicy(max_batch_size=mbs, max_batch_elements=elements,
                           default_queue_policy=defaults.fill(QueuePolicy(), mbs, instances))
    preferred = tuple(sorted(set(config.preferred_batch_sizes)))
    for p in preferred:
        if p <= 0 or (mbs > 0 and p > mbs):
            raise ValueError(f"preferred_batch_size {p} must be in [1, max_batch_size={mbs}]")
    levels = config.priority_levels
    default_level = config.default_priority_level
    if levels and not 1 <= default_level <= levels:
        raise ValueError(f"default_priority_level {default_level} must be in [1, {levels}]")
    level_policies = {k: defaults.fill(v, mbs, instances) for k, v in config.level_policies}
    for k in level_policies:
        if not 1 <= k <= max(levels, 1):
            raise ValueError(f"priority_queue_policy level {k} is outside [1, {levels}]")
    return BatchPolicy(
        max_batch_size=mbs,
        dynamic=mbs > 0,
        preferred_batch_sizes=preferred,
        max_queue_delay_us=config.max_queue_delay_us,
        priority_levels=levels,
        default_priority_level=default_level,
        default_queue_policy=defaults.fill(config.default_queue_policy, mbs, instances),
        level_policies=level_policies,
        max_batch_elements=elements,
    )
