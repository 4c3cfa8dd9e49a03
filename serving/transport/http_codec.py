"""KServe v2 HTTP bodies <-> neutral types: JSON tensors, the binary tensor data extension, gzip/deflate.

Pure functions, no web framework: the HTTP app reads the body and headers, and these turn them
into an :class:`InferRequest` and an :class:`InferResponse` back into bytes. Tensor payloads go
through numpy in one call per tensor (``np.asarray`` on the JSON list, ``np.frombuffer`` on a
binary chunk), never element by element, except BYTES whose elements are separate objects anyway.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.core import datatypes
from serving.core.shm import SHM_PARAMETERS, ShmScope, in_region
from serving.core.types import InferRequest, InferResponse, ParamValue, RequestedOutput, Tensor
from serving.core.validation import DEFAULT_LIMITS, ElementBudget, TensorLimits
from serving.errors import InvalidInput, PayloadTooLarge, ResponseTooLarge
from serving.transport.buffers import output_buffer

HEADER_LENGTH = "inference-header-content-length"

# Parameters that steer the wire encoding; they are consumed here and never reach the core.
_BINARY_SIZE = "binary_data_size"
_BINARY_OUTPUT = "binary_data_output"
_BINARY = "binary_data"
_CLASSIFICATION = "classification"


@dataclass(slots=True)
class DecodedRequest:
    """An infer request plus how the client wants each output encoded."""

    request: InferRequest
    binary_default: bool = False  # request parameter binary_data_output
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # per requested output


# --------------------------------------------------------------------------- compression


def decompress(body: bytes, encoding: str, limit_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` gzip/deflate; the inflated size is bounded too (zip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits_options = [16 + zlib.MAX_WBITS]
    elif encoding == "deflate":
        # HTTP "deflate" means a zlib stream, but some clients send raw deflate: accept both.
        wbits_options = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        raise InvalidInput(f"unsupported Content-Encoding '{encoding}' (use gzip or deflate)")
    last_error: zlib.error | None = None
    for wbits in wbits_options:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit_bytes + 1)
        except zlib.error as exc:
            last_error = exc
            continue
        if len(out) > limit_bytes or inflater.unconsumed_tail:
            raise PayloadTooLarge(
                f"decompressed request body exceeds the limit of {limit_bytes} bytes"
            )
        return out
    raise InvalidInput(f"request body is not valid {encoding} data: {last_error}")


def pick_response_encoding(accept_encoding: str | None) -> str | None:
    """gzip or deflate when the client's ``Accept-Encoding`` allows it, else None."""
    if not accept_encoding:
        return None
    accepted: dict[str, float] = {}
    for token in accept_encoding.split(","):
        name, _, params = token.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        accepted[name.strip().lower()] = q
    for name in ("gzip", "deflate"):
        if accepted.get(name, 0.0) > 0:
            return name
    return None


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return packer.compress(body) + packer.flush()
    return zlib.compress(body, 6)


# --------------------------------------------------------------------------- requests


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError:
        # The parser's depth limit (the interpreter's recursion limit, 1000 by default): a
        # deeply nested document is a client error, not a crash of the handler.
        raise InvalidInput(f"{what} is nested too deeply to parse") from None
    except ValueError as exc:
        # Integers longer than Python's int conversion limit (4300 digits) land here.
        raise InvalidInput(f"{what} is not acceptable JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return doc


def parse_json_body(raw: bytes, what: str = "request body") -> dict[str, Any]:
    """A JSON object body (empty body = ``{}``); clear 400 when it is anything else."""
    return _json_object(raw, what)


# Commas, brackets and braces of a v2 header outside its tensor data: far fewer than this.
_STRUCTURE_ALLOWANCE = 4096


def check_json_values(raw: bytes, limits: TensorLimits = DEFAULT_LIMITS) -> None:
    """Refuse, before parsing, a JSON header that holds more values than a request may.

    Parsing builds a Python object per value (a 64 MiB body of ``[],`` is 1.2 GB of lists), so
    the element limit is checked against an upper bound of the value count first: every value
    but the first of a list follows a comma. Commas inside strings count too, which only errs
    towards refusing; the message says which limit to raise.
    """
    bound = limits.max_elements + _STRUCTURE_ALLOWANCE
    if len(raw) // 2 <= bound:
        return  # too short to hold more values than the limit (each needs 2 bytes)
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if values > bound:
        raise InvalidInput(
            f"inference request header holds up to {values} JSON values, over the limit of "
            f"{limits.max_elements} elements per request (setting max_request_elements)"
        )


def _parameters(obj: dict[str, Any], where: str) -> dict[str, ParamValue]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"'parameters' of {where} must be a JSON object")
    for key, value in params.items():
        if not isinstance(value, bool | int | float | str):
            raise InvalidInput(f"parameter '{key}' of {where} must be a string, number or boolean")
    return dict(params)


