"""Datatype maps and raw encodings shared by both transports."""

from __future__ import annotations

import numpy as np
import pytest

from serving.core import datatypes as dt
from serving.errors import InvalidInput


@pytest.mark.parametrize(("triton", "dtype", "config"), [
    ("FP32", np.float32, "TYPE_FP32"), ("INT64", np.int64, "TYPE_INT64"),
    ("UINT8", np.uint8, "TYPE_UINT8"), ("BOOL", np.bool_, "TYPE_BOOL"),
    ("FP16", np.float16, "TYPE_FP16"), ("BYTES", np.object_, "TYPE_STRING"),
])
def test_datatype_maps_round_trip(triton: str, dtype: type, config: str) -> None:
    assert dt.triton_to_numpy(triton) == np.dtype(dtype)
    assert dt.numpy_to_triton(np.dtype(dtype)) == triton
    assert dt.config_to_triton(config) == triton


def test_unknown_datatypes_are_reported() -> None:
    with pytest.raises(InvalidInput, match="unsupported datatype 'FP8'"):
        dt.triton_to_numpy("FP8")
    with pytest.raises(ValueError, match="TYPE_NOPE"):
        dt.config_to_triton("TYPE_NOPE")
    assert dt.numpy_to_triton(np.dtype("S5")) == "BYTES"


def test_bytes_tensor_round_trip_uses_little_endian_length_prefix() -> None:
    arr = np.array([[b"ab", b""], [b"\x00\xff", "h\u00e9".encode()]], dtype=np.object_)
    raw = dt.serialize_bytes_tensor(arr)
    assert raw[:6] == b"\x02\x00\x00\x00ab"
    back = dt.deserialize_bytes_tensor(raw, 4).reshape(2, 2)
    assert back.tolist() == arr.tolist()
    assert dt.serialize_bytes_tensor(np.array(["x"], dtype=object)) == b"\x01\x00\x00\x00x"


@pytest.mark.parametrize(("raw", "count", "message"), [
    (b"\x05\x00\x00\x00ab", 1, "claims 5 bytes"),
    (b"\x01\x00\x00\x00a", 2, "ends after 1 of 2"),
    (b"\x01\x00\x00\x00ab", 1, "1 trailing bytes"),
])
def test_malformed_bytes_tensors_are_invalid(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        dt.deserialize_bytes_tensor(raw, count, "text")


def test_raw_round_trip_and_size_mismatch() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = dt.array_to_raw(arr, "FP32")
    back = dt.array_from_raw(raw, "FP32", (2, 3), "x")
    np.testing.assert_array_equal(back, arr)
    with pytest.raises(InvalidInput, match="unexpected total byte size 12 for input 'x', expecting 16"):
        dt.array_from_raw(b"\x00" * 12, "FP32", (2, 2), "x")
    strings = dt.array_from_raw(dt.array_to_raw(np.array([b"a", b"bc"], object), "BYTES"),
                                "BYTES", (2,), "s")
    assert strings.tolist() == [b"a", b"bc"]
