"""Ingest benchmark: fer_lib's `build_hdf5` against a naive baseline, on the real FER-2013 archive.

    python benchmarks/ingest.py                              # ../shared/fer2013/archive.zip
    python benchmarks/ingest.py path/to/archive.zip --repeat 5 --work /tmp/bench --keep

The naive baseline is what simple study code does: open each JPEG of the zip with
PIL into a Python list, turn the list into a float64 array (N, 48, 48) / 255, and
store it uncompressed with h5py. It is written fairly (per-split lists, in-place
division, no mask copies), so the ratios are not won against a strawman.

Each method runs in its own subprocess; its peak memory is that child's maximum
resident set (os.wait4 rusage, interpreter and imports included), its CPU time
and wall time are those of the ingest call alone (each method's imports are
done before the clock starts). The two methods alternate --repeat times and the
table shows medians: on a busy machine one run's wall time says little, and CPU
time is the steadier number.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "fer2013" / "archive.zip"
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
TARGETS = {"wall_s": 5.0, "file_mb": 6.0, "peak_mb": 3.0}   # naive / ours must reach at least this


def ingest_naive(archive, out) -> None:
    """Per-image PIL loading into lists, float64 arrays / 255, stored uncompressed."""
    import h5py
    import numpy as np
    from PIL import Image
    if archive is None:   # warm-up call: imports only
        return
    splits = {"Training": ([], []), "PublicTest": ([], []), "PrivateTest": ([], [])}
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(zf.namelist()):
            if not name.endswith(".jpg"):
                continue
            emotion, fname = name.split("/")[-2:]
            images, labels = splits[fname.split("_")[0]]
            images.append(np.array(Image.open(io.BytesIO(zf.read(name))).convert("L")))
            labels.append(EMOTIONS.index(emotion))
    with h5py.File(out, "w") as f:
        for usage, (images, labels) in splits.items():
            x = np.array(images, dtype=np.float64)   # (N, 48, 48)
            x /= 255.0
            f.create_dataset(f"{usage}/images", data=x)
            f.create_dataset(f"{usage}/labels", data=np.array(labels))


def ingest_ours(archive, out) -> None:
    from fer_lib.data import build_hdf5
    if archive is None:   # warm-up call: imports only
        return
    build_hdf5(archive, out, force=True, progress=False)


def run_worker(method: str, archive: str, out: str) -> None:
    """In the child: time one ingest, print its numbers as JSON."""
    fn = {"naive": ingest_naive, "ours": ingest_ours}[method]
    fn(None, None)
    wall, cpu = time.perf_counter(), time.process_time()
    fn(archive, out)
    print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}))


def measure(method: str, archive: Path, out: Path) -> dict:
    """Run one method in a fresh interpreter; add its peak RSS (os.wait4) and the file size."""
    proc = subprocess.Popen([sys.executable, __file__, "--worker", method, str(archive), str(out)],
                            stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{method} ingest failed (exit {proc.returncode})")
    res = json.loads(stdout.decode().strip().splitlines()[-1])
    res["peak_mb"] = usage.ru_maxrss / 1024    # Linux reports KiB
    res["file_mb"] = out.stat().st_size / 1e6
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("archive", nargs="?", default=str(DEFAULT_ARCHIVE), help="FER-2013 archive.zip")
    p.add_argument("--work", help="folder for the two HDF5 files (default: a temp folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the HDF5 files")
    p.add_argument("--repeat", type=int, default=3, help="runs of each method (medians are reported)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("out", nargs="?", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.archive, args.out)
        return 0
    archive = Path(args.archive)
    if not archive.exists():
        raise SystemExit(f"archive not found: {archive} (download Kaggle FER-2013 or pass its path)")
    work = Path(args.work or tempfile.mkdtemp(prefix="fer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = {"naive": [], "ours": []}
    for i in range(args.repeat):
        for method in runs:   # alternate, so a burst of load elsewhere hits both
            runs[method].append(measure(method, archive, work / f"{method}.h5"))
            last = ", ".join(f"{k} {v:.2f}" for k, v in runs[method][-1].items())
            print(f"run {i + 1}/{args.repeat} {method}: {last}", flush=True)
    for method in runs:
        if not args.keep:
            (work / f"{method}.h5").unlink()
    if not args.keep and not args.work:
        work.rmdir()
    naive, ours = ({k: statistics.median(r[k] for r in runs[m]) for k in runs[m][0]} for m in ("naive", "ours"))
    print(f"\nmedians of {args.repeat} runs on {archive}")
    print(f"{'':10}{'naive':>10}{'ours':>10}{'naive/ours':>12}{'target':>9}")
    rows = (("wall_s", "wall s"), ("cpu_s", "CPU s"), ("peak_mb", "peak MB"), ("file_mb", "file MB"))
    ok = True
    for key, label in rows:
        ratio = naive[key] / ours[key]
        target = TARGETS.get(key)
        met = "" if target is None else (f">={target:g} " + ("ok" if ratio >= target else "MISSED"))
        ok &= target is None or ratio >= target
        print(f"{label:10}{naive[key]:10.2f}{ours[key]:10.2f}{ratio:11.1f}x  {met}")
    print(json.dumps({"archive": str(archive), "repeat": args.repeat, "runs": runs}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
