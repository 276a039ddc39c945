"""FER-2013 ingest: every form users have, into one compact HDF5 file.

    fer preprocess ../shared/fer2013/archive.zip --out data/fer2013.h5
    fer preprocess path/to/fer2013.csv --out data/fer2013.h5 [--resize] [--force] [--no-progress]

Sources: the Kaggle image-folder layout (as a folder or as the .zip, read in
place), the original ``fer2013.csv`` and its ``icml_face_data.csv`` variant.
The HDF5 keeps uint8 pixels; normalization happens on load with the train
mean/std stored in the file. Rerunning on an unchanged source reuses the file.

A notebook's `h5_path = None` is `find_h5()`: the file the README's set-up made, found from the repo root.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import logging
import os
import shutil
import struct
import sys
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import cv2
import h5py
import numpy as np

from .errors import UserError, check_output_path, inside
from .io import write_atomic
from .progress import bar

log = logging.getLogger(__name__)

CLASS_NAMES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
FOLDER_LABELS = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLIT_USAGE = {v: k for k, v in USAGE_SPLITS.items()}
CSV_LABELS = {str(i): i for i in range(len(CLASS_NAMES))}   # "0".."6" as written in the CSV
SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": "train", "val": "test", "test": "test"}  # Kaggle puts both test sets in test/
IMAGE_SIZE = 48
INGEST_VERSION = 1
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")


class DataError(UserError):
    """A source that cannot be ingested, or an HDF5 file that cannot be read; the message names the culprit."""


# ----------------------------------------------------------------------------- image folders

def _parse_rel(rel: str, prefix: str) -> tuple[str, int]:
    """Map 'train/happy/Training_1.jpg' (relative to the root; prefix for messages) to (split, label)."""
    top, emotion, fname = rel.split("/")
    if top not in ("train", "test"):
        raise DataError(f"{prefix}{rel}: unknown layout; expected <train|test>/<emotion>/<image>")
    if emotion.lower() not in FOLDER_LABELS:
        raise DataError(f"{prefix}{rel}: unknown emotion folder '{emotion}' "
                        f"(expected one of {', '.join(FOLDER_LABELS)})")
    usage = fname.split("_", 1)[0]
    split = USAGE_SPLITS.get(usage)
    if split is None:
        # Images without the ICML prefix: train/ is Training, test/ is ambiguous.
        if top != "train":
            raise DataError(f"{prefix}{rel}: file name must start with PublicTest_ or PrivateTest_ "
                            "to tell validation from test")
        split = "train"
    if SPLIT_FOLDERS[split] != top:
        raise DataError(f"{prefix}{rel}: a {usage} image in folder '{top}/'")
    return split, FOLDER_LABELS[emotion.lower()]


def _find_layout(source: Path, files: list[str]) -> tuple[str, list[str]]:
    """(root, sorted image paths relative to root) among the source's file paths.

    The root is the folder holding train/ and test/: '' or, in many zips, 'archive/'.
    Hidden files and macOS '__MACOSX/' copies are skipped.
    """
    files = [f for f in files if "/." not in "/" + f and "__MACOSX/" not in f]
    images = [f for f in files if f.lower().endswith(IMAGE_EXTS)]
    if not images:
        raise DataError(f"{source}: unknown layout, no images; expected train/<emotion>/*.jpg "
                        "and test/<emotion>/*.jpg (or give fer2013.csv)")
    shallow = [f for f in images if f.count("/") < 2]
    if shallow:
        raise DataError(f"{source}/{shallow[0]}: unknown layout; expected <train|test>/<emotion>/<image>")
    roots = {f.rsplit("/", 3)[0] + "/" if f.count("/") > 2 else "" for f in images}   # before <top>/<emotion>/<file>
    if len(roots) != 1:
        raise DataError(f"{source}: unknown layout, images under several roots {sorted(roots)}")
    root = roots.pop()
    for f in files:   # a stray file among the faces is a mistake worth naming, not skipping
        if f.startswith((root + "train/", root + "test/")) and not f.lower().endswith(IMAGE_EXTS):
            raise DataError(f"{source}/{f}: not an image file (expected {', '.join(IMAGE_EXTS)})")
    return root, sorted(f[len(root):] for f in images)


def _check_nonempty(source, counts) -> None:
    for split in SPLITS:
        if not counts[split]:
            raise DataError(f"{source}: split '{split}' ({SPLIT_USAGE[split]}) has no images")


def _read_images(source: Path, root: str, rels: list[str], read_bytes, resize: bool, progress: bool) -> dict:
    """Decode every image straight into preallocated per-split arrays (no list of arrays, no stacking)."""
    prefix = f"{source}/{root}"
    parsed = [_parse_rel(r, prefix) for r in rels]   # check every path before decoding any
    counts = Counter(split for split, _ in parsed)
    _check_nonempty(source, counts)
    out = {s: (np.empty((counts[s], IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.empty(counts[s], np.int8), [])
           for s in SPLITS}
    n_resized = 0
    for rel, (split, label) in bar(zip(rels, parsed), total=len(rels), desc="ingest", unit="img",
                                   leave=False, mininterval=1, disable=not progress):
        images, labels, names = out[split]
        data = read_bytes(root + rel)
        if not data:
            raise DataError(f"{prefix}{rel}: corrupt or not an image (an empty file, 0 bytes)")
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise DataError(f"{prefix}{rel}: corrupt or not an image")
        if img.shape != (IMAGE_SIZE, IMAGE_SIZE):
            if not resize:
                raise DataError(f"{prefix}{rel}: image is {img.shape[1]}x{img.shape[0]}, expected "
                                f"{IMAGE_SIZE}x{IMAGE_SIZE} (pass --resize to resize it)")
            img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
            n_resized += 1
        images[len(names)], labels[len(names)] = img, label
        names.append(rel)
    if n_resized:
        log.warning("%s: resized %d of %d images to %dx%d (--resize)", source, n_resized, len(rels),
                    IMAGE_SIZE, IMAGE_SIZE)
    return out


def read_folder(path, resize: bool = False, progress: bool = False) -> dict:
    """Read the Kaggle image-folder layout from a directory."""
    path = Path(path)
    files = [Path(d, f).relative_to(path).as_posix() for d, _, fs in os.walk(path) for f in fs]
    root, rels = _find_layout(path, files)
    return _read_images(path, root, rels, lambda name: (path / name).read_bytes(), resize, progress)


def _read_member(fd: int, info: zipfile.ZipInfo, zip_path) -> bytes:
    """One stored or deflated member's bytes, read with os.pread straight from the archive.

    zipfile.ZipFile.read costs ~100 us per member (seeks, header parsing, a ZipExtFile),
    several times the inflate itself on FER's 36k tiny JPEGs; this does the same work
    with two reads per member and still checks the CRC.
    """
    try:
        head = os.pread(fd, 30, info.header_offset)   # local file header: signature ... name and extra lengths
        if head[:4] != b"PK\x03\x04":
            raise ValueError("bad local header")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        data = os.pread(fd, info.compress_size, info.header_offset + 30 + name_len + extra_len)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            data = zlib.decompress(data, -zlib.MAX_WBITS)   # raw deflate stream, no zlib header
        if zlib.crc32(data) != info.CRC:
            raise ValueError("CRC mismatch")
    except (ValueError, struct.error, zlib.error) as e:
        raise DataError(f"{zip_path}/{info.filename}: corrupt zip entry ({e})") from None
    return data


def read_zip(path, resize: bool = False, progress: bool = False) -> dict:
    """Read the Kaggle image-folder layout from the .zip without extracting it."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a valid zip archive ({e})") from None
    with zf, open(path, "rb") as f:
        infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
        root, rels = _find_layout(path, list(infos))
        plain = all(i.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) and not i.flag_bits & 1
                    for i in infos.values())
        # bzip2/lzma/encrypted members are rare: let zipfile read (or refuse) those archives
        read_bytes = (lambda name: _read_member(f.fileno(), infos[name], path)) if plain else zf.read
        return _read_images(path, root, rels, read_bytes, resize, progress)


