"""A labelled face stream: held-out FER-2013 faces played as a clip, with the true label of every
frame, to measure what smoothing buys (fewer label switches) and costs (accuracy, delay).

    fer stream data/fer2013.h5 --split val                          # the live model, every smoother
    fer stream data/fer2013.h5 --checkpoint m.pt --split val --tune # hysteresis grid
    fer stream data/fer2013.h5 --write-video stream.mp4             # the clip itself

    from fer_lib.stream import make_stream, measure_smoothers
    stream = make_stream("data/fer2013.h5", split="val")        # crops (N, 48, 48), labels (N,)
    rows = measure_smoothers(load_model(ckpt), stream)          # one dict per smoother

Each run shows one face of the split, upscaled onto a textured background, for
2-5 s while it drifts, zooms, changes brightness and gets sensor noise; the next
run is another face (possibly of the same class). The measurement skips the
detector: it cuts each frame's face with fer_lib.video.crop_face around a box
jittered like Haar's (side 0.975x the face, as measured on PublicTest) and feeds
the crops to the classifier and then to each smoother as one continuous track.
Tune on "val" (PublicTest); report "test" (PrivateTest) once.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from .data import load_split
from .errors import check_output_path
from .flags import add_dataclass_arguments, check_settings, setting
from .io import write_atomic
from .smoothing import DEFAULT_SMOOTHER, create_smoother, smoother_settings
from .video import VideoError, crop_face

HAAR_BOX_RATIO = 0.975  # median Haar box side / face image side on upscaled PublicTest faces


@dataclass
class StreamConfig:
    n_runs: int = setting(200, low=1)  # runs, one held-out face each
    run_frames: tuple = (48, 120)    # frames per run, uniform (2-5 s at 24 fps)
    fps: float = setting(24.0, above=0.0, high=1000.0)
    frame_size: tuple = (320, 240)   # (W, H)
    face_px: tuple = (110, 170)      # face side on screen, drawn per run
    jitter_px: float = setting(1.5, low=0.0)  # per-frame step of the face's random walk (px)
    scale_jitter: float = setting(0.02, low=0.0)  # per-frame sd of its log size, mean-reverting
    brightness_jitter: float = setting(0.03, low=0.0)  # per-frame sd of the frame gain, mean-reverting around 1
    noise_std: float = setting(4.0, low=0.0)  # sensor noise, grey levels
    box_jitter: float = setting(0.04, low=0.0, high=1.0)  # detector box centre and side noise, fraction of the face side
    crop_margin: float = setting(0.0, low=0.0, high=1.0)  # as fer_lib.video.VideoConfig.crop_margin
    seed: int = setting(0, low=0)

    def __post_init__(self):
        check_settings(self)


@dataclass
class LabelledStream:
    crops: np.ndarray    # (N, 48, 48) uint8, what the pipeline would classify
    labels: np.ndarray   # (N,) true class of every frame
    runs: np.ndarray     # (N,) run index of every frame
    fps: float
    split: str
    config: dict


TARGET = {"switch_cut": 5.0, "accuracy_drop_pts": 1.0, "median_delay": 12.0}  # issue 6's acceptance
# Fewer faces than this and the table cannot judge a smoother (the smoke profile plays 20, the full one 200).
FACES_TO_JUDGE = 100
MIN_REACHED = 0.9  # tuning also asks that 90% of the changes the network sees get shown at all
COMPARISON = {  # display name -> (smoother name, settings); {} keeps the smoother's defaults
    "raw": ("none", {}),
    "moving_average": ("moving_average", {}),
    "ema": ("ema", {}),
    "hysteresis (default)": (DEFAULT_SMOOTHER, {}),
}


def iter_stream(images: np.ndarray, labels: np.ndarray, cfg: StreamConfig):
    """Yield (frame (H, W) uint8, true label, run index, detector-like box (4,) x, y, w, h) per frame."""
    rng = np.random.default_rng(cfg.seed)
    W, H = cfg.frame_size
    order = rng.choice(len(images), size=min(cfg.n_runs, len(images)), replace=False)
    for run, i in enumerate(order):
        bg = cv2.resize(rng.uniform(30, 200, (6, 8)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
        side0 = rng.uniform(*cfg.face_px)
        home = np.array([rng.uniform(side0 / 2, W - side0 / 2), rng.uniform(side0 / 2, H - side0 / 2)])
        pos, log_s, gain = home.copy(), 0.0, 1.0
        for _ in range(rng.integers(cfg.run_frames[0], cfg.run_frames[1] + 1)):
            # Mean-reverting walks: the face wanders, breathes and flickers but stays in the frame.
            pos += rng.normal(0, cfg.jitter_px, 2) + 0.05 * (home - pos)
            log_s = 0.9 * log_s + rng.normal(0, cfg.scale_jitter)
            gain = 1 + 0.9 * (gain - 1) + rng.normal(0, cfg.brightness_jitter)
            side = int(round(min(side0 * np.exp(log_s), H - 2)))
            x0 = int(np.clip(round(pos[0] - side / 2), 0, W - side))
            y0 = int(np.clip(round(pos[1] - side / 2), 0, H - side))
            frame = bg.copy()
            frame[y0:y0 + side, x0:x0 + side] = cv2.resize(images[i], (side, side), interpolation=cv2.INTER_LINEAR)
            frame = np.clip(frame * gain + rng.normal(0, cfg.noise_std, frame.shape), 0, 255).astype(np.uint8)
            b = side * HAAR_BOX_RATIO * np.exp(rng.normal(0, cfg.box_jitter))
            cx, cy = np.array([x0 + side / 2, y0 + side / 2]) + rng.normal(0, cfg.box_jitter * side, 2)
            yield frame, int(labels[i]), run, np.array([cx - b / 2, cy - b / 2, b, b], np.float32)


def make_stream(h5_path, split: str = "val", **kwargs) -> LabelledStream:
    """The stream's face crops and per-frame truth; kwargs are StreamConfig fields."""
    cfg = StreamConfig(**kwargs)
    images, labels = load_split(h5_path, split)
    crops, truth, runs = [], [], []
    for frame, label, run, box in iter_stream(images, labels, cfg):
        crops.append(crop_face(frame, box, cfg.crop_margin))
        truth.append(label), runs.append(run)
    return LabelledStream(np.stack(crops), np.array(truth), np.array(runs), cfg.fps, split, asdict(cfg))


