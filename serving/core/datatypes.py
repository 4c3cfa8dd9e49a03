"""Triton datatypes: numpy dtypes, config ``TYPE_*`` names, and the raw byte encodings.

Both transports decode request payloads and encode responses with these helpers, so a size
mismatch reads the same over HTTP and gRPC. Raw encoding is little-endian, row-major; a BYTES
element is a 4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from serving.errors import InvalidInput

_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_FROM_NUMPY: dict[np.dtype, str] = {v: k for k, v in _TO_NUMPY.items()}

# config.pbtxt spells BYTES as TYPE_STRING; BF16 exists in the config but numpy has no type.
_CONFIG_TO_TRITON: dict[str, str] = {f"TYPE_{k}": k for k in _TO_NUMPY if k != "BYTES"}
_CONFIG_TO_TRITON["TYPE_STRING"] = "BYTES"
_CONFIG_TO_TRITON["TYPE_BF16"] = "BF16"

_LEN = struct.Struct("<I")


def triton_to_numpy(datatype: str) -> np.dtype:
    """numpy dtype of a Triton datatype name; ``InvalidInput`` for an unknown or unsupported one."""
    try:
        return _TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"unsupported datatype '{datatype}'") from None


def numpy_to_triton(dtype: np.dtype) -> str:
    """Triton datatype name of a numpy dtype (``bytes_``/``object_`` -> BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return _FROM_NUMPY[dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no Triton datatype") from None


def config_to_triton(type_name: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; ``TYPE_STRING`` -> ``BYTES``."""
    try:
        return _CONFIG_TO_TRITON[type_name]
    except KeyError:
        raise ValueError(f"unknown config data_type '{type_name}'") from None


def element_size(datatype: str) -> int:
    """Bytes per element of a fixed-size datatype (0 for BYTES)."""
    if datatype == "BYTES":
        return 0
    if datatype == "BF16":
        return 2
    return int(triton_to_numpy(datatype).itemsize)


def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """Row-major elements, each as a 4-byte little-endian length then its bytes."""
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        if isinstance(item, str):
            data = item.encode("utf-8")
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
        else:
            data = str(item).encode("utf-8")
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(buf: bytes | memoryview, count: int, name: str = "") -> np.ndarray:
    """Inverse of :func:`serialize_bytes_tensor`: a flat object array of ``count`` bytes items."""
    view = memoryview(buf).cast("B")
    label = f" for input '{name}'" if name else ""
    # Every element carries a 4-byte length: a count the buffer cannot hold is refused before
    # the object array for it is allocated (a shape of [2**31] with no data asked for 16 GiB).
    if count > len(view) // 4:
        raise InvalidInput(
            f"BYTES tensor{label} ends after {len(view) // 4} of {count} elements at most: "
            f"{len(view)} bytes cannot hold {count} 4-byte length prefixes"
        )
    out = np.empty(count, dtype=np.object_)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise InvalidInput(f"BYTES tensor{label} ends after {i} of {count} elements")
        (length,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + length > len(view):
            raise InvalidInput(f"BYTES element {i}{label} claims {length} bytes past the end")
        out[i] = bytes(view[pos : pos + length])
        pos += length
    if pos != len(view):
        raise InvalidInput(f"BYTES tensor{label} has {len(view) - pos} trailing bytes")
    return out


def array_from_raw(
    raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str
) -> np.ndarray:
    """Decode a raw (little-endian, row-major) payload into an array of ``shape``.

    Fixed-size types are a zero-copy read-only view over ``raw``.
    """
    count = 1
    for d in shape:
        if d < 0:
            raise InvalidInput(f"input '{name}' has a negative dimension in shape {list(shape)}")
        count *= d
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count, name).reshape(shape)
    dtype = triton_to_numpy(datatype)
    expected = count * dtype.itemsize
    size = len(memoryview(raw).cast("B"))
    if size != expected:
        raise InvalidInput(
            f"unexpected total byte size {size} for input '{name}', expecting {expected}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count).reshape(shape)


def array_to_raw(arr: np.ndarray, datatype: str) -> bytes:
    """Encode ``arr`` as raw bytes (BYTES with length prefixes, numbers little-endian)."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(arr)
    dtype = triton_to_numpy(datatype).newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()