# ----------------------------------------------------------------------------- CSV

def read_csv(path, resize: bool = False, progress: bool = False) -> dict:
    """Read fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels).

    `resize` does not apply (a row of 48*48 pixels has no other shape to resize from).
    """
    path = Path(path)
    try:
        return _read_csv(path, progress)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text CSV file (byte {e.start} is not UTF-8); give fer2013.csv") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None


def _read_csv(path: Path, progress: bool) -> dict:
    out = {s: ([], [], []) for s in SPLITS}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = {"emotion", "pixels", "usage"} - set(header)
        if missing:
            raise DataError(f"{path} line 1: CSV header lacks column(s) {sorted(missing)}; got {header}")
        ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("usage")
        rows = bar(enumerate(reader, start=2), desc="ingest", unit="row", leave=False, mininterval=1,
                   disable=not progress)
        for lineno, row in rows:
            if not row:
                continue
            where = f"{path} line {lineno}"
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, expected {len(header)}")
            label, usage = CSV_LABELS.get(row[ie].strip()), row[iu].strip()
            if label is None:
                raise DataError(f"{where}: bad label {row[ie]!r}, expected 0..{len(CLASS_NAMES) - 1}")
            if usage not in USAGE_SPLITS:
                raise DataError(f"{where}: bad Usage {row[iu]!r}, expected one of {list(USAGE_SPLITS)}")
            try:   # np.fromstring's text mode is ~4x faster than np.array(str.split())
                px = np.fromstring(row[ip], dtype=np.int32, sep=" ")
            except ValueError:
                raise DataError(f"{where}: pixels are not integers") from None
            if px.size != IMAGE_SIZE * IMAGE_SIZE:
                raise DataError(f"{where}: {px.size} pixels, expected {IMAGE_SIZE * IMAGE_SIZE} "
                                f"({IMAGE_SIZE}x{IMAGE_SIZE})")
            if px.min() < 0 or px.max() > 255:
                raise DataError(f"{where}: pixel values outside 0..255")
            images, labels, names = out[USAGE_SPLITS[usage]]
            images.append(px.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
            labels.append(label)
            names.append(f"{path.name}:{lineno}")
    _check_nonempty(path, {s: len(out[s][0]) for s in SPLITS})
    return {s: (np.stack(i), np.asarray(y, np.int8), n) for s, (i, y, n) in out.items()}


# ----------------------------------------------------------------------------- any source

def read_source(source, resize: bool = False, progress: bool = False) -> dict:
    """Read any supported source into {split: (images uint8 (N,48,48), labels int8 (N,), names)}."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"FER-2013 source not found: {source}")
    if source.is_dir():
        return read_folder(source, resize, progress)
    if source.suffix.lower() == ".zip" or zipfile.is_zipfile(source):
        return read_zip(source, resize, progress)
    if source.suffix.lower() == ".csv":
        return read_csv(source, resize, progress)
    raise DataError(f"{source}: unknown layout; give the image-folder directory, its .zip, "
                    "or fer2013.csv / icml_face_data.csv")


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

def build_hdf5(source, out="data/fer2013.h5", resize: bool = False, force: bool = False,
               progress: bool = True, overwrite: bool = True) -> Path:
    """Ingest `source` into `out` atomically; reuse `out` if it already holds this source. An `out` that
    holds anything else (or force, to rebuild) is replaced only with overwrite (`fer preprocess --overwrite`)."""
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"FER-2013 source not found: {source}")
    check_output_path(out, "--out", inputs=(source,) if source.is_file() else ())
    if source.is_dir() and inside(out, source):
        raise UserError(f"--out {out}: lies inside the source folder {source}; write it elsewhere")
    sha = source_sha256(source)
    if out.exists():
        held = "not a readable HDF5 file"
        try:
            with h5py.File(out, "r") as f:   # same source, same ingest code, same rules: reuse it
                a = f.attrs   # (a file made without --resize had only 48x48 images: fine with it too)
                if (not force and a.get("source_sha256") == sha and a.get("ingest_version") == INGEST_VERSION
                        and (resize or not a.get("resized_allowed", False))):
                    log.info("%s already holds %s (sha256 %s...); reusing it", out, source, sha[:12])
                    return out
                held = f"data from {a.get('source_name', 'another source')}" + (" (--force)" if force else "")
        except OSError:
            pass
        if not overwrite:
            raise UserError(f"--out {out}: exists and holds {held}; pass --overwrite to replace it, or give another --out")
        log.warning("%s holds %s; replacing it", out, held)
    return write_hdf5(out, read_source(source, resize, progress), source=str(source), source_name=source.name,
                      source_sha256=sha, resized_allowed=resize)


def pixel_counts(images: np.ndarray) -> np.ndarray:
    """How many pixels of uint8 `images` take each value 0..255, (256,) float64, exact."""
    # cv2.calcHist counts uint8 without the int64 copy np.bincount makes; its float32 counts
    # are exact below 2**24, so count 1024 faces (2.4M pixels) at a time.
    return sum((cv2.calcHist([images[i:i + 1024].reshape(-1, IMAGE_SIZE)], [0], None, [256], [0, 256])
                .astype(np.float64) for i in range(0, len(images), 1024)), np.zeros((256, 1))).ravel()


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Exact mean and std of uint8 pixels scaled to [0, 1], from their histogram (no float copy)."""
    p = pixel_counts(images) / images.size
    values = np.arange(256) / 255.0
    mean = float(p @ values)
    return mean, float(np.sqrt(p @ (values - mean) ** 2))


def write_hdf5(out, splits: dict, **attrs) -> Path:
    """Write {split: (images, labels, names)} plus file attributes `attrs` to `out`, atomically.

    Through report.write_atomic: readers see the old file or the complete new one, and a
    failure leaves the old one untouched.
    """
    mean, std = pixel_stats(splits["train"][0])
    # HDF5 on a full disk dies in its own error handling (a segfault at exit): check the space first
    need = sum(im.nbytes + lab.nbytes + 64 * len(names) for im, lab, names in splits.values()) + (1 << 20)
    folder = next(p for p in Path(out).absolute().parents if p.exists())
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device: {need / 2**20:.0f} MB needed, "
                                    f"{free / 2**20:.0f} MB free", str(out))

    def write(tmp):
        with h5py.File(tmp, "x") as f:   # "x": create, never overwrite; mode 0666 minus the umask
            for split in SPLITS:
                images, labels, names = splits[split]
                g = f.create_group(split)
                # Decoded faces barely compress (gzip saves ~4% for ~2x the ingest time), so images
                # are chunked, 256 faces per chunk for batched reads, but not compressed.
                g.create_dataset("images", data=images, chunks=(min(len(images), 256), IMAGE_SIZE, IMAGE_SIZE))
                g.create_dataset("labels", data=labels, compression="gzip")
                g.create_dataset("names", data=np.array(names, dtype=h5py.string_dtype()), compression="gzip")
                g.attrs["usage"] = SPLIT_USAGE[split]
                g.attrs["class_counts"] = np.bincount(labels, minlength=len(CLASS_NAMES))
            f.attrs.update(class_names=list(CLASS_NAMES), splits=list(SPLITS),
                           counts=[len(splits[s][0]) for s in SPLITS], mean=mean, std=std,
                           ingest_version=INGEST_VERSION, **attrs)

    return write_atomic(out, write)


