"""``capserve serve --ts-config FILE`` (or ``--model-store`` at a KServe storage root).

Precedence, highest first: flags, ``CAPSERVE_*`` variables, ``TS_*`` variables (with
``enable_envvars_config=true``), the file, capserve's defaults. The archives are prepared once
here, before a supervisor starts its workers, so every worker serves the same store.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.tsconfig.config import TsConfig, load_ts_config
from serving.tsconfig.layout import archive_store, kserve_config, prepare_store

if TYPE_CHECKING:
    from serving.settings import Settings


@dataclass
class TsStartup:
    config: TsConfig
    kserve_root: Path | None


def _given(name: str, overrides: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    if name in overrides:
        return overrides[name]
    return environ.get(f"CAPSERVE_{name.upper()}")


def read_ts_config(overrides: MutableMapping[str, Any],
                   environ: Mapping[str, str]) -> TsStartup | None:
    """Reads the config (if any) and adds its settings to ``overrides`` where neither a flag
    nor a ``CAPSERVE_*`` variable gave them; ``ValueError`` for a refused key."""
    flag = _given("ts_config", overrides, environ)
    store = _given("model_store", overrides, environ)
    root = Path(store) if store and kserve_config(Path(store)) is not None else None
    path = Path(flag) if flag else (kserve_config(root) if root is not None else None)
    if path is None:
        return None
    token = _given("api_token_file", overrides, environ)
    cfg = load_ts_config(path, environ, token_file=str(token) if token else None)
    for name, value in cfg.settings.items():
        if _given(name, overrides, environ) is None:
            overrides[name] = value
    overrides["ts_config"] = str(path)
    return TsStartup(cfg, root)


def prepare(settings: Settings, startup: TsStartup) -> tuple[Settings, Path]:
    """The settings with the prepared model store, and the folder to remove at exit."""
    cfg = startup.config
    flag_store = None if startup.kserve_root is not None else Path(settings.model_store)
    store = archive_store(cfg, startup.kserve_root, flag_store)
    if not store.is_dir():
        raise ValueError(f"model store {store} (from {cfg.path}) is not a directory")
    work = Path(tempfile.mkdtemp(prefix="capserve-ts-"))
    try:
        prepared = prepare_store(cfg, store, work, settings.allow_archive_code,
                                 settings.max_model_instances)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    cfg.log_once()
    return settings.model_copy(update={"model_store": prepared.path}), work
