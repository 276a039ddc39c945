"""FER-2013 ingest: every form users have, into one compact HDF5 file.

    fer preprocess ../shared/fer2013/archive.zip --out data/fer2013.h5
    fer preprocess path/to/fer2013.csv --out data/fer2013.h5

Sources: the Kaggle image-folder layout (as a folder or as the .zip, read in
place), the original ``fer2013.csv`` and its ``icml_face_data.csv`` variant.
The HDF5 keeps uint8 pixels; normalization happens on load with the train
mean/std stored in the file.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np

log = logging.getLogger(__name__)

CLASS_NAMES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
FOLDER_LABELS = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": "train", "val": "test", "test": "test"}  # Kaggle puts both test sets in test/
IMAGE_SIZE = 48
INGEST_VERSION = 1
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")


class DataError(ValueError):
    """A source that cannot be ingested; the message names the culprit."""


# ----------------------------------------------------------------------------- reading sources

def _decode(data: bytes, name: str, resize: bool) -> tuple[np.ndarray, bool]:
    """Decode one image to a (48, 48) uint8 array; returns (image, was_resized)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DataError(f"{name}: corrupt or not an image")
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE):
        if not resize:
            raise DataError(f"{name}: image is {img.shape[1]}x{img.shape[0]}, expected "
                            f"{IMAGE_SIZE}x{IMAGE_SIZE} (pass --resize to resize it)")
        return cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA), True
    return img, False


def _parse_folder_path(rel: str) -> tuple[str, int]:
    """Map 'train/happy/Training_1.jpg' to (split, label)."""
    top, emotion, fname = rel.split("/")
    if top not in ("train", "test"):
        raise DataError(f"{rel}: expected <train|test>/<emotion>/<image>, unknown layout")
    if emotion.lower() not in FOLDER_LABELS:
        raise DataError(f"{rel}: unknown emotion folder '{emotion}' "
                        f"(expected one of {', '.join(FOLDER_LABELS)})")
    usage = fname.split("_", 1)[0]
    split = USAGE_SPLITS.get(usage)
    if split is None:
        # Images without the ICML prefix: train/ is Training, test/ is ambiguous.
        if top != "train":
            raise DataError(f"{rel}: file name must start with PublicTest_ or PrivateTest_ "
                            "to tell validation from test")
        split = "train"
    if SPLIT_FOLDERS[split] != top:
        raise DataError(f"{rel}: a {usage} image in folder '{top}/'")
    return split, FOLDER_LABELS[emotion.lower()]


def _folder_entries(names: list[str]) -> tuple[str, list[str]]:
    """Find the layout root (the folder holding train/ and test/) among archive names."""
    images = [n for n in names if n.lower().endswith(IMAGE_EXTS)]
    if not images:
        raise DataError("unknown layout: no images; expected train/<emotion>/*.jpg and test/<emotion>/*.jpg")
    roots = set()
    for n in images:
        parts = n.split("/")
        if len(parts) < 3:
            raise DataError(f"{n}: expected <train|test>/<emotion>/<image>, unknown layout")
        roots.add("".join(p + "/" for p in parts[:-3]))
    if len(roots) != 1:
        raise DataError(f"unknown layout: images under several roots {sorted(roots)}")
    root = roots.pop()
    return root, sorted(n[len(root):] for n in images)


def _collect(items, resize: bool) -> dict:
    """items yields (rel_name, split, label, bytes) -> per split arrays."""
    out = {s: ([], [], []) for s in SPLITS}
    n_resized = 0
    for rel, split, label, data in items:
        img, resized = _decode(data, rel, resize)
        n_resized += resized
        imgs, labels, names = out[split]
        imgs.append(img), labels.append(label), names.append(rel)
    if n_resized:
        log.warning("resized %d images to %dx%d", n_resized, IMAGE_SIZE, IMAGE_SIZE)
    return {s: (np.stack(i) if i else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
                np.asarray(l, np.int8), n) for s, (i, l, n) in out.items()}


