"""onnxruntime against torch: parity on FER-2013, faces per second, start-up and Megamind end to end.

    python benchmarks/onnx.py --data data/fer2013.h5 --video ../shared/video/Megamind.avi > reports/benchmarks/onnx.txt

The live model (torch int8, and its float weights) and the ensemble are exported with fer export (float graphs;
the live model's int8 graph is the committed models/vgg_crop44_int8_fer2013.onnx). Parity: argmax agreement and
the largest probability difference on PublicTest, and the accuracy of both on PrivateTest (the same network
twice, so nothing is chosen on it). Speed: faces per second at batch 1, 4 and 256 (--threads threads, median of
rounds), whole-process `fer predict face.jpg` and `fer video` on the clip, with the time to the first frame.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named onnx.py: with its folder first on sys.path, `import onnx` would import it again.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "FER_PROGRESS": "0"}


def faces_per_s(clf, faces, batch: int, seconds: float) -> float:
    x = faces[:batch]
    clf.predict_proba(x, batch)  # warm-up: first calls pack weights and allocate
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t = time.perf_counter()
        clf.predict_proba(x, batch)
        times.append(time.perf_counter() - t)
    return batch / sorted(times)[len(times) // 2]


def wall(cmd, cwd) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{cmd}: {r.stderr[-500:]}")
    return time.perf_counter() - t, r.stdout


FIRST_FRAME = """import sys, time, json
from fer_lib.video import run_pipeline
first = []
r = run_pipeline(sys.argv[1], sys.argv[2] if sys.argv[2] != "-" else None, sys.argv[3], backend=sys.argv[4],
                 on_frame=lambda f: first or first.append(time.time()))
