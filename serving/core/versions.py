"""Version folders of a model directory, and which of them the version policy serves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.pbtxt"  # a model directory's config (Triton's layout)
# Versions are int64 in the protocols: 19 digits hold them all.
MAX_VERSION_DIGITS = 19


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Triton's ``version_policy``: the newest ``num_versions``, all, or the ``specific`` ones."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()


def is_version_name(name: str) -> bool:
    """ASCII digits, at most 19: ``str.isdigit`` alone accepts '²' and other scripts' digits
    that ``int`` refuses, and ``int`` refuses over 4300 digits."""
    return len(name) <= MAX_VERSION_DIGITS and name.isascii() and name.isdigit()


def available_versions(model_dir: Path) -> list[int]:
    """Version folders of a model directory (a folder named otherwise is not a version)."""
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and is_version_name(p.name))


def select_versions(model_dir: Path, policy: VersionPolicy) -> list[str]:
    """Version folders the version policy serves (ascending); ValueError when there are none."""
    present = available_versions(model_dir)
    if policy.kind == "all":
        chosen = present
    elif policy.kind == "specific":
        wanted = sorted(policy.versions)
        missing = [v for v in wanted if v not in present]
        if missing:
            raise ValueError(f"version policy names missing versions {missing}")
        chosen = wanted
    else:
        chosen = present[-max(1, policy.num_versions):]
    if not chosen:
        raise ValueError(f"no version folders (e.g. '1/') under {model_dir}")
    return [str(v) for v in chosen]
