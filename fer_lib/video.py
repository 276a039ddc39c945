"""Emotion overlay on a video file or a webcam: detect, track, classify, smooth, draw.

    fer video --source ../shared/video/Megamind.avi --out out.mp4      # the live model (models.LIVE_MODEL)
    fer video --source 0 --out webcam.mp4 --end 30 --show              # --show: desktop OpenCV only
    fer video --source clip.mp4 --checkpoint m.pt --out o.mp4 --log frames.csv --gif o.gif --bars
                                                  # frames.csv, one row per face per frame, and frames_tracks.csv
    fer video ... --smoother ema --alpha 0.3 --detector yunet --yunet-model face_detection_yunet_2023mar.onnx

    from fer_lib.video import run_pipeline, show_in_notebook
    result = run_pipeline("clip.mp4", out="out.mp4")  # dict: frames, fps, stage_s, records, track_summary, ...
    show_in_notebook(0, seconds=20)                   # the webcam overlay inside a notebook cell

Faces are found by OpenCV's Haar cascade (or YuNet, given its ONNX file; it is
never downloaded) on a downscaled frame every `detect_every` frames; greedy IoU
matching carries each face's track, id and own smoother in between. Every frame
all tracked faces are cropped, preprocessed as in training (grayscale, 48x48
INTER_AREA, the checkpoint's normalization) and classified in one batch.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from .errors import UserError, check_output_path, same_path
from .flags import add_dataclass_arguments, check_settings, setting
from .io import write_atomic
from .progress import bar as progress_bar
from .runtime import LIVE_MODEL, choose_backend, load_classifier, resolve_model_file
from .smoothing import DEFAULT_SMOOTHER, create_smoother, list_smoothers
from .tracking import Tracker

log = logging.getLogger(__name__)

HAAR_FILE = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
WINDOW = "fer video (q quits)"
STAGES = ("decode", "detect", "classify", "draw", "encode")
COLUMNS = ("frame", "time_s", "track_id", "x", "y", "w", "h", *(f"p_{c}" for c in range(7)),
           *(f"s_{c}" for c in range(7)), "label", "label_name", "confidence")  # the CSV log, one row per face
COLORS_BGR = [(40, 40, 230), (40, 140, 40), (160, 60, 160), (40, 210, 250), (200, 120, 40), (250, 200, 60),
              (200, 200, 200)]  # per class, in class order


class VideoError(UserError):
    """A source, model file or output that cannot be used; the message names it."""


@dataclasses.dataclass
class VideoConfig:
    start: float = setting(0.0, low=0.0)  # seconds into a file to begin (ignored for a camera)
    end: float | None = setting(None, above=0.0)  # seconds to stop at (for a camera: seconds to record)
    log: str | None = None        # per-face per-frame CSV
    gif: str | None = None        # also write a small GIF here
    gif_every: int = setting(3, low=1)  # GIF keeps every n-th frame ...
    gif_width: int = setting(320, low=16, high=4096)  # ... downscaled to this width
    smoother: str = setting(DEFAULT_SMOOTHER, choices=tuple(list_smoothers()))  # none | moving_average | ema | hysteresis
    window: int | None = setting(None, low=1)  # moving_average frames (None: the smoother's default)
    alpha: float | None = setting(None, above=0.0, high=1.0)  # ema / hysteresis weight of the newest frame
    margin: float | None = setting(None, low=0.0, high=1.0)  # hysteresis: lead a new label needs ...
    k: int | None = setting(None, low=1)  # ... for this many consecutive frames
    detector: str = setting("haar", choices=("haar", "yunet"))  # haar | yunet
    yunet_model: str | None = None  # face_detection_yunet_*.onnx, needed for --detector yunet
    scale_factor: float = setting(1.1, above=1.0, high=2.0)  # Haar pyramid step
    min_neighbors: int = setting(5, low=0)  # Haar: overlapping hits a face needs (higher: fewer false faces)
    min_size: int = setting(60, low=1)  # smallest face side, full-frame pixels (smaller: slower)
    detect_scale: float = setting(0.5, above=0.0, high=4.0)  # detect on the frame resized by this factor
    detect_every: int = setting(3, low=1)  # detect on every k-th frame; tracks carry boxes in between
    iou: float = setting(0.3, above=0.0, high=1.0)  # a detection continues a track when their IoU is at least this
    max_missed: int = setting(3, low=0)  # a track ends after this many detection passes without its face
    # Haar's box on FER-2013 faces placed in a frame has a median side of 0.975x the face image
    # (measured on PublicTest), so the cascade's box already frames a face as the dataset does.
    crop_margin: float = setting(0.0, low=0.0, high=1.0)  # grow the box by this fraction of its side on each edge
    batch: bool = True            # all faces of a frame in one batch (--one-by-one: the original study's way)
    sequential: bool = False      # decode and detect in the main thread too (default: a thread of their own)
    threads: int = setting(1, low=1)  # torch threads for classifying a few faces (more only add overhead)
    backend: str = setting("auto", choices=("auto", "torch", "onnx"))  # auto: onnxruntime for .onnx and the live model
    bars: bool = False            # draw the smoothed probabilities beside each face
    show: bool = False            # open a window (desktop OpenCV only); q quits
    progress: bool = False        # tqdm bar over frames

    def __post_init__(self):
        check_settings(self)


def open_source(source):
    """(cv2.VideoCapture, is_camera) for a camera index like "0" or a video file; VideoError otherwise."""
    s = str(source)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our message replaces OpenCV's warnings
    try:
        if s.isdigit():
            cap = cv2.VideoCapture(int(s))
            if not cap.isOpened():
                raise VideoError(f"camera index {s} is not available (no such camera, or it is in use)")
            return cap, True
        if not Path(s).is_file():
            raise VideoError(f"{s}: no such video file")
        cap = cv2.VideoCapture(s)
        if not cap.isOpened() or cap.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0:
            cap.release()
            raise VideoError(f"{s}: not a readable video (OpenCV cannot decode it)")
        return cap, False
    finally:
        cv2.utils.logging.setLogLevel(level)


def create_detector(kind="haar", scale=0.5, scale_factor=1.1, min_neighbors=5, min_size=60, yunet_model=None):
    """detect(frame_bgr, gray) -> boxes (N, 4) float32 x, y, w, h in full-frame pixels."""
    def shrink(img):
        return img if scale == 1 else cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if kind == "haar":
        cascade = cv2.CascadeClassifier(HAAR_FILE)
        if cascade.empty():
            raise VideoError(f"{HAAR_FILE}: Haar cascade could not be loaded")
        side = max(1, round(min_size * scale))

        def detect(frame, gray):
            boxes = cascade.detectMultiScale(shrink(gray), scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                             minSize=(side, side))
            return np.asarray(boxes, np.float32).reshape(-1, 4) / scale
        return detect
    if kind == "yunet":
        if not yunet_model or not Path(yunet_model).is_file():
            raise VideoError(f"--detector yunet needs --yunet-model FILE, the ONNX from OpenCV's model zoo "
                             f"(not downloaded for you); got {yunet_model!r}")
        net = cv2.FaceDetectorYN.create(str(yunet_model), "", (320, 320), 0.7)

        def detect(frame, gray):
            small = shrink(frame)
            net.setInputSize((small.shape[1], small.shape[0]))
            faces = net.detect(small)[1]  # (N, 15): box, 5 landmarks, score; None when no face
            boxes = np.asarray(np.zeros((0, 15)) if faces is None else faces, np.float32)[:, :4]
            return boxes[boxes[:, 2] >= min_size * scale] / scale
        return detect
    raise VideoError(f"unknown detector {kind!r}; choose haar or yunet")


def crop_face(gray: np.ndarray, box, margin: float = 0.0, size: int = 48) -> np.ndarray:
    """Square crop around box (x, y, w, h) grown by `margin` per edge, edges replicated past the
    frame, resized like the training data: (size, size) uint8 with INTER_AREA."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1 + 2 * margin)
    x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    x1, y1 = x0 + max(1, int(round(side))), y0 + max(1, int(round(side)))
    H, W = gray.shape
    crop = gray[max(y0, 0):max(min(y1, H), 0), max(x0, 0):max(min(x1, W), 0)]
    if crop.size == 0:
        return np.zeros((size, size), np.uint8)
    pads = (max(0, -y0), max(0, y1 - H), max(0, -x0), max(0, x1 - W))
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_REPLICATE)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def draw_face_label(frame, track_id, box, label, confidence, proba, class_names, bars=False) -> None:
    """Box, '#id Label 0.87' above it, and optionally one bar per class to its right (in place)."""
    x, y, w, h = (int(round(v)) for v in box)
    color = COLORS_BGR[label % len(COLORS_BGR)]
    cv2.rectangle(frame, (x, y), (x + w, y + h), color, 2)
    text = f"#{track_id} {class_names[label]} {confidence:.2f}"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    ty = max(th + 4, y - 4)
    cv2.rectangle(frame, (x, ty - th - 4), (x + tw + 4, ty + 2), color, -1)
    cv2.putText(frame, text, (x + 2, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if bars:
        for c, p in enumerate(proba):
            by = y + c * 13
            cv2.rectangle(frame, (x + w + 30, by), (x + w + 30 + int(60 * p), by + 10),
                          COLORS_BGR[c % len(COLORS_BGR)], -1)
            cv2.putText(frame, class_names[c][:3], (x + w + 4, by + 9), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                        (255, 255, 255), 1, cv2.LINE_AA)


class _StageClock:
    """Wall and CPU seconds per stage, booked by lap(stage) since the previous lap or skip().
    CPU is the calling thread's (torch and OpenCV helper threads are counted in the total only)."""

    def __init__(self):
        self.wall, self.cpu = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
        self.skip()

    def skip(self) -> None:
        self._w, self._c = time.perf_counter(), time.thread_time()

    def lap(self, stage: str) -> None:
        w, c = self._w, self._c
        self.skip()
        self.wall[stage] += self._w - w
        self.cpu[stage] += self._c - c


def _decode_detect(cap, detect, every: int, clock):
    """Yield (frame BGR, gray, boxes (N, 4) on every `every`-th frame, else None) until the video ends."""
    clock.skip()  # CPU time is per thread: start in the one that runs us
    for n in itertools.count():
        ok, frame = cap.read()
        clock.lap("decode")
        if not ok:
            return
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        boxes = detect(frame, gray) if n % every == 0 else None
        clock.lap("detect")
        yield frame, gray, boxes
        clock.skip()  # the consumer's time is not ours


def _ahead(items, size: int = 8):
    """Iterate `items` in a worker thread, up to `size` items ahead: on two cores, decoding and
    detecting the next frames overlaps classifying, drawing and encoding this one."""
    with ThreadPoolExecutor(1) as pool:  # one worker: the next() calls run in order
        pending = deque(pool.submit(next, items, None) for _ in range(size))
        try:
            while (item := pending.popleft().result()) is not None:
                pending.append(pool.submit(next, items, None))
                yield item
        finally:
            for f in pending:
                f.cancel()


def classify_faces(clf, gray: np.ndarray, boxes, margin: float = 0.0, batch: bool = True):
    """Probabilities (F, C) for the faces at boxes: one forward pass, or one per face (batch=False)."""
    crops = np.stack([crop_face(gray, b, margin) for b in boxes])  # (F, 48, 48) uint8
    return clf.predict_proba(crops) if batch else np.concatenate([clf.predict_proba(c) for c in crops])


def run_pipeline(source, checkpoint=None, out="out.mp4", on_frame=None, interruptible=False, overwrite: bool = True,
                 **kwargs) -> dict:
    """Overlay smoothed emotion labels on `source` (file or camera index), writing `out` (mp4v; None:
    no video file). checkpoint: a path, a Classifier, or None for the live model (LIVE_MODEL).

    on_frame(frame_bgr), if given, sees every annotated frame; with interruptible, Ctrl-C (or a notebook's
    interrupt) ends the clip there and returns what was made. kwargs are VideoConfig fields (None keeps the
    default). overwrite=False refuses an output file that exists (`fer video` without --overwrite); no output
    may be the source or the checkpoint. A clip that ends before its stated length is logged as a warning
    with the frame it stopped at. Returns a dict: frames, fps, wall_s, cpu_s, stage_s, stage_cpu_s, records (one per face per
    frame, the CSV rows), track_summary, clip_summary, tracks, no_faces, out, log, tracks_csv, gif, ...
    """
    cfg = VideoConfig(**{k: v for k, v in kwargs.items() if v is not None})
    given = hasattr(checkpoint, "predict_proba")  # a Classifier or OnnxClassifier
    if not given:
        try:
            backend = choose_backend(checkpoint, cfg.backend)
            checkpoint = resolve_model_file(checkpoint, backend)
        except UserError as e:
            raise VideoError(str(e)) from None
    tracks_csv = tracks_csv_path(cfg.log) if cfg.log else None
    outputs = [(p, flag) for p, flag in ((out, "--out"), (cfg.log, "--log"), (tracks_csv, "--log"), (cfg.gif, "--gif")) if p]
    inputs = (None if str(source).isdigit() else source, None if given else checkpoint)
    for i, (path, flag) in enumerate(outputs):  # before any frame is read
        check_output_path(path, flag, overwrite=overwrite, inputs=inputs)
        for other, other_flag in outputs[:i]:
            if same_path(path, other):
                raise UserError(f"{flag} {path}: is also the {other_flag} output; give each output its own file")
    clf = checkpoint if given else load_classifier(checkpoint, backend, cfg.threads)
    smoother_args = {k: getattr(cfg, k) for k in ("window", "alpha", "margin", "k")}
    create_smoother(cfg.smoother, **smoother_args)  # a bad name or setting fails before any video work
    detect = create_detector(cfg.detector, cfg.detect_scale, cfg.scale_factor, cfg.min_neighbors, cfg.min_size,
                             cfg.yunet_model)
    tracker = Tracker(lambda: create_smoother(cfg.smoother, **smoother_args), cfg.iou, cfg.max_missed)
    if cfg.show:
        try:
            cv2.namedWindow(WINDOW)
        except cv2.error:
            raise VideoError("--show needs a desktop OpenCV build: pip uninstall opencv-python-headless && "
                             "pip install 'opencv-python>=4.8,<5' (in a notebook: fer_lib.video.show_in_notebook)"
                             ) from None
    cap, is_camera = open_source(source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0  # cameras may report 0
    first = 0 if is_camera else int(round(cfg.start * fps))
    if first:
        cap.set(cv2.CAP_PROP_POS_FRAMES, first)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    gif_size = (cfg.gif_width, round(size[1] * cfg.gif_width / size[0]))
    records, gif_frames, n = [], [], 0
    stopped, truncated = False, []  # stopped by --end, q or an interrupt; truncated: the frame the file ended at
    clock, in_clock = _StageClock(), _StageClock()  # this thread's stages; decode + detect's
    t0, c0 = time.perf_counter(), time.process_time()

    def encode(tmp):
        nonlocal n, stopped
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size) if tmp else None
        if writer is not None and not writer.isOpened():
            raise VideoError(f"{out}: OpenCV cannot write an mp4v video here")
        frames = _decode_detect(cap, detect, cfg.detect_every, in_clock)
        frames = frames if cfg.sequential else _ahead(frames)
        bar = progress_bar(total=None if is_camera else int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) - first,
                           desc="video", leave=False, mininterval=1, disable=not cfg.progress)
        try:
            for frame, gray, boxes in frames:
                clock.skip()
                t_s = time.perf_counter() - t0 if is_camera else (first + n) / fps
                if cfg.end is not None and t_s >= cfg.end:
                    stopped = True
                    break
                tracks = tracker.update(boxes) if boxes is not None else tracker.visible()
                clock.lap("detect")
                shown = []
                if tracks:
                    probs = classify_faces(clf, gray, [t.box for t in tracks], cfg.crop_margin, cfg.batch)
                    for t, p in zip(tracks, probs):
                        label, conf, smoothed = t.smoother.update(p)
                        shown.append((t, label, conf, smoothed))
                        records.append(dict(zip(COLUMNS, (
                            first + n, round(t_s, 4), t.id, *map(int, np.round(t.box)), *map(float, p),
                            *map(float, smoothed), label, clf.class_names[label], conf))))
                clock.lap("classify")
                for t, label, conf, smoothed in shown:
                    draw_face_label(frame, t.id, t.box, label, conf, smoothed, clf.class_names, cfg.bars)
                clock.lap("draw")
                if on_frame is not None:
                    on_frame(frame)
                if writer is not None:
                    writer.write(frame)
                if cfg.gif and n % cfg.gif_every == 0:
                    gif_frames.append(cv2.cvtColor(cv2.resize(frame, gif_size, interpolation=cv2.INTER_AREA),
                                                   cv2.COLOR_BGR2RGB))
                if cfg.show:
                    cv2.imshow(WINDOW, frame)
                    if cv2.waitKey(1) & 0xFF == ord("q"):
                        stopped = True
                        break
                clock.lap("encode")
                n += 1
                bar.update()
        except KeyboardInterrupt:
            if not interruptible or n == 0:
                raise
            stopped = True
            records[:] = [r for r in records if r["frame"] < first + n]  # the interrupted frame was not kept
        finally:
            frames.close()  # stops the decoding thread before the capture is released
            bar.close()
            clock.skip()
            if writer is not None:
                writer.release()
            clock.lap("encode")
        if n == 0:
            raise VideoError(f"{source}: no frame could be read" + (f" at {cfg.start} s" if first else ""))
        expected = 0 if is_camera else int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if not stopped and expected and first + n < expected - 1:  # containers may count one frame more
            log.warning("%s: the clip stopped at frame %d of %d: the rest could not be decoded (a truncated or "
                        "damaged file); the outputs hold the frames read", source, first + n, expected)
            truncated.append(first + n)
    torch = sys.modules.get("torch")  # loaded by a torch Classifier; the onnxruntime path never imports it
    threads = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(cfg.threads)
    try:
        write_atomic(out, encode) if out else encode(None)
    finally:
        if torch:
            torch.set_num_threads(threads)
        cap.release()
        if cfg.show:
            cv2.destroyAllWindows()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    summary, clip = track_summary(records, clf.class_names)
    if cfg.log:
        import pandas as pd
        write_atomic(cfg.log, lambda tmp: pd.DataFrame(records, columns=COLUMNS).to_csv(tmp, index=False))
        write_atomic(tracks_csv, lambda tmp: pd.DataFrame(summary, columns=track_columns(clf.class_names))
                     .to_csv(tmp, index=False))
    if cfg.gif:
        from PIL import Image
        imgs = [Image.fromarray(f) for f in gif_frames]
        write_atomic(cfg.gif, lambda tmp: imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:],
                                                       duration=round(1000 * cfg.gif_every / fps), loop=0))
    return {"source": str(source), "out": out and str(out), "log": cfg.log, "tracks_csv": tracks_csv and str(tracks_csv),
            "gif": cfg.gif, "frames": n, "size": size, "track_summary": summary, "clip_summary": clip,
            "source_fps": fps, "wall_s": wall, "cpu_s": cpu, "fps": n / wall, "realtime_factor": n / wall / fps,
            "stage_s": {s: clock.wall[s] + in_clock.wall[s] for s in STAGES}, "records": records,
            "stage_cpu_s": {s: clock.cpu[s] + in_clock.cpu[s] for s in STAGES}, "tracks": tracker.next_id,
            "no_faces": not records, "truncated_at": truncated[0] if truncated else None, "config": dataclasses.asdict(cfg)}


