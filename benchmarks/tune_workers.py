"""How a search should use the cores: one worker with all threads, or one single-thread worker per core.

    python benchmarks/tune_workers.py                        # vgg_small, 2048 faces of data/fer2013.h5
    python benchmarks/tune_workers.py --data data/fer2013.h5 --model vgg_small --steps 8 --rounds 2

Each layout trains the engine (fer_lib.train.train_one_epoch, as a trial does) in fresh processes:
"threads" is one process with --cores threads; "workers" is --cores processes at one thread each,
started together, as `fer tune --worker i --threads 1` runs them. The layouts alternate, so that
background load hits both alike. A trial's cost is the faces it trains, so the search's speed is
faces per second over all its workers; what one trial waits for is its own worker's rate.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args) -> None:
    """One worker: print its training rate (faces/s) as JSON, after one untimed step."""
    import numpy as np
    import torch

    from fer_lib.data import load_split, read_info
    from fer_lib.models import create_model
    from fer_lib.train import build_optimizer, pick_device, resolve_config, train_one_epoch

    torch.set_num_threads(args.threads)
    cfg = resolve_config(data=args.data, model=args.model, batch_size=args.batch_size, scheduler="none",
                         progress=False, seed=args.seed)
    device, amp_dtype = pick_device(cfg)
    info = read_info(args.data)
    images, labels = load_split(args.data, "train")
    pick = np.random.default_rng(args.seed).permutation(len(images))[:(args.steps + 1) * args.batch_size]
    x, y = torch.from_numpy(images[pick]), torch.from_numpy(labels[pick])
    torch.manual_seed(args.seed)
    model = create_model(args.model).to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model.parameters())

    def steps(lo, hi):
        sl = slice(lo * args.batch_size, hi * args.batch_size)
        train_one_epoch(model, opt, None, x[sl], y[sl], cfg, info["mean"], info["std"], device, amp_dtype)

    steps(0, 1)  # oneDNN primitives, allocator
    t0 = time.perf_counter()
    steps(1, args.steps + 1)
    print(json.dumps({"rate": args.steps * args.batch_size / (time.perf_counter() - t0)}))


def run_layout(args, processes: int, threads: int) -> list[float]:
    """Start `processes` workers of `threads` threads together; their rates in faces/s."""
    cmd = [sys.executable, __file__, "--child", "--threads", str(threads), "--data", args.data, "--model", args.model,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--seed", str(args.seed)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed: {outs}")
    return [json.loads(o.strip().splitlines()[-1])["rate"] for o in outs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.relpath(ROOT / "data" / "fer2013.h5"), help="HDF5 from `fer preprocess`")
    p.add_argument("--model", default="vgg_small")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per worker and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two layouts")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores to share out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from fer_lib.environment import describe_environment
    env = describe_environment()
    load_before = os.getloadavg()[0]
    layouts = {"threads": (1, args.cores), "workers": (args.cores, 1)}
    rates = {k: [] for k in layouts}
    for r in range(args.rounds):
        for name, (procs, threads) in layouts.items():
            rates[name].append(run_layout(args, procs, threads))
            print(f"round {r + 1}/{args.rounds} {name:7s} " + " ".join(f"{v:6.1f}" for v in rates[name][-1])
                  + " faces/s", flush=True)

    def best(name):  # the best round: the one least disturbed by other load
        return max(rates[name], key=sum)
    print(f"\n{args.model}, batch {args.batch_size}, {args.steps} timed steps per worker, {args.rounds} rounds; "
          f"{args.cores} cores of a {env['cpu']} ({', '.join(env['cpu_flags']) or platform.machine()}); "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("\n| layout | processes x threads | one trial's rate, faces/s | the search's rate, faces/s |")
    print("|---|---|---:|---:|")
    for name, (procs, threads) in layouts.items():
        b = best(name)
        print(f"| {name} | {procs} x {threads} | {min(b):.1f} | {sum(b):.1f} |")
    ratio = sum(best("workers")) / sum(best("threads"))
    pick = "workers" if ratio > 1 else "threads"
    print(f"\nworkers / threads = {ratio:.2f}x in faces per second over the search: use {pick} "
          f"({'fer tune --worker i --threads 1, one per core' if pick == 'workers' else 'one fer tune, all threads'})")


if __name__ == "__main__":
    main()
