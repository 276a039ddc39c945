"""Training engine: plain functions, every step written out.

    fer train --data data/fer2013.h5 --model vgg_small --epochs 20 --out runs/vgg_small
    fer train --data data/fer2013.h5 --config best_params.json        # e.g. from fer tune
    fer train --data data/fer2013.h5 --out runs/vgg_small --resume    # after Ctrl-C

Trains on the Training split, selects the checkpoint and early-stops on
PublicTest ("val"). PrivateTest ("test") is never read here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from .data import load_split, read_info
from .models import CHECKPOINT_VERSION, count_macs, count_params, create_model
from .report import write_atomic


@dataclass
class TrainConfig:
    data: str = "data/fer2013.h5"      # HDF5 written by `fer preprocess`
    out: str = "runs/default"          # run folder: config, history, last.pt, best.pt
    model: str = "vgg_small"           # a name from fer_lib.models.list_models()
    model_args: dict = field(default_factory=dict)  # extra create_model kwargs (widths, hidden, ...)
    activation: str = "relu"           # relu | leaky_relu | elu | silu
    drop_rate: float | None = None     # head dropout; None keeps the model's default
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"             # sgd (Nesterov) | adam | adamw | rmsprop
    lr: float = 0.05                   # peak lr for onecycle, initial lr otherwise
    weight_decay: float = 5e-4
    momentum: float = 0.9              # sgd and rmsprop
    scheduler: str = "onecycle"        # onecycle | cosine | step | plateau | none
    step_size: int = 10                # StepLR: epochs between decays
    gamma: float = 0.5                 # StepLR / plateau decay factor
    label_smoothing: float = 0.1
    class_weights: bool = False        # weight the loss by inverse class frequency (helps Disgust)
    augment: float = 1.0               # augmentation strength, 0 turns it off
    flip: bool = True                  # random horizontal flip
    erase: float = 0.25                # random-erasing probability (scaled by augment)
    train_fraction: float = 1.0        # stratified subset of Training, for fast searches
    patience: int = 0                  # early stop after this many epochs without val gain; 0 = off
    precision: str = "auto"            # auto | fp32 | bf16 | fp16 (cuda)
    device: str = "auto"               # auto | cpu | cuda
    seed: int = 0
    progress: bool = True              # tqdm bars per epoch


def resolve_config(file: str | None = None, **overrides) -> TrainConfig:
    """Defaults, then a JSON/YAML file, then explicit overrides (None means 'not given')."""
    values = {}
    if file:
        text = Path(file).read_text()
        if file.endswith((".yaml", ".yml")):
            import yaml
            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        values = values.get("train_config", values)  # fer tune's best-params file nests it
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
    return TrainConfig(**values)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """Device and autocast dtype: bf16 only where the CPU has native bf16 (else it is ~10x slower)."""
    dev = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if cfg.device == "auto" else cfg.device))
    prec = cfg.precision
    if prec == "auto":
        if dev.type == "cuda":
            prec = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            prec = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return dev, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]


# ----------------------------------------------------------------------------- data and augmentation

def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-stratified random subset."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        n = max(1, round(len(idx) * fraction))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values


def augment_batch(x: torch.Tensor, strength: float, flip: bool, erase: float) -> torch.Tensor:
    """Batched augmentation of normalized faces (B, 1, H, W): one random affine per image
    (shift up to 10%, rotation up to 10 degrees, scale 0.9-1.1, mirror), then random erasing."""
    b = x.shape[0]
    if strength > 0 or flip:
        angle = (torch.rand(b) * 2 - 1) * math.radians(10) * strength
        scale = 1 + (torch.rand(b) * 2 - 1) * 0.1 * strength
        shift = (torch.rand(b, 2) * 2 - 1) * 0.2 * strength  # grid units: 2 = full width
        mirror = torch.where(torch.rand(b) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1),
                             torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if erase * strength > 0:
        h, w = x.shape[-2:]
        eh = (torch.rand(b) * 0.3 + 0.1) * h                 # erased box: 10-40% of each side
        ew = (torch.rand(b) * 0.3 + 0.1) * w
        y0, x0 = torch.rand(b) * (h - eh), torch.rand(b) * (w - ew)
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        box = ((ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1)) &
               (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1)))
        box &= (torch.rand(b) < erase * strength).view(b, 1, 1)
        x = x.masked_fill(box.unsqueeze(1), 0.0)             # 0 = the dataset mean after normalizing
    return x


def _to_input(images_u8: torch.Tensor, mean: float, std: float, device) -> torch.Tensor:
    x = (images_u8.to(device).float().unsqueeze(1) / 255.0 - mean) / std  # (B, 1, 48, 48)
    return x


# ----------------------------------------------------------------------------- one epoch

def train_one_epoch(model, optimizer, scheduler, images, labels, cfg: TrainConfig, mean, std,
                    device, amp_dtype, loss_weight=None, desc="train") -> dict:
    """One pass over (images uint8 (N,48,48), labels); returns mean loss, accuracy and lr."""
    model.train()
    order = torch.randperm(len(images))
    n_batches = len(order) // cfg.batch_size or 1  # drop the ragged last batch: BN needs >1 sample
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(n_batches), desc=desc, leave=False, disable=not cfg.progress, mininterval=2)
    for i in bar:
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        x = _to_input(images[idx], mean, std, device)
        x = augment_batch(x, cfg.augment, cfg.flip, cfg.erase).contiguous(memory_format=torch.channels_last)
        y = labels[idx].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, weight=loss_weight, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cfg.scheduler == "onecycle":
            scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    return {"train_loss": total_loss / seen, "train_acc": correct / seen,
            "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def evaluate(model, images, labels, mean, std, device, amp_dtype=None, batch_size=512) -> dict:
    """Loss and accuracy on (images uint8, labels) without augmentation; restores train mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = _to_input(images[i:i + batch_size], mean, std, device).contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return {"loss": total_loss / len(images), "acc": correct / len(images)}