def _shape(obj: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = obj.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _array_from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str,
                     expected: int) -> np.ndarray:
    # A flat list holds every element, a nested one shape[0] rows: anything else is refused
    # before numpy walks it.
    if isinstance(data, list) and len(data) not in (expected, shape[0] if shape else 1):
        raise InvalidInput(
            f"input '{name}': 'data' holds {len(data)} elements at its top level, shape "
            f"{list(shape)} needs {expected}"
        )
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            arr = np.empty(flat.size, dtype=object)
            for i, item in enumerate(flat):  # BYTES elements are separate objects anyway
                if isinstance(item, str):
                    arr[i] = item.encode("utf-8")
                elif isinstance(item, bytes):
                    arr[i] = item
                else:
                    raise InvalidInput(f"input '{name}': BYTES data must be strings")
        else:
            arr = np.asarray(data, dtype=datatypes.triton_to_numpy(datatype)).reshape(-1)
    except InvalidInput:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': 'data' is not a valid {datatype} array: {exc}") from exc
    if arr.size != expected:
        raise InvalidInput(
            f"input '{name}': 'data' holds {arr.size} elements, shape {list(shape)} needs {expected}"
        )
    return arr.reshape(shape)


def _array_from_binary(chunk: memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    return datatypes.array_from_raw(chunk, datatype, shape, name)


def _shared_input(shm: ShmScope | None, name: str, datatype: str, shape: tuple[int, ...],
                  params: dict[str, ParamValue]) -> np.ndarray | None:
    if shm is None:
        if any(k in params for k in SHM_PARAMETERS):
            raise InvalidInput(f"input '{name}': shared memory is not available on this route")
        return None
    return shm.input_array(name, datatype, shape, params)


def _shared_output(shm: ShmScope | None, name: str, params: dict[str, ParamValue]) -> bool:
    if shm is None:
        if any(k in params for k in SHM_PARAMETERS):
            raise InvalidInput(f"output '{name}': shared memory is not available on this route")
        return False
    return shm.take_output(name, params)


def decode_infer_request(
    model_name: str, model_version: str, header: dict[str, Any], binary: memoryview | bytes,
    limits: TensorLimits = DEFAULT_LIMITS, shm: ShmScope | None = None,
) -> DecodedRequest:
    """Build the neutral request from the JSON header and the binary section that follows it.

    Each input's datatype and shape are checked against ``limits`` before its data is read.
    Inputs and outputs that name a shared-memory region are read from / noted in ``shm``.
    """
    budget = ElementBudget(limits)
    inputs_doc = header.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise InvalidInput("request must contain a non-empty 'inputs' list")
    offset = 0
    binary_view = memoryview(binary)
    inputs: list[Tensor] = []
    for position, item in enumerate(inputs_doc):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"input #{position} must be an object with a string 'name'")
        name = item["name"]
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}': 'datatype' must be a string")
        shape = _shape(item, name)
        datatypes.triton_to_numpy(datatype)  # an unknown datatype fails before anything else
        count = budget.take(name, datatype, shape)
        params = _parameters(item, f"input '{name}'")
        shared = _shared_input(shm, name, datatype, shape, params)
        size = params.pop(_BINARY_SIZE, None)
        if shared is not None:
            if size is not None or "data" in item:
                raise InvalidInput(f"input '{name}' has both a shared memory region and data")
            data = shared
        elif size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if "data" in item:
                raise InvalidInput(f"input '{name}' has both 'data' and binary_data_size")
            if offset + size > len(binary_view):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary_view) - offset} binary bytes left)"
                )
            # A view, not a copy: fixed-size tensors are read straight out of the body.
            data = _array_from_binary(binary_view[offset : offset + size], datatype, shape, name)
            offset += size
        else:
            if "data" not in item:
                raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
            data = _array_from_json(item["data"], datatype, shape, name, count)
        inputs.append(Tensor(name=name, datatype=datatype, shape=shape, data=data, parameters=params))
    if offset != len(binary_view):
        raise InvalidInput(
            f"{len(binary_view) - offset} bytes of binary data follow the inputs that no input claims"
        )

    request_params = _parameters(header, "the request")
    binary_default = bool(request_params.pop(_BINARY_OUTPUT, False))
    outputs: list[RequestedOutput] = []
    binary_outputs: dict[str, bool] = {}
    outputs_doc = header.get("outputs") or []
    if not isinstance(outputs_doc, list):
        raise InvalidInput("'outputs' must be a list")
    for item in outputs_doc:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output must be an object with a string 'name'")
        name = item["name"]
        params = _parameters(item, f"output '{name}'")
        if _BINARY in params:
            binary_outputs[name] = bool(params.pop(_BINARY))
        if _shared_output(shm, name, params):
            binary_outputs[name] = False
        class_count = params.pop(_CLASSIFICATION, 0)
        if not isinstance(class_count, int) or isinstance(class_count, bool) or class_count < 0:
            raise InvalidInput(f"output '{name}': 'classification' must be a non-negative integer")
        outputs.append(RequestedOutput(name=name, class_count=class_count, parameters=params))
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    request = InferRequest(
        model_name=model_name, model_version=model_version, inputs=inputs, id=request_id,
        outputs=outputs, parameters=request_params,
    )
    return DecodedRequest(request, binary_default, binary_outputs)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """Split a body into its JSON header and binary section per Inference-Header-Content-Length."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length '{header_length}' is not an integer") from None
    if n < 0 or n > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body"
        )
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


# --------------------------------------------------------------------------- responses


# Elements per ``json.dumps`` call: one call holds the interpreter lock throughout, so a large
# output is encoded in slices and the event loop gets its turns between them.
JSON_SLICE = 4096


def _json_values(flat: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [
            x.decode("utf-8", errors="replace") if isinstance(x, bytes | bytearray) else str(x)
            for x in flat
        ]
    return list(flat.tolist())


def _json_data(arr: np.ndarray, datatype: str) -> bytes:
    """``arr`` as a flat JSON array, encoded slice by slice."""
    flat = arr.reshape(-1)
    if flat.size <= JSON_SLICE:
        return _dumps(_json_values(flat, datatype))
    parts = [_dumps(_json_values(flat[i : i + JSON_SLICE], datatype))[1:-1]
             for i in range(0, flat.size, JSON_SLICE)]
    return b"[" + b",".join(parts) + b"]"


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _with_fields(doc: dict[str, Any], fields: list[tuple[str, bytes]]) -> bytes:
    """``doc`` as JSON with already-encoded ``fields`` appended to it."""
    head = _dumps(doc)[:-1]
    tail = b",".join(_dumps(k) + b":" + v for k, v in fields)
    return head + (b"," if len(head) > 1 and tail else b"") + tail + b"}"


def _binary_output(tensor: Tensor) -> bytes | memoryview:
    if tensor.datatype == "BYTES":
        return datatypes.serialize_bytes_tensor(tensor.data)
    dtype = datatypes.triton_to_numpy(tensor.datatype).newbyteorder("<")
    return output_buffer(tensor.data, dtype)


def encode_infer_response(
    response: InferResponse, binary_default: bool, binary_outputs: dict[str, bool]
) -> tuple[bytes, int | None]:
    """The response body and, when binary outputs follow the JSON, its header length."""
    chunks: list[bytes | memoryview] = []  # views: the final join is their one copy
    outputs: list[tuple[dict[str, Any], dict[str, Any], Tensor | None]] = []
    json_elements = 0
    for tensor in response.outputs:
        doc: dict[str, Any] = {
            "name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
        }
        params: dict[str, Any] = dict(tensor.parameters)
        if in_region(tensor.parameters):
            # Written into the client's region: no data and, as Triton answers, no parameters
            # (Triton's C++ client reads binary_data_size from any output that has them).
            outputs.append((doc, {}, None))
        elif binary_outputs.get(tensor.name, binary_default):
            raw = _binary_output(tensor)
            params[_BINARY_SIZE] = len(raw)
            chunks.append(raw)
            outputs.append((doc, params, None))
        else:
            json_elements += tensor.data.size
            outputs.append((doc, params, tensor))
    head: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        head["id"] = response.id
    if response.parameters:
        head["parameters"] = dict(response.parameters)
    if json_elements <= JSON_SLICE:  # the common, small answer: one json.dumps call
        for doc, params, data in outputs:
            if data is not None:
                doc["data"] = _json_values(data.data.reshape(-1), data.datatype)
            if params:
                doc["parameters"] = params
        head["outputs"] = [doc for doc, _, _ in outputs]
        header = _dumps(head)
    else:
        encoded = []
        for doc, params, data in outputs:
            if params:
                doc["parameters"] = params
            fields = [] if data is None else [("data", _json_data(data.data, data.datatype))]
            encoded.append(_with_fields(doc, fields))
        header = _with_fields(head, [("outputs", b"[" + b",".join(encoded) + b"]")])
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


# Per-element sizes of a JSON output: the least any value takes ("0," / "\"\","), and a
# typical one, which is what the encoding time scales with.
_JSON_FLOOR = {"BYTES": 3}
_JSON_TYPICAL = {"BYTES": 16, "BOOL": 6, "FP16": 20, "FP32": 20, "FP64": 22}
MIN_COMPRESS_BYTES = 1024  # tiny bodies grow when compressed; HTTP lets them go as they are


@dataclass(frozen=True, slots=True)
class ResponseCost:
    """Sizes of a response known before it is encoded."""

    floor_bytes: int  # no encoding of the outputs is smaller
    typical_bytes: int  # about what the encoding will produce (the encoding time scales with it)


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    body: bytes
    json_length: int | None  # Inference-Header-Content-Length when binary outputs follow
    content_encoding: str | None  # gzip / deflate when the body was compressed


def response_cost(
    response: InferResponse, binary_default: bool, binary_outputs: dict[str, bool]
) -> ResponseCost:
    """Bounds of the body :func:`encode_infer_response` would build, from shapes alone."""
    floor = typical = 0
    for tensor in response.outputs:
        count = int(tensor.data.size)
        if in_region(tensor.parameters):
            continue
        if binary_outputs.get(tensor.name, binary_default):
            size = datatypes.element_size(tensor.datatype)
            per = size if size else 4  # a BYTES element is at least its length prefix
            floor += count * per
            typical += count * (per + (8 if not size else 0))
        else:
            floor += count * _JSON_FLOOR.get(tensor.datatype, 2)
            typical += count * _JSON_TYPICAL.get(tensor.datatype, 8)
    return ResponseCost(floor, typical)


def check_response_floor(cost: ResponseCost, max_bytes: int) -> None:
    """Refuse before encoding a response that cannot fit ``max_bytes`` in any encoding."""
    if cost.floor_bytes > max_bytes:
        raise ResponseTooLarge(
            f"the response would be at least {cost.floor_bytes} bytes, over the limit of "
            f"{max_bytes} bytes (setting max_response_bytes); send a smaller request"
        )


def encode_http_response(
    response: InferResponse, binary_default: bool, binary_outputs: dict[str, bool],
    encoding: str | None, max_bytes: int,
) -> EncodedResponse:
    """Encode, check the size against ``max_bytes``, and compress when ``encoding`` says so.

    Pure and thread-safe: the HTTP app runs it off the event loop for large responses.
    """
    body, json_length = encode_infer_response(response, binary_default, binary_outputs)
    if len(body) > max_bytes:
        hint = "" if json_length is not None else "; binary outputs are smaller"
        raise ResponseTooLarge(
            f"the response is {len(body)} bytes, over the limit of {max_bytes} bytes "
            f"(setting max_response_bytes){hint}"
        )
    if encoding is None or len(body) < MIN_COMPRESS_BYTES:
        return EncodedResponse(body, json_length, None)
    return EncodedResponse(compress(body, encoding), json_length, encoding)
