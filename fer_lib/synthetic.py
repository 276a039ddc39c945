"""Procedural FER-shaped faces, clearly labelled synthetic, for fresh clones and tests.

    fer synthetic data/synthetic.h5        # or fer_lib.synthetic.write_synthetic_h5(...)

Each 48x48 face is a shaded oval with eyes, brows and a mouth whose shapes
depend on the expression (raised brows and an open mouth for Surprise, a
smile for Happy, ...), with random pose, size, lighting and noise so that a
CNN has something real to learn. It is NOT FER-2013; files carry
`synthetic=True` and every consumer says so.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .data import CLASS_NAMES, IMAGE_SIZE, SETUP_H5, SPLITS, build_hdf5, find_h5, read_info, repo_root, write_hdf5
from .errors import UserError, check_output_path

SYNTHETIC_NOTICE = """\
SYNTHETIC DATA: these are procedural cartoon faces, NOT FER-2013. Results on them
only show that the pipeline runs; they say nothing about facial-expression recognition.
To use FER-2013: download the Kaggle "FER-2013" dataset (archive.zip, image folders)
or the original fer2013.csv, then run
    fer preprocess path/to/archive.zip --out data/fer2013.h5
and pass that file (or the archive as `source`) to the notebooks."""

# Per class: (brow tilt, brow height, mouth curve, mouth open, eye open).
# tilt > 0: inner ends down (angry); curve > 0: smile; open: mouth height.
_EXPRESSIONS = {
    0: (0.9, 0.0, -0.3, 0.1, 0.8),    # Angry
    1: (0.5, 0.1, -0.6, 0.25, 0.5),   # Disgust
    2: (-0.7, 0.6, -0.1, 0.5, 1.3),   # Fear
    3: (0.0, 0.2, 1.0, 0.3, 0.8),     # Happy
    4: (-0.6, 0.1, -0.8, 0.0, 0.7),   # Sad
    5: (0.0, 1.0, 0.0, 1.0, 1.4),     # Surprise
    6: (0.0, 0.2, 0.0, 0.0, 1.0),     # Neutral
}


def draw_face(label: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One (size, size) uint8 face of the given expression."""
    s = 4  # draw at 4x, then downsample: smooth edges like a real photo
    S = size * s
    tilt, brow_h, curve, mouth_open, eye_open = (v + rng.normal(0, 0.12) for v in _EXPRESSIONS[label])
    bg = rng.uniform(30, 200)
    img = np.full((S, S), bg, np.float32)
    cx, cy = S / 2 + rng.normal(0, S * 0.03), S / 2 + rng.normal(0, S * 0.03)
    scale = rng.uniform(0.85, 1.1) * S
    skin = float(np.clip(bg + rng.choice([-1, 1]) * rng.uniform(50, 100), 40, 235))
    ink = skin * rng.uniform(0.2, 0.45)
    cv2.ellipse(img, (int(cx), int(cy)), (int(scale * 0.36), int(scale * 0.46)), 0, 0, 360, skin, -1)
    lw = max(2, int(scale * 0.025))
    for side in (-1, 1):
        ex, ey = cx + side * scale * 0.15, cy - scale * 0.08
        cv2.ellipse(img, (int(ex), int(ey)), (int(scale * 0.06), max(1, int(scale * 0.03 * eye_open))),
                    0, 0, 360, ink, -1)
        by = ey - scale * (0.09 + 0.05 * brow_h)
        inner, outer = ex - side * scale * 0.07, ex + side * scale * 0.07
        cv2.line(img, (int(inner), int(by + tilt * scale * 0.04)), (int(outer), int(by - tilt * scale * 0.02)),
                 ink, lw)
    my, mw = cy + scale * 0.22, scale * 0.13
    xs = np.linspace(-1, 1, 24)
    top = my - curve * scale * 0.05 * (1 - xs ** 2) * -1
    pts_top = np.stack([cx + xs * mw, top], 1)
    pts_bot = np.stack([cx + xs * mw, top + mouth_open * scale * 0.08 * (1 - xs ** 2)], 1)
    poly = np.concatenate([pts_top, pts_bot[::-1]]).astype(np.int32)
    cv2.fillPoly(img, [poly], ink)
    cv2.polylines(img, [pts_top.astype(np.int32)], False, ink, lw)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img *= rng.uniform(0.7, 1.2)                                  # lighting
    img += rng.normal(0, rng.uniform(2, 10), img.shape)           # sensor noise
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.clip(img, 0, 255).astype(np.uint8)