# Where the README's set-up leaves the HDF5, first found wins: `fer preprocess`'s default, then what
# `make study-smoke` (fer study --profile smoke) and `make study` write, with and without FER-2013.
SETUP_H5 = ("data/fer2013.h5", "runs/study/smoke-real/fer2013.h5", "runs/study/full-real/fer2013.h5",
            "runs/study/smoke-synthetic/synthetic.h5")
SETUP_COMMAND = "make study-smoke DATA=path/to/archive.zip"
ROOT_ENV = "FER_ROOT"   # the folder SETUP_H5 is relative to; unset: the checkout (the package's parent)


def repo_root() -> Path:
    """The checkout the notebooks belong to: $FER_ROOT; else the folder above the working folder when that is
    a notebooks/ folder (JupyterLab and papermill run a notebook there, in a clone or a copy of one); else the
    checkout this package sits in (as fer_lib.study.ROOT)."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    here = Path.cwd()
    return here.parent if here.name == "notebooks" else Path(__file__).resolve().parents[1]


def find_h5(path=None, source: str = "") -> str:
    """The HDF5 a notebook reads: `path` as given; None: the first of SETUP_H5 that exists under repo_root(),
    whatever the working folder (JupyterLab's is notebooks/). With a `source` to ingest (notebook 01) None is
    where to write it: data/fer2013.h5. Nothing found: UserError naming what was looked for and the set-up."""
    if path is not None:
        return str(path)
    root = repo_root()
    if source:
        return str(root / SETUP_H5[0])
    for rel in SETUP_H5:
        if (root / rel).is_file():
            return str(root / rel)
    raise UserError(f"h5_path None: no HDF5 from the set-up under {root} (looked for {', '.join(SETUP_H5)}); "
                    f"make one with `{SETUP_COMMAND}` (without DATA: synthetic faces), or set h5_path")


@contextlib.contextmanager
def open_h5(path):
    """h5py.File(path, "r") with errors that name the file and say how to make a good one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path} (make it with: fer preprocess archive.zip --out {path})")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e}); rebuild it with fer preprocess") from None
    try:
        if "ingest_version" not in f.attrs:
            raise DataError(f"{path}: an HDF5 file, but not one written by fer preprocess")
        yield f
    except (KeyError, OSError) as e:
        raise DataError(f"{path}: incomplete or damaged ({e}); rebuild it with fer preprocess") from None
    finally:
        f.close()


