"""The core, batching and backend packages stay free of transport libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
MODULES = [
    "serving.core.service", "serving.core.repository", "serving.core.metrics",
    "serving.core.datatypes", "serving.batching", "serving.backends.ort",
    "serving.backends.torchscript", "serving.settings",
]


def test_no_transport_library_is_imported() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'grpc', 'starlette', 'uvicorn', 'fastapi'} or m.endswith('_pb2_grpc'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_sources_do_not_name_transport_libraries() -> None:
    for package in ("core", "batching", "backends"):
        for path in (ROOT / "serving" / package).rglob("*.py"):
            text = path.read_text()
            for name in ("import grpc", "from grpc", "starlette", "uvicorn", "_pb2_grpc"):
                assert name not in text, f"{path} mentions {name}"
