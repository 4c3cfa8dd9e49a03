"""Store scanning, config parsing, version policy, default version, external model dirs."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from serving.core.repository import ModelRepository
from serving.core.versions import select_versions
from serving.errors import InvalidInput, ModelNotFound, ModelNotReady
from serving.store import read_model_spec
from serving.store.reader import read_config, read_labels, spec_of


def versions(store: Path, name: str, *numbers: int) -> None:
    for n in numbers:
        shutil.copytree(store / name / "1", store / name / str(n), dirs_exist_ok=True)


def set_policy(store: Path, name: str, policy: str) -> None:
    path = store / name / "config.pbtxt"
    path.write_text(path.read_text() + f"\nversion_policy {{ {policy} }}\n")


def test_config_defaults_and_checks(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "1").mkdir()
    (d / "1" / "model.pt").touch()
    (d / "config.pbtxt").write_text(
        'input [{ name: "x" data_type: TYPE_FP32 dims: [2] }]\n'
        'output [{ name: "y" data_type: TYPE_STRING dims: [-1] }]')
    config = read_config(d, "m")
    assert config.name == "m" and config.platform == "pytorch_libtorch"
    assert [g.count for g in config.instance_group] == [1]
    (d / "config.pbtxt").write_text('name: "other"')
    with pytest.raises(ValueError, match="config name 'other' does not match model 'm'"):
        read_config(d, "m")
    (d / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx" input [{ name: "x" dims: [2] }] '
        'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]')
    with pytest.raises(ValueError, match="'x' has no data_type"):
        read_config(d, "m")


def test_version_policies(tiny_store: Path) -> None:
    versions(tiny_store, "tiny", 2, 3, 10)
    d = tiny_store / "tiny"
    assert select_versions(d, spec_of(read_config(d, "tiny")).version_policy) == ["10"]
    set_policy(tiny_store, "tiny", "latest { num_versions: 2 }")
    assert select_versions(d, spec_of(read_config(d, "tiny")).version_policy) == ["3", "10"]
    (d / "config.pbtxt").write_text((d / "config.pbtxt").read_text().replace(
        "latest { num_versions: 2 }", "specific { versions: [1, 3] }"))
    assert select_versions(d, spec_of(read_config(d, "tiny")).version_policy) == ["1", "3"]
    (d / "config.pbtxt").write_text((d / "config.pbtxt").read_text().replace(
        "specific { versions: [1, 3] }", "all { }"))
    assert select_versions(d, spec_of(read_config(d, "tiny")).version_policy) == ["1", "2", "3", "10"]
    (d / "config.pbtxt").write_text((d / "config.pbtxt").read_text().replace(
        "all { }", "specific { versions: [4] }"))
    with pytest.raises(ValueError, match=r"missing versions \[4\]"):
        select_versions(d, spec_of(read_config(d, "tiny")).version_policy)


def test_labels_follow_label_filename(tiny_store: Path) -> None:
    d = tiny_store / "tiny"
    config = read_config(d, "tiny")
    assert read_labels(d, config) == ["cat", "dog", "bird"]
    config.output[0].label_filename = "names.txt"
    (d / "names.txt").write_text("x\ny\n")
    assert read_labels(d, config) == ["x", "y"]


def test_versions_default_and_routing(tiny_store: Path) -> None:
    versions(tiny_store, "tiny", 2, 3)
    set_policy(tiny_store, "tiny", "all { }")
    repo = ModelRepository(tiny_store, reader=read_model_spec, device="cpu")
    repo.scan()

    async def main() -> None:
        await repo.load("tiny")
        assert repo.resolve("tiny").version == "3"
        assert repo.resolve("tiny", "2").version == "2"
        repo.set_default_version("tiny", "1")
        assert repo.resolve("tiny").version == "1"
        with pytest.raises(ModelNotFound):
            repo.resolve("tiny", "4")
        with pytest.raises(ModelNotFound):
            repo.set_default_version("tiny", "9")
        with pytest.raises(ModelNotReady):
            repo.resolve("tiny_ts")  # scanned, never loaded
        for old in repo.unload("tiny"):
            await old.close()
        with pytest.raises(ModelNotReady):
            repo.resolve("tiny", "2")

    asyncio.run(main())


def test_add_model_dir_from_outside_the_store(tiny_store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "unpacked" / "whatever"
    shutil.copytree(tiny_store / "tiny", outside)
    repo = ModelRepository(tmp_path / "empty_store_dir", reader=read_model_spec, device="cpu")
    (tmp_path / "empty_store_dir").mkdir()
    assert repo.scan() == []
    repo.add_model_dir("archived", outside)
    with pytest.raises(InvalidInput):
        repo.add_model_dir("../evil", outside)

    async def main() -> None:
        await repo.load("archived")
        loaded = repo.resolve("archived")
        assert loaded.spec.name == "archived" and loaded.model_dir == outside
        await loaded.close()

    asyncio.run(main())


def test_missing_store_and_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ModelRepository(tmp_path / "nope", reader=read_model_spec).scan()
    (tmp_path / "store" / "m" / "1").mkdir(parents=True)
    (tmp_path / "store" / "notes").mkdir()
    repo = ModelRepository(tmp_path / "store", reader=read_model_spec)
    assert repo.scan() == ["m"]

    async def main() -> None:
        with pytest.raises(ValueError, match="config.pbtxt not found"):
            await repo.load("m")

    asyncio.run(main())
    assert "config.pbtxt" in (repo.entry("m").load_error or "")
