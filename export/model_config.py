"""config.pbtxt: the generated ``ModelConfig`` message (Triton's model_config.proto) as text."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format

from export.generated import model_config_pb2 as mc
from export.spec import ModelSpec, TensorSpec

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
DEFAULT_FILENAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}
DEFAULT_MAX_BATCH = 32
LARGE_MODEL_MAX_BATCH = 16
LARGE_MODEL_BYTES = 10 * 1024 * 1024
DEFAULT_QUEUE_DELAY_US = 2000
BATCH_ELEMENTS_FRACTION = 4  # of a full batch at max_side (see batch_elements)
# Requests that waited 30 s in the queue are answered with a timeout. The queue bound is left
# to the server's automatic one, which counts batch items (a few full batches per instance); a
# max_queue_size written here would count requests, as Triton does, and let a stream of
# full-batch requests queue minutes of work.
QUEUE_TIMEOUT_US = 30_000_000


@dataclass(frozen=True)
class Scheduling:
    max_batch_size: int = DEFAULT_MAX_BATCH
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instance_count: int = 1


def default_max_batch(artifact_bytes: int) -> int:
    """docs/architecture.md: 32, or 16 for models over 10 MB."""
    return LARGE_MODEL_MAX_BATCH if artifact_bytes > LARGE_MODEL_BYTES else DEFAULT_MAX_BATCH


def _input(t: TensorSpec) -> mc.ModelInput:
    msg = mc.ModelInput(name=t.name, data_type=mc.TYPE_FP32, dims=list(t.dims))
    msg.format = mc.ModelInput.FORMAT_NCHW if t.image else mc.ModelInput.FORMAT_NONE
    return msg


def _output(t: TensorSpec) -> mc.ModelOutput:
    msg = mc.ModelOutput(name=t.name, data_type=mc.TYPE_FP32, dims=list(t.dims))
    if t.label_filename:
        msg.label_filename = t.label_filename
    return msg


def build_config(name: str, fmt: str, spec: ModelSpec, sched: Scheduling) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, platform=PLATFORMS[fmt], max_batch_size=sched.max_batch_size)
    cfg.default_model_filename = DEFAULT_FILENAMES[fmt]
    cfg.input.extend(_input(t) for t in spec.inputs)
    cfg.output.extend(_output(t) for t in spec.outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = sched.max_queue_delay_us
    policy = cfg.dynamic_batching.default_queue_policy
    policy.default_timeout_microseconds = QUEUE_TIMEOUT_US
    policy.allow_timeout_override = True
    cfg.instance_group.add(count=sched.instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)
    for key, value in spec.parameters.items():
        cfg.parameters[key].string_value = value
    elements = batch_elements(spec, sched.max_batch_size)
    if elements:
        cfg.parameters["max_batch_elements"].string_value = str(elements)
    return cfg


def batch_elements(spec: ModelSpec, max_batch_size: int) -> int:
    """The execution bound written for a model whose image sides the client picks (0 for any
    other): a quarter of a full batch at ``max_side``. Measured with ONNX Runtime on CPU, the
    lecture U-Net needs ~530 MiB and the style network ~190 MiB per million input elements,
    so one execution peaks near 1.1 and 1.2 GiB, where a full batch of 512x512 images would
    take 4.4 and 4.7 GiB (docs/batching.md, "Memory bound per execution")."""
    side = int(spec.parameters.get("max_side", "0") or 0)
    image = next((t for t in spec.inputs if t.image and -1 in t.dims), None)
    if image is None or side <= 0 or max_batch_size <= 0:
        return 0
    return max_batch_size * image.dims[0] * side * side // BATCH_ELEMENTS_FRACTION


def config_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
