"""What an archive's ``capserve_task.json`` may say, and how large each value may be.

Its scalar keys become ``config.pbtxt`` parameters, and some parameters tune the server itself
(``inline_run_max_microseconds`` runs work on the event loop, thread counts size pools). An
archive is data from whoever made it, so only the keys the exporter writes are accepted, each
with a bounded value; anything else is refused with an error naming the key. Operators who need
other parameters write a Triton-layout model directory, which is theirs to configure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from serving.archives.mar import TASK_FILE, ArchiveError
from serving.tasks.spec import FULLY_CONVOLUTIONAL, RESIZE_POLICIES

MAX_SIDE = 8192  # input_height/width, max_side, min_side: a side of an image fed to a model
MAX_BATCH = 1024
MAX_TENSORS = 16  # inputs and outputs, each
MAX_DIMS = 8
MAX_DIM = 1 << 20
MAX_TEXT = 512
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_STRUCTURE = ("inputs", "outputs", "max_batch_size", "name", "labels")


def _choice(options: tuple[str, ...]) -> Callable[[str], str | None]:
    return lambda text: None if text in options else f"one of {', '.join(options)}"


def _int_range(low: int, high: Callable[[], int] | int) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        top = high() if callable(high) else high
        if not text.strip().lstrip("-").isdigit():
            return f"an integer from {low} to {top}"
        return None if low <= int(text) <= top else f"from {low} to {top}"
    return check


def _text(text: str) -> str | None:
    return None if len(text) <= MAX_TEXT else f"at most {MAX_TEXT} characters"


def _name(text: str) -> str | None:
    return None if _NAME.match(text) else "a model name (letters, digits, _ . -)"


def _threads() -> int:
    return max(1, os.cpu_count() or 1)


# Each key an archive may set, with the check of its value (None: good; else what it must be).
PARAMETERS: dict[str, Callable[[str], str | None]] = {
    "task": _choice((*FULLY_CONVOLUTIONAL, "capsule_decoder")),
    "input_color": _choice(("L", "RGB")),
    "input_height": _int_range(0, MAX_SIDE),
    "input_width": _int_range(0, MAX_SIDE),
    "max_side": _int_range(0, MAX_SIDE),
    "min_side": _int_range(0, MAX_SIDE),
    "mean": _text,
    "std": _text,
    "resize": _choice(RESIZE_POLICIES),
    "output_semantics": _text,
    "decoder_model": _name,
    # The exporter's execution bound for fully convolutional models: an archive may only set
    # what leaving it out would allow anyway (no bound but max_batch_size).
    "max_batch_elements": _int_range(0, MAX_BATCH * MAX_SIDE * MAX_SIDE * 4),
    "intra_op_thread_count": _int_range(0, _threads),
    "inter_op_thread_count": _int_range(0, _threads),
    # Provenance written by the exporter: inert text.
    "arch": _text, "source_checkpoint": _text, "source_sha256": _text,
}


def check_task_document(task: Any, archive: str) -> dict[str, Any]:
    """``task`` if every key is allowed and every value in bounds, else ``ArchiveError``."""
    if not isinstance(task, dict):
        raise ArchiveError(f"{archive}: {TASK_FILE} must be a JSON object")
    for key, value in task.items():
        if key in _STRUCTURE:
            continue
        check = PARAMETERS.get(key)
        if check is None:
            raise ArchiveError(
                f"{archive}: {TASK_FILE} sets '{key}', which an archive may not set (allowed: "
                f"{', '.join(sorted((*PARAMETERS, *_STRUCTURE)))}); put server tuning in a "
                "Triton model directory's config.pbtxt instead")
        if isinstance(value, dict | list) or value is None:
            raise ArchiveError(f"{archive}: {TASK_FILE} key '{key}' must be a string or number")
        problem = check(str(value))
        if problem:
            raise ArchiveError(f"{archive}: {TASK_FILE} key '{key}' is {str(value)[:80]!r}; "
                               f"it must be {problem}")
    _check_structure(task, archive)
    return task


def _check_structure(task: Mapping[str, Any], archive: str) -> None:
    batch = task.get("max_batch_size", 32)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 0 <= batch <= MAX_BATCH:
        raise ArchiveError(f"{archive}: {TASK_FILE} key 'max_batch_size' is {batch!r}; it "
                           f"must be an integer from 0 to {MAX_BATCH}")
    for kind in ("inputs", "outputs"):
        tensors = task.get(kind)
        if not isinstance(tensors, list) or not 1 <= len(tensors) <= MAX_TENSORS:
            raise ArchiveError(f"{archive}: {TASK_FILE} key '{kind}' must list 1 to "
                               f"{MAX_TENSORS} tensors")
        for spec in tensors:
            _check_tensor(spec, kind, archive)


def _check_tensor(spec: Any, kind: str, archive: str) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not _NAME.match(
            spec["name"]):
        raise ArchiveError(f"{archive}: {TASK_FILE} '{kind}' entries need a 'name' made of "
                           "letters, digits, _ . -")
    dims = spec.get("dims", spec.get("shape", []))
    if (not isinstance(dims, list) or len(dims) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool)
                       and (d == -1 or 1 <= d <= MAX_DIM) for d in dims)):
        raise ArchiveError(f"{archive}: {TASK_FILE} {kind[:-1]} '{spec['name']}' has dims "
                           f"{str(dims)[:80]}; at most {MAX_DIMS} dims, each -1 or 1 to "
                           f"{MAX_DIM}")