def write_stream_video(path, h5_path, split: str = "val", **kwargs) -> int:
    """Write the stream as an mp4v clip (for the notebook when no video is at hand); returns frames."""
    cfg = StreamConfig(**kwargs)
    images, labels = load_split(h5_path, split)
    n = 0

    def write(tmp):
        nonlocal n
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, tuple(cfg.frame_size))
        if not writer.isOpened():
            raise VideoError(f"{path}: OpenCV cannot write an mp4v video here")
        for frame, *_ in iter_stream(images, labels, cfg):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
            n += 1
        writer.release()
    write_atomic(path, write)
    return n


# ----------------------------------------------------------------------------- measurement

def count_switches(shown) -> int:
    """How often the shown label changes from one frame to the next."""
    shown = np.asarray(shown)
    return int(np.count_nonzero(shown[1:] != shown[:-1]))


def _change_runs(truth: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of the frames after each true label change, up to the next one."""
    starts = np.flatnonzero(truth[1:] != truth[:-1]) + 1
    return list(zip(starts, np.append(starts[1:], len(truth))))


def change_delays(shown, truth) -> tuple[np.ndarray, np.ndarray]:
    """Per true label change: frames until the shown label first equals the new truth (the whole
    run when it never does), and whether it does at all. Two (n_changes,) arrays."""
    shown, truth = np.asarray(shown), np.asarray(truth)
    hits = [np.flatnonzero(shown[s:e] == truth[s]) for s, e in _change_runs(truth)]
    runs = [e - s for s, e in _change_runs(truth)]
    return (np.array([h[0] if len(h) else n for h, n in zip(hits, runs)], float),
            np.array([len(h) > 0 for h in hits], bool))


def recognized_changes(raw, truth) -> np.ndarray:
    """Per true change: does the classifier see the new expression (raw argmax right on most of its
    frames)? Delays are scored on these: no smoother can show what the network never says."""
    raw, truth = np.asarray(raw), np.asarray(truth)
    return np.array([np.mean(raw[s:e] == truth[s]) > 0.5 for s, e in _change_runs(truth)], bool)


def smooth_sequence(probs: np.ndarray, name: str, **kwargs) -> np.ndarray:
    """Shown labels (N,) of one smoother run over per-frame probabilities (N, C) of one track."""
    s = create_smoother(name, **kwargs)
    return np.array([s.update(p)[0] for p in probs], np.int64)


def score_labels(shown, truth, fps: float, recognized=None) -> dict:
    """Per-frame accuracy, label switches per second, and over the `recognized` true changes (default:
    all) the median delay in frames until the new truth is shown and the fraction shown at all."""
    shown, truth = np.asarray(shown), np.asarray(truth)
    delays, reached = change_delays(shown, truth)
    keep = np.ones(len(delays), bool) if recognized is None else np.asarray(recognized, bool)
    return {"accuracy": float(np.mean(shown == truth)),
            "switches_per_s": count_switches(shown) * fps / len(truth),
            "median_delay": float(np.median(delays[keep])) if keep.any() else float("nan"),
            "reached": float(reached[keep].mean()) if keep.any() else float("nan")}


def measure_smoothers(classifier, stream: LabelledStream, smoothers: dict | None = None, probs=None) -> list[dict]:
    """One row per smoother (default COMPARISON), each compared with raw argmax predictions.

    probs (N, C) may be passed to skip the classifier (e.g. when scoring a grid)."""
    probs = classifier.predict_proba(stream.crops) if probs is None else probs
    recognized = recognized_changes(probs.argmax(1), stream.labels)
    raw = score_labels(probs.argmax(1), stream.labels, stream.fps, recognized)
    rows = []
    for label, (name, kw) in (smoothers or COMPARISON).items():
        row = {"smoother": label, "settings": ", ".join(f"{k}={v}" for k, v in
                                                        smoother_settings(create_smoother(name, **kw)).items()),
               **score_labels(smooth_sequence(probs, name, **kw), stream.labels, stream.fps, recognized)}
        sw, raw_sw = row["switches_per_s"], raw["switches_per_s"]
        row["switch_cut"] = raw_sw / sw if sw else (float("inf") if raw_sw else 1.0)
        row["accuracy_drop_pts"] = 100 * (raw["accuracy"] - row["accuracy"])
        row["meets_target"] = bool(row["switch_cut"] >= TARGET["switch_cut"] and row["median_delay"] <= TARGET[
            "median_delay"] and row["accuracy_drop_pts"] <= TARGET["accuracy_drop_pts"])
        rows.append(row)
    return rows


def tune_hysteresis(classifier, stream: LabelledStream, alphas=(0.2, 0.3, 0.4, 0.5, 0.7, 1.0),
                    margins=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), ks=(1, 2, 3, 4, 5, 6, 8), max_drop_pts: float = 0.0,
                    probs=None) -> list[dict]:
    """Score a grid of hysteresis settings on a validation stream; rows best first. First come those
    meeting TARGET, MIN_REACHED and, stricter than TARGET, losing at most `max_drop_pts` of accuracy
    (the rest of the 1-point allowance is left to the val -> test difference); among them the largest
    switch cut wins, then the smallest delay."""
    if stream.split == "test":
        raise ValueError("tune on the 'val' stream; 'test' is for the final report only")
    probs = classifier.predict_proba(stream.crops) if probs is None else probs
    grid = {f"a={a} m={m} k={k}": ("hysteresis", {"alpha": a, "margin": m, "k": k})
            for a, m, k in itertools.product(alphas, margins, ks)}
    rows = measure_smoothers(None, stream, grid, probs=probs)
    for r in rows:
        r["chosen_rule"] = r["meets_target"] and r["reached"] >= MIN_REACHED and r["accuracy_drop_pts"] <= max_drop_pts
    return sorted(rows, key=lambda r: (not r["chosen_rule"], -r["switch_cut"], r["median_delay"],
                                       r["accuracy_drop_pts"]))


TABLE_COLUMNS = ("smoother", "settings", "accuracy", "switches_per_s", "switch_cut", "median_delay", "reached",
                 "accuracy_drop_pts", "meets_target")


def format_table(rows, cols=TABLE_COLUMNS) -> str:
    """Rows as a Markdown table (for the README and the notebook)."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                     ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows])


# ----------------------------------------------------------------------------- notebook 05's figures

def resolve_source(source, h5_path, fallback, **kwargs) -> tuple[str, str]:
    """(source, note): the video file or camera if there, else the labelled stream written as a clip to
    `fallback` (kwargs: StreamConfig fields), so the notebook runs on a fresh clone too."""
    if str(source).isdigit() or Path(source).is_file():
        return str(source), f"source: {source}"
    n = write_stream_video(fallback, h5_path, "val", **kwargs)
    return str(fallback), (f"{source} not found: running on a {n}-frame clip of the labelled face stream "
                           f"(PublicTest faces of {h5_path}) instead")


def shown_sequences(probs, smoothers: dict | None = None) -> dict:
    """{display name: the label each smoother shows per frame} over per-frame probabilities (N, C)."""
    return {label: smooth_sequence(probs, name, **kw) for label, (name, kw) in (smoothers or COMPARISON).items()}


def add_arguments(p) -> None:
    p.add_argument("h5", help="HDF5 from fer preprocess")
    p.add_argument("--checkpoint", help="model to measure (default: the live model)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    add_dataclass_arguments(p, StreamConfig, skip=("run_frames", "frame_size", "face_px"))
    p.add_argument("--tune", action="store_true", help="score the hysteresis grid (val only)")
    p.add_argument("--write-video", help="write the stream as an MP4 instead of measuring (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace the --write-video file if it exists")


def run(args) -> int:
    kw = {f.name: getattr(args, f.name) for f in fields(StreamConfig) if getattr(args, f.name, None) is not None}
    if args.write_video:
        check_output_path(args.write_video, "--write-video", overwrite=args.overwrite, inputs=(args.h5,))
        print(f"{args.write_video}: {write_stream_video(args.write_video, args.h5, args.split, **kw)} frames")
        return 0
    from .models import load_model, resolve_checkpoint
    clf, stream = load_model(resolve_checkpoint(args.checkpoint)), make_stream(args.h5, args.split, **kw)
    print(f"{args.split} stream: {len(stream.labels)} frames, {stream.runs[-1] + 1} runs, "
          f"{len(_change_runs(stream.labels))} label changes")
    if args.tune:
        print(format_table(tune_hysteresis(clf, stream)[:15], cols=(*TABLE_COLUMNS, "chosen_rule")))
    else:
        print(format_table(measure_smoothers(clf, stream)))
    return 0
