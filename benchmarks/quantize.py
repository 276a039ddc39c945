"""int8 inference against float: per-face latency and PublicTest accuracy, for fer quantize's checkpoints.

    python benchmarks/quantize.py                      # the live model (an int8 checkpoint), data/fer2013.h5
    python benchmarks/quantize.py models/vgg_crop44_int8_fer2013.pt [more int8 checkpoints] --data data/fer2013.h5

For each int8 checkpoint and its float original (the file it was quantized from): milliseconds per face
at the live pipeline's batch size (1 and 2 faces, one thread, as `fer video` classifies while its other
thread decodes and detects), the speed-up, and PublicTest accuracy (plain view) of both with their
agreement. PrivateTest is not read: this table may choose the live model. int8 kernels differ a little
between CPU generations; ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2
make a newer CPU run AVX2's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fer_lib.models import LIVE_MODEL  # noqa: E402 (after the path, so that a fresh clone finds fer_lib)


def ms_per_face(clf, faces, batch: int, seconds: float = 3.0) -> float:
    """Median over rounds of predict_proba on `batch` faces, in ms per face."""
    x = faces[:batch]
    clf.predict_proba(x)  # warm-up: first calls pack weights and allocate
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 20:
        t = time.perf_counter()
        clf.predict_proba(x)
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2] / batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", default=[os.path.relpath(ROOT / LIVE_MODEL)],
                   help="int8 checkpoints written by fer quantize (default: the live model)")
    p.add_argument("--data", default="data/fer2013.h5", help="HDF5 of fer preprocess (PublicTest is read)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from fer_lib.data import load_split
    from fer_lib.environment import describe_environment
    from fer_lib.errors import UserError
    from fer_lib.models import load_model
    try:
        faces, labels = load_split(args.data, "val")
        pairs = []
        for path in args.checkpoints:
            q = load_model(path)
            if "quantization" not in q.meta:
                raise UserError(f"{path}: not an int8 checkpoint (fer quantize writes them)")
            pairs.append((path, q.meta["quantization"]["calibration"]["source"], q))
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = describe_environment()
    torch.set_num_threads(1)
    print(f"{env['cpu']} ({', '.join(env['cpu_flags'])}), torch {torch.__version__} with kernels for "
          f"{torch.backends.cpu.get_cpu_capability()}, 1 thread; PublicTest {len(labels)} faces, plain view\n")
    w = max(len(Path(path).name) for path, _, _ in pairs) + len(" (batch 1)")
    head = (f"{'checkpoint':<{w}} {'fp32 ms/face':>12} {'int8 ms/face':>12} {'speed-up':>8}   "
            f"{'fp32 PublicTest':>15} {'int8 PublicTest':>15} {'agree':>6}")
    print(head + "\n" + "-" * len(head))
    rows = []
    for path, src, q in pairs:
        f = load_model(src)
        acc = {}
        pred = {}
        for name, clf in (("fp32", f), ("int8", q)):
            pred[name] = clf.predict_proba(faces).argmax(1)
            acc[name] = float(np.mean(pred[name] == labels))
        for batch in (1, 2):
            t = {name: ms_per_face(clf, faces, batch) for name, clf in (("fp32", f), ("int8", q))}
            row = {"checkpoint": path, "float": src, "batch": batch, "fp32_ms": t["fp32"], "int8_ms": t["int8"],
                   "speedup": t["fp32"] / t["int8"], "fp32_val_acc": acc["fp32"], "int8_val_acc": acc["int8"],
                   "agree": float(np.mean(pred["fp32"] == pred["int8"]))}
            rows.append(row)
            print(f"{Path(path).name + f' (batch {batch})':<{w}} {row['fp32_ms']:>12.2f} {row['int8_ms']:>12.2f} "
                  f"{row['speedup']:>7.2f}x   {100 * acc['fp32']:>14.2f}% {100 * acc['int8']:>14.2f}% "
                  f"{100 * row['agree']:>5.1f}%", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": env["cpu"], "cpu_flags": env["cpu_flags"],
                                               "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                               "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
