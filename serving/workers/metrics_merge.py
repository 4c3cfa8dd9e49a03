"""One ``/metrics`` for all workers: each worker's exposition, parsed and added up.

Counters, histograms, summaries and untyped running sums add per label set, so a family counts
exactly the requests every worker served. Gauges are a state of one process (in-flight requests,
memory), so each keeps its samples with a ``worker`` label instead; ``sum by`` adds them up.
``_created`` samples are dropped: a sum of start times means nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

_Key = tuple[str, tuple[tuple[str, str], ...]]


def merge_expositions(texts: dict[str, str]) -> list[Metric]:
    """``texts`` maps a worker id to its text exposition; returns the merged families."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[_Key, float]] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit)
                sums[family.name] = {}
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                if family.type == "gauge":
                    merged.add_sample(sample.name, {**sample.labels, "worker": worker},
                                      sample.value)
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                table = sums[family.name]
                table[key] = table.get(key, 0.0) + sample.value
    for name, table in sums.items():
        for (sample_name, labels), value in table.items():
            families[name].add_sample(sample_name, dict(labels), value)
    return list(families.values())


class MergedCollector(Collector):
    """Yields whatever ``source`` returns at scrape time (the workers' merged families)."""

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source()

    def describe(self) -> list[Metric]:
        return []  # families change as workers load models: never checked at registration

