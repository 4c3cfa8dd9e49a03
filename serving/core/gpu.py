"""GPU gauges read from NVML at scrape time; absent (and harmless) on a machine without a GPU."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


class GpuCollector(Collector):
    """capserve_gpu_* and Triton's nv_gpu_* gauges, one sample per GPU (label ``gpu_uuid``)."""

    def __init__(self, nvml: object, handles: list[object]) -> None:
        self._nvml = nvml
        self._handles = handles
        self._energy_start = [self._energy(h) for h in handles]  # mJ at start

    def _energy(self, handle: object) -> float:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle))  # type: ignore[attr-defined]
        except Exception:
            return 0.0

    @classmethod
    def create(cls) -> GpuCollector | None:
        """A collector when NVML works and sees at least one GPU, else None."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:
            return None
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception:
            logger.warning("NVML is present but listing GPUs failed", exc_info=True)
            handles = []
        if not handles:
            pynvml.nvmlShutdown()
            return None
        return cls(pynvml, handles)

    def collect(self) -> Iterator[Metric]:
        nvml = self._nvml
        fams = {
            key: (
                GaugeMetricFamily(f"capserve_gpu_{key}", doc, labels=["gpu_uuid"]),
                GaugeMetricFamily(f"nv_gpu_{triton}", doc, labels=["gpu_uuid"]),
            )
            for key, triton, doc in (
                ("utilization_ratio", "utilization", "GPU utilization, 0 to 1"),
                ("memory_used_bytes", "memory_used_bytes", "GPU memory in use"),
                ("memory_total_bytes", "memory_total_bytes", "GPU memory in total"),
            )
        }
        for handle in self._handles:
            try:
                uuid = nvml.nvmlDeviceGetUUID(handle)  # type: ignore[attr-defined]
                util = nvml.nvmlDeviceGetUtilizationRates(handle)  # type: ignore[attr-defined]
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[attr-defined]
            except Exception:
                logger.debug("NVML read failed", exc_info=True)
                continue
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            for key, value in (
                ("utilization_ratio", util.gpu / 100.0),
                ("memory_used_bytes", float(mem.used)),
                ("memory_total_bytes", float(mem.total)),
            ):
                for fam in fams[key]:
                    fam.add_metric([uuid], value)
        for pair in fams.values():
            yield from pair
        yield from self._power()

    def _power(self) -> Iterator[Metric]:
        """Triton's power and energy families (watts, joules); skipped where NVML has none."""
        nvml = self._nvml
        usage = GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts",
                                  labels=["gpu_uuid"])
        limit = GaugeMetricFamily("nv_gpu_power_limit", "GPU power management limit in watts",
                                  labels=["gpu_uuid"])
        energy = CounterMetricFamily("nv_energy_consumption", "GPU energy consumption in "
                                     "joules since the server started", labels=["gpu_uuid"])
        for handle, start in zip(self._handles, self._energy_start, strict=False):
            try:
                uuid = nvml.nvmlDeviceGetUUID(handle)  # type: ignore[attr-defined]
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                usage.add_metric([uuid], nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # type: ignore[attr-defined]
                limit.add_metric([uuid], nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0)  # type: ignore[attr-defined]
                total = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # type: ignore[attr-defined]
                energy.add_metric([uuid], (total - start) / 1000.0)
            except Exception:
                logger.debug("NVML power read failed", exc_info=True)
        yield from (usage, limit, energy)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()  # type: ignore[attr-defined]
        except Exception:
            logger.debug("nvmlShutdown failed", exc_info=True)
