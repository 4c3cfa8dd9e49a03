"""Tiny image-task models and the TorchServe dialect running in-process on the real core.

Four TorchScript models (a classifier, a segmenter, a style net, a capsule net with its decoder)
with random weights, so pipeline and API tests run in seconds without the default store.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import torch

from serving.archives.materialize import config_text

T = TypeVar("T")
DIGITS = [f"digit{i}" for i in range(10)]


class Digits(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * 5.0


class Seg(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 4.0


class Style(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


class Decoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(160, 784)

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(poses.flatten(1))).view(-1, 1, 28, 28)


class Caps(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(784, 160)
        self.decoder = Decoder()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        poses = torch.tanh(self.fc(x.flatten(1))).view(-1, 10, 16) * 0.3
        lengths = (poses * poses).sum(2).sqrt() / 1.3
        mask = (torch.arange(10).unsqueeze(0) == lengths.argmax(1, keepdim=True)).float()
        return lengths, poses, self.decoder(poses * mask.unsqueeze(2))


def _model(root: Path, name: str, module: torch.nn.Module, task: dict[str, Any],
           labels: list[str]) -> None:
    torch.manual_seed(len(name))
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    (root / name / "1").mkdir(parents=True)
    torch.jit.script(module.eval()).save(str(root / name / "1" / "model.pt"))
    if labels:
        (root / name / "labels.txt").write_text("".join(f"{x}\n" for x in labels))
    (root / name / "config.pbtxt").write_text(
        config_text(name, "pytorch_libtorch", task, bool(labels)))


def build_store(root: Path) -> None:
    torch.set_num_threads(1)
    mnist = {"input_color": "L", "input_height": "28", "input_width": "28", "mean": "0.1307",
             "std": "0.3081", "max_batch_size": 16,
             "inputs": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]}
    rgb = {"input_color": "RGB", "mean": "0,0,0", "std": "1,1,1", "max_batch_size": 4,
           "resize": "none", "max_side": "64",
           "inputs": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}]}
    _model(root, "digits", Digits(), {
        **mnist, "task": "classification", "output_semantics": "logits",
        "outputs": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]}, DIGITS)
    _model(root, "seg", Seg(), {
        **rgb, "task": "segmentation", "output_semantics": "mask_logits",
        "outputs": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}]},
        ["background", "thing", "other"])
    _model(root, "style", Style(), {
        **rgb, "task": "style_transfer", "output_semantics": "image_0_1",
        "outputs": [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}]}, [])
    caps = Caps()
    _model(root, "caps", caps, {
        **mnist, "task": "capsule_classification", "output_semantics": "capsule_lengths",
        "decoder_model": "caps_decoder",
        "outputs": [{"name": "lengths", "data_type": "TYPE_FP32", "dims": [10]},
                    {"name": "poses", "data_type": "TYPE_FP32", "dims": [10, 16]},
                    {"name": "reconstruction", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]},
        DIGITS)
    decoder = caps.decoder
    (root / "caps_decoder" / "1").mkdir(parents=True)
    torch.jit.script(decoder.eval()).save(str(root / "caps_decoder" / "1" / "model.pt"))
    (root / "caps_decoder" / "config.pbtxt").write_text(config_text("caps_decoder",
        "pytorch_libtorch", {"task": "capsule_decoder", "max_batch_size": 64,
                             "inputs": [{"name": "poses", "data_type": "TYPE_FP32",
                                         "dims": [10, 16]}],
                             "outputs": [{"name": "reconstruction", "data_type": "TYPE_FP32",
                                          "dims": [1, 28, 28]}]}, False))


@pytest.fixture(scope="session")
def image_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image_store")
    build_store(root)
    return root


@pytest.fixture
def image_store(image_store_template: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(image_store_template, store)
    return store


@dataclass
class Dialect:
    """The in-process server parts a test talks to."""

    service: Any
    parts: Any
    http: httpx.AsyncClient
    management: httpx.AsyncClient
    store: Path


@asynccontextmanager
async def dialect(store: Path, **settings_kw: Any) -> AsyncIterator[Dialect]:
    from prometheus_client import CollectorRegistry

    from serving.core.metrics import Metrics
    from serving.core.repository import ModelRepository
    from serving.core.service import InferenceService
    from serving.settings import Settings
    from serving.store import read_model_spec
    from serving.transport.torchserve.dialect import build_torchserve

    settings = Settings(model_store=store, device="cpu", image_workers=2, **settings_kw)
    repository = ModelRepository(store, reader=read_model_spec, device="cpu")
    service = InferenceService(repository, Metrics(CollectorRegistry(), process=False, gpu=False),
                               server_version="test")
    parts = build_torchserve(service, settings, repository.add_model_dir)
    await service.start()
    from starlette.applications import Starlette

    app = Starlette(routes=parts.routes)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ts")
    mgmt = httpx.AsyncClient(transport=httpx.ASGITransport(app=parts.management_app),
                             base_url="http://mgmt")
    try:
        yield Dialect(service, parts, http, mgmt, store)
    finally:
        await http.aclose()
        await mgmt.aclose()
        parts.close()
        await service.close()


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


def write_mar(store: Path, name: str) -> None:
    """``store/NAME.mar`` laid out as the exporter writes it, around the digits model."""
    import json
    import zipfile

    task = {"task": "classification", "input_color": "L", "input_height": "28",
            "input_width": "28", "mean": "0.1307", "std": "0.3081", "resize": "exact",
            "output_semantics": "logits", "max_batch_size": 8,
            "inputs": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}],
            "outputs": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10],
                         "label_filename": "labels.txt"}]}
    manifest = {"createdOn": "01/01/2024 00:00:00", "runtime": "python",
                "model": {"modelName": name, "serializedFile": "model.pt",
                          "handler": "capserve_handler.py", "modelVersion": "1.0"},
                "archiverVersion": "0.12.0"}
    with zipfile.ZipFile(store / f"{name}.mar", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        zf.write(store / "digits" / "1" / "model.pt", "model.pt")
        zf.writestr("capserve_task.json", json.dumps(task))
        zf.writestr("index_to_name.json", json.dumps(dict(enumerate(DIGITS))))
        zf.writestr("capserve_handler.py", "from serving.torchserve_handler import handle\n")
