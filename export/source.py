"""Rebuild the eager module of a checkpoint through the model registry, and the modules to export.

Each served model is exported from a small wrapper whose forward takes exactly the served input
tensor and returns the served outputs in the order of :class:`export.spec.ModelSpec` — so the
ONNX graph, the TorchScript module and the eager reference the parity gate compares with are the
same computation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from export.errors import InvalidInput
from export.spec import InputSpec, ModelSpec, decoder_spec, model_spec
from training.checkpoint import InvalidCheckpoint, load_checkpoint
from training.models.registry import ARCHITECTURES, UnknownArchitecture, build_model

logger = logging.getLogger(__name__)


class CapsuleOutputs(nn.Module):
    """A capsule classifier served without the training-only ``y`` argument."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.net(x)
        return out[0], out[1], out[2]


class CapsuleDecoder(nn.Module):
    """The decoder of a capsule classifier: masked poses (N, C, 16) -> reconstruction."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, poses: Tensor) -> Tensor:
        # nn.Module.__getattr__ is typed as returning Tensor | Module; decode is a method here.
        return self.net.decode(poses)  # type: ignore[operator]


@dataclass
class ServedModel:
    """One model of the store: its name, its description and the eager module to export."""

    name: str
    spec: ModelSpec
    module: nn.Module
    example: Tensor  # batch-2 example at the training size (0/1 specialisation, models.md §0.3)
    fully_convolutional: bool
    arch: str
    role: str = "main"  # "main" | "decoder"


@dataclass
class Source:
    """A loaded checkpoint."""

    path: Path
    checkpoint: dict[str, Any]
    arch: str
    task: str
    labels: list[str]
    input: InputSpec
    module: nn.Module
    sha256: str

    @property
    def data(self) -> str:
        prov = self.checkpoint.get("provenance") or {}
        return str(prov.get("data", "")) if isinstance(prov, dict) else ""


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "(no detail)"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_source(path: Path) -> Source:
    """Load and rebuild a checkpoint; every user mistake becomes :class:`InvalidInput`."""
    if not path.is_file():
        raise InvalidInput(f"{path}: no such checkpoint file")
    try:
        ckpt = load_checkpoint(path)
    except InvalidCheckpoint as exc:
        msg = _one_line(str(exc))
        if "unknown arch" in msg:
            msg += f" (known: {', '.join(sorted(ARCHITECTURES))})"
        raise InvalidInput(f"not a usable capserve checkpoint: {msg}") from exc
    except Exception as exc:  # torch.load raises many types for a file that is not a zip/pickle
        raise InvalidInput(
            f"{path} is not a capserve checkpoint: {type(exc).__name__}: {_one_line(str(exc))}"
        ) from exc
    arch = str(ckpt.get("arch", ""))
    kwargs = ckpt.get("arch_kwargs") or {}
    try:
        module = build_model(arch, **kwargs)
    except UnknownArchitecture as exc:
        raise InvalidInput(f"{path}: {_one_line(str(exc))}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{path}: arch_kwargs do not fit architecture {arch!r}: {_one_line(str(exc))}") from exc
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise InvalidInput(f"{path}: state_dict does not fit {arch!r}: {_one_line(str(exc))}") from exc
    module.eval()
    labels = [str(x) for x in ckpt.get("labels") or []]
    return Source(
        path=path, checkpoint=ckpt, arch=arch, task=str(ckpt.get("task", "")), labels=labels,
        input=InputSpec.from_checkpoint(ckpt.get("input")), module=module, sha256=_sha256(path),
    )


def served_models(src: Source, name: str, decoder_model: str) -> list[ServedModel]:
    """The models one checkpoint becomes: the main model and, for capsule models, its decoder
    ``NAME_decoder``, whose store name (``decoder_model``, with any format suffix) the main
    model's parameters name.

    Names are base names; the caller adds the format suffix (``_torchscript``).
    """
    provenance = {"arch": src.arch, "source_checkpoint": src.path.name, "source_sha256": src.sha256}
    is_caps = src.task == "capsule_classification"
    inp = src.input
    example = torch.randn(2, inp.channels, inp.height, inp.width, generator=torch.Generator().manual_seed(0))
    main_module: nn.Module = CapsuleOutputs(src.module).eval() if is_caps else src.module
    caps_dims = _capsule_dims(main_module, example) if is_caps else None
    spec = _with_thread_hint(model_spec(src.task, src.labels, src.input, provenance,
                                        decoder_model if is_caps else "", caps_dims),
                             main_module, example)
    models = [ServedModel(name, spec, main_module, example, inp.fully_convolutional, src.arch)]
    if is_caps:
        if not callable(getattr(src.module, "decode", None)):
            raise InvalidInput(f"capsule architecture {src.arch!r} has no decode(poses) method")
        dec_spec = decoder_spec(len(src.labels), inp, provenance, caps_dims)
        poses = torch.randn(2, *dec_spec.inputs[0].dims, generator=torch.Generator().manual_seed(1))
        decoder = CapsuleDecoder(src.module).eval()
        models.append(ServedModel(f"{name}_decoder", _with_thread_hint(dec_spec, decoder, poses),
                                  decoder, poses, False, src.arch, role="decoder"))
    return models


# Below this many floating-point operations per item, one ONNX Runtime thread serves best: a
# batch of such a model computes in a fraction of a millisecond, and under load the second
# thread's hand-off and wake-up cost more than it saves (LeNet, 0.6 MFLOPs, served 4-12% more
# requests per second at concurrency 32 with one thread on the 2-core machine).
SMALL_MODEL_FLOPS = 5e6


def flops_per_item(module: nn.Module, example: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(example)
    return counter.get_total_flops() / max(1, example.shape[0])


def _with_thread_hint(spec: ModelSpec, module: nn.Module, example: torch.Tensor) -> ModelSpec:
    try:
        flops = flops_per_item(module, example)
    except Exception as exc:  # an op the counter cannot trace: keep the server's default
        logger.warning("could not count FLOPs (%s); leaving the thread count to the server", exc)
        return spec
    if flops >= SMALL_MODEL_FLOPS:
        return spec
    return dataclasses.replace(spec, parameters={**spec.parameters, "intra_op_thread_count": "1"})


def _capsule_dims(module: nn.Module, example: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """Pose length and reconstruction shape as the model really produces them (a model's
    ``pose_dim`` and decoder channels are settings, so the config is measured, not assumed)."""
    with torch.no_grad():
        _, poses, recon = module(example)
    return int(poses.shape[-1]), tuple(int(d) for d in recon.shape[1:])
