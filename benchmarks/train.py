"""Training throughput: our engine against a plain fp32 loop, same model, same data, same run.

    python benchmarks/train.py                                   # vgg_small, 2048 faces of data/fer2013.h5
    python benchmarks/train.py --data data/fer2013.h5 --model baseline --images 4096 --steps 16

"engine" is fer_lib.train.train_one_epoch as `fer train` runs it: uint8 faces in memory,
batched augmentation on the whole batch (affine crop/shift/rotate/flip + erasing),
channels_last, and the precision pick_device() chooses (bf16 autocast only on CPUs with
native bf16, mixed precision on CUDA). "plain" is the original study's way: a torch
DataLoader (num_workers=0) over a Dataset that transforms one face at a time like
torchvision would (PIL: pad 4 + random 48x48 crop, random horizontal flip, to float,
normalize), contiguous NCHW tensors, fp32, no autocast. Both train the same architecture
from the same initial weights with the same optimizer and loss; the two are measured in
alternating rounds so that background load hits both alike. The first step of each round
(oneDNN primitive creation) is not timed.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from fer_lib.data import load_split, read_info
from fer_lib.models import count_train_flops, create_model
from fer_lib.train import augment_batch, build_optimizer, pick_device, resolve_config, train_one_epoch

ROOT = Path(__file__).resolve().parents[1]


class PerFaceDataset(Dataset):
    """One face at a time through PIL, as torchvision's RandomCrop(48, padding=4),
    RandomHorizontalFlip, ToTensor and Normalize do it: returns ((1, 48, 48) float32, label)."""

    def __init__(self, images, labels, mean, std, rng):
        self.images, self.labels, self.mean, self.std, self.rng = images, labels, mean, std, rng

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = ImageOps.expand(Image.fromarray(self.images[i]), border=4, fill=0)   # 56x56
        x0, y0 = self.rng.integers(0, 9, 2)
        img = img.crop((x0, y0, x0 + 48, y0 + 48))
        if self.rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = (np.asarray(img, np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(x)[None], int(self.labels[i])


def train_plain(model, optimizer, loader, cfg) -> None:
    """The original study's loop: NCHW fp32 batches straight from the DataLoader."""
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def time_it(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_gflops(dtype, n: int = 2048, reps: int = 8) -> float:
    """The chip's practical peak in the engine's precision: GFLOP/s of an n x n matrix product (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b   # untimed: oneDNN picks its kernel
    return reps * 2 * n ** 3 / time_it(lambda: [a @ b for _ in range(reps)]) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.relpath(ROOT / "data" / "fer2013.h5"), help="HDF5 from `fer preprocess`")
    p.add_argument("--model", default="vgg_small")
    p.add_argument("--images", type=int, default=2048, help="Training faces to load (a seeded random subset)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per method and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating engine/plain rounds")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    cfg = resolve_config(data=args.data, model=args.model, batch_size=args.batch_size, scheduler="none",
                         progress=False, seed=args.seed)   # engine defaults: augment 1.0, flip, erase 0.25
    device, amp_dtype = pick_device(cfg)
    if device.type != "cpu":
        raise SystemExit("the plain loop is the CPU study's; run this benchmark on a CPU machine")
    info = read_info(args.data)
    images, labels = load_split(args.data, "train")
    pick = np.random.default_rng(args.seed).permutation(len(images))[:args.images]
    images, labels = images[pick], labels[pick]
    n = (args.steps + 1) * args.batch_size   # +1: the untimed first step
    if len(images) < n:
        raise SystemExit(f"--images {len(images)} < (steps + 1) * batch size = {n}")

    torch.manual_seed(args.seed)
    init = create_model(args.model).state_dict()
    engine_model = create_model(args.model)
    engine_model.load_state_dict(init)
    engine_model = engine_model.to(memory_format=torch.channels_last)
    plain_model = create_model(args.model)
    plain_model.load_state_dict(init)
    engine_opt = build_optimizer(cfg, engine_model.parameters())
    plain_opt = build_optimizer(cfg, plain_model.parameters())
    x_u8, y = torch.from_numpy(images), torch.from_numpy(labels)
    dataset = PerFaceDataset(images, labels, info["mean"], info["std"], np.random.default_rng(args.seed))

    def engine(k):   # k steps of the engine on a fresh slice of faces
        idx = torch.randperm(len(x_u8))[:k * args.batch_size]
        train_one_epoch(engine_model, engine_opt, None, x_u8[idx], y[idx], cfg, info["mean"], info["std"],
                        device, amp_dtype)

    def plain(k):
        sub = torch.utils.data.Subset(dataset, torch.randperm(len(dataset))[:k * args.batch_size].tolist())
        train_plain(plain_model, plain_opt, DataLoader(sub, batch_size=args.batch_size, shuffle=True,
                                                       num_workers=0, drop_last=True), cfg)

    load_before = os.getloadavg()[0]
    seconds = {"engine": 0.0, "plain": 0.0}
    for r in range(args.rounds):
        for name, fn in (("engine", engine), ("plain", plain)):
            fn(1)                                              # untimed: oneDNN primitives, allocator
            dt = time_it(lambda: fn(args.steps))
            seconds[name] += dt
            print(f"round {r + 1}/{args.rounds} {name:6s} {args.steps * args.batch_size / dt:7.1f} img/s", flush=True)

    # the input pipelines alone, per batch: batched augmentation vs per-face PIL + collate
    batch = ((x_u8[:args.batch_size].float().unsqueeze(1) / 255.0 - info["mean"]) / info["std"])
    aug_s = time_it(lambda: [augment_batch(batch, cfg.augment, cfg.flip, cfg.erase) for _ in range(args.steps)])
    loader = DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=args.batch_size, num_workers=0)
    load_s = time_it(lambda: [b for b, _ in zip(loader, range(args.steps))])

    imgs = args.rounds * args.steps * args.batch_size
    rate = {k: imgs / v for k, v in seconds.items()}
    prec = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[amp_dtype]
    print(f"\n{args.model} on {len(images)} faces of {args.data}{' (SYNTHETIC)' if info['synthetic'] else ''}; "
          f"batch {args.batch_size}, {args.rounds} x {args.steps} timed steps per method")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          "(other processes slow both methods alike)")
    print("\n| method | pipeline | memory format | precision | train img/s | input pipeline alone img/s |")
    print("|---|---|---|---|---:|---:|")
    print(f"| engine | batched augment_batch | channels_last | {prec} | {rate['engine']:.1f} | "
          f"{args.steps * args.batch_size / aug_s:.0f} |")
    print(f"| plain | DataLoader, per-face PIL | NCHW | fp32 | {rate['plain']:.1f} | "
          f"{args.steps * args.batch_size / load_s:.0f} |")
    ratio = rate["engine"] / rate["plain"]
    print(f"\nengine / plain = {ratio:.2f}x  (target >= 2x: {'met' if ratio >= 2 else 'NOT met'})")

    # how near the chip's limit the engine is: its FLOPs per face (forward and backward, FlopCounterMode) at its
    # rate, against a matrix product in the same precision timed now
    flops = count_train_flops(create_model(args.model))
    peak = matmul_gflops(amp_dtype or torch.float32)
    gflops = flops * rate["engine"] / 1e9
    print(f"\n| training FLOPs per face | engine GFLOP/s | {'bf16' if amp_dtype else 'fp32'} 2048x2048 matmul GFLOP/s "
          "| engine / matmul |")
    print("|---:|---:|---:|---:|")
    print(f"| {flops / 1e9:.3f} G | {gflops:.0f} | {peak:.0f} | {gflops / peak:.2f} |")


if __name__ == "__main__":
    main()
