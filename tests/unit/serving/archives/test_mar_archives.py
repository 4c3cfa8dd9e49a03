"""Safe extraction of .mar archives, materialisation as Triton layout, and the TorchServe handler."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image

from serving.archives.mar import (
    ArchiveError,
    ArchiveLimits,
    read_manifest,
    safe_extract,
)
from serving.archives.materialize import materialize, materialize_archives
from serving.errors import PayloadTooLarge
from serving.generated import model_config_pb2

DATA = Path(__file__).resolve().parents[3] / "data"
LABELS = [f"digit{i}" for i in range(10)]


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def write_mar(path: Path, handler: str = "capserve_handler.py") -> None:
    """An archive laid out as the exporter writes it."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(TinyNet().eval()), buf)
    task = {"task": "classification", "input_color": "L", "input_height": "28",
            "input_width": "28", "mean": "0.1307", "std": "0.3081", "resize": "exact",
            "output_semantics": "logits", "max_batch_size": 8,
            "inputs": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}],
            "outputs": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]}
    manifest = {"createdOn": "01/01/2024 00:00:00", "runtime": "python",
                "model": {"modelName": path.stem, "serializedFile": "model.pt",
                          "handler": handler, "modelVersion": "1.0"},
                "archiverVersion": "0.12.0"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        zf.writestr("model.pt", buf.getvalue())
        zf.writestr("capserve_task.json", json.dumps(task))
        zf.writestr("index_to_name.json", json.dumps({str(i): n for i, n in enumerate(LABELS)}))
        zf.writestr("capserve_handler.py",
                    "from serving.torchserve_handler import CapserveHandler\n")


@pytest.mark.parametrize(("name", "needle"), [
    ("zipslip.mar", r"'\.\./evil\.txt' escapes"), ("absolute.mar", "absolute path"),
    ("symlink.mar", "symbolic link"),
])
def test_hostile_archives_are_refused_and_write_nothing(tmp_path: Path, name: str,
                                                         needle: str) -> None:
    dest = tmp_path / "x" / "out"
    dest.mkdir(parents=True)
    with pytest.raises(ArchiveError, match=needle):
        safe_extract(DATA / "archives" / name, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "x" / "evil.txt").exists()


def test_size_limit_counts_uncompressed_bytes(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000000"):
        safe_extract(DATA / "archives" / "bomb.mar", tmp_path, ArchiveLimits(max_total_bytes=10**6))


def test_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a ZIP"):
        read_manifest(DATA / "corpus" / "text.txt")


def test_custom_handler_code_is_refused_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="never runs archive code"):
        materialize(DATA / "archives" / "custom_handler.mar", tmp_path)


def test_materialize_builds_a_triton_directory(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    write_mar(store / "tiny.mar")
    write_mar(store / "shadowed.mar")
    (store / "shadowed").mkdir()  # a Triton directory of the same name wins
    (store / "bad.mar").write_bytes((DATA / "archives" / "zipslip.mar").read_bytes())
    found = materialize_archives(store, tmp_path / "cache")
    assert [name for name, _ in found] == ["tiny"]
    model_dir = found[0][1]
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert config.platform == "pytorch_libtorch" and config.max_batch_size == 8
    assert config.output[0].label_filename == "labels.txt"
    assert config.parameters["task"].string_value == "classification"
    assert (model_dir / "labels.txt").read_text().split() == LABELS
    model = torch.jit.load(str(model_dir / "1" / "model.pt"))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # Built once per archive content: a second call reuses it.
    assert materialize_archives(store, tmp_path / "cache")[0][1] == model_dir


def test_torchserve_handler_matches_the_pipeline(tmp_path: Path) -> None:
    from ts.context import Context, RequestProcessor

    from serving.tasks.images import prepare
    from serving.tasks.spec import TaskSpec
    from serving.torchserve_handler import CapserveHandler

    mar = tmp_path / "tiny.mar"
    write_mar(mar)
    model_dir = tmp_path / "model"
    manifest = safe_extract(mar, model_dir)
    context = Context("tiny", str(model_dir), dict(manifest.raw), 2, None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in range(3)]
    handler = CapserveHandler()
    handler.initialize(context)
    digit = (DATA / "images" / "digit7.png").read_bytes()
    batch = [{"body": digit}, {"data": (DATA / "corpus" / "text.txt").read_bytes()},
             {"data": digit, "topk": b"3"}]
    answers = handler.handle(batch, context)
    assert len(answers) == 3
    first = json.loads(answers[0])
    spec = TaskSpec.from_parameters("tiny", {"task": "classification", "input_color": "L",
                                             "input_height": "28", "input_width": "28",
                                             "mean": "0.1307", "std": "0.3081"})
    x = torch.from_numpy(prepare(spec, digit, 10**7).tensor[None])
    logits = torch.jit.load(str(model_dir / "model.pt"))(x)[0].detach().numpy()
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    best = int(np.argmax(probs))
    assert len(first) == 5 and next(iter(first)) == LABELS[best]
    assert first[LABELS[best]] == pytest.approx(float(probs[best]), abs=1e-6)
    assert json.loads(answers[1])["code"] == 400 and "text" in json.loads(answers[1])["message"]
    assert context.get_response_status(1)[0] == 400
    assert context.get_response_headers(0)["content-type"] == "application/json"
    assert len(json.loads(answers[2])) == 3
    Image.open(io.BytesIO(digit))  # the sample itself is a valid image


def _rewrite(src: Path, dest: Path, manifest_model: dict[str, object] | None = None,
             extra: dict[str, bytes] | None = None, task: dict[str, object] | None = None) -> None:
    """Copy an archive, changing manifest fields, adding members or replacing the task file."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "MAR-INF/MANIFEST.json" and manifest_model:
                doc = json.loads(data)
                doc["model"].update(manifest_model)
                data = json.dumps(doc).encode()
            if info.filename == "capserve_task.json" and task is not None:
                data = json.dumps(task).encode()
            zout.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)


def test_manifest_cannot_name_a_file_outside_the_archive(tmp_path: Path) -> None:
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"operator's file")
    write_mar(tmp_path / "ok.mar")
    for i, name in enumerate([str(victim), "../../victim.pt"]):
        hostile = tmp_path / f"hostile{i}.mar"
        _rewrite(tmp_path / "ok.mar", hostile, manifest_model={"serializedFile": name})
        with pytest.raises(ArchiveError, match="not a member of the archive"):
            materialize(hostile, tmp_path / "cache")
    assert victim.read_bytes() == b"operator's file"  # never moved, never read


def test_broken_archives_are_refused_and_the_store_still_serves(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    write_mar(store / "good.mar")
    _rewrite(store / "good.mar", store / "dupes.mar", extra={"model.pt": b"second copy"})
    _rewrite(store / "good.mar", store / "badlabels.mar",
             extra={"index_to_name.json": b'{"-3": "x"}'})
    _rewrite(store / "good.mar", store / "badtype.mar", task={
        "task": "classification", "max_batch_size": 8,
        "inputs": [{"name": "input", "data_type": "TYPE_FP32 } instance_group { count: 99",
                    "dims": [1, 28, 28]}],
        "outputs": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]})
    found = materialize_archives(store, tmp_path / "cache")
    assert [name for name, _ in found] == ["good"]