def read_info(path) -> dict:
    """The file's metadata: class names, per-split counts, normalization, provenance."""
    with open_h5(path) as f:
        a = f.attrs
        return {
            "class_names": [str(c) for c in a["class_names"]],
            "counts": dict(zip(SPLITS, (int(c) for c in a["counts"]))),
            "class_counts": {s: f[s].attrs["class_counts"].astype(int).tolist() for s in SPLITS if s in f},
            "mean": float(a["mean"]), "std": float(a["std"]),
            "source": str(a["source"]), "source_sha256": str(a["source_sha256"]),
            "ingest_version": int(a["ingest_version"]),
            "synthetic": bool(a.get("synthetic", False)),
        }


def check_split(path, split: str, images, labels, mean: float, std: float) -> None:
    """DataError naming what is wrong with a split as read: its shape, pixel type, labels, or the file's
    normalisation. Found here, when the file is opened, not by an evaluation after hours of training."""
    where = f"{path}: split '{split}'"
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise DataError(f"{where}: images are {images.dtype} {images.shape}, expected uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE})")
    if len(labels) != len(images):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    bad = (labels < 0) | (labels >= len(CLASS_NAMES))
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} label(s) outside 0..{len(CLASS_NAMES) - 1} "
                        f"(first: {int(labels[bad][0])} at index {int(np.flatnonzero(bad)[0])})")
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise DataError(f"{path}: its normalisation (mean {mean}, std {std}) is not usable; rebuild it with fer preprocess")