def make_faces(labels, seed: int = 0) -> np.ndarray:
    """uint8 faces (N, 48, 48) for the given labels."""
    rng = np.random.default_rng(seed)
    return np.stack([draw_face(int(c), rng) for c in labels]) if len(labels) else \
        np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def make_splits(n_per_class=(40, 10, 10), seed: int = 0) -> dict:
    """{split: (images, labels int8, names)} with n_per_class images of each class per split."""
    out = {}
    for i, (split, n) in enumerate(zip(SPLITS, n_per_class)):
        labels = np.repeat(np.arange(len(CLASS_NAMES)), n).astype(np.int8)
        labels = np.random.default_rng(seed + 100 + i).permutation(labels)
        out[split] = (make_faces(labels, seed + i), labels, [f"synthetic_{split}_{j}" for j in range(len(labels))])
    return out


def write_synthetic_h5(path, n_per_class=(40, 10, 10), seed: int = 0) -> Path:
    """Write a synthetic FER-shaped HDF5 (same layout as `fer preprocess`, synthetic=True), atomically."""
    name = f"synthetic(n_per_class={tuple(n_per_class)}, seed={seed})"
    return write_hdf5(path, make_splits(n_per_class, seed), source=name, source_name=name,
                      source_sha256=f"synthetic-{seed}", resized_allowed=False, synthetic=True)


def prepare_dataset(source, h5_path, synthetic_per_class=(400, 60, 60), seed: int = 0, resize: bool = False,
                    progress: bool = True) -> dict:
    """The HDF5 a notebook works on, and read_info() of it (plus "path").

    source given: ingest it (build_hdf5; reused if unchanged). No source: keep a real
    FER-2013 file already at h5_path (never overwrite one with cartoons), else write
    synthetic faces there and say so loudly. h5_path None: data.find_h5's choice (a source goes to
    data/fer2013.h5, no source keeps the set-up's file), else synthetic faces where the set-up without data
    writes them (its last choice, so that real data made later is found first).
    """
    if h5_path is None:
        try:
            h5_path = find_h5(None, source)
        except UserError:
            h5_path = repo_root() / SETUP_H5[-1]
    h5_path = Path(h5_path)
    if source:
        build_hdf5(source, h5_path, resize=resize, progress=progress)
    elif h5_path.exists() and not read_info(h5_path)["synthetic"]:
        print(f"source is empty: using the FER-2013 file already at {h5_path}")
    else:
        write_synthetic_h5(h5_path, synthetic_per_class, seed)
    info = read_info(h5_path)
    if info["synthetic"]:
        print("=" * 88 + "\n" + SYNTHETIC_NOTICE + "\n" + "=" * 88)
    return {**info, "path": str(h5_path)}


def add_arguments(p) -> None:
    p.add_argument("out", nargs="?", default="data/synthetic.h5", help="HDF5 file to write")
    p.add_argument("--per-class", type=int, nargs=3, default=[40, 10, 10], metavar=("TRAIN", "VAL", "TEST"),
                   help="faces per class in each split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args) -> int:
    check_output_path(args.out, "out", overwrite=args.overwrite)
    if min(args.per_class) < 1 or args.seed < 0:
        raise UserError(f"--per-class {' '.join(map(str, args.per_class))}: each split needs at least 1 face per class")
    print(SYNTHETIC_NOTICE)
    print("wrote", write_synthetic_h5(args.out, tuple(args.per_class), args.seed))
    return 0