def tracks_csv_path(log) -> Path:
    """Where the per-track summary of frame log `log` goes: frames.csv -> frames_tracks.csv."""
    log = Path(log)
    return log.with_name(f"{log.stem}_tracks.csv")


def track_columns(class_names) -> list[str]:
    return ["track_id", "first_s", "last_s", "frames", "dominant", *(f"share_{c}" for c in class_names)]


def track_summary(records, class_names) -> tuple[list[dict], dict]:
    """What each face showed over the clip, from the frame log's rows (the smoothed, shown labels).

    Returns (one dict per track: track_id, first_s, last_s, frames, dominant, share_<class> (its
    frames' shares, summing to 1)), and the clip's {"face_frames", "top", "shares"} over all faces."""
    k = len(class_names)
    by_track: dict[int, list] = {}
    for r in records:
        by_track.setdefault(r["track_id"], []).append(r)
    rows = []
    for tid, rs in sorted(by_track.items()):
        counts = np.bincount([r["label"] for r in rs], minlength=k)
        rows.append({"track_id": tid, "first_s": min(r["time_s"] for r in rs), "last_s": max(r["time_s"] for r in rs),
                     "frames": len(rs), "dominant": class_names[int(counts.argmax())],
                     **{f"share_{c}": float(n / len(rs)) for c, n in zip(class_names, counts)}})
    counts = np.bincount([r["label"] for r in records], minlength=k)
    clip = {"face_frames": len(records), "top": class_names[int(counts.argmax())] if records else None,
            "shares": {c: float(n / max(len(records), 1)) for c, n in zip(class_names, counts)}}
    return rows, clip


