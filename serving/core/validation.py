"""Request checks against the model config, so every transport reports identical errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from serving.core.types import InferRequest, ParamValue, RequestedOutput
from serving.core.versions import MAX_VERSION_DIGITS, is_version_name
from serving.errors import InvalidInput, ModelNotFound, shown

if TYPE_CHECKING:
    from serving.settings import Settings

# Defaults of the tensor limits; the settings (``CAPSERVE_MAX_TENSOR_DIMS`` ...) repeat them.
DEFAULT_MAX_DIMS = 16
DEFAULT_MAX_ELEMENTS = 4 * 1024 * 1024
DEFAULT_MAX_STRING_ELEMENTS = 64 * 1024


@dataclass(frozen=True, slots=True)
class TensorLimits:
    """What a client may ask the decoders to build, checked from the shapes alone.

    The transports check every input against these before they decode or allocate anything;
    the counts are per request, over all its inputs. BYTES elements have their own, smaller
    cap: each one becomes a Python object, decoded one at a time.
    """

    max_dims: int = DEFAULT_MAX_DIMS
    max_elements: int = DEFAULT_MAX_ELEMENTS
    max_string_elements: int = DEFAULT_MAX_STRING_ELEMENTS

    @classmethod
    def from_settings(cls, settings: Settings) -> TensorLimits:
        return cls(max_dims=settings.max_tensor_dims,
                   max_elements=settings.max_request_elements,
                   max_string_elements=settings.max_request_string_elements)


DEFAULT_LIMITS = TensorLimits()


def element_count(name: str, shape: Sequence[int], max_elements: int) -> int:
    """Elements of ``shape``, refusing (InvalidInput) before the product can grow past
    ``max_elements``: a shape of huge dims never becomes a huge integer or array."""
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} must hold non-negative integers")
    big = next((d for d in shape if d > max_elements), None)
    if big is not None:
        raise InvalidInput(
            f"input '{name}': dimension {big} exceeds the limit of {max_elements} elements "
            "(setting max_request_elements)"
        )
    if 0 in shape:
        return 0
    count = 1
    for d in shape:
        count *= d  # both factors <= max_elements here: no runaway integers
        if count > max_elements:
            raise InvalidInput(
                f"input '{name}' has {_describe(shape)} elements, over the limit of "
                f"{max_elements} elements per request (setting max_request_elements)"
            )
    return count


def _describe(shape: Sequence[int]) -> str:
    """The element count of an oversized shape, for the message (exact when it is small)."""
    total = math.prod(shape)
    return str(total) if total < 10**30 else f"more than 10^30 ({' x '.join(map(str, shape))})"


class ElementBudget:
    """One request's running element counts against :class:`TensorLimits`."""

    __slots__ = ("limits", "elements", "strings")

    def __init__(self, limits: TensorLimits) -> None:
        self.limits = limits
        self.elements = 0
        self.strings = 0

    def take(self, name: str, datatype: str, shape: Sequence[int]) -> int:
        """Check one input's shape and charge it to the request; returns its element count."""
        limits = self.limits
        if len(shape) > limits.max_dims:
            raise InvalidInput(
                f"input '{name}' has {len(shape)} dimensions, over the limit of "
                f"{limits.max_dims} (setting max_tensor_dims)"
            )
        count = element_count(name, shape, limits.max_elements)
        self.elements += count
        if self.elements > limits.max_elements:
            raise InvalidInput(
                f"input '{name}' ({count} elements) brings the request to {self.elements} "
                f"elements, over the limit of {limits.max_elements} (setting max_request_elements)"
            )
        if datatype == "BYTES":
            self.strings += count
            if self.strings > limits.max_string_elements:
                raise InvalidInput(
                    f"BYTES input '{name}' ({count} elements) brings the request to "
                    f"{self.strings} string elements, over the limit of "
                    f"{limits.max_string_elements} (setting max_request_string_elements)"
                )
        return count


def check_version(name: str, version: str) -> str:
    """``version`` when it is "" or at most 19 ASCII digits; ModelNotFound otherwise.

    ``str.isdigit`` accepts superscripts and other scripts' digits that ``int`` refuses (a
    version of '²' failed as a server error), and ``int`` refuses over 4300 digits.
    """
    if version and not is_version_name(version):
        raise ModelNotFound(
            f"Request for unknown model: '{shown(name)}' version {shown(version)!r} is not "
            f"found (a version is an integer of at most {MAX_VERSION_DIGITS} digits)")
    return version


@dataclass(slots=True)
class CheckedRequest:
    inputs: dict[str, np.ndarray]
    batch_size: int  # 1 for a model without a batch dimension
    outputs: list[RequestedOutput]  # what to return, in order
    priority: int
    timeout_us: int


def _int_param(params: dict[str, ParamValue], key: str) -> int:
    value = params.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise InvalidInput(f"request parameter '{key}' must be an integer, got {value!r}")
        value = int(value)
    # Both are 64-bit integers in the protocol; JSON can carry any number of digits, which the
    # queue's timer arithmetic is not meant to see.
    if not -(2**63) <= value < 2**64:
        raise InvalidInput(f"request parameter '{key}' is out of the 64-bit range")
    return value


def _shape_matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