def read_folder(path: Path, resize: bool = False) -> dict:
    """Read the Kaggle image-folder layout from a directory."""
    path = Path(path)
    names = [p.relative_to(path).as_posix() + ("/" if p.is_dir() else "") for p in path.rglob("*")]
    root, rel = _folder_entries(names)

    def items():
        for r in rel:
            yield r, *_parse_folder_path(r), (path / root / r).read_bytes()
    return _collect(items(), resize)


def read_zip(path: Path, resize: bool = False) -> dict:
    """Read the Kaggle image-folder layout from the .zip without extracting it."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a valid zip archive ({e})") from None
    with zf:
        root, rel = _folder_entries(zf.namelist())

        def items():
            for r in rel:
                yield r, *_parse_folder_path(r), zf.read(root + r)
        return _collect(items(), resize)


def read_csv(path: Path, resize: bool = False) -> dict:
    """Read fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels)."""
    out = {s: ([], [], []) for s in SPLITS}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = {"emotion", "pixels", "usage"} - set(header)
        if missing:
            raise DataError(f"{path}: CSV header lacks column(s) {sorted(missing)}; got {header}")
        ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("usage")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"{path} line {lineno}"
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, expected {len(header)}")
            try:
                label = int(row[ie])
            except ValueError:
                raise DataError(f"{where}: bad label {row[ie]!r}") from None
            if not 0 <= label < len(CLASS_NAMES):
                raise DataError(f"{where}: label {label} outside 0..{len(CLASS_NAMES) - 1}")
            split = USAGE_SPLITS.get(row[iu].strip())
            if split is None:
                raise DataError(f"{where}: unknown Usage {row[iu]!r}")
            try:
                px = np.array(row[ip].split(), dtype=np.int32)
            except ValueError:
                raise DataError(f"{where}: pixels are not integers") from None
            if px.size != IMAGE_SIZE * IMAGE_SIZE:
                raise DataError(f"{where}: {px.size} pixels, expected {IMAGE_SIZE * IMAGE_SIZE}")
            if px.min() < 0 or px.max() > 255:
                raise DataError(f"{where}: pixel values outside 0..255")
            imgs, labels, names = out[split]
            imgs.append(px.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
            labels.append(label)
            names.append(f"{row[iu].strip()}_{lineno - 2}")
    return {s: (np.stack(i) if i else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
                np.asarray(l, np.int8), n) for s, (i, l, n) in out.items()}


def read_source(source, resize: bool = False) -> dict:
    """Read any supported source into {split: (images uint8 (N,48,48), labels int8 (N,), names)}."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"FER-2013 source not found: {source}")
    if source.is_dir():
        splits = read_folder(source, resize)
    elif zipfile.is_zipfile(source) or source.suffix.lower() == ".zip":
        splits = read_zip(source, resize)
    elif source.suffix.lower() == ".csv":
        splits = read_csv(source, resize)
    else:
        raise DataError(f"{source}: unknown layout; give the image-folder directory, its .zip, "
                        "or fer2013.csv / icml_face_data.csv")
    for split, (imgs, _, _) in splits.items():
        if len(imgs) == 0:
            raise DataError(f"{source}: split '{split}' ({_usage(split)}) has no images")
    return splits


def _usage(split: str) -> str:
    return {v: k for k, v in USAGE_SPLITS.items()}[split]


def source_sha256(source) -> str:
    """sha256 of a file, or of a directory's sorted relative paths and contents."""
    source = Path(source)
    h = hashlib.sha256()
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(source).as_posix().encode() + b"\0")
                h.update(hashlib.sha256(p.read_bytes()).digest())
    else:
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- HDF5