print(json.dumps({"first": first[0], "frames": r["frames"], "fps": r["source_fps"]}))"""


def video_run(source, checkpoint, backend, tmp) -> dict:
    """Whole process: spawn to exit, and spawn to the first annotated frame."""
    import json
    t0 = time.time()
    dt, out = wall([sys.executable, "-c", FIRST_FRAME, str(source), checkpoint or "-", str(Path(tmp) / "o.mp4"),
                    backend], tmp)
    r = json.loads(out.strip().splitlines()[-1])
    return {"wall": dt, "first": r["first"] - t0, "frames": r["frames"], "fps": r["frames"] / dt,
            "realtime": r["frames"] / dt / r["fps"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/fer2013.h5", help="HDF5 of fer preprocess")
    p.add_argument("--video", default="../shared/video/Megamind.avi", help="clip for fer video end to end")
    p.add_argument("--ensemble", default="models/vgg_ensemble_fer2013.pt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="per speed measurement")
    args = p.parse_args(argv)
    # a path of this machine is named by its file name: the output is committed
    print("$ python benchmarks/onnx.py " + shlex.join(Path(a).name if os.path.isabs(a) else a
                                                      for a in (argv if argv is not None else sys.argv[1:])))
    import cv2
    import numpy as np
    import onnxruntime
    import torch

    from fer_lib.assets import LIVE_MODEL, LIVE_ONNX, find_asset
    from fer_lib.data import load_split
    from fer_lib.environment import describe_environment
    from fer_lib.export import export_onnx
    from fer_lib.models import Classifier, load_model
    from fer_lib.runtime import OnnxClassifier
    from fer_lib.synthetic import draw_face
    torch.set_num_threads(args.threads)
    env = describe_environment()
    print(f"{env['cpu']} ({', '.join(env['cpu_flags'])}), {os.cpu_count()} cores, {args.threads} threads; torch "
          f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), onnxruntime {onnxruntime.__version__}; "
          f"load average at start {os.getloadavg()[0]:.1f}: the 2 cores are shared with other developers' jobs, "
          "so absolute speeds are low and noisy; compare within a table.\n")
    tmp = tempfile.mkdtemp(prefix="fer_onnx_bench_")
    val, val_y = load_split(args.data, "val")
    test, test_y = load_split(args.data, "test")
    live = load_model(find_asset(LIVE_MODEL))
    live_float = Classifier(live.float_model, live.mean, live.std, live.class_names)
    export_onnx(find_asset(LIVE_MODEL), Path(tmp) / "live_fp32.onnx")
    export_onnx(args.ensemble, Path(tmp) / "ens_fp32.onnx")
    ort = {name: OnnxClassifier(path, args.threads) for name, path in
           (("fp32", Path(tmp) / "live_fp32.onnx"), ("int8", find_asset(LIVE_ONNX)), ("ens", Path(tmp) / "ens_fp32.onnx"))}
    pairs = [("live, float weights", live_float, "onnxruntime fp32", ort["fp32"]),
             ("live, torch int8", live, "onnxruntime int8", ort["int8"]),
             ("live, float weights", live_float, "onnxruntime int8", ort["int8"]),
             (f"ensemble ({Path(args.ensemble).name})", load_model(args.ensemble), "onnxruntime fp32", ort["ens"])]
    head = (f"{'torch model':<36} {'ONNX model':<17} {'PublicTest agree':>16} {'max |dp|':>9} "
            f"{'PrivateTest torch':>17} {'ONNX':>7} {'diff':>6}")
    print("Parity (argmax agreement and largest probability difference on PublicTest's 3589 faces; PrivateTest "
          "accuracy of both, plain view)\n" + head + "\n" + "-" * len(head))
    for tname, tclf, oname, oclf in pairs:
        a, b = tclf.predict_proba(val, 256), oclf.predict_proba(val, 256)
        ta, oa = (100 * np.mean(c.predict_proba(test, 256).argmax(1) == test_y) for c in (tclf, oclf))
        print(f"{tname:<36} {oname:<17} {100 * np.mean(a.argmax(1) == b.argmax(1)):>15.2f}% {np.abs(a - b).max():>9.1e} "
              f"{ta:>16.2f}% {oa:>6.2f}% {oa - ta:>+6.2f}", flush=True)

    print(f"\nFaces per second (live model, {args.threads} threads, median of rounds over {args.seconds:.0f} s)")
    head = f"{'backend':<28} {'batch 1':>8} {'batch 4':>8} {'batch 256':>10}"
    print(head + "\n" + "-" * len(head))
    for name, clf in (("torch eager fp32", live_float), ("torch int8 (fer quantize)", live),
                      ("onnxruntime fp32", ort["fp32"]), ("onnxruntime int8 (QDQ)", ort["int8"])):
        print(f"{name:<28} " + " ".join(f"{faces_per_s(clf, val, b, args.seconds):>{w}.0f}"
                                        for b, w in ((1, 8), (4, 8), (256, 10))), flush=True)

    img = np.full((320, 480), 110, np.uint8)
    img[80:220, 200:340] = cv2.resize(draw_face(3, np.random.default_rng(0)), (140, 140), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(Path(tmp) / "face.jpg"), img)
    print("\nStart-up, whole process (wall seconds, best of 3)")
    fer = [sys.executable, "-m", "fer_lib.cli"]
    for label, cmd in (("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
                       ("python -c 'import onnxruntime'", [sys.executable, "-c", "import onnxruntime"]),
                       ("fer predict --help", fer + ["predict", "--help"]),
                       ("fer predict face.jpg --backend torch", fer + ["predict", "face.jpg", "--backend", "torch",
                                                                       "--out", "p", "--overwrite"]),
                       ("fer predict face.jpg --backend onnx", fer + ["predict", "face.jpg", "--backend", "onnx",
                                                                      "--out", "p", "--overwrite"])):
        print(f"{label:<40} {min(wall(cmd, tmp)[0] for _ in range(3)):>6.2f} s", flush=True)

    if Path(args.video).is_file():
        print(f"\nfer video on {Path(args.video).name}, whole process (live model; decode and detect in their own thread)")
        head = f"{'backend':<10} {'frames':>6} {'wall s':>7} {'fps':>6} {'x real time':>11} {'first frame s':>13}"
        print(head + "\n" + "-" * len(head))
        for backend in ("torch", "onnx"):
            r = video_run(Path(args.video).resolve(), None, backend, tmp)
            print(f"{backend:<10} {r['frames']:>6} {r['wall']:>7.1f} {r['fps']:>6.1f} {r['realtime']:>10.2f}x "
                  f"{r['first']:>13.2f}", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