@dataclass(frozen=True, slots=True)
class RequestRules:
    """What ``check_request`` reads from a model's spec, as the lookups it needs per request."""

    model: str
    inputs: dict[str, tuple[str, np.dtype | None, tuple[int, ...]]]  # datatype, dtype, dims
    required: tuple[str, ...]
    outputs: dict[str, str]  # name -> datatype
    max_batch: int
    text_inputs: frozenset[str] = frozenset()  # BYTES inputs the backend reads as UTF-8 text
    # The model's own bounds on a variable (-1) dim: parameters min_side / max_side, which the
    # image pipeline applies to image sides too; 0 = none.
    min_side: int = 0
    max_side: int = 0


def _check_sides(rules: RequestRules, name: str, shape: tuple[int, ...],
                 dims: tuple[int, ...]) -> None:
    """Variable dims within the model's min_side / max_side: a -1 dim otherwise takes any
    size the element cap allows (unet at 1024x1024 ran for tens of seconds)."""
    offset = len(shape) - len(dims)  # 1 when the request carries the batch dim
    for i, (size, dim) in enumerate(zip(shape[offset:], dims, strict=True)):
        if dim != -1:
            continue
        if rules.max_side and size > rules.max_side:
            raise InvalidInput(
                f"input '{name}' dimension {i + offset} is {size}, over the limit of "
                f"{rules.max_side} for model '{rules.model}' (its max_side parameter)")
        if size < rules.min_side:
            raise InvalidInput(
                f"input '{name}' dimension {i + offset} is {size}, under the minimum of "
                f"{rules.min_side} for model '{rules.model}' (its min_side parameter)")


def _check_utf8(name: str, data: np.ndarray) -> None:
    """Refuse this request (not the batch it would join) when a text element is not UTF-8."""
    for i, item in enumerate(data.reshape(-1)):
        if isinstance(item, bytes | bytearray):
            try:
                item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"BYTES input '{name}' element {i} is not valid UTF-8 ({exc.reason} at byte "
                    f"{exc.start}); this model's string tensors hold text"
                ) from None


def check_request(rules: RequestRules, request: InferRequest) -> CheckedRequest:
    model = rules.model
    mbs = rules.max_batch
    seen: dict[str, np.ndarray] = {}
    batch: int | None = None
    for tensor in request.inputs:
        rule = rules.inputs.get(tensor.name)
        if rule is None:
            raise InvalidInput(f"unexpected inference input '{tensor.name}' for model '{model}'")
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        expected, dtype, dims = rule
        if tensor.datatype != expected:
            raise InvalidInput(
                f"input '{tensor.name}' of model '{model}' has the wrong datatype: "
                f"expected {expected}, got {tensor.datatype}"
            )
        data = tensor.data
        shape = tuple(int(d) for d in tensor.shape)
        if data.shape != shape:
            raise InvalidInput(
                f"input '{tensor.name}' data has shape {list(data.shape)}, header says {list(shape)}"
            )
        if dtype is not None and data.dtype != dtype:
            raise InvalidInput(f"input '{tensor.name}' data is {data.dtype}, expected {expected}")
        if mbs > 0:
            if len(shape) != len(dims) + 1 or not _shape_matches(shape[1:], dims):
                raise InvalidInput(
                    f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
                    f"{[-1, *dims]}, got {list(shape)}"
                )
            if shape[0] < 1:
                raise InvalidInput(f"input '{tensor.name}' has batch size {shape[0]}; must be >= 1")
            if batch is not None and shape[0] != batch:
                raise InvalidInput(
                    f"input '{tensor.name}' has batch size {shape[0]}, other inputs have {batch}"
                )
            batch = shape[0]
        elif not _shape_matches(shape, dims):
            raise InvalidInput(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
                f"{list(dims)}, got {list(shape)}"
            )
        if rules.max_side or rules.min_side:
            _check_sides(rules, tensor.name, shape, dims)
        if tensor.name in rules.text_inputs:
            _check_utf8(tensor.name, data)
        seen[tensor.name] = data
    missing = [n for n in rules.required if n not in seen]
    if missing:
        raise InvalidInput(
            f"expected {len(rules.inputs)} inputs but got {len(seen)} inputs for model "
            f"'{model}'; missing {', '.join(repr(m) for m in missing)}"
        )
    batch_size = batch if batch is not None else 1
    if mbs > 0 and batch_size > mbs:
        raise InvalidInput(
            f"inference request batch-size must be <= {mbs} for '{model}', got {batch_size}"
        )
    if request.outputs:
        for out in request.outputs:
            out_type = rules.outputs.get(out.name)
            if out_type is None:
                raise InvalidInput(f"unexpected inference output '{out.name}' for model '{model}'")
            if out.class_count < 0:
                raise InvalidInput(f"output '{out.name}': class count must be >= 0")
            if out.class_count and out_type == "BYTES":
                raise InvalidInput(f"output '{out.name}' is BYTES and cannot be classified")
        outputs = list(request.outputs)
    else:
        outputs = [RequestedOutput(name) for name in rules.outputs]
    return CheckedRequest(
        inputs=seen,
        batch_size=batch_size,
        outputs=outputs,
        priority=_int_param(request.parameters, "priority"),
        timeout_us=_int_param(request.parameters, "timeout"),
    )
