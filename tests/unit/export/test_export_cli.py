"""The export CLI: config.pbtxt, .mar, pt2, versions, the failing gate and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format

from export import source
from export.cli import main
from export.generated import model_config_pb2 as mc
from export.model_config import Scheduling, build_config, parse_config
from export.source import load_source, served_models
from training.models.lenet import LeNet5

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def full_store(make_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """lenet exported in every format through the CLI -> (checkpoint, store)."""
    ckpt = make_checkpoint("lenet", "lenet_full.pt")
    store = tmp_path_factory.mktemp("full") / "model_store"
    rc = main([str(ckpt), "--name", "lenet", "--store", str(store),
               "--formats", "onnx,torchscript,pt2,mar", "-q"])
    assert rc == 0
    return ckpt, store


def test_config_pbtxt_parses_back_into_the_same_message(full_store: tuple[Path, Path]) -> None:
    ckpt, store = full_store
    text = (store / "lenet" / "config.pbtxt").read_text()
    parsed = text_format.Parse(text, mc.ModelConfig())
    (spec,) = [m.spec for m in served_models(load_source(ckpt), "lenet", "lenet_decoder")]
    assert parsed == build_config("lenet", "onnx", spec, Scheduling())
    assert parse_config(text_format.MessageToString(parsed)) == parsed
    assert parsed.platform == "onnxruntime_onnx" and parsed.max_batch_size == 32
    assert list(parsed.input[0].dims) == [1, 28, 28] and parsed.input[0].name == "input"
    assert parsed.input[0].format == mc.ModelInput.FORMAT_NCHW
    assert parsed.output[0].name == "logits" and parsed.output[0].label_filename == "labels.txt"
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 2000
    # A queue timeout of 30 s; the bound is the server's automatic one (counted in items).
    policy = parsed.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 0 and policy.default_timeout_microseconds == 30_000_000
    assert policy.allow_timeout_override
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    params = {k: v.string_value for k, v in parsed.parameters.items()}
    assert params["task"] == "classification" and params["resize"] == "exact"
    assert params["input_color"] == "L" and params["mean"] == "0.1307" and params["std"] == "0.3081"
    assert params["output_semantics"] == "logits" and params["arch"] == "lenet"
    assert len(params["source_sha256"]) == 64
    assert params["intra_op_thread_count"] == "1"  # 0.8 MFLOPs per image: one thread
    ts = parse_config((store / "lenet_torchscript" / "config.pbtxt").read_text())
    assert ts.platform == "pytorch_libtorch" and ts.name == "lenet_torchscript"
    labels = (store / "lenet" / "labels.txt").read_text().splitlines()
    assert labels == [str(i) for i in range(10)]


def test_pt2_is_kept_beside_the_onnx_file_and_gated(full_store: tuple[Path, Path]) -> None:
    _, store = full_store
    vdir = store / "lenet" / "1"
    program = torch.export.load(str(vdir / "model.pt2"))
    assert program.module()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    report = json.loads((vdir / "export_report.json").read_text())
    assert report["pt2"]["parity"]["passed"] is True


def test_mar_has_the_manifest_and_members(full_store: tuple[Path, Path]) -> None:
    _, store = full_store
    with zipfile.ZipFile(store / "lenet.mar") as zf:
        names = set(zf.namelist())
        assert {"model.pt", "capserve_handler.py", "capserve_task.json", "index_to_name.json",
                "model-config.yaml", "MAR-INF/MANIFEST.json"} <= names
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        task = json.loads(zf.read("capserve_task.json"))
        labels = json.loads(zf.read("index_to_name.json"))
        handler = zf.read("capserve_handler.py").decode()
        yaml_text = zf.read("model-config.yaml").decode()
        model_pt = zf.read("model.pt")
    assert manifest["runtime"] == "python" and "createdOn" in manifest and "archiverVersion" in manifest
    assert manifest["model"]["modelName"] == "lenet"
    assert manifest["model"]["serializedFile"] == "model.pt"
    assert manifest["model"]["handler"] == "capserve_handler.py"
    config = parse_config((store / "lenet" / "config.pbtxt").read_text())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert {k: v for k, v in task.items() if k not in ("inputs", "outputs", "max_batch_size")} == params
    assert task["max_batch_size"] == 32
    assert task["inputs"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28],
                               "format": "FORMAT_NCHW"}]
    assert task["outputs"][0]["name"] == "logits" and task["outputs"][0]["dims"] == [10]
    assert labels == {str(i): str(i) for i in range(10)}
    assert "from serving.torchserve_handler import CapserveHandler" in handler
    assert "def handle(data, context)" in handler
    assert "batchSize: 8" in yaml_text and "responseTimeout: 120" in yaml_text
    assert model_pt == (store / "lenet_torchscript" / "1" / "model.pt").read_bytes()


def test_version_next_and_explicit_versions(make_checkpoint, tmp_path: Path, snapshot) -> None:
    ckpt = make_checkpoint("lenet")
    store = tmp_path / "model_store"
    args = [str(ckpt), "--name", "lenet", "--store", str(store), "--formats", "torchscript", "-q"]
    assert main(args) == 0
    assert main(args) == 0
    assert sorted(p.name for p in (store / "lenet_torchscript").iterdir() if p.is_dir()) == ["1", "2"]
    before = snapshot(store)
    assert main([*args, "--version", "2"]) == 2  # exists: refused, nothing written
    assert snapshot(store) == before
    assert main([*args, "--version", "7"]) == 0
    assert main(args) == 0
    assert sorted(int(p.name) for p in (store / "lenet_torchscript").iterdir() if p.is_dir()) == [1, 2, 7, 8]


class Sabotaged(LeNet5):
    """LeNet whose traced/exported graph adds 1 to the logits: eager and artifact disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            y = y + 1.0
        return y