# ----------------------------------------------------------------------------- a whole run

@dataclass
class Setup:
    """Everything a run needs, built from a config; shared by fit() and fer_lib.tune."""
    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train: tuple           # (images uint8 (N,48,48), labels int64)
    val: tuple
    mean: float
    std: float
    class_names: list
    device: torch.device
    amp_dtype: torch.dtype | None
    loss_weight: torch.Tensor | None


def model_kwargs(cfg: TrainConfig) -> dict:
    return {**cfg.model_args, "activation": cfg.activation, "drop_rate": cfg.drop_rate}


def build_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam, adamw or rmsprop")


def build_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    s = cfg.scheduler
    if s == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if s == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.gamma, patience=2)
    if s == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    raise ValueError(f"unknown scheduler {s!r}; choose onecycle, cosine, step, plateau or none")


def setup(cfg: TrainConfig) -> Setup:
    """Seed, load Training and PublicTest (never PrivateTest), build model, optimizer, scheduler."""
    seed_everything(cfg.seed)
    device, amp_dtype = pick_device(cfg)
    info = read_info(cfg.data)
    tr_x, tr_y = load_split(cfg.data, "train", as_tensor=False)
    va_x, va_y = load_split(cfg.data, "val", as_tensor=False)
    tr_x, tr_y = torch.from_numpy(tr_x), torch.from_numpy(tr_y)
    keep = stratified_subset(tr_y, cfg.train_fraction, cfg.seed)
    tr_x, tr_y = tr_x[keep], tr_y[keep]
    model = create_model(cfg.model, **model_kwargs(cfg)).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model.parameters())
    steps = max(1, len(tr_y) // cfg.batch_size)
    scheduler = build_scheduler(cfg, optimizer, steps)
    weight = None
    if cfg.class_weights:
        counts = torch.bincount(tr_y, minlength=len(info["class_names"])).float()
        weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)
    return Setup(cfg, model, optimizer, scheduler, (tr_x, tr_y), (torch.from_numpy(va_x), torch.from_numpy(va_y)),
                 info["mean"], info["std"], info["class_names"], device, amp_dtype, weight)


def run_epoch(s: Setup, epoch: int) -> dict:
    """Train one epoch, then score PublicTest; steps per-epoch schedulers. Returns the history row."""
    t0 = time.time()
    row = train_one_epoch(s.model, s.optimizer, s.scheduler, *s.train, s.cfg, s.mean, s.std, s.device,
                          s.amp_dtype, s.loss_weight, desc=f"epoch {epoch}/{s.cfg.epochs}")
    val = evaluate(s.model, *s.val, s.mean, s.std, s.device, s.amp_dtype)
    if s.cfg.scheduler == "plateau":
        s.scheduler.step(val["acc"])
    elif s.cfg.scheduler != "onecycle":
        s.scheduler.step()
    return {"epoch": epoch, **row, "val_loss": val["loss"], "val_acc": val["acc"], "time_s": time.time() - t0}


