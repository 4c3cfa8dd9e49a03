"""ONNX Runtime and TorchScript backends on the tiny store (CPU; CUDA when a GPU is present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from serving.backends import BackendSpec, create_backend
from serving.backends.devices import cuda_device_count, resolve_device
from serving.generated import model_config_pb2
from serving.store.reader import platform_of, read_config, spec_of
from tests.unit.serving.conftest import tiny_reference


def spec(store: Path, name: str, device: str = "cpu", instances: int = 1) -> BackendSpec:
    return BackendSpec(spec_of(read_config(store / name, name)).backend, store / name / "1", device,
                       instances)


def sample(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 1, 4, 4)).astype(np.float32)


@pytest.mark.parametrize("name", ["tiny", "tiny_ext"])
def test_onnx_runtime_runs_any_batch_size(tiny_store: Path, name: str) -> None:
    if name == "tiny_ext":
        assert (tiny_store / name / "1" / "model.onnx.data").stat().st_size > 0
    backend = create_backend(spec(tiny_store, name))
    assert backend.device == "cpu"
    assert backend.input_names == ["input"] and backend.output_names == ["logits"]
    for n in (1, 2, 5):
        x = sample(n)
        out = backend.run({"input": x}, ["logits"])
        np.testing.assert_allclose(out["logits"], tiny_reference(x), rtol=1e-5, atol=1e-5)
    backend.close()


def test_onnx_threads_come_from_config_parameters(tiny_store: Path) -> None:
    config = read_config(tiny_store / "tiny", "tiny")
    config.parameters["intra_op_thread_count"].string_value = "3"
    backend = create_backend(BackendSpec(spec_of(config).backend, tiny_store / "tiny" / "1",
                                         "cpu", 1))
    opts = backend._session.get_session_options()  # type: ignore[attr-defined]
    assert opts.intra_op_num_threads == 3
    default = BackendSpec(spec_of(read_config(tiny_store / "tiny", "tiny")).backend, tiny_store,
                          "cpu", 64)
    assert default.intra_op_threads() == 1, "many instances share the cores"
    config.parameters["intra_op_thread_count"].string_value = "many"
    with pytest.raises(ValueError, match="intra_op_thread_count"):
        spec_of(config)


def test_torchscript_maps_tuple_outputs_to_config_names(tiny_store: Path) -> None:
    backend = create_backend(spec(tiny_store, "tiny_ts"))
    x = sample(3)
    x.flags.writeable = False  # decoded request payloads are read-only views
    out = backend.run({"input": x}, ["features", "logits"])
    assert list(out) == ["features", "logits"]
    np.testing.assert_allclose(out["logits"], tiny_reference(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["features"], x.reshape(3, 16))
    backend.close()


def test_torchscript_dict_and_tensor_outputs(tiny_store: Path, tmp_path: Path) -> None:
    import torch

    class AsDict(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"features": x.flatten(1), "logits": x.flatten(1)[:, :3] * 2}

    class Single(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :3]

    x = sample(2)
    for module, outputs in ((AsDict(), ["logits", "features"]), (Single(), ["logits"])):
        vdir = tmp_path / type(module).__name__ / "1"
        vdir.mkdir(parents=True)
        torch.jit.script(module).save(str(vdir / "model.pt"))
        config = read_config(tiny_store / "tiny_ts", "tiny_ts")
        backend = create_backend(BackendSpec(spec_of(config).backend, vdir, "cpu", 1))
        out = backend.run({"input": x}, outputs)
        factor = 2 if isinstance(module, AsDict) else 1
        np.testing.assert_array_equal(out["logits"], x.reshape(2, 16)[:, :3] * factor)
        if isinstance(module, Single):
            with pytest.raises(ValueError, match="no output 'features'"):
                backend.run({"input": x}, ["features"])


def test_platform_comes_from_platform_backend_or_files(tiny_store: Path) -> None:
    cfg = model_config_pb2.ModelConfig()
    assert platform_of(cfg, tiny_store / "tiny") == "onnxruntime_onnx"
    assert platform_of(cfg, tiny_store / "tiny_ts") == "pytorch_libtorch"
    assert platform_of(text_format.Parse('backend: "pytorch"', cfg)) == "pytorch_libtorch"
    with pytest.raises(ValueError, match="unsupported platform 'tensorrt_plan'"):
        platform_of(text_format.Parse('platform: "tensorrt_plan"', model_config_pb2.ModelConfig()))


def test_missing_model_file_is_a_clear_error(tiny_store: Path) -> None:
    (tiny_store / "tiny" / "1" / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        create_backend(spec(tiny_store, "tiny"))


def test_device_strings() -> None:
    assert resolve_device("cpu") == ("cpu", False)
    assert resolve_device("cuda:1") == ("cuda:1", True)
    assert resolve_device("auto")[0] == ("cuda:0" if cuda_device_count() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(cuda_device_count() > 0, reason="needs a machine without a GPU")
@pytest.mark.parametrize("name", ["tiny", "tiny_ts"])
def test_explicit_cuda_without_gpu_fails_and_auto_falls_back(tiny_store: Path, name: str) -> None:
    with pytest.raises(RuntimeError, match="CUDA was requested"):
        create_backend(spec(tiny_store, name, device="cuda"))
    assert create_backend(spec(tiny_store, name, device="auto")).device == "cpu"


def _ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(cuda_device_count() == 0, reason="needs a GPU")
@pytest.mark.parametrize("name", ["tiny", "tiny_ts"])
def test_cuda_backends_match_the_reference(tiny_store: Path, name: str) -> None:
    if name == "tiny" and not _ort_has_cuda():
        pytest.skip("this ONNX Runtime build has no CUDA execution provider")
    backend = create_backend(spec(tiny_store, name, device="cuda"))
    assert backend.device == "cuda:0"
    x = sample(4)
    out = backend.run({"input": x}, ["logits"])
    np.testing.assert_allclose(out["logits"], tiny_reference(x), rtol=1e-3, atol=1e-3)
    backend.close()


def test_onnx_string_tensors_round_trip_bytes(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from serving.errors import InvalidInput

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])], "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "1").mkdir()
    onnx.save(model, str(tmp_path / "1" / "model.onnx"))
    config = text_format.Parse(
        'name: "s" platform: "onnxruntime_onnx" max_batch_size: 4 '
        'input { name: "text" data_type: TYPE_STRING dims: [1] } '
        'output { name: "same" data_type: TYPE_STRING dims: [1] }', model_config_pb2.ModelConfig())
    backend = create_backend(BackendSpec(spec_of(config).backend, tmp_path / "1", "cpu", 1))
    words = np.array([[b"hello"], ["caf\u00e9".encode()], [b""]], dtype=np.object_)
    out = backend.run({"text": words}, ["same"])["same"]
    assert out.tolist() == words.tolist()
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        backend.run({"text": np.array([[b"\xff"]], dtype=np.object_)}, ["same"])
