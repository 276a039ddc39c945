"""Emotions of the faces in photos: detected, cropped and classified exactly as `fer video` does.

    fer predict photo.jpg holiday/ --out predictions          # predictions/faces.csv, one row per face
    fer predict photo.jpg --annotate --json --out predictions # + faces.json and annotated/photo.jpg
    fer predict faces/ --no-detect --out predictions          # images that already are aligned faces

    from fer_lib import detect_emotions
    faces = detect_emotions("photo.jpg")  # [{"box": (x, y, w, h), "proba": {"Angry": ...}, "label": "Happy", ...}]

The checkpoint defaults to the study's live model (models.LIVE_MODEL). An unreadable image is named on
stderr and skipped; the run goes on and its summary counts it.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .errors import UserError, check_output_path, inside
from .flags import check_settings, setting
from .io import write_atomic
from .progress import bar
from .runtime import BACKENDS, LIVE_MODEL, choose_backend, load_classifier, resolve_model_file
from .video import create_detector, crop_face, draw_face_label

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
COLUMNS = ("file", "face", "x", "y", "w", "h", *(f"p_{c}" for c in range(7)), "label", "label_name",
           "confidence")  # faces.csv, one row per face; p_c in class order as in fer video's log


@dataclasses.dataclass
class DetectConfig:
    """Face finding for stills: fer video's Haar detector, at full resolution (no frame-rate budget)."""
    detect: bool = True           # False: each image already is one aligned face (like FER-2013's own)
    detector: str = setting("haar", choices=("haar", "yunet"))  # haar | yunet
    yunet_model: str | None = None  # face_detection_yunet_*.onnx, needed for --detector yunet
    scale_factor: float = setting(1.1, above=1.0, high=2.0)  # Haar pyramid step
    min_neighbors: int = setting(5, low=0)  # Haar: overlapping hits a face needs (higher: fewer false faces)
    min_size: int = setting(30, low=1)  # smallest face side in image pixels
    detect_scale: float = setting(1.0, above=0.0, high=4.0)  # detect on the image resized by this factor (0.5 halves the time)
    crop_margin: float = setting(0.0, low=0.0, high=1.0)  # grow each box by this fraction of its side on each edge

    def __post_init__(self):
        check_settings(self)


@lru_cache(maxsize=4)
def _cached_model(path: str, backend: str):
    return load_classifier(path, backend)


def as_classifier(checkpoint=None, backend: str = "auto"):
    """A Classifier (or OnnxClassifier), a checkpoint path, or None for the live model (each path loaded once);
    backend torch, onnx or auto (runtime.choose_backend)."""
    if hasattr(checkpoint, "predict_proba"):
        return checkpoint
    backend = choose_backend(checkpoint, backend)
    return _cached_model(str(resolve_model_file(checkpoint, backend).resolve()), backend)


def read_image(path) -> np.ndarray:
    """BGR uint8 (H, W, 3) of any image OpenCV reads (grayscale, colour, 16-bit, alpha); UserError if not."""
    data = np.fromfile(str(path), np.uint8) if Path(path).is_file() else None
    if data is None:
        raise UserError(f"{path}: no such image file")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise UserError(f"{path}: not an image OpenCV can read")
    return img