def build_hdf5(source, out="data/fer2013.h5", resize: bool = False, force: bool = False) -> Path:
    """Ingest `source` into `out` atomically; reuse `out` if it already holds this source."""
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"FER-2013 source not found: {source}")
    sha = source_sha256(source)
    if out.exists() and not force:
        try:
            with h5py.File(out, "r") as f:
                if f.attrs.get("source_sha256") == sha and f.attrs.get("ingest_version") == INGEST_VERSION \
                        and bool(f.attrs.get("resized_allowed", False)) == resize:
                    log.info("%s already holds %s; reusing it", out, source)
                    return out
        except OSError:
            log.warning("%s is not a readable HDF5 file; rebuilding it", out)
    splits = read_source(source, resize)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        _write_hdf5(tmp, splits, source, sha, resize)
        os.replace(tmp, out)  # atomic: readers see the old file or the complete new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _write_hdf5(path, splits: dict, source: Path, sha: str, resize: bool) -> None:
    train = splits["train"][0]
    mean = float(train.mean(dtype=np.float64) / 255.0)
    std = float(train.std(dtype=np.float64) / 255.0)
    with h5py.File(path, "w") as f:
        for split, (imgs, labels, names) in splits.items():
            g = f.create_group(split)
            g.create_dataset("images", data=imgs, chunks=(min(len(imgs), 256), IMAGE_SIZE, IMAGE_SIZE),
                             compression="gzip", compression_opts=4, shuffle=True)
            g.create_dataset("labels", data=labels, compression="gzip")
            g.create_dataset("names", data=np.array(names, dtype=h5py.string_dtype()), compression="gzip")
            g.attrs["usage"] = _usage(split)
            g.attrs["class_counts"] = np.bincount(labels, minlength=len(CLASS_NAMES))
        f.attrs["class_names"] = list(CLASS_NAMES)
        f.attrs["counts"] = [len(splits[s][0]) for s in SPLITS]
        f.attrs["splits"] = list(SPLITS)
        f.attrs["mean"] = mean
        f.attrs["std"] = std
        f.attrs["source"] = str(source)
        f.attrs["source_name"] = source.name
        f.attrs["source_sha256"] = sha
        f.attrs["ingest_version"] = INGEST_VERSION
        f.attrs["resized_allowed"] = resize


def read_info(path) -> dict:
    """The file's metadata: class names, per-split counts, normalization, provenance."""
    with h5py.File(path, "r") as f:
        a = f.attrs
        return {
            "class_names": [str(c) for c in a["class_names"]],
            "counts": dict(zip(SPLITS, (int(c) for c in a["counts"]))),
            "class_counts": {s: f[s].attrs["class_counts"].astype(int).tolist() for s in SPLITS},
            "mean": float(a["mean"]), "std": float(a["std"]),
            "source": str(a["source"]), "source_sha256": str(a["source_sha256"]),
            "ingest_version": int(a["ingest_version"]),
            "synthetic": bool(a.get("synthetic", False)),
        }


def load_split(path, split: str, normalize: bool = False, as_tensor: bool = False):
    """(images, labels) of one split: uint8 (N,48,48) or, normalized, float32 with the train stats.

    as_tensor gives torch tensors, images shaped (N, 1, 48, 48).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    with h5py.File(path, "r") as f:
        images = f[split]["images"][:]
        labels = f[split]["labels"][:].astype(np.int64)
        mean, std = float(f.attrs["mean"]), float(f.attrs["std"])
    if normalize:
        images = normalize_images(images, mean, std)
    if as_tensor:
        import torch
        images = torch.from_numpy(images).unsqueeze(1)
        labels = torch.from_numpy(labels)
    return images, labels


def normalize_images(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 pixels -> float32 (x/255 - mean) / std."""
    return ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("source", help="image-folder directory, its .zip, fer2013.csv or icml_face_data.csv")
    p.add_argument("--out", default="data/fer2013.h5", help="HDF5 file to write")
    p.add_argument("--resize", action="store_true", help="resize images that are not 48x48 (off: error)")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT holds this source")


def run(args) -> int:
    out = build_hdf5(args.source, args.out, resize=args.resize, force=args.force)
    info = read_info(out)
    print(f"{out}: " + ", ".join(f"{s} {n}" for s, n in info["counts"].items())
          + f"; mean {info['mean']:.4f} std {info['std']:.4f}")
    return 0
