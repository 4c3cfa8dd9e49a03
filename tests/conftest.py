"""Suite-wide fixtures: markers by folder, and the default model store built once per run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in {"unit", "integration", "e2e"}:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def default_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default models (committed checkpoints) exported into a fresh store, once per run.

    CAPSERVE_TEST_STORE points at an already built store to skip the export while iterating.
    """
    prebuilt = os.environ.get("CAPSERVE_TEST_STORE")
    if prebuilt:
        return Path(prebuilt)
    store = tmp_path_factory.mktemp("store") / "model_store"
    subprocess.run(
        [sys.executable, "-m", "export.defaults", "--checkpoints", str(ROOT / "checkpoints"),
         "--store", str(store)],
        check=True, cwd=ROOT,
    )
    return store