def _checkpoint(s: Setup, epoch: int, history: list, best: dict) -> dict:
    return {
        "version": CHECKPOINT_VERSION, "fer_lib_version": __version__,
        "model_name": s.cfg.model, "model_args": {k: v for k, v in model_kwargs(s.cfg).items() if v is not None},
        "state_dict": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch": epoch, "metric": {"val_acc": history[-1]["val_acc"], "val_loss": history[-1]["val_loss"]},
        "best": best, "history": history, "config": dataclasses.asdict(s.cfg),
        "mean": s.mean, "std": s.std, "class_names": list(s.class_names),
    }


def save_atomic(obj, path: Path) -> None:
    """torch.save through report.write_atomic: a kill never leaves a half-written checkpoint."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def fit(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train per cfg, keeping last.pt every epoch and best.pt on PublicTest accuracy.

    Returns {"history", "best", "out", "params", "macs", "wall_s"}.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    s = setup(cfg)
    # before any resume: building the model to count MACs draws from the RNG restored below
    params, macs = count_params(s.model), count_macs(create_model(cfg.model, **model_kwargs(cfg)))
    history, best, start = [], {"val_acc": -1.0, "epoch": 0}, 1
    if resume and (out / "last.pt").exists():
        ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        s.model.load_state_dict(ck["state_dict"])
        s.optimizer.load_state_dict(ck["optimizer"])
        s.scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        history, best, start = ck["history"], ck["best"], ck["epoch"] + 1
        print(f"resuming {out} after epoch {ck['epoch']} (best val_acc {best['val_acc']:.4f})")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    t0 = time.time()
    for epoch in range(start, cfg.epochs + 1):
        row = run_epoch(s, epoch)
        history.append(row)
        improved = row["val_acc"] > best["val_acc"]
        if improved:
            best = {"val_acc": row["val_acc"], "val_loss": row["val_loss"], "epoch": epoch}
        ck = _checkpoint(s, epoch, history, best)
        save_atomic(ck, out / "last.pt")
        if improved:
            save_atomic(ck, out / "best.pt")
        (out / "history.json").write_text(json.dumps(history, indent=2))
        print(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
              f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}  "
              f"{row['time_s']:.0f}s" + ("  *" if improved else ""), flush=True)
        if cfg.patience and epoch - best["epoch"] >= cfg.patience:
            print(f"early stop: no val gain for {cfg.patience} epochs")
            break
    return {"history": history, "best": best, "out": str(out), "params": params, "macs": macs,
            "wall_s": time.time() - t0}


def export_checkpoint(src, dst) -> Path:
    """A small copy of a checkpoint for sharing: weights and metadata, no optimizer state."""
    ck = torch.load(src, map_location="cpu", weights_only=True)
    for k in ("optimizer", "scheduler", "rng"):
        ck.pop(k, None)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(ck, dst)
    return dst


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("--config", help="JSON/YAML file of TrainConfig fields (e.g. fer tune's best params)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--export", help="after training, write best.pt without optimizer state here")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_args":
            p.add_argument("--model-args", type=json.loads, default=None, help="JSON dict of model kwargs")
        elif f.type in ("bool", bool):
            p.add_argument("--" + f.name.replace("_", "-"), type=lambda v: v.lower() in ("1", "true", "yes"),
                           default=None, metavar="BOOL")
        else:
            typ = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            p.add_argument("--" + f.name.replace("_", "-"), type=typ, default=None)


def run(args) -> int:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = resolve_config(args.config, **{k: v for k, v in vars(args).items() if k in names})
    result = fit(cfg, resume=args.resume)
    b = result["best"]
    print(f"best PublicTest acc {b['val_acc']:.4f} at epoch {b['epoch']}; {result['out']}/best.pt "
          f"({result['wall_s'] / 60:.1f} min)")
    if args.export:
        print("exported", export_checkpoint(Path(result["out"]) / "best.pt", args.export))
    return 0
