"""``python -m training ARCH`` (also ``capserve train``): train one model into a checkpoint.

Shaped like torchvision's reference scripts: :func:`get_args_parser`, :func:`main` (takes the
parsed args, returns the checkpoint dict), and the loops in :mod:`training.engine`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from training import data as datasets
from training import loaders
from training.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from training.engine import (
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
    spec = get_spec(args.arch)
    data_name = args.data or spec.default_data
    check_data(spec, args.arch, data_name)
    device = resolve_device(args.device)
    gen = setup_determinism(args.seed, args.threads, device)
    d_epochs, d_batch, d_lr = TASK_DEFAULTS[spec.task]
    epochs = 1 if args.dry_run else (args.epochs if args.epochs is not None else d_epochs)
    batch_size = args.batch_size or d_batch
    lr = args.lr if args.lr is not None else d_lr
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("--epochs and --batch-size must be >= 1 and --lr > 0")

    size = args.image_size or spec.size
    ds = datasets.load(data_name, size)
    color = spec.color or ds.color
    fixed_size = None if spec.fully_convolutional else size
    train_x = datasets.adapt(ds.train_x, color, fixed_size)
    test_x = datasets.adapt(ds.test_x, color, fixed_size)
    mean, std = datasets.channel_stats(ds, color)
    height, width = (test_x.shape[2], test_x.shape[3])

    kwargs = model_kwargs(args, spec, ds, color, size)
    model = build_model(args.arch, **kwargs).to(device)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    if args.resume:
        prev = load_checkpoint(args.resume)
        if prev["arch"] != args.arch:
            raise ValueError(f"--resume checkpoint is a {prev['arch']}, not a {args.arch}")
        kwargs = dict(prev["arch_kwargs"])
        model = build_model(args.arch, **kwargs).to(device)
        model.load_state_dict(prev["state_dict"])
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
        if "optimizer" in prev:
            optimizer.load_state_dict(prev["optimizer"])
        history = list(prev["provenance"].get("history", []))
        start_epoch = int(prev["provenance"].get("epochs", len(history)))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d parameters, data %s (%d train / %d test), device %s", args.arch, n_params,
             data_name, train_x.shape[0], test_x.shape[0], device)

    style = spec.task == "style_transfer"
    max_train = 2 if args.dry_run else args.steps_per_epoch
    max_eval = 2 if args.dry_run else None
    if style:
        train_steps = max_train or 100
    else:
        train_steps = loaders.steps_for(train_x.shape[0], batch_size, max_train)
    eval_batch = batch_size if not style else 1
    eval_steps = loaders.steps_for(test_x.shape[0], eval_batch, max_eval)
    task = make_task(spec, args, ds, mean, std, size, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / (epochs * train_steps), 1.0))))
    augment: loaders.Augment | None = None
    if args.augment and spec.task == "segmentation":
        augment = loaders.random_flips
    elif args.augment and data_name in ("mnist5k", "digits"):
        augment = loaders.random_shift(2)

    started = time.monotonic()
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch + 1, start_epoch + epochs + 1):
        if style:
            batches = loaders.crop_batches(train_steps, batch_size, size, gen)
        else:
            batches = loaders.tensor_batches(train_x, ds.train_y, batch_size, mean, std, gen,
                                             augment, max_train)
        t0 = time.monotonic()
        train_loss = train_one_epoch(model, task, optimizer, scheduler, batches, train_steps,
                                     epoch, start_epoch + epochs, device)
        eval_y = ds.test_y
        metrics = evaluate(model, task, loaders.tensor_batches(test_x, eval_y, eval_batch, mean,
                                                               std, max_steps=max_eval),
                           eval_steps, device, desc=f"epoch {epoch} eval")
        history.append({"epoch": epoch, "train_loss": train_loss, "seconds": time.monotonic() - t0,
                        **metrics})
        log.info("epoch %d: train_loss %.4f %s", epoch, train_loss,
                 " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    input_spec = {"channels": 1 if color == "L" else 3, "height": int(height), "width": int(width),
                  "color": color, "mean": mean, "std": std,
                  "fully_convolutional": spec.fully_convolutional}
    provenance: dict[str, Any] = {
        "data": data_name, "epochs": start_epoch + epochs, "seed": args.seed,
        "batch_size": batch_size, "lr": lr, "steps_per_epoch": train_steps,
        "threads": args.threads, "device": device.type, "augment": args.augment,
        "dry_run": bool(args.dry_run), "train_seconds": round(time.monotonic() - started, 1),
        "history": history,
    }
    if style:
        provenance.update(style=args.style, style_weight=args.style_weight,
                          content_weight=args.content_weight, lowpass_weight=args.lowpass_weight,
                          tv_weight=args.tv_weight,
                          loss_net=args.loss_net or "random-multiscale")
    out = args.out or (None if args.dry_run else f"checkpoints/{args.arch}.pt")
    ckpt_args: dict[str, Any] = dict(
        arch=args.arch, arch_kwargs=kwargs, task=spec.task, labels=list(ds.labels),
        input_spec=input_spec, state_dict=model.state_dict(), metrics=metrics,
        provenance=provenance)
    if args.save_optimizer:
        ckpt_args["extra"] = {"optimizer": optimizer.state_dict()}
    if out is None:  # the dry run builds the real checkpoint and writes nothing
        return build_checkpoint(**ckpt_args)
    ckpt = save_checkpoint(out, **ckpt_args)  # one atomic write, optimizer state included
    save_curves(history, curves_path(Path(out)), f"{args.arch} on {data_name}", task.main_metric)
    return ckpt


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
    out = args.out or (None if args.dry_run else f"checkpoints/{args.arch}.pt")
    if out:
        print(f"checkpoint: {out}\ncurves: {curves_path(Path(out))}")
    return 0
