"""Training engine: plain functions, every step written out.

    fer train --data data/fer2013.h5 --model vgg_small --epochs 20 --out runs/vgg_small
    fer train --data data/fer2013.h5 --config best_params.json        # e.g. from fer tune
    fer train --data data/fer2013.h5 --out runs/vgg_small --resume    # after Ctrl-C

Trains on the Training split, selects the checkpoint and early-stops on
PublicTest ("val"). PrivateTest ("test") is never read here.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import __version__
from .data import load_split, read_info
from .environment import describe_environment, describe_machine, native_bf16
from .errors import UserError, check_output_path
from .flags import add_dataclass_arguments, check_settings, setting
from .io import clean_stale_partials, read_config, write_atomic
from .metrics import average_proba
from .models import (CHECKPOINT_VERSION, center_crop, count_macs, count_params, create_model, load_checkpoint,
                     load_model, model_from_checkpoint, store_weights)
from .progress import bar as progress_bar


class Diverged(RuntimeError):
    """Training produced a non-finite loss or weight; the run stops and keeps its last good epoch."""


def check_crop(side: int) -> None:
    """0 (no crop) or a side every network can take: the deepest halves the side five times."""
    if side != 0 and not 32 <= side <= 48:
        raise ValueError("must be 0 (off) or a side from 32 to 48 pixels (the faces are 48x48)")


@dataclass
class TrainConfig:
    data: str = "data/fer2013.h5"      # HDF5 written by `fer preprocess`
    out: str = "runs/default"          # run folder: config, history, last.pt, best.pt
    model: str = "vgg_small"           # a name from fer_lib.models.list_models()
    model_args: dict = field(default_factory=dict)  # extra create_model kwargs (widths, hidden, ...)
    activation: str = setting("relu", choices=("relu", "leaky_relu", "elu", "silu"))
    drop_rate: float | None = setting(None, low=0.0, below=1.0)  # head dropout; None keeps the model's default
    stage_drop: float | None = setting(None, low=0.0, below=1.0)  # dropout after each conv stage (None: model_args' or default)
    width_mult: float = setting(1.0, above=0.0, high=8.0)  # scales every layer's width (0.5: about a quarter of the compute)
    epochs: int = setting(20, low=1)
    batch_size: int = setting(128, low=2, why="batch-norm needs 2 faces per batch")
    optimizer: str = setting("sgd", choices=("sgd", "adam", "adamw", "rmsprop"))  # sgd: Nesterov
    lr: float = setting(0.05, above=0.0, high=10.0)  # peak lr for onecycle, initial lr otherwise
    weight_decay: float = setting(5e-4, low=0.0, high=1.0)
    momentum: float = setting(0.9, low=0.0, below=1.0)  # sgd and rmsprop
    scheduler: str = setting("onecycle", choices=("onecycle", "cosine", "step", "plateau", "none"))
    step_size: int = setting(10, low=1)  # StepLR: epochs between decays
    step_fraction: float = setting(0.0, low=0.0, below=1.0)  # StepLR: decay each this share of the epochs (0: step_size)
    gamma: float = setting(0.5, above=0.0, high=1.0)  # StepLR / plateau decay factor
    label_smoothing: float = setting(0.1, low=0.0, below=1.0)
    class_weights: bool = False        # weight the loss by inverse class frequency (helps Disgust)
    augment: float = setting(1.0, low=0.0, high=4.0)  # augmentation strength, 0 turns it off
    flip: bool = True                  # random horizontal flip
    erase: float = setting(0.25, low=0.0, high=1.0)  # random-erasing probability (scaled by augment)
    crop: int = setting(0, check=check_crop)  # train on random crops of this side (e.g. 40), score the centre crop; 0 = off
    mixup: float = setting(0.0, low=0.0)  # mixup alpha, lambda ~ Beta(alpha, alpha); 0 = off
    cutmix: float = setting(0.0, low=0.0)  # cutmix alpha; with mixup also on, each batch picks one (p = 0.5)
    mix_prob: float = setting(1.0, low=0.0, high=1.0)  # share of batches mixed when mixup or cutmix is on
    ema_decay: float = setting(0.0, low=0.0, below=1.0)  # per-step EMA of the weights, scored and checkpointed; 0 = off
    teacher: str | None = None         # checkpoint to distil from (its soft targets on each training batch)
    kd_alpha: float = setting(0.9, low=0.0, high=1.0)  # weight of the distillation term; 1 - kd_alpha on the labels
    kd_temperature: float = setting(4.0, above=0.0)  # softmax temperature of teacher and student in the distillation term
    kd_cache: bool = False             # the teacher's targets once per Training face (mean of it and its mirror),
                                       # not on every augmented batch: a large teacher then costs one pass
    init: str | None = None            # start from this checkpoint's weights (fine-tuning; same model and args)
    train_fraction: float = setting(1.0, above=0.0, high=1.0)  # stratified subset of Training, for fast searches
    patience: int = setting(0, low=0)  # early stop after this many epochs without val gain; 0 = off
    precision: str = setting("auto", choices=("auto", "fp32", "bf16", "fp16"))  # fp16: cuda
    device: str = setting("auto", choices=("auto", "cpu", "cuda", "mps"))
    seed: int = setting(0, low=0)
    progress: bool = True              # tqdm bars per epoch

    def __post_init__(self):
        check_settings(self)


def resolve_config(file: str | None = None, **overrides) -> TrainConfig:
    """Defaults, then a JSON/YAML file (a profile's `train` section, fer tune's best params, or plain
    TrainConfig fields), then explicit overrides (None means 'not given')."""
    values = {}
    if file:
        values = read_config(file, "train")
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
    """Device and autocast dtype: bf16 only where the CPU has bf16 in hardware (environment.native_bf16;
    emulated, it is 2.5 to 10x slower than fp32)."""
    dev = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if cfg.device == "auto" else cfg.device))
    prec = cfg.precision
    if prec == "auto":
        if dev.type == "cuda":
            prec = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            prec = "bf16" if native_bf16() else "fp32"
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


def random_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """A random size x size window of each image of (B, C, H, W), one offset per image."""
    b, _, h, w = x.shape
    oy = torch.randint(0, h - size + 1, (b, 1))
    ox = torch.randint(0, w - size + 1, (b, 1))
    rows = (oy + torch.arange(size)).to(x.device)  # (B, size)
    cols = (ox + torch.arange(size)).to(x.device)
    bi = torch.arange(b, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) labels -> (B, C) targets: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    off = smoothing / num_classes
    return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


def mix_batch(x, y, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
              switch_prob: float = 0.5, smoothing: float = 0.0):
    """timm's Mixup in batch mode: mix each image with its mirror in the batch (x.flip(0)).

    Returns (x, targets (B, C) summing to 1, lam, y_other). One lambda per batch; with both alphas
    on, cutmix is picked with probability switch_prob; cutmix's lambda is the pasted box's true
    area share. Label smoothing is mixed into the targets; at alpha 0 they are the smoothed labels.
    """
    target = smooth_one_hot(y, num_classes, smoothing)
    # torch's RNG only, so that a resumed run draws what the uninterrupted one would
    if (mixup <= 0 and cutmix <= 0) or torch.rand(()).item() >= prob:
        return x, target, 1.0, y
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()).item() < switch_prob)
    alpha = torch.tensor(cutmix if use_cutmix else mixup)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    if use_cutmix:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2 + ch % 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2 + cw % 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + x.flip(0) * (1 - lam)
    return x, target * lam + target.flip(0) * (1 - lam), lam, y.flip(0)


def _to_input(images_u8: torch.Tensor, mean: float, std: float, device, crop: int = 0) -> torch.Tensor:
    x = (images_u8.to(device).float().unsqueeze(1) / 255.0 - mean) / std  # (B, 1, 48, 48)
    return center_crop(x, crop) if crop else x


def distill_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, times T^2 (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


# ----------------------------------------------------------------------------- one epoch

def train_one_epoch(model, optimizer, scheduler, images, labels, cfg: TrainConfig, mean, std,
                    device, amp_dtype, loss_weight=None, desc="train", ema=None, teacher=None,
                    teacher_targets=None) -> dict:
    """One pass over (images uint8 (N,48,48), labels); returns mean loss, accuracy and lr.
    teacher_targets: (N, C) log-probabilities of a teacher per face (kd_cache), instead of `teacher`.

    With mixup/cutmix the accuracy counts a prediction right in proportion to each label's share
    of the mixed image, so it stays comparable with an unmixed run's."""
    model.train()
    order = torch.randperm(len(images))
    n_batches = len(order) // cfg.batch_size or 1  # drop the ragged last batch: BN needs >1 sample
    num_classes = model.head[-1].out_features
    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    total_loss, correct, seen = 0.0, 0.0, 0
    bar = progress_bar(range(n_batches), desc=desc, leave=False, disable=not cfg.progress, mininterval=2)
    for i in bar:
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        x = _to_input(images[idx], mean, std, device)
        x = augment_batch(x, cfg.augment, cfg.flip, cfg.erase)
        if cfg.crop:
            x = random_crop(x, cfg.crop)  # (B, 1, crop, crop)
        y = labels[idx].to(device)
        target, lam, y2 = None, 1.0, y
        if mixing:
            x, target, lam, y2 = mix_batch(x, y, num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob,
                                           smoothing=cfg.label_smoothing)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_in = x if x.shape[-1] == teacher.img_size else F.interpolate(
                        x, size=(teacher.img_size,) * 2, mode="bilinear", align_corners=False)
                    t_logits = teacher(t_in).float()
        logits = logits.float()
        if teacher_targets is not None:
            t_logits = teacher_targets[idx].to(device)
            if lam != 1.0:  # the mixed image's target: the same mix of the two faces' probabilities
                t_logits = (lam * t_logits.exp() + (1 - lam) * t_logits.exp().flip(0)).log()
        if target is not None:  # smoothing is already in the mixed targets
            loss = F.cross_entropy(logits, target, weight=loss_weight)
        else:
            loss = F.cross_entropy(logits, y, weight=loss_weight, label_smoothing=cfg.label_smoothing)
        if teacher is not None or teacher_targets is not None:
            loss = cfg.kd_alpha * distill_loss(logits, t_logits, cfg.kd_temperature) + (1 - cfg.kd_alpha) * loss
        value = loss.item()
        if not math.isfinite(value):  # before the step: the weights stay those of the last good batch
            raise Diverged(f"the training loss became {value} at batch {i + 1} of {n_batches}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        if cfg.scheduler == "onecycle":
            scheduler.step()
        pred = logits.argmax(1)
        total_loss += value * len(y)
        correct += (lam * (pred == y).sum() + (1 - lam) * (pred == y2).sum()).item()
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    return {"train_loss": total_loss / seen, "train_acc": correct / seen,
            "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def evaluate(model, images, labels, mean, std, device, amp_dtype=None, batch_size=512, crop: int = 0) -> dict:
    """Loss and accuracy on (images uint8, labels) without augmentation (the centre crop for a
    crop-trained model); restores train mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = _to_input(images[i:i + batch_size], mean, std, device, crop).contiguous(memory_format=torch.channels_last)
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
    ema: AveragedModel | None = None          # the weights scored and checkpointed when ema_decay > 0
    teacher: torch.nn.Module | None = None    # distillation teacher (eval mode, frozen)
    teacher_targets: torch.Tensor | None = None  # kd_cache: the teacher's log-probabilities per Training face
    machine: dict | None = None               # what trained it: CPU, threads, precision (for training times)

    @property
    def scored(self) -> torch.nn.Module:
        """The model that is evaluated, selected and saved: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model


def ema_with_warmup(decay: float):
    """AveragedModel's multi_avg_fn: EMA at min(decay, (1 + n) / (10 + n)) after n updates.

    Without the warm-up a 0.999 average still holds half of the random initialization after
    700 steps (three epochs), and its mixed BN statistics make it predict one class."""
    def update(ema_params, model_params, n_averaged):
        n = int(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(ema_params, model_params, n_averaged)
    return update


def model_kwargs(cfg: TrainConfig) -> dict:
    """create_model's kwargs; None (and width 1) leaves the model's or model_args' own value."""
    kw = {**cfg.model_args, "activation": cfg.activation, "drop_rate": cfg.drop_rate, "img_size": cfg.crop or None}
    if cfg.stage_drop is not None:
        kw["stage_drop"] = cfg.stage_drop
    if cfg.width_mult != 1:
        kw["width_mult"] = cfg.width_mult
    return kw


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
    if s == "step":  # step_fraction: the same schedule at any budget (a short search trial, the final run)
        step = max(1, round(cfg.step_fraction * cfg.epochs)) if cfg.step_fraction > 0 else cfg.step_size
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=cfg.gamma)
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
    if cfg.init:
        init = load_checkpoint(cfg.init)
        try:
            model.load_state_dict(model_from_checkpoint(init).state_dict())
        except (RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"--init {cfg.init}: its {init['model_name']} {init['model_args']} does not fit "
                            f"{cfg.model} {model_kwargs(cfg)} ({str(e).splitlines()[0]})") from None
    optimizer = build_optimizer(cfg, model.parameters())
    steps = max(1, len(tr_y) // cfg.batch_size)
    scheduler = build_scheduler(cfg, optimizer, steps)
    weight = None
    if cfg.class_weights:
        counts = torch.bincount(tr_y, minlength=len(info["class_names"])).float()
        weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)
    # use_buffers: BN running statistics are averaged with the weights, so the EMA model's
    # statistics belong to its own weights (as timm's ModelEma does)
    ema = (AveragedModel(model, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay > 0 else None)
    teacher, targets = None, None
    if cfg.teacher:
        t = load_model(cfg.teacher)
        if (t.mean, t.std, t.class_names) != (info["mean"], info["std"], info["class_names"]):
            raise ValueError(f"teacher {cfg.teacher} was trained with other normalization or classes than {cfg.data}")
        if cfg.kd_cache:
            targets = teacher_log_targets(t, tr_x, cfg.progress)
        else:
            teacher = t.float_model.to(device).requires_grad_(False)
    env = describe_environment()
    machine = {k: env[k] for k in ("cpu", "cpu_flags", "cpu_count", "torch_threads", "device", "cpu_bf16")}
    machine["precision"] = "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", "")
    return Setup(cfg, model, optimizer, scheduler, (tr_x, tr_y), (torch.from_numpy(va_x), torch.from_numpy(va_y)),
                 info["mean"], info["std"], info["class_names"], device, amp_dtype, weight, ema, teacher, targets,
                 machine)


def teacher_log_targets(teacher, images: torch.Tensor, progress: bool = True, chunk: int = 1024) -> torch.Tensor:
    """A teacher Classifier's log-probabilities (N, C) on uint8 faces (N, 48, 48): the mean of each face's
    and its mirror image's (flip TTA), computed once for kd_cache."""
    from .evaluate import predict_logits  # fer evaluate's flip TTA; lazily, as evaluate imports matplotlib
    out = [average_proba(predict_logits(teacher, images[i:i + chunk].numpy(), "flip"))
           for i in progress_bar(range(0, len(images), chunk), desc="teacher targets", leave=False,
                                 disable=not progress, mininterval=2)]
    return torch.from_numpy(np.concatenate(out)).float().clamp_min(1e-12).log()


def measure_speed(s: Setup, steps: int = 3) -> float:
    """Training faces per second here: a few steps on a copy of the model, with the run's batch, precision,
    crop and teacher; the run's weights and random state are untouched."""
    side, b = s.cfg.crop or getattr(s.model, "img_size", 48), min(s.cfg.batch_size, len(s.train[1]))
    return _step_speed(copy.deepcopy(s.model), side, b, s.device, s.amp_dtype, len(s.class_names), s.teacher, steps)


def faces_per_second(cfg: TrainConfig, n_classes: int = 7, steps: int = 3) -> float:
    """What measure_speed says for cfg's model, batch, crop and precision, without its data or teacher:
    for planning a run (fer study's time plan) before its HDF5 exists."""
    device, amp_dtype = pick_device(cfg)
    with torch.random.fork_rng(devices=[]):
        model = create_model(cfg.model, **model_kwargs(cfg)).to(device)
    model = model.to(memory_format=torch.channels_last)
    return _step_speed(model, cfg.crop or getattr(model, "img_size", 48), cfg.batch_size, device, amp_dtype,
                       n_classes, None, steps)


def _step_speed(model, side: int, b: int, device, amp_dtype, n_classes: int, teacher=None, steps: int = 3) -> float:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    times = []
    with torch.random.fork_rng(devices=[]):  # dropout draws here must not shift the run's random stream
        x = torch.randn(b, 1, side, side).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, n_classes, (b,)).to(device)
        for _ in range(steps + 1):  # the first step warms up (allocations, kernel choice)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(model(x).float(), y)
                if teacher is not None:
                    with torch.no_grad():
                        t_side = getattr(teacher, "img_size", 48)
                        teacher(x if side == t_side else F.interpolate(x, size=(t_side, t_side)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    return b / float(np.median(times[1:]))


def epoch_seconds(speed: float, n_train: int, n_val: int) -> float:
    """An epoch at `speed` training faces/s: its steps, then scoring PublicTest (a forward pass costs
    about a third of a training step)."""
    return n_train / speed + n_val / (3 * speed)


def describe_plan(s: Setup, start: int = 1) -> str:
    """'plan: 18 epochs of vgg_small on 28,709 faces ...; measured 690 faces/s here: about 45 s an epoch, 14 min'."""
    speed = measure_speed(s)
    n_train, n_val = len(s.train[1]), len(s.val[1])
    epoch_s = epoch_seconds(speed, n_train, n_val)
    left = s.cfg.epochs - start + 1
    precision = "fp32" if s.amp_dtype is None else f"{str(s.amp_dtype).replace('torch.', '')} autocast"
    total = left * epoch_s
    threads = torch.get_num_threads()
    return (f"plan: {left} epoch{'s' * (left != 1)} of {s.cfg.model} on {n_train:,} Training faces ({precision}, "
            f"{threads} thread{'s' * (threads != 1)} on {s.device.type}); measured {speed:.0f} faces/s here: about "
            f"{epoch_s:.0f} s an epoch, {f'{total:.0f} s' if total < 90 else f'{total / 60:.0f} min'} in all "
            f"(more if the machine is shared). Interrupted, it resumes after its last finished epoch.")


def check_finite(model: torch.nn.Module) -> None:
    """Diverged naming the first weight or batch-norm statistic that is NaN or infinite."""
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise Diverged(f"the weights are no longer finite ({name})")


def run_epoch(s: Setup, epoch: int) -> dict:
    """Train one epoch, then score PublicTest; steps per-epoch schedulers. Returns the history row.
    Diverged (a non-finite loss or weight) ends the epoch before anything of it is kept."""
    t0 = time.time()
    try:
        row = train_one_epoch(s.model, s.optimizer, s.scheduler, *s.train, s.cfg, s.mean, s.std, s.device,
                              s.amp_dtype, s.loss_weight, desc=f"epoch {epoch}/{s.cfg.epochs}", ema=s.ema,
                              teacher=s.teacher, teacher_targets=s.teacher_targets)
        check_finite(s.scored)
    except Diverged as e:
        raise Diverged(f"epoch {epoch}: {e}: the run diverged (lr {s.cfg.lr:g}; try a smaller --lr)") from None
    val = evaluate(s.scored, *s.val, s.mean, s.std, s.device, s.amp_dtype, crop=s.cfg.crop)
    if s.ema is not None:  # the raw weights too, to show what averaging adds
        row["raw_val_acc"] = evaluate(s.model, *s.val, s.mean, s.std, s.device, s.amp_dtype, crop=s.cfg.crop)["acc"]
    if s.cfg.scheduler == "plateau":
        s.scheduler.step(val["acc"])
    elif s.cfg.scheduler != "onecycle":
        s.scheduler.step()
    return {"epoch": epoch, **row, "val_loss": val["loss"], "val_acc": val["acc"], "time_s": time.time() - t0,
            "ran_on": describe_machine(s.machine)}  # a resumed run may span machines: its times need it


def restore(s: Setup, ck: dict) -> tuple[list, dict, int]:
    """Put a last.pt's state into s (weights, EMA, optimizer, scheduler, torch RNG), so that the run goes
    on as if never stopped; returns its (history, best, next epoch)."""
    s.model.load_state_dict(ck.get("train_state_dict", ck["state_dict"]))
    if s.ema is not None:
        s.ema.module.load_state_dict(ck["state_dict"])
        s.ema.n_averaged.fill_(ck.get("ema_n_averaged", 1))
    s.optimizer.load_state_dict(ck["optimizer"])
    s.scheduler.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"])
    history = ck["history"]
    if ck.get("machine"):  # epochs of a run made before rows said where they ran: on the machine it recorded
        history = [{**r, "ran_on": r.get("ran_on") or describe_machine(ck["machine"])} for r in history]
    return history, ck["best"], ck["epoch"] + 1


def checkpoint(s: Setup, epoch: int, history: list, best: dict) -> dict:
    """What last.pt and best.pt hold: the model and how to rebuild it, and all a resumed run needs."""
    return {
        "version": CHECKPOINT_VERSION, "fer_lib_version": __version__,
        "model_name": s.cfg.model, "model_args": {k: v for k, v in model_kwargs(s.cfg).items() if v is not None},
        "state_dict": s.scored.state_dict(),  # the weights to predict with (the EMA's when on)
        **({"train_state_dict": s.model.state_dict(), "ema_n_averaged": int(s.ema.n_averaged)} if s.ema else {}),
        "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch": epoch, "metric": {"val_acc": history[-1]["val_acc"], "val_loss": history[-1]["val_loss"]},
        "best": best, "history": history, "config": dataclasses.asdict(s.cfg),
        "mean": s.mean, "std": s.std, "class_names": list(s.class_names), "machine": s.machine,
    }


def save_atomic(obj, path: Path) -> Path:
    """torch.save through io.write_atomic (which makes the folder): a kill never leaves a half-written checkpoint."""
    buf = io.BytesIO()  # serialised in memory, written by Python: a full disk is then OSError(ENOSPC),
    torch.save(obj, buf)  # where torch's own file writer raises an opaque RuntimeError
    return write_atomic(path, buf.getvalue())


RUN_FILES = ("last.pt", "best.pt", "history.json")
UNCHECKED = ("progress", "out")  # may change between a run and its resumption


def finished(ck: dict, cfg: TrainConfig) -> bool:
    """Whether the run of checkpoint ck has no epoch left under cfg (its epochs, or its patience)."""
    return ck["epoch"] >= cfg.epochs or bool(cfg.patience and ck["epoch"] - ck["best"]["epoch"] >= cfg.patience)


def finished_result(cfg: TrainConfig, history: list, best: dict, out) -> dict:
    """fit()'s result for a finished run it returns without training (wall_s 0: nothing ran now)."""
    model = create_model(cfg.model, **model_kwargs(cfg))
    return {"history": history, "best": best, "out": str(out), "params": count_params(model),
            "macs": count_macs(model), "wall_s": 0.0}


def changed_fields(ck: dict, cfg: TrainConfig, ignore: tuple = ()) -> list[str]:
    """The fields of cfg that the checkpoint's run was made with otherwise (UNCHECKED and `ignore` aside)."""
    saved, default = ck.get("config", {}), dataclasses.asdict(TrainConfig())
    # a field the run predates had its default then (the engine's additions are all off by default)
    return [k for k, v in dataclasses.asdict(cfg).items()
            if k not in UNCHECKED + ignore and saved.get(k, default[k]) != v]


def check_run_folder(cfg: TrainConfig, resume: bool | str = False, overwrite: bool = False,
                     ignore: tuple = ()) -> dict | None:
    """Decide, before anything is written, what training into cfg.out means; the last.pt to resume
    from, or None for a fresh run. Never replaces a run silently:

    - a folder that holds a run needs resume (same configuration) or overwrite;
    - resume needs a last.pt, and the configuration it was made with (the schedule depends on
      every field, epochs included), else UserError naming the fields that differ;
    - resume="auto" (notebook 02): resume when there is a run, start one when there is none;
    - ignore: fields the caller vouches for otherwise (fer_lib.chain: "data", which its key holds by content).
    """
    out = Path(cfg.out)
    check_output_path(out / "config.json", "--out")  # also refuses an --out that is a file
    held = [n for n in RUN_FILES if (out / n).exists()]
    if overwrite or (not held and resume != True):  # noqa: E712 (True, not "auto")
        return None
    if not resume:
        raise UserError(f"{out} already holds a run ({', '.join(held)}); continue it with --resume, "
                        f"or train into a new --out, or pass --overwrite to replace it")
    if not (out / "last.pt").exists():
        raise UserError(f"nothing to resume in {out}: no last.pt" + (f" (it holds {', '.join(held)})" if held else ""))
    ck = load_checkpoint(out / "last.pt")
    saved, now = ck.get("config", {}), dataclasses.asdict(cfg)
    differ = changed_fields(ck, cfg, ignore)
    if differ:
        what = "; ".join(f"{k}: run {saved.get(k)!r}, now {now[k]!r}" for k in differ)
        raise UserError(f"{out} was trained with another configuration ({what}); resume it with its own "
                        f"({out / 'config.json'}), or train into a new --out")
    return ck


def fit(cfg: TrainConfig, resume: bool | str = False, overwrite: bool = False, ignore: tuple = ()) -> dict:
    """Train per cfg, keeping last.pt every epoch and best.pt on PublicTest accuracy.

    resume: continue cfg.out's run (True), or "auto": continue it if there is one. A folder that
    holds a run is never trained into otherwise, unless overwrite; ignore: check_run_folder's. Returns
    {"history", "best", "out", "params", "macs", "wall_s"}.
    """
    out = Path(cfg.out)
    ck = check_run_folder(cfg, resume, overwrite, ignore)
    if ck is not None and finished(ck, cfg):
        print(f"{out} is finished (epoch {ck['epoch']}, best PublicTest acc {ck['best']['val_acc']:.4f} "
              f"at epoch {ck['best']['epoch']}); nothing to train")
        return finished_result(cfg, ck["history"], ck["best"], out)
    if cfg.batch_size < 2:
        raise UserError(f"--batch-size {cfg.batch_size}: batch-norm needs at least 2 faces per batch")
    s = setup(cfg)
    if len(s.train[1]) < 2:
        raise UserError(f"the training set has {len(s.train[1])} face(s) (train_fraction {cfg.train_fraction}); "
                        "batch-norm needs at least 2: raise --train-fraction")
    # a fresh model (the run's may be channels_last on a GPU) whose initialization must not draw from the
    # run's random stream: a search trial, which builds none, and `fer train` on its config train alike
    with torch.random.fork_rng(devices=[]):
        params, macs = count_params(s.model), count_macs(create_model(cfg.model, **model_kwargs(cfg)))
    history, best, start = [], {"val_acc": -1.0, "epoch": 0}, 1
    if ck is not None:
        history, best, start = restore(s, ck)
        print(f"resuming {out} after epoch {ck['epoch']} (best val_acc {best['val_acc']:.4f})")
    if cfg.progress:  # what the run will cost, before it starts: measured on this machine, not a constant
        print(describe_plan(s, start), flush=True)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out)
    try:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        t0 = time.time()
        for epoch in range(start, cfg.epochs + 1):
            row = run_epoch(s, epoch)
            history.append(row)
            improved = row["val_acc"] > best["val_acc"]
            if improved:
                best = {"val_acc": row["val_acc"], "val_loss": row["val_loss"], "epoch": epoch}
            ck = checkpoint(s, epoch, history, best)
            save_atomic(ck, out / "last.pt")
            if improved:
                save_atomic(ck, out / "best.pt")
            write_atomic(out / "history.json", json.dumps(history, indent=2))
            print(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                  f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}  "
                  f"{row['time_s']:.0f}s" + ("  *" if improved else ""), flush=True)
            if cfg.patience and epoch - best["epoch"] >= cfg.patience:
                print(f"early stop: no val gain for {cfg.patience} epochs")
                break
    except BaseException:
        if created and not (out / "last.pt").exists():  # failed before its first epoch: leave nothing
            shutil.rmtree(out, ignore_errors=True)
        raise
    return {"history": history, "best": best, "out": str(out), "params": params, "macs": macs,
            "wall_s": time.time() - t0}


def export_checkpoint(src, dst, half: bool = False, **extra) -> Path:
    """A small copy of a checkpoint for sharing: weights and metadata (and `extra` keys), no optimizer
    state; half=True stores the float weights as fp16 (half the size; loading casts them back)."""
    ck = load_checkpoint(src)
    for k in ("optimizer", "scheduler", "rng", "train_state_dict", "ema_n_averaged"):
        ck.pop(k, None)
    if half and not ck.get("int8_scales"):  # int8-stored weights are smaller already
        ck["state_dict"], _ = store_weights(ck["state_dict"], "fp16")
    return save_atomic({**ck, **extra}, Path(dst))


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("--config", help="a profile (configs/profiles/full.yaml: its `train` section), fer tune's "
                   "best_params.json, or a JSON/YAML file of TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue OUT's run from OUT/last.pt, with its config.json")
    p.add_argument("--overwrite", action="store_true", help="replace the run OUT already holds, and the --export file")
    p.add_argument("--export", help="after training, write best.pt without optimizer state here (a new file)")
    p.add_argument("--export-half", action="store_true", help="store the exported weights as fp16")
    add_dataclass_arguments(p, TrainConfig)


def run(args) -> int:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    file = args.config
    if args.resume and not file:  # `fer train --out RUN --resume` continues RUN with its own recipe
        saved = Path(args.out or TrainConfig.out) / "config.json"
        file = str(saved) if saved.is_file() else None
    if file and not Path(file).is_file():
        raise UserError(f"--config {file}: file not found")
    cfg = resolve_config(file, **given)
    if args.export:  # before hours of training, not after
        check_output_path(args.export, "--export", overwrite=args.overwrite,
                          inputs=(cfg.data, cfg.init, cfg.teacher, file, Path(cfg.out) / "best.pt", Path(cfg.out) / "last.pt"))
    last = Path(cfg.out) / "last.pt"

    def kept() -> str:
        return (f"{last} keeps epoch {load_checkpoint(last)['epoch']}; resume with: fer train --out {cfg.out} --resume"
                if last.exists() else "no epoch had finished, nothing was kept")
    try:
        result = fit(cfg, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"fer train: interrupted; {kept()}", file=sys.stderr)
        return 130
    except Diverged as e:  # not the user's typing: exit 1, and nothing exported from it
        good = f"{last} keeps epoch {load_checkpoint(last)['epoch']}, the last good one" if last.exists() else "nothing was kept"
        print(f"fer train: error: {e}; {good}, and nothing was exported", file=sys.stderr)
        return 1
    b = result["best"]
    print(f"best PublicTest acc {b['val_acc']:.4f} at epoch {b['epoch']}; {result['out']}/best.pt "
          f"({result['wall_s'] / 60:.1f} min)")
    if args.export:
        print("exported", export_checkpoint(Path(result["out"]) / "best.pt", args.export, args.export_half))
    return 0