def test_broken_export_fails_the_gate_and_leaves_the_store_alone(
        make_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, snapshot) -> None:
    ckpt = make_checkpoint("lenet")
    store = tmp_path / "model_store"
    assert main([str(ckpt), "--name", "lenet", "--store", str(store), "--formats", "torchscript", "-q"]) == 0
    before, siblings = snapshot(store), sorted(os.listdir(tmp_path))
    monkeypatch.setattr(source, "build_model", lambda arch, **kw: Sabotaged(**kw))
    rc = main([str(ckpt), "--name", "lenet", "--store", str(store), "--formats", "onnx,torchscript,mar"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "lenet [onnx] failed the parity gate: output 'logits' on input real[b=1]" in err
    assert "lenet_torchscript [torchscript] failed the parity gate: output 'logits'" in err
    assert "FAIL" in out  # the summary still shows the numbers
    assert snapshot(store) == before
    assert sorted(os.listdir(tmp_path)) == siblings  # no staging folder left behind


def test_unknown_architecture_is_a_one_line_error(make_checkpoint, tmp_path: Path, capsys) -> None:
    ckpt = torch.load(make_checkpoint("lenet"), weights_only=True)
    ckpt["arch"] = "lenet9000"
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    rc = main([str(bad), "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "lenet9000" in err and "capsnet" in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("bad", ["--formats=onnx,tflite", "--version=zero", "--name=../evil"])
def test_bad_options_are_one_line_errors(make_checkpoint, tmp_path: Path, capsys, bad: str) -> None:
    rc = main([str(make_checkpoint("lenet")), "--store", str(tmp_path / "store"), bad])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


def test_not_a_checkpoint_exits_2_from_the_command_line(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.pt"
    bogus.write_text("this is not a checkpoint\n")
    proc = subprocess.run(
        [sys.executable, "-m", "export", str(bogus), "--store", str(tmp_path / "store")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "notes.pt" in lines[0] and "not" in lines[0] and "checkpoint" in lines[0]
    assert not (tmp_path / "store").exists()


def test_torchscript_only_capsule_export_names_its_torchscript_decoder(make_checkpoint,
                                                                       tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    assert main([str(make_checkpoint("capsnet")), "--store", str(store), "--formats", "torchscript",
                 "-q"]) == 0
    assert {p.name for p in store.iterdir()} == {"capsnet_torchscript", "capsnet_decoder_torchscript"}
    config = parse_config((store / "capsnet_torchscript" / "config.pbtxt").read_text())
    assert config.parameters["decoder_model"].string_value == "capsnet_decoder_torchscript"
    assert [o.name for o in config.output] == ["lengths", "poses", "reconstruction"]
    decoder = torch.jit.load(str(store / "capsnet_decoder_torchscript" / "1" / "model.pt"))
    assert decoder(torch.zeros(4, 10, 16)).shape == (4, 1, 28, 28)


def test_mar_without_the_archiver_package_has_the_same_layout(
        full_store: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export import mar

    ckpt, store = full_store
    (spec,) = [m.spec for m in served_models(load_source(ckpt), "lenet", "lenet_decoder")]
    real_find_spec = mar.importlib.util.find_spec
    monkeypatch.setattr(mar.importlib.util, "find_spec",
                        lambda n, *a: None if n == "model_archiver" else real_find_spec(n, *a))
    path, tool = mar.build_mar("lenet", store / "lenet_torchscript" / "1" / "model.pt", spec, 32, tmp_path)
    assert tool == "capserve zip writer"
    with zipfile.ZipFile(store / "lenet.mar") as ref, zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == set(ref.namelist())
        for member in ("capserve_task.json", "index_to_name.json", "model.pt", "capserve_handler.py"):
            assert zf.read(member) == ref.read(member)
        manifest, ref_manifest = (json.loads(z.read("MAR-INF/MANIFEST.json")) for z in (zf, ref))
    assert manifest["model"] == ref_manifest["model"] and manifest["runtime"] == "python"


def test_only_small_models_are_pinned_to_one_thread() -> None:
    hints = {}
    for ckpt in ("lenet", "capsnet", "unet", "style_mosaic"):
        for m in served_models(load_source(ROOT / "checkpoints" / f"{ckpt}.pt"), ckpt,
                               f"{ckpt}_decoder"):
            hints[m.name] = m.spec.parameters.get("intra_op_thread_count")
    assert hints == {"lenet": "1", "capsnet": None, "capsnet_decoder": "1", "unet": None,
                     "style_mosaic": None}
