"""The model store a sitting serves: the default store plus a ResNet-18 from random weights.

Both servers must run the same artifacts with the same batching settings, so the bench builds
its own store under a work folder: every default model is linked in unchanged except the
benchmarked ones, whose ``config.pbtxt`` gets the sitting's max batch size and queue delay.
TorchServe gets a folder with just the ``.mar`` archives of the benchmarked models.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_PARAM = re.compile(
    r'key:\s*"(?P<key>[^"]+)"\s*value\s*\{\s*string_value:\s*"(?P<value>[^"]*)"\s*\}', re.S)


def read_parameters(config_text: str) -> dict[str, str]:
    """The string ``parameters`` of a config.pbtxt (all the task pipeline needs)."""
    return {m.group("key"): m.group("value") for m in _PARAM.finditer(config_text)}


def read_max_batch_size(config_text: str) -> int:
    match = re.search(r"^\s*max_batch_size:\s*(\d+)", config_text, re.M)
    return int(match.group(1)) if match else 0


def rewrite_batching(config_text: str, max_batch_size: int, delay_us: int) -> str:
    """Set max batch size (never raised above what the model was exported for) and delay."""
    current = read_max_batch_size(config_text)
    if current:
        new = min(current, max_batch_size)
        config_text = re.sub(r"^(\s*max_batch_size:\s*)\d+", rf"\g<1>{new}", config_text,
                             count=1, flags=re.M)
    if "max_queue_delay_microseconds" in config_text:
        return re.sub(r"(max_queue_delay_microseconds:\s*)\d+", rf"\g<1>{delay_us}", config_text)
    return config_text + f"\ndynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"


def latest_version_dir(model_dir: Path) -> Path:
    versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                      key=lambda p: int(p.name))
    if not versions:
        raise FileNotFoundError(f"model {model_dir.name!r} has no numeric version folder")
    return versions[-1]


@dataclass
class BenchStore:
    capserve_store: Path
    torchserve_store: Path
    archives: dict[str, Path] = field(default_factory=dict)  # model -> .mar
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)
    max_batch_size: dict[str, int] = field(default_factory=dict)

    def onnx_path(self, model: str) -> Path | None:
        path = latest_version_dir(self.capserve_store / model) / "model.onnx"
        return path if path.exists() else None

    def torchscript_path(self, model: str) -> Path | None:
        twin = self.capserve_store / f"{model}_torchscript"
        if not twin.is_dir():
            return None
        path = latest_version_dir(twin) / "model.pt"
        return path if path.exists() else None


def _link_model(src: Path, dst: Path, rewrite: tuple[int, int] | None) -> None:
    if rewrite is None:
        dst.symlink_to(src.resolve(), target_is_directory=True)
        return
    dst.mkdir()
    for entry in src.iterdir():
        if entry.name == "config.pbtxt":
            text = rewrite_batching(entry.read_text(), *rewrite)
            (dst / "config.pbtxt").write_text(text)
        else:
            (dst / entry.name).symlink_to(entry.resolve())


def prepare_store(default_store: Path, work: Path, models: list[str], max_batch_size: int,
                  delay_us: int, extra_stores: list[Path] | None = None) -> BenchStore:
    """Build the sitting's stores under ``work`` from ``default_store`` (+ ``extra_stores``)."""
    cap = work / "capserve_store"
    ts = work / "torchserve_store"
    for folder in (cap, ts):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    store = BenchStore(cap, ts)
    sources = [default_store, *(extra_stores or [])]
    benchmarked = set(models) | {f"{m}_torchscript" for m in models}
    for source in sources:
        if not source.is_dir():
            raise FileNotFoundError(f"model store {source} does not exist (run `make store`)")
        for entry in sorted(source.iterdir()):
            if entry.is_dir() and (entry / "config.pbtxt").exists():
                if (cap / entry.name).exists():
                    continue
                rewrite = (max_batch_size, delay_us) if entry.name in benchmarked else None
                _link_model(entry, cap / entry.name, rewrite)
            elif entry.suffix == ".mar" and entry.stem in models and entry.stem not in store.archives:
                (ts / entry.name).symlink_to(entry.resolve())
                store.archives[entry.stem] = ts / entry.name
    for model in models:
        config = cap / model / "config.pbtxt"
        if not config.exists():
            raise FileNotFoundError(f"model {model!r} is not in {', '.join(map(str, sources))}")
        text = config.read_text()
        store.parameters[model] = read_parameters(text)
        store.max_batch_size[model] = read_max_batch_size(text)
    return store


def ensure_resnet18(cache: Path, max_batch_size: int = 16) -> Path:
    """A store holding ``resnet18`` (+ TorchScript twin, + ``.mar``) from random weights.

    Made once through the project's own checkpoint -> exporter path (the same way a user would
    add a model), then reused: later sittings measure identical artifacts.
    """
    store = cache / "resnet18_store"
    if (store / "resnet18" / "config.pbtxt").exists():
        return store
    cache.mkdir(parents=True, exist_ok=True)
    checkpoint = cache / "resnet18_random.pt"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    make_ckpt = (
        "import sys, pathlib\n"
        "from bench.checkpoints import write_random_checkpoint\n"
        "write_random_checkpoint(pathlib.Path(sys.argv[1]), 'resnet18')\n"
    )
    subprocess.run([sys.executable, "-c", make_ckpt, str(checkpoint)], check=True, env=env)
    tmp = cache / "resnet18_store.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    logger.info("exporting a random-weight ResNet-18 into %s (once)", store)
    subprocess.run(
        [sys.executable, "-m", "export", str(checkpoint), "--name", "resnet18",
         "--store", str(tmp), "--max-batch-size", str(max_batch_size),
         "--formats", "onnx,torchscript,mar"],
        check=True, env=env,
    )
    tmp.replace(store)
    return store
