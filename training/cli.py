"""``python -m training ARCH`` (also ``capserve train``): train one model into a checkpoint.

Shaped like torchvision's reference scripts: :func:`get_args_parser`, :func:`main` (takes the
parsed args, returns the checkpoint dict), one short step per stage (load the data, build the
model and optimizer, :func:`run_epoch` over the loops in :mod:`training.engine`, build and write
the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training import data as datasets
from training import loaders
from training.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from training.engine import (
    Batch,
    CapsuleTask,
    SegmentationTask,
    StyleTask,
    Task,
    evaluate,
    train_one_epoch,
)
from training.models.registry import ARCHITECTURES, ArchSpec, build_model, get_spec
from training.photos import STYLES, style_image
from training.plots import save_curves
from training.style_loss import RandomFeatureNet, VGGFeatures

log = logging.getLogger("training")

DATA_KIND = {"classification": "classification", "capsule_classification": "classification",
             "segmentation": "segmentation", "style_transfer": "style"}
# epochs, batch size, learning rate per task when not given
TASK_DEFAULTS = {"classification": (15, 64, 1e-3), "capsule_classification": (15, 64, 1e-3),
                 "segmentation": (8, 16, 2e-3), "style_transfer": (3, 4, 2e-3)}
# --paper: the published sizes of the networks that train reduced by default
PAPER_KWARGS: dict[str, dict[str, Any]] = {
    "capsnet": {"conv_channels": 256, "primary_types": 32},
    "unet": {"base_width": 64, "depth": 4, "batch_norm": False},
    "transformer_net": {"width": 32, "residual_blocks": 5},
}


class IncompatibleData(ValueError):
    """A data set that exists but does not fit the architecture's task."""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", add_help=add_help,
                                description="Train one capserve model into a checkpoint.")
    p.add_argument("arch", help=f"architecture: {', '.join(ARCHITECTURES)}")
    p.add_argument("--data", default=None,
                   help=f"data set: {', '.join(datasets.DATASETS)} (default: the architecture's)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads; results are bit-identical only for the same count (default 1)")
    p.add_argument("--out", default=None, help="checkpoint path (default checkpoints/ARCH.pt)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint's weights")
    p.add_argument("--save-optimizer", action="store_true",
                   help="also store the optimizer state, so --resume continues it")
    p.add_argument("--dry-run", action="store_true",
                   help="one epoch of two batches per phase; writes a checkpoint only with --out")
    p.add_argument("--image-size", type=int, default=None,
                   help="training side in pixels (default: the architecture's)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap on training steps per epoch (style transfer: steps per epoch, default 100)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="turn off shifts (digits) / flips (shapes)")
    p.add_argument("--model-kwargs", default="{}",
                   help='constructor kwargs as JSON, e.g. \'{"activation": "tanh"}\'')
    p.add_argument("--paper", action="store_true",
                   help="the published network size (capsnet 8.2M parameters, unet, transformer_net)")
    p.add_argument("--style", default="mosaic",
                   help=f"style transfer: style image file or a procedural one: {', '.join(STYLES)}")
    p.add_argument("--style-weight", type=float, default=30.0)
    p.add_argument("--content-weight", type=float, default=1.0)
    p.add_argument("--lowpass-weight", type=float, default=50.0,
                   help="style transfer: weight of the low-pass luminance content term")
    p.add_argument("--tv-weight", type=float, default=1e-3)
    p.add_argument("--loss-net", default=None,
                   help="style transfer: a local torchvision VGG-16 state_dict file "
                        "(default: a fixed random-weight multi-scale feature network)")
    return p


def setup_determinism(seed: int, threads: int, device: torch.device) -> torch.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # warn_only: a few CUDA kernels have no deterministic variant; CPU ones all do
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_data(spec: ArchSpec, arch: str, data: str) -> None:
    kind = datasets.kind_of(data)  # raises UnknownDataset
    if kind != DATA_KIND[spec.task]:
        valid = [d for d in datasets.DATASETS if d == "imagefolder:PATH"
                 and DATA_KIND[spec.task] == "classification"
                 or d != "imagefolder:PATH" and datasets.kind_of(d) == DATA_KIND[spec.task]]
        raise IncompatibleData(f"data set {data!r} does not fit {arch} ({spec.task}); "
                               f"choose one of: {', '.join(valid)}")


def model_kwargs(args: argparse.Namespace, spec: ArchSpec, ds: datasets.ImageSet, color: str,
                 size: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if spec.task != "style_transfer":
        kwargs["num_classes"] = len(ds.labels)
    if spec.color is None:
        kwargs["in_channels"] = 1 if color == "L" else 3
        if not spec.fully_convolutional:
            kwargs["input_size"] = size
    if args.paper:
        kwargs.update(PAPER_KWARGS.get(args.arch, {}))
    try:
        user = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-kwargs is not valid JSON: {exc}") from None
    if not isinstance(user, dict):
        raise ValueError("--model-kwargs must be a JSON object")
    kwargs.update(user)
    return kwargs


def make_task(spec: ArchSpec, args: argparse.Namespace, ds: datasets.ImageSet, mean: list[float],
              std: list[float], size: int, device: torch.device) -> Task:
    if spec.task == "capsule_classification":
        return CapsuleTask(mean=mean, std=std)
    if spec.task == "segmentation":
        return SegmentationTask(num_classes=len(ds.labels), labels=list(ds.labels))
    if spec.task == "style_transfer":
        net: torch.nn.Module = VGGFeatures(args.loss_net) if args.loss_net else RandomFeatureNet()
        style = datasets.resize_photo(style_image(args.style), size)[None]
        return StyleTask(net.to(device), style.to(device), style_weight=args.style_weight,
                         content_weight=args.content_weight, lowpass_weight=args.lowpass_weight,
                         tv_weight=args.tv_weight)
    return Task()


@dataclass(frozen=True)
class Hyper:
    """Epochs, batch size and learning rate: the flags, else the task's defaults."""

    epochs: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class Images:
    """The data set as the architecture sees it: its colour mode, side and channel statistics."""

    name: str
    ds: datasets.ImageSet
    size: int
    color: str
    train_x: torch.Tensor
    test_x: torch.Tensor
    mean: list[float]
    std: list[float]

    def input_spec(self, spec: ArchSpec) -> dict[str, Any]:
        return {"channels": 1 if self.color == "L" else 3, "height": int(self.test_x.shape[2]),
                "width": int(self.test_x.shape[3]), "color": self.color, "mean": self.mean,
                "std": self.std, "fully_convolutional": spec.fully_convolutional}


@dataclass(frozen=True)
class Start:
    """The model and optimizer to train, fresh or from ``--resume``, and the epochs behind them."""

    model: torch.nn.Module
    arch_kwargs: dict[str, Any]
    optimizer: torch.optim.Optimizer
    history: list[dict[str, Any]]
    epochs_done: int


@dataclass(frozen=True)
class Run:
    """Everything one epoch needs: what torchvision's references pass to their loops."""

    model: torch.nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    images: Images
    batch_size: int
    style: bool
    augment: loaders.Augment | None
    train_steps: int
    max_train: int | None
    eval_batch: int
    eval_steps: int
    max_eval: int | None
    generator: torch.Generator
    device: torch.device


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    seconds: float
    metrics: dict[str, float]

    def history_entry(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "train_loss": self.train_loss, "seconds": self.seconds,
                **self.metrics}


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.arch``; returns the checkpoint dict (also written to ``--out``).

    The process-wide torch settings it makes for determinism (threads, deterministic
    algorithms) are restored on return, so in-process callers such as tests keep theirs.
    """
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train(args)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])


def _train(args: argparse.Namespace) -> dict[str, Any]:
    # The order of the steps is part of the determinism contract: model construction, the
    # style task's loss network and the batches all draw on the seeded generators.
    spec = get_spec(args.arch)
    data_name = args.data or spec.default_data
    check_data(spec, args.arch, data_name)
    device = resolve_device(args.device)
    gen = setup_determinism(args.seed, args.threads, device)
    hyper = hyperparameters(args, spec)
    images = load_images(args, spec, data_name)
    start = build_start(args, spec, images, hyper.lr, device)
    log.info("%s: %d parameters, data %s (%d train / %d test), device %s", args.arch,
             sum(p.numel() for p in start.model.parameters()), data_name,
             images.train_x.shape[0], images.test_x.shape[0], device)
    run = plan_run(args, spec, images, hyper, start, gen, device)
    started = time.monotonic()
    history = list(start.history)
    metrics: dict[str, float] = {}
    last = start.epochs_done + hyper.epochs
    for epoch in range(start.epochs_done + 1, last + 1):
        result = run_epoch(run, epoch, last)
        history.append(result.history_entry())
        metrics = result.metrics
    fields = checkpoint_fields(args, spec, run, start, hyper, history, metrics,
                               time.monotonic() - started)
    return write_checkpoint(output_path(args), fields, history,
                            f"{args.arch} on {data_name}", run.task.main_metric)


def hyperparameters(args: argparse.Namespace, spec: ArchSpec) -> Hyper:
    d_epochs, d_batch, d_lr = TASK_DEFAULTS[spec.task]
    epochs = 1 if args.dry_run else (args.epochs if args.epochs is not None else d_epochs)
    batch_size = args.batch_size or d_batch
    lr = args.lr if args.lr is not None else d_lr
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("--epochs and --batch-size must be >= 1 and --lr > 0")
    return Hyper(epochs, batch_size, lr)


def load_images(args: argparse.Namespace, spec: ArchSpec, data_name: str) -> Images:
    size = args.image_size or spec.size
    ds = datasets.load(data_name, size)
    color = spec.color or ds.color
    fixed_size = None if spec.fully_convolutional else size
    train_x = datasets.adapt(ds.train_x, color, fixed_size)
    test_x = datasets.adapt(ds.test_x, color, fixed_size)
    mean, std = datasets.channel_stats(ds, color)
    return Images(data_name, ds, size, color, train_x, test_x, mean, std)


def build_start(args: argparse.Namespace, spec: ArchSpec, images: Images, lr: float,
                device: torch.device) -> Start:
    # The fresh model is built even when resuming: its kwargs are checked that way, and the
    # draws it takes from the seeded generator keep a resumed run's dropout masks unchanged.
    kwargs = model_kwargs(args, spec, images.ds, images.color, images.size)
    model = build_model(args.arch, **kwargs).to(device)
    optimizer = _adam(model, lr, args.weight_decay)
    if not args.resume:
        return Start(model, kwargs, optimizer, [], 0)
    prev = load_checkpoint(args.resume)
    if prev["arch"] != args.arch:
        raise ValueError(f"--resume checkpoint is a {prev['arch']}, not a {args.arch}")
    kwargs = dict(prev["arch_kwargs"])
    model = build_model(args.arch, **kwargs).to(device)
    model.load_state_dict(prev["state_dict"])
    optimizer = _adam(model, lr, args.weight_decay)
    if "optimizer" in prev:
        optimizer.load_state_dict(prev["optimizer"])
    history = list(prev["provenance"].get("history", []))
    return Start(model, kwargs, optimizer, history,
                 int(prev["provenance"].get("epochs", len(history))))


def _adam(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def plan_run(args: argparse.Namespace, spec: ArchSpec, images: Images, hyper: Hyper,
             start: Start, gen: torch.Generator, device: torch.device) -> Run:
    style = spec.task == "style_transfer"
    max_train = 2 if args.dry_run else args.steps_per_epoch
    max_eval = 2 if args.dry_run else None
    if style:
        train_steps = max_train or 100
    else:
        train_steps = loaders.steps_for(images.train_x.shape[0], hyper.batch_size, max_train)
    eval_batch = 1 if style else hyper.batch_size
    eval_steps = loaders.steps_for(images.test_x.shape[0], eval_batch, max_eval)
    task = make_task(spec, args, images.ds, images.mean, images.std, images.size, device)
    return Run(model=start.model, task=task, optimizer=start.optimizer,
               scheduler=cosine_schedule(start.optimizer, hyper.epochs * train_steps),
               images=images, batch_size=hyper.batch_size, style=style,
               augment=choose_augment(args, spec, images.name), train_steps=train_steps,
               max_train=max_train, eval_batch=eval_batch, eval_steps=eval_steps,
               max_eval=max_eval, generator=gen, device=device)


def cosine_schedule(optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Learning rate factor from 1 down to 0 over ``total_steps`` (half a cosine), then 0."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))


def choose_augment(args: argparse.Namespace, spec: ArchSpec,
                   data_name: str) -> loaders.Augment | None:
    if args.augment and spec.task == "segmentation":
        return loaders.random_flips
    if args.augment and data_name in ("mnist5k", "digits"):
        return loaders.random_shift(2)
    return None


def run_epoch(run: Run, epoch: int, last_epoch: int) -> EpochResult:
    """Train one epoch (:func:`training.engine.train_one_epoch`), then evaluate held out."""
    batches = training_batches(run)
    t0 = time.monotonic()
    train_loss = train_one_epoch(run.model, run.task, run.optimizer, run.scheduler, batches,
                                 run.train_steps, epoch, last_epoch, run.device)
    metrics = evaluate_held_out(run, epoch)
    seconds = time.monotonic() - t0
    log.info("epoch %d: train_loss %.4f %s", epoch, train_loss,
             " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return EpochResult(epoch, train_loss, seconds, metrics)


def training_batches(run: Run) -> Iterator[Batch]:
    images = run.images
    if run.style:  # random crops of the photos; the labels are unused
        return loaders.crop_batches(run.train_steps, run.batch_size, images.size, run.generator)
    return loaders.tensor_batches(images.train_x, images.ds.train_y, run.batch_size, images.mean,
                                  images.std, run.generator, run.augment, run.max_train)


def evaluate_held_out(run: Run, epoch: int) -> dict[str, float]:
    """The task's metrics on the test split (:func:`training.engine.evaluate`)."""
    images = run.images
    batches = loaders.tensor_batches(images.test_x, images.ds.test_y, run.eval_batch, images.mean,
                                     images.std, max_steps=run.max_eval)
    return evaluate(run.model, run.task, batches, run.eval_steps, run.device,
                    desc=f"epoch {epoch} eval")


def checkpoint_fields(args: argparse.Namespace, spec: ArchSpec, run: Run, start: Start,
                      hyper: Hyper, history: list[dict[str, Any]], metrics: dict[str, float],
                      train_seconds: float) -> dict[str, Any]:
    """The keyword arguments of :func:`training.checkpoint.build_checkpoint` for this run."""
    provenance: dict[str, Any] = {
        "data": run.images.name, "epochs": start.epochs_done + hyper.epochs, "seed": args.seed,
        "batch_size": hyper.batch_size, "lr": hyper.lr, "steps_per_epoch": run.train_steps,
        "threads": args.threads, "device": run.device.type, "augment": args.augment,
        "dry_run": bool(args.dry_run), "train_seconds": round(train_seconds, 1),
        "history": history,
    }
    if run.style:
        provenance.update(style=args.style, style_weight=args.style_weight,
                          content_weight=args.content_weight, lowpass_weight=args.lowpass_weight,
                          tv_weight=args.tv_weight,
                          loss_net=args.loss_net or "random-multiscale")
    fields: dict[str, Any] = dict(
        arch=args.arch, arch_kwargs=start.arch_kwargs, task=spec.task,
        labels=list(run.images.ds.labels), input_spec=run.images.input_spec(spec),
        state_dict=run.model.state_dict(), metrics=metrics, provenance=provenance)
    if args.save_optimizer:
        fields["extra"] = {"optimizer": run.optimizer.state_dict()}
    return fields


def write_checkpoint(out: str | None, fields: dict[str, Any], history: list[dict[str, Any]],
                     title: str, main_metric: str) -> dict[str, Any]:
    """Write the checkpoint (one atomic write, optimizer state included) and its curves;
    with ``out`` None (a dry run without ``--out``) only build it."""
    if out is None:
        return build_checkpoint(**fields)
    ckpt = save_checkpoint(out, **fields)
    save_curves(history, curves_path(Path(out)), title, main_metric)
    return ckpt


def output_path(args: argparse.Namespace) -> str | None:
    return args.out or (None if args.dry_run else f"checkpoints/{args.arch}.pt")


def curves_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + "_curves.png")


def run(argv: list[str] | None = None) -> int:
    """Command-line entry: one-line errors with exit status 2 for bad names or options."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        ckpt = main(args)
    except (ValueError, FileNotFoundError) as exc:  # Unknown*, IncompatibleData, bad options
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"held-out metrics ({args.arch} on {ckpt['provenance']['data']}):")
    for key, value in ckpt["metrics"].items():
        print(f"  {key}: {value:.4f}")
    out = output_path(args)
    if out:
        print(f"checkpoint: {out}\ncurves: {curves_path(Path(out))}")
    return 0
