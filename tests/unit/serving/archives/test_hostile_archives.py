"""Hostile .mar contents: label maps that would build billions of labels, task files that tune
the server. Each is refused with an error naming the archive and what was wrong."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format

from serving.archives.mar import ArchiveError, ArchiveLimits, labels_from_index
from serving.archives.materialize import materialize, materialize_archives
from serving.generated import model_config_pb2


def _task(**extra: Any) -> dict[str, Any]:
    return {"task": "classification", "input_color": "L", "input_height": "28",
            "input_width": "28", "mean": "0.1307", "std": "0.3081", "resize": "exact",
            "output_semantics": "logits", "max_batch_size": 8, "intra_op_thread_count": "1",
            "arch": "lenet", "source_checkpoint": "lenet.pt", "source_sha256": "ab" * 32,
            "inputs": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}],
            "outputs": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}], **extra}


def _mar(path: Path, task: dict[str, Any] | None = None,
         labels: dict[str, Any] | str | None = None) -> Path:
    manifest = {"runtime": "python", "model": {"modelName": path.stem, "modelVersion": "1.0",
                                               "serializedFile": "model.pt",
                                               "handler": "capserve_handler.py"}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        zf.writestr("model.pt", b"weights are never loaded by these tests")
        zf.writestr("capserve_task.json", json.dumps(task if task is not None else _task()))
        if labels is not None:
            zf.writestr("index_to_name.json",
                        labels if isinstance(labels, str) else json.dumps(labels))
    return path


def _refused(tmp_path: Path, match: str, **kw: Any) -> None:
    mar = _mar(tmp_path / "hostile.mar", **kw)
    with pytest.raises(ArchiveError, match=match) as info:
        materialize(mar, tmp_path / "cache")
    assert "hostile.mar" in str(info.value)
    assert not any((tmp_path / "cache").glob("hostile-*"))  # nothing left to serve


def test_a_huge_label_index_is_refused_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    _refused(tmp_path, r"index_to_name\.json.*'4000000000'.*100000",
             labels={"0": "cat", "4000000000": "x"})
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("key", ["cat", "-1", "1e3", " 7", "0x10", "١"])
def test_label_keys_must_be_class_indices(tmp_path: Path, key: str) -> None:
    _refused(tmp_path, "is not a class index", labels={key: "x"})


def test_too_many_labels_and_a_label_file_that_is_not_a_map(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="over the limit of 3"):
        labels_from_index({str(i): "x" for i in range(4)}, max_labels=3)
    _refused(tmp_path, "JSON object", labels=["cat", "dog"])


def test_label_file_size_is_bounded(tmp_path: Path) -> None:
    mar = _mar(tmp_path / "hostile.mar", labels=json.dumps({"0": "x" * 5000}))
    with pytest.raises(ArchiveError, match=r"hostile\.mar: index_to_name\.json is \d+ bytes, "
                                           r"over the limit of 4096"):
        materialize(mar, tmp_path / "cache", ArchiveLimits(max_json_bytes=4096))


@pytest.mark.parametrize("key", ["inline_run_max_microseconds", "ort_allow_spinning",
                                 "model_warmup", "queue_timeout"])
def test_task_file_cannot_set_server_tuning(tmp_path: Path, key: str) -> None:
    _refused(tmp_path, f"sets '{key}', which an archive may not set", task=_task(**{key: "1"}))


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("intra_op_thread_count", "100000", "from 0 to"),
    ("inter_op_thread_count", "lots", "an integer"),
    ("max_side", 1_000_000, "from 0 to 8192"),
    ("input_height", "99999", "from 0 to 8192"),
    ("max_batch_size", 10**9, "from 0 to 1024"),
    ("resize", "stretch", "one of"),
    ("task", "shell", "one of"),
    ("mean", "0," * 1000, "at most 512 characters"),
])
def test_task_file_values_are_bounded(tmp_path: Path, key: str, value: Any, needle: str) -> None:
    _refused(tmp_path, f"'{key}'.*{needle}", task=_task(**{key: value}))


def test_tensor_lists_are_bounded(tmp_path: Path) -> None:
    many = [{"name": f"in{i}", "dims": [1]} for i in range(17)]
    _refused(tmp_path, "'inputs' must list 1 to 16", task=_task(inputs=many))
    huge = [{"name": "logits", "dims": [10] * 9}]
    _refused(tmp_path, "at most 8 dims", task=_task(outputs=huge))


def test_exporter_archives_still_materialise(tmp_path: Path) -> None:
    model_dir = materialize(_mar(tmp_path / "lenet.mar", labels={"0": "zero", "1": ["n1", "one"]}),
                            tmp_path / "cache")
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert (model_dir / "labels.txt").read_text() == "zero\none\n"


def test_a_hostile_archive_never_stops_the_rest_of_the_store(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    store = tmp_path / "store"
    store.mkdir()
    _mar(store / "good.mar")
    _mar(store / "bad.mar", task=_task(inline_run_max_microseconds="100000000"))
    served = materialize_archives(store, tmp_path / "cache", ArchiveLimits(), False)
    assert [name for name, _ in served] == ["good"]
    assert "inline_run_max_microseconds" in caplog.text