def find_faces(image: np.ndarray, cfg: DetectConfig, detect=None):
    """(boxes (N, 4) x, y, w, h, crops (N, 48, 48) uint8) of one BGR or grayscale image."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if not cfg.detect:
        boxes = np.array([[0, 0, gray.shape[1], gray.shape[0]]], np.float32)
    else:
        detect = detect or make_detector(cfg)
        boxes = detect(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), gray)
    crops = np.stack([crop_face(gray, b, cfg.crop_margin) for b in boxes]) if len(boxes) else np.zeros((0, 48, 48),
                                                                                                      np.uint8)
    return boxes, crops


def make_detector(cfg: DetectConfig):
    return create_detector(cfg.detector, cfg.detect_scale, cfg.scale_factor, cfg.min_neighbors, cfg.min_size,
                           cfg.yunet_model)


def _face_dicts(boxes, proba, class_names) -> list[dict]:
    return [{"box": tuple(int(round(v)) for v in b), "proba": dict(zip(class_names, map(float, p))),
             "label": class_names[int(p.argmax())], "confidence": float(p.max())} for b, p in zip(boxes, proba)]


def detect_emotions(image, checkpoint=None, backend: str = "auto", **detect_kwargs) -> list[dict]:
    """Faces in one image (a path, or a uint8 array: grayscale, or BGR as OpenCV reads it), each a dict with
    box (x, y, w, h), proba {class name: probability}, label and confidence; largest face first.

    detect_kwargs are DetectConfig fields, e.g. detect=False for an image that already is a face."""
    clf = as_classifier(checkpoint, backend)
    cfg = DetectConfig(**detect_kwargs)
    img = read_image(image) if isinstance(image, (str, Path)) else np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise UserError(f"expected a uint8 image (H, W) or (H, W, 3), got {img.dtype} {img.shape}")
    boxes, crops = find_faces(img, cfg)
    faces = _face_dicts(boxes, clf.predict_proba(crops), clf.class_names)
    return sorted(faces, key=lambda f: -f["box"][2] * f["box"][3])


def list_images(paths, exclude=None, warn=None) -> list[tuple[Path, Path]]:
    """(image file, name to report it by) for files and folders (searched recursively, sorted). Files
    under `exclude` (the command's own output folder) are not inputs; a folder's files of other types
    are passed to warn(folder, why) in one line."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            skip = exclude if exclude and inside(exclude, p) else None  # only an output folder under p costs a test a file
            files = sorted(f for f in p.rglob("*") if f.is_file() and not (skip and inside(f, skip)))
            other = sorted({f.suffix.lower() or "(no extension)" for f in files if f.suffix.lower() not in IMAGE_EXTS})
            if other and warn:
                n = sum(f.suffix.lower() not in IMAGE_EXTS for f in files)
                warn(str(p), f"{n} file(s) of types it does not read ({', '.join(other)}); it reads {', '.join(IMAGE_EXTS)}")
            found += [(f, p.name / f.relative_to(p)) for f in files if f.suffix.lower() in IMAGE_EXTS]
        elif p.is_file():
            found.append((p, Path(p.name)))
        else:
            raise UserError(f"{p}: no such file or folder")
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in {', '.join(map(str, paths))}")
    return found


def predict_files(paths, checkpoint=None, cfg: DetectConfig | None = None, batch_size: int = 256,
                  annotate_dir=None, progress: bool = True, warn=None, exclude=None, backend: str = "auto") -> dict:
    """Classify every face of every image under `paths`, `batch_size` faces per forward pass.

    Returns {"rows": CSV rows (dicts of COLUMNS), "images": [{"file", "faces": [...]}], "unreadable":
    [(file, reason)], "n_images", "n_faces", "no_face"}. Unreadable files are passed to warn(file, reason)
    and skipped. With annotate_dir, a copy of each image with its boxes and labels is written there.
    Files under `exclude` (the output folder) are never read."""
    clf, cfg = as_classifier(checkpoint, backend), cfg or DetectConfig()
    detect = make_detector(cfg) if cfg.detect else None
    images, unreadable, pending = [], [], []  # pending: (image index, image, boxes, crops) awaiting a batch
    used_names = set()

    def flush():
        if not pending:
            return
        proba = clf.predict_proba(np.concatenate([c for *_, c in pending]))
        i = 0
        for k, img, boxes, _ in pending:
            p, i = proba[i:i + len(boxes)], i + len(boxes)
            images[k]["faces"] = _face_dicts(boxes, p, clf.class_names)
            if annotate_dir is not None:
                write_annotated(img, images[k], p, clf.class_names, annotate_dir, used_names)
        pending.clear()

    files = list_images(paths, exclude, warn)
    for path, name in bar(files, desc="images", unit="img", disable=not progress, mininterval=1):
        try:
            img = read_image(path)
        except UserError as e:
            unreadable.append((str(path), str(e).split(": ", 1)[-1]))
            if warn:
                warn(str(path), unreadable[-1][1])
            continue
        boxes, crops = find_faces(img, cfg, detect)
        images.append({"file": str(path), "name": str(name), "faces": []})
        pending.append((len(images) - 1, img if annotate_dir is not None else None, boxes, crops))
        if sum(len(b) for _, _, b, _ in pending) >= batch_size:
            flush()
    flush()
    rows = [dict(zip(COLUMNS, (im["file"], j, *f["box"], *f["proba"].values(), clf.class_names.index(f["label"]),
                               f["label"], f["confidence"])))
            for im in images for j, f in enumerate(im["faces"])]
    return {"rows": rows, "images": images, "unreadable": unreadable, "n_images": len(images),
            "n_faces": len(rows), "no_face": sum(not im["faces"] for im in images)}


def write_annotated(img, image: dict, proba, class_names, folder, used_names: set) -> None:
    """The image with each face's box and label, at folder/<name>. A type OpenCV cannot write keeps its
    extension in the name (b.tif -> b.tif.png, beside a b.png); a name already used, in any case (a.JPG,
    a.jpg), gets _2."""
    out = Path(folder) / image["name"]
    ext = out.suffix.lower() if out.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") else ".png"
    if ext != out.suffix.lower():
        out = out.with_name(out.name + ext)
    stem, n = out.with_suffix(""), 2
    while str(out).lower() in used_names:  # case-insensitive: a.JPG and a.jpg are one file on some disks
        out, n = Path(f"{stem}_{n}{out.suffix}"), n + 1
    used_names.add(str(out).lower())
    img = img.copy()
    for j, (f, p) in enumerate(zip(image["faces"], proba)):
        draw_face_label(img, j, f["box"], int(p.argmax()), float(p.max()), p, class_names)
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise UserError(f"{out}: OpenCV cannot encode an annotated image")
    write_atomic(out, buf.tobytes())
    image["annotated"] = str(out)


def format_summary(result: dict) -> str:
    """'12 images, 15 faces, 2 without a face, 1 unreadable (skipped)'."""
    parts = [f"{result['n_images']} images", f"{result['n_faces']} faces"]
    if result["no_face"]:
        parts.append(f"{result['no_face']} without a face")
    if result["unreadable"]:
        parts.append(f"{len(result['unreadable'])} unreadable (skipped)")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    p.add_argument("--checkpoint", default=None, help=f"model checkpoint (default: the live model, {LIVE_MODEL})")
    p.add_argument("--out", default="predictions", help="folder for faces.csv, faces.json and annotated/")
    p.add_argument("--json", action="store_true", help="also write faces.json (per image, its faces)")
    p.add_argument("--annotate", action="store_true", help="write annotated copies under OUT/annotated/")
    p.add_argument("--no-detect", dest="detect", action="store_false",
                   help="each image is one aligned face (like FER-2013's): no detection")
    p.add_argument("--overwrite", action="store_true", help="replace the results OUT already holds")
    p.add_argument("--batch-size", type=int, default=256, help="faces per forward pass (256)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="torch (.pt), onnx (onnxruntime, a .onnx file) or auto: onnx for a .onnx file and for the "
                        "live model when onnxruntime is installed (faster to start and to run)")
    for f in dataclasses.fields(DetectConfig):
        if f.name != "detect":
            p.add_argument("--" + f.name.replace("_", "-"), default=f.default,
                           type={"int": int, "float": float}.get(str(f.type).split(" ")[0], str))


def run(args) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    out = Path(args.out)
    csv_path, json_path, ann = out / "faces.csv", out / "faces.json", out / "annotated"
    targets = [csv_path] + [json_path] * args.json + [ann] * args.annotate
    taken = [str(t) for t in targets if t.exists()]
    if taken and not args.overwrite:
        raise UserError(f"{', '.join(taken)} already exist; give another --out or --overwrite")
    for t in (csv_path, json_path):
        check_output_path(t, "--out", inputs=args.paths)
    for p in args.paths:  # --overwrite empties annotated/: never where an input lies
        if args.annotate and inside(p, ann):
            raise UserError(f"--out {out}: its annotated/ folder would hold the input {p}; give another --out")
    if args.annotate and args.overwrite and ann.is_dir():
        shutil.rmtree(ann)  # the old run's copies would mix with this one's
    cfg = DetectConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DetectConfig)})
    result = predict_files(args.paths, args.checkpoint, cfg, args.batch_size, ann if args.annotate else None,
                           progress=sys.stderr.isatty(),
                           warn=lambda f, why: print(f"fer predict: skipped {f}: {why}", file=sys.stderr),
                           exclude=out, backend=args.backend)
    if not result["n_images"]:
        raise UserError(f"none of the {len(result['unreadable'])} images could be read")
    import pandas as pd
    write_atomic(csv_path, lambda tmp: pd.DataFrame(result["rows"], columns=COLUMNS).to_csv(tmp, index=False))
    written = [str(csv_path)]
    if args.json:
        doc = {"checkpoint": str(args.checkpoint or LIVE_MODEL), "images": result["images"],
               "unreadable": [{"file": f, "reason": r} for f, r in result["unreadable"]]}
        write_atomic(json_path, json.dumps(doc, indent=1) + "\n")
        written.append(str(json_path))
    if args.annotate:
        written.append(f"{ann}/")
    print(format_summary(result))
    print("wrote", ", ".join(written))
    return 0