def format_summary(result: dict) -> str:
    """'270 frames in 3.1 s: 87.1 fps (3.63x real time); per frame: decode 1.2 ms, ...'."""
    stages = ", ".join(f"{s} {1000 * t / max(result['frames'], 1):.1f} ms" for s, t in result["stage_s"].items())
    overlap = "" if result["config"]["sequential"] else " (decode + detect in their own thread, overlapping)"
    msg = (f"{result['frames']} frames in {result['wall_s']:.1f} s: {result['fps']:.1f} fps "
           f"({result['realtime_factor']:.2f}x real time at {result['source_fps']:.3f} fps); per frame{overlap}: "
           f"{stages}; CPU {result['cpu_s']:.1f} s")
    if result["no_faces"]:
        return msg + "\nno faces detected"
    clip = result["clip_summary"]
    return (msg + f"; {result['tracks']} face tracks\ntop emotion over the clip: {clip['top']} "
            f"({clip['shares'][clip['top']]:.0%} of {clip['face_frames']} face-frames)")


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("--source", required=True, help="video file, or camera index such as 0")
    p.add_argument("--checkpoint", default=None, help=f"model checkpoint (default: the live model, {LIVE_MODEL})")
    p.add_argument("--out", default="out.mp4", help="annotated MP4 (mp4v) to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUT, the --log and --gif files if they exist")
    add_dataclass_arguments(p, VideoConfig, skip=("batch",))
    p.add_argument("--one-by-one", dest="batch", action="store_false", default=None,
                   help="classify faces one at a time (the original study's way)")


