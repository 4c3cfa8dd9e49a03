"""Triton's system shared-memory extension, driven by unmodified tritonclient (grpc and http)
with ``tritonclient.utils.shared_memory``, on the conformance server (model control on, token).

Inputs are read from one region and outputs written into a second; the outputs are read back
from the region and compared with ONNX Runtime run in this process. Status, unregister and
every error case carry the status Triton gives; a fuzz of a few hundred offsets, sizes and names
ends with the server serving and no region left registered.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.helpers.server import ServerProcess
from tests.integration.conftest import API_TOKEN, make_client, module
from tests.integration.conftest import assert_error as _assert_error

pytestmark = pytest.mark.integration

AUTH = {"authorization": f"Bearer {API_TOKEN}"}


def assert_error(exc: pytest.ExceptionInfo[InferenceServerException], flavour: str,
                 http_status: int, match: str = "") -> None:
    """conftest's check, knowing ALREADY_EXISTS too (HTTP 409 here)."""
    if http_status == 409 and flavour == "grpc":
        assert exc.value.status() == "StatusCode.ALREADY_EXISTS", exc.value.message()
        assert match in (exc.value.message() or ""), exc.value.message()
        return
    _assert_error(exc, flavour, http_status, match)


def _ort(store: Path, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(store / model / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


class Regions:
    """Client-side regions of one test, destroyed (and unregistered) at its end."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.handles: list[Any] = []
        self.names: list[str] = []

    def create(self, size: int, register: bool = True, offset: int = 0) -> tuple[str, Any]:
        tag = uuid.uuid4().hex[:12]
        name, key = f"r_{tag}", f"/capserve_test_{tag}"
        handle = shm.create_shared_memory_region(name, key, size)
        self.handles.append(handle)
        if register:
            self.client.register_system_shared_memory(name, key, size - offset, offset=offset,
                                                      headers=AUTH)
            self.names.append(name)
        return name, handle

    def close(self) -> None:
        for name in self.names:
            self.client.unregister_system_shared_memory(name, headers=AUTH)
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions(flavour: str, v2_server: ServerProcess) -> Iterator[Regions]:
    client = make_client(flavour, v2_server)
    r = Regions(client)
    try:
        yield r
    finally:
        r.close()
        client.close()


def _status(flavour: str, client: Any, name: str = "") -> dict[str, dict[str, Any]]:
    """Region name -> {key, offset, byte_size} in either flavour's answer."""
    if flavour == "grpc":
        doc = client.get_system_shared_memory_status(name, headers=AUTH, as_json=True)
        return {n: {k: int(v) if k in ("offset", "byte_size") else v for k, v in r.items()}
                for n, r in doc.get("regions", {}).items()}
    return {r["name"]: r for r in client.get_system_shared_memory_status(name, headers=AUTH)}


def _shm_input(flavour: str, name: str, shape: list[int], datatype: str, region: str,
               size: int, offset: int = 0) -> Any:
    inp = module(flavour).InferInput(name, shape, datatype)
    inp.set_shared_memory(region, size, offset)
    return inp


def _shm_output(flavour: str, name: str, region: str, size: int, offset: int = 0) -> Any:
    out = module(flavour).InferRequestedOutput(name)
    out.set_shared_memory(region, size, offset)
    return out


def test_server_metadata_lists_the_extension(flavour: str, client: Any) -> None:
    meta = client.get_server_metadata()
    extensions = meta["extensions"] if flavour == "http" else list(meta.extensions)
    assert "system_shared_memory" in extensions


def test_simple_through_regions_matches_onnx_runtime(
        flavour: str, client: Any, regions: Regions, tiny_store: Path) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    in_name, in_handle = regions.create(a.nbytes + b.nbytes)
    out_name, out_handle = regions.create(2 * a.nbytes + 64, offset=64)  # registered at 64
    shm.set_shared_memory_region(in_handle, [a, b])
    inputs = [_shm_input(flavour, "INPUT0", [2, 16], "INT32", in_name, a.nbytes),
              _shm_input(flavour, "INPUT1", [2, 16], "INT32", in_name, b.nbytes, a.nbytes)]
    outputs = [_shm_output(flavour, "OUTPUT0", out_name, a.nbytes),
               _shm_output(flavour, "OUTPUT1", out_name, a.nbytes, a.nbytes)]
    result = client.infer("simple", inputs, outputs=outputs)
    got0 = shm.get_contents_as_numpy(out_handle, np.int32, [2, 16], offset=64)
    got1 = shm.get_contents_as_numpy(out_handle, np.int32, [2, 16], offset=64 + a.nbytes)
    want0, want1 = _ort(tiny_store, "simple", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(got0, want0)
    np.testing.assert_array_equal(got1, want1)
    # The answer carries no data (and, as Triton's, no parameters) for outputs in a region.
    out = result.get_output("OUTPUT0")
    if flavour == "http":
        assert "data" not in out and "parameters" not in out, out
    else:
        assert not out.parameters
    if flavour == "grpc":
        assert all(len(raw) == 0 for raw in result.get_response().raw_output_contents)


def test_classifier_input_in_region_output_on_the_wire(
        flavour: str, client: Any, regions: Regions, tiny_store: Path) -> None:
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    name, handle = regions.create(x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    result = client.infer("classifier", [_shm_input(flavour, "input", [4, 1, 28, 28], "FP32",
                                                    name, x.nbytes)])
    (want,) = _ort(tiny_store, "classifier", {"input": x})
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)


def test_resnet_sized_batch_through_regions_matches_onnx_runtime(
        flavour: str, client: Any, regions: Regions, tiny_store: Path) -> None:
    """A batch of 8 ResNet-shaped inputs (4.8 MB) in, 8 x 1000 logits written into the region."""
    x = np.random.default_rng(3).random((8, 3, 224, 224), dtype=np.float32)
    in_name, in_handle = regions.create(x.nbytes)
    out_size = 8 * 1000 * 4
    out_name, out_handle = regions.create(out_size)
    shm.set_shared_memory_region(in_handle, [x])
    result = client.infer("resnet_sized",
                          [_shm_input(flavour, "input", list(x.shape), "FP32", in_name, x.nbytes)],
                          outputs=[_shm_output(flavour, "logits", out_name, out_size)])
    assert result.get_output("logits") is not None  # named in the answer, its bytes in the region
    got = shm.get_contents_as_numpy(out_handle, np.float32, [8, 1000])
    (want,) = _ort(tiny_store, "resnet_sized", {"input": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_strings_through_regions(flavour: str, client: Any, regions: Regions) -> None:
    from tritonclient.utils import serialize_byte_tensor
    data = np.array([[b"hello"], [b"shared memory"]], dtype=object)
    raw = serialize_byte_tensor(data)  # a 0-d object array holding the serialized bytes
    size = len(raw.item())
    in_name, in_handle = regions.create(size)
    out_name, out_handle = regions.create(256)
    shm.set_shared_memory_region(in_handle, [raw])
    client.infer("strings", [_shm_input(flavour, "INPUT0", [2, 1], "BYTES", in_name, size)],
                 outputs=[_shm_output(flavour, "OUTPUT0", out_name, 256)])
    got = shm.get_contents_as_numpy(out_handle, np.object_, [2, 1])
    assert got.ravel().tolist() == [b"hello", b"shared memory"]


def test_status_lists_regions_and_unregister_removes_them(
        flavour: str, client: Any, regions: Regions) -> None:
    name, _ = regions.create(1024, offset=16)
    listed = _status(flavour, client)
    assert listed[name]["byte_size"] == 1008 and listed[name]["offset"] == 16
    assert listed[name]["key"].startswith("/capserve_test_")
    assert set(_status(flavour, client, name)) == {name}
    client.unregister_system_shared_memory(name, headers=AUTH)
    regions.names.remove(name)
    assert name not in _status(flavour, client)
    with pytest.raises(InferenceServerException) as exc:
        _status(flavour, client, name)
    assert_error(exc, flavour, 404, "Unable to find system shared memory region")
    client.unregister_system_shared_memory(name, headers=AUTH)  # unknown name: no error


def test_unregister_all(flavour: str, client: Any, regions: Regions) -> None:
    for _ in range(3):
        regions.create(64)
    assert len(_status(flavour, client)) >= 3
    client.unregister_system_shared_memory(headers=AUTH)
    regions.names.clear()
    assert _status(flavour, client) == {}


def test_registration_needs_the_token(flavour: str, client: Any, regions: Regions) -> None:
    _, handle = regions.create(64, register=False)
    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("no_token", handle._shm_key, 64)
    assert_error(exc, flavour, 401)
    with pytest.raises(InferenceServerException) as exc:
        client.get_system_shared_memory_status()
    assert_error(exc, flavour, 401)


def test_register_errors(flavour: str, client: Any, regions: Regions) -> None:
    name, handle = regions.create(256)
    key = handle._shm_key
    cases: list[tuple[str, str, int, int, int, str]] = [
        (name, key, 0, 256, 409, "already in manager"),
        ("missing_key", "/capserve_no_such_object", 0, 64, 400,
         "Unable to open shared memory region"),
        ("traversal", "/../etc/passwd", 0, 64, 400, "Unable to open shared memory region"),
        ("not_shm", "/capserve_test_dir_" + uuid.uuid4().hex[:6], 0, 64, 400,
         "Unable to open shared memory region"),
        ("too_big", key, 0, 257, 400, "exceeds"),
        ("past_end", key, 200, 100, 400, "exceeds"),
        ("empty", key, 0, 0, 400, "byte_size > 0"),
    ]
    os.mkdir("/dev/shm/" + cases[3][1].lstrip("/"))
    try:
        for region, k, offset, size, status, text in cases:
            with pytest.raises(InferenceServerException) as exc:
                client.register_system_shared_memory(region, k, size, offset=offset,
                                                     headers=AUTH)
            assert_error(exc, flavour, status, text)
    finally:
        os.rmdir("/dev/shm/" + cases[3][1].lstrip("/"))
    assert set(_status(flavour, client)) == {name}


def test_infer_errors(flavour: str, client: Any, regions: Regions) -> None:
    a = np.ones((1, 16), np.int32)
    name, handle = regions.create(256)
    shm.set_shared_memory_region(handle, [a, a])
    good = _shm_input(flavour, "INPUT1", [1, 16], "INT32", name, 64, 64)

    def infer(region: str, size: int, offset: int = 0, out: Any = None) -> Any:
        bad = _shm_input(flavour, "INPUT0", [1, 16], "INT32", region, size, offset)
        with pytest.raises(InferenceServerException) as exc:
            client.infer("simple", [bad, good], outputs=out)
        return exc

    assert_error(infer("nope", 64), flavour, 404, "Unable to find shared memory region: 'nope'")
    assert_error(infer(name, 64, 224), flavour, 400, "Invalid offset + byte size")
    assert_error(infer(name, 32), flavour, 400, "does not match the tensor")
    small = [_shm_output(flavour, "OUTPUT0", name, 32, 128)]
    assert_error(infer(name, 64, 0, small), flavour, 400, "should be at least 64 bytes")
    past = [_shm_output(flavour, "OUTPUT0", name, 64, 250)]
    assert_error(infer(name, 64, 0, past), flavour, 400, "Invalid offset + byte size")
    # Only one of region and byte size: refused, naming both.
    inp = module(flavour).InferInput("INPUT0", [1, 16], "INT32")
    inp.set_data_from_numpy(a)
    if flavour == "http":
        inp._parameters["shared_memory_region"] = name
    else:
        inp._input.parameters["shared_memory_region"].string_param = name
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", [inp, good])
    assert_error(exc, flavour, 400, "must be given together")
    # The region works after all that.
    client.infer("simple", [_shm_input(flavour, "INPUT0", [1, 16], "INT32", name, 64), good])


def test_shrunk_object_is_refused_not_a_crash(flavour: str, client: Any, regions: Regions) -> None:
    name, handle = regions.create(4096)
    os.truncate("/dev/shm/" + handle._shm_key.lstrip("/"), 64)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", [_shm_input(flavour, "INPUT0", [1, 16], "INT32", name, 64),
                                _shm_input(flavour, "INPUT1", [1, 16], "INT32", name, 64, 64)])
    assert_error(exc, flavour, 400, "shrank")
    assert client.is_server_live()


def test_fuzz_offsets_sizes_names(flavour: str, client: Any, regions: Regions) -> None:
    rng = random.Random(13)
    name, handle = regions.create(512)
    key = handle._shm_key
    shm.set_shared_memory_region(handle, [np.arange(128, dtype=np.int32)])
    weird = ["", "a" * 300, "../x", "/", "x/y", "\u00e9", " ", "a\x00b", "%2e%2e"]
    for i in range(150):  # registrations: odd keys, names, offsets, sizes
        reg = rng.choice([f"f{i}", name, rng.choice(weird) or "z"])
        k = rng.choice([key, key + "x", rng.choice(weird), "/dev/shm" + key])
        offset, size = rng.choice([0, 1, 511, 512, 513, 2**40, 2**63 - 1]), \
            rng.choice([0, 1, 64, 512, 513, 2**40, 2**63 - 1])
        try:
            client.register_system_shared_memory(reg, k, size, offset=offset, headers=AUTH)
        except InferenceServerException as exc:
            assert exc.status() in ("400", "404", "409", "StatusCode.INVALID_ARGUMENT",
                                    "StatusCode.NOT_FOUND", "StatusCode.ALREADY_EXISTS"), \
                (reg, k, offset, size, exc.message())
        else:
            client.unregister_system_shared_memory(reg, headers=AUTH)
    other = _shm_input(flavour, "INPUT1", [1, 16], "INT32", name, 64)
    for _ in range(150):  # inference: odd regions, offsets, sizes on inputs and outputs
        region = rng.choice([name, name, "nope", rng.choice(weird) or "z"])
        offset = rng.choice([0, 4, 448, 449, 512, 2**31, 2**62])
        size = rng.choice([0, 64, 63, 65, 512, 2**31])
        inp = _shm_input(flavour, "INPUT0", [1, 16], "INT32", region, size, offset)
        out = [_shm_output(flavour, "OUTPUT0", region, size, offset)] if rng.random() < .5 \
            else None
        try:
            client.infer("simple", [inp, other], outputs=out)
        except InferenceServerException as exc:
            assert exc.status() in ("400", "404", "StatusCode.INVALID_ARGUMENT",
                                    "StatusCode.NOT_FOUND"), (region, offset, size, exc.message())
    assert set(_status(flavour, client)) == {name}
    assert client.is_server_ready()