def load_split(path, split: str, normalize: bool = False, as_tensor: bool = False):
    """(images, labels) of one split: uint8 (N,48,48) or, normalized, float32 with the train stats.

    as_tensor gives torch tensors, images shaped (N, 1, 48, 48).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    with open_h5(path) as f:
        if split not in f or "images" not in f[split] or "labels" not in f[split]:
            raise DataError(f"{path}: no split '{split}' ({SPLIT_USAGE[split]}); rebuild it with fer preprocess "
                            "from a source that has it")
        images = f[split]["images"][:]
        labels = f[split]["labels"][:].astype(np.int64)
        mean, std = float(f.attrs["mean"]), float(f.attrs["std"])
    check_split(path, split, images, labels, mean, std)
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
    p.add_argument("--force", action="store_true", help="rebuild even if OUT holds this source (with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it holds something else")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    try:
        out = build_hdf5(args.source, args.out, resize=args.resize, force=args.force, progress=args.progress,
                         overwrite=args.overwrite)
    except (DataError, FileNotFoundError) as e:   # the user's input, not our bug: no traceback
        print(f"fer preprocess: error: {e}", file=sys.stderr)
        return 2
    info = read_info(out)
    print(f"{out}: " + ", ".join(f"{s} {n}" for s, n in info["counts"].items())
          + f"; mean {info['mean']:.4f} std {info['std']:.4f}")
    return 0