def run(args) -> int:
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(VideoConfig)}
    try:
        result = run_pipeline(args.source, args.checkpoint, args.out, overwrite=args.overwrite, **kw)
    except VideoError as e:
        print(f"fer video: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(result))
    print("wrote", ", ".join(p for p in (result["out"], result["log"], result["tracks_csv"], result["gif"]) if p))
    return 0


def show_in_notebook(source=0, checkpoint=None, seconds: float = 10.0, width: int = 480, out=None, **kwargs):
    """The overlay live in a notebook cell, for a webcam (source 0) or a file: each annotated frame
    replaces the previous one in the cell's output, so it works in JupyterLab on a server, where a
    desktop window (--show) cannot. Stops after `seconds` or at the kernel's interrupt (the stop button
    in the toolbar) and returns run_pipeline's result. kwargs are VideoConfig fields."""
    from IPython.display import Image, display
    handle = display(Image(data=cv2.imencode(".jpg", np.zeros((1, 1, 3), np.uint8))[1].tobytes()), display_id=True)

    def push(frame):
        h = round(frame.shape[0] * width / frame.shape[1])
        jpg = cv2.imencode(".jpg", cv2.resize(frame, (width, h), interpolation=cv2.INTER_AREA))[1].tobytes()
        handle.update(Image(data=jpg, format="jpeg"))
    return run_pipeline(source, checkpoint, out, on_frame=push, interruptible=True, end=seconds, **kwargs)
