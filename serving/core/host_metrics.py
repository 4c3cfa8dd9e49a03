"""Machine gauges under Triton's and TorchServe's names, read from /proc at scrape time.

Triton: ``nv_cpu_utilization`` (0..1 over every core since the last scrape),
``nv_cpu_memory_total_bytes``, ``nv_cpu_memory_used_bytes``. TorchServe (labels ``Level="Host"``,
``Hostname``): ``CPUUtilization`` (percent), ``MemoryUsed``/``MemoryAvailable`` (megabytes),
``MemoryUtilization`` (percent), ``DiskUsage``/``DiskAvailable`` (gigabytes, of the root file
system), ``DiskUtilization`` (percent). They describe the machine, not a process, so with
worker processes only the supervisor reports them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_MB = 1024 * 1024
_GB = 1024 * _MB


class HostCollector(Collector):
    def __init__(self, disk_path: Path | str = "/") -> None:
        self._disk = str(disk_path)
        self._host = socket.gethostname()
        psutil.cpu_percent(interval=None)  # the first reading starts the interval

    def collect(self) -> Iterator[Metric]:
        cpu = psutil.cpu_percent(interval=None)
        memory = psutil.virtual_memory()
        used = memory.total - memory.available
        yield _gauge("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", cpu / 100.0)
        yield _gauge("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes",
                     float(memory.total))
        yield _gauge("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", float(used))
        rows = [("CPUUtilization", "Percent", cpu),
                ("MemoryUsed", "Megabytes", used / _MB),
                ("MemoryAvailable", "Megabytes", memory.available / _MB),
                ("MemoryUtilization", "Percent", memory.percent)]
        try:
            disk = psutil.disk_usage(self._disk)
            rows += [("DiskUsage", "Gigabytes", disk.used / _GB),
                     ("DiskAvailable", "Gigabytes", disk.free / _GB),
                     ("DiskUtilization", "Percent", disk.percent)]
        except OSError:
            pass  # the store's file system went away: report the rest
        for name, unit, value in rows:
            family = GaugeMetricFamily(name, f"TorchServe host gauge, unit: {unit}",
                                       labels=["Level", "Hostname"])
            family.add_metric(["Host", self._host], value)
            yield family


def _gauge(name: str, doc: str, value: float) -> Metric:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family
