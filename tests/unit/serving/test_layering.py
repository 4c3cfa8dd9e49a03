"""The lower layers import no wire library and no generated protobuf code.

Imports are read with ``ast`` from the source (module level and inside functions alike), so a
lazy import is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[3] / "serving"
LOWER = ("core", "batching", "backends")
FORBIDDEN = ("grpc", "starlette", "uvicorn", "google.protobuf", "serving.generated",
             "serving.transport", "serving.store")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_import_no_wire_or_generated_code(package: str) -> None:
    bad = [f"{path.relative_to(SERVING.parent)}:{line} imports {name}"
           for path in sorted((SERVING / package).rglob("*.py"))
           for line, name in _imports(path) if _forbidden(name)]
    assert not bad, "\n".join(bad)


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from serving.generated import model_config_pb2\n"
                     "    import grpc.aio\n")
    assert [n for _, n in _imports(probe) if _forbidden(n)] == [
        "serving.generated", "serving.generated.model_config_pb2", "grpc.aio"]
