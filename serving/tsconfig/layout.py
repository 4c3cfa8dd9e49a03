"""KServe's storage layout and the model store prepared from a TorchServe config.

KServe mounts ``<storage>/config/config.properties`` and ``<storage>/model-store/*.mar``; a
``--model-store`` pointing at such a root is read that way. The archives a config lists
(``load_models``, ``models``/``model_snapshot``) are materialised once, before any worker
starts, with their batch size, delay and worker count, into a private folder that becomes the
served model store: each built-in-task archive as a Triton model directory, each archive with
its own handler as a link to the archive plus its values in ``PLANS_FILE``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from serving.archives.mar import ArchiveLimits
from serving.archives.materialize import materialize
from serving.errors import ServingError
from serving.handlers.archive import PLANS_FILE, runs_own_handler
from serving.tsconfig.config import ModelPlan, TsConfig

log = logging.getLogger(__name__)
KSERVE_CONFIG = Path("config") / "config.properties"
KSERVE_STORE = "model-store"


def kserve_config(root: Path) -> Path | None:
    """``root/config/config.properties`` when ``root`` is a KServe storage root."""
    path = root / KSERVE_CONFIG
    return path if path.is_file() and (root / KSERVE_STORE).is_dir() else None


def archive_store(cfg: TsConfig, kserve_root: Path | None, flag_store: Path | None) -> Path:
    """Where the archives are: a KServe root's ``model-store``, else the config's
    ``model_store``, else ``--model-store``."""
    if kserve_root is not None:
        store = kserve_root / KSERVE_STORE
        if cfg.model_store is not None and cfg.model_store.resolve() != store.resolve():
            cfg.warnings.append(f"model_store={cfg.model_store} is the path inside KServe's pod; "
                                f"the archives are read from {store}")
        return store
    if cfg.model_store is not None:
        return cfg.model_store
    return flag_store or Path("model_store")


def _plans(cfg: TsConfig, store: Path) -> list[ModelPlan]:
    plans = dict(cfg.models)
    if cfg.load_all or not plans:
        if not plans and not cfg.load_all:
            cfg.warnings.append("neither load_models nor models lists a model; every archive "
                                f"of {store} is served")
        listed = {p.mar for p in plans.values()}
        for mar in sorted(store.glob("*.mar")):
            if mar.name not in listed and mar.stem not in plans:
                plans[mar.stem] = ModelPlan(name=mar.stem, mar=mar.name)
    return [plans[name] for name in sorted(plans)]


def batching(plan: ModelPlan, default_workers: int | None) -> dict[str, int]:
    """The config.pbtxt values a plan sets (only those it names, besides the worker count)."""
    values = {"instances": plan.workers(default_workers)}
    if plan.batch_size:
        values["max_batch_size"] = plan.batch_size
    if plan.max_batch_delay_ms is not None:
        values["max_queue_delay_microseconds"] = plan.max_batch_delay_ms * 1000
    return values


@dataclass
class PreparedStore:
    path: Path
    models: list[str]
    handler_models: list[str]


def prepare_store(cfg: TsConfig, store: Path, work: Path, allow_archive_code: bool,
                  max_instances: int = 16) -> PreparedStore:
    """Materialise the listed archives below ``work``; returns the store to serve. A model that
    cannot be prepared is logged with the reason and the others are served."""
    served = work / "store"
    served.mkdir(parents=True, exist_ok=True)
    cache = work / "archives"
    limits = ArchiveLimits()
    prepared = PreparedStore(served, [], [])
    plans: dict[str, dict[str, object]] = {}
    for plan in _plans(cfg, store):
        mar = store / plan.mar
        if not mar.is_file():
            log.error("model '%s' is not served: %s is not in the model store %s", plan.name,
                      plan.mar, store)
            continue
        values = batching(plan, cfg.default_workers)
        if values["instances"] > max_instances:
            log.warning("model '%s': %d workers asked, capped at max_model_instances=%d",
                        plan.name, values["instances"], max_instances)
            values["instances"] = max_instances
        try:
            if allow_archive_code and runs_own_handler(mar, limits) is not None:
                (served / f"{plan.name}.mar").symlink_to(mar.resolve())
                plans[plan.name] = {**plan.to_json(), "workers": values["instances"],
                                    "envelope": cfg.envelope}
                prepared.handler_models.append(plan.name)
                continue
            model_dir = materialize(mar, cache, limits, allow_archive_code, plan.name, values)
        except ServingError as exc:
            log.error("model '%s' (%s) is not served: %s", plan.name, plan.mar, exc)
            continue
        except Exception:  # one bad archive never stops the others
            log.exception("model '%s' (%s) is not served", plan.name, plan.mar)
            continue
        if plan.response_timeout_s is not None:
            cfg.ignored.append((f"models.{plan.name}.responseTimeout",
                                "built-in-task models use execution_timeout_seconds"))
        (served / plan.name).symlink_to(model_dir.resolve(), target_is_directory=True)
        prepared.models.append(plan.name)
    (served / PLANS_FILE).write_text(json.dumps(plans, indent=1, sort_keys=True))
    return prepared
