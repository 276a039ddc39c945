"""fer_lib.data: every source form, every bad input named, atomic writes, the reader, real FER-2013."""
import logging
import os
import zipfile

import cv2
import h5py
import numpy as np
import pytest

from fer_lib.cli import main
from fer_lib.data import CLASS_NAMES, DataError, build_hdf5, load_split, pixel_stats, read_info, read_source, source_sha256

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")   # folder names, label order
# per emotion: file names in the Kaggle layout -> 7 x (2, 1, 1) images in train/val/test
FILES = {"train": ["Training_{}0.jpg", "Training_{}1.jpg"], "test": ["PublicTest_{}2.jpg", "PrivateTest_{}3.jpg"]}
REAL_CLASS_COUNTS = {   # /work/shared/fer2013/README.md, folder name: (train, test = PublicTest + PrivateTest)
    "angry": (3995, 958), "disgust": (436, 111), "fear": (4097, 1024), "happy": (7215, 1774),
    "neutral": (4965, 1233), "sad": (4830, 1247), "surprise": (3171, 831)}
REAL_SHA256 = "f85e6283967826630e2a2c1158f6d9debf82bd1450ad71ef53b47287a036905d"


def write_jpg(path, seed, size=48):
    """A random grey JPEG; returns the exact (size, size) uint8 pixels a decoder gets back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    path.write_bytes(cv2.imencode(".jpg", img)[1].tobytes())
    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)


@pytest.fixture
def faces_dir(tmp_path):
    """The Kaggle image-folder layout with 28 tiny JPEGs under tmp_path/faces."""
    root = tmp_path / "faces"
    for e, emotion in enumerate(EMOTIONS):
        for top, names in FILES.items():
            for name in names:
                write_jpg(root / top / emotion / name.format(e), seed=len(list(root.rglob("*.jpg"))))
    return root


def zip_dir(folder, zip_path, prefix="", compression=zipfile.ZIP_DEFLATED):
    """Zip `folder`'s files as prefix + relative path (prefix 'archive/' = a zip with a top-level folder)."""
    with zipfile.ZipFile(zip_path, "w", compression) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return zip_path


def write_csv(path, rows, header="emotion,pixels,Usage"):
    """rows: (label, pixels (2304,) or text, usage) -> a fer2013.csv-shaped file."""
    cols = [h.strip().lower() for h in header.split(",")]
    lines = [header]
    for label, px, usage in rows:
        px = px if isinstance(px, str) else " ".join(map(str, px))
        values = {"emotion": str(label), "pixels": px, "usage": usage}
        lines.append(",".join(values[c] for c in cols))
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_rows(n=14, seed=0):
    rng = np.random.default_rng(seed)
    usages = ["Training", "PublicTest", "PrivateTest"]
    return [(i % 7, rng.integers(0, 256, 2304), usages[i % 3]) for i in range(n)]


def arrays(h5):
    with h5py.File(h5, "r") as f:
        return {s: (f[s]["images"][:], f[s]["labels"][:], f[s]["names"][:].tolist()) for s in ("train", "val", "test")}


# ----------------------------------------------------------------------------- good sources

def test_folder_zip_and_zip_with_top_folder_give_identical_arrays(faces_dir, tmp_path):
    a = arrays(build_hdf5(faces_dir, tmp_path / "dir.h5", progress=False))
    b = arrays(build_hdf5(zip_dir(faces_dir, tmp_path / "a.zip"), tmp_path / "zip.h5", progress=False))
    c = arrays(build_hdf5(zip_dir(faces_dir, tmp_path / "b.zip", "archive/", zipfile.ZIP_STORED),
                          tmp_path / "zip2.h5", progress=False))
    for split in a:
        for x, y, z in zip(a[split], b[split], c[split]):
            assert np.array_equal(x, y) and np.array_equal(x, z) and type(x) is type(y)
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and x.tobytes() == y.tobytes() == z.tobytes()
    assert {s: len(a[s][0]) for s in a} == {"train": 14, "val": 7, "test": 7}
    assert a["train"][0].dtype == np.uint8 and a["train"][0].shape == (14, 48, 48)
    # folders sort a-z (angry ... neutral, sad, surprise); labels keep the canonical order
    assert a["train"][1].dtype == np.int8 and a["val"][1].tolist() == [0, 1, 2, 3, 6, 4, 5]
    assert a["val"][2][3] == b"test/happy/PublicTest_32.jpg"


def test_pixels_are_the_decoded_jpeg_and_labels_follow_folders(faces_dir, tmp_path):
    splits = read_source(faces_dir)
    images, labels, names = splits["test"]
    i = names.index("test/sad/PrivateTest_43.jpg")
    expected = cv2.imdecode(np.fromfile(faces_dir / names[i], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(images[i], expected) and labels[i] == CLASS_NAMES.index("Sad") == 4
    assert [CLASS_NAMES[y].lower() for y in splits["train"][1]] == [n.split("/")[1] for n in splits["train"][2]]


def test_hidden_files_and_macos_copies_are_skipped(faces_dir, tmp_path):
    (faces_dir / "train" / "happy" / ".DS_Store").write_bytes(b"\0junk")
    zip_path = zip_dir(faces_dir, tmp_path / "mac.zip", "archive/")
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr("__MACOSX/archive/train/happy/._Training_30.jpg", b"resource fork")
        zf.writestr("archive/README.txt", "top-level notes are fine")
    assert len(read_source(zip_path)["train"][0]) == len(read_source(faces_dir)["train"][0]) == 14


@pytest.mark.parametrize("header", ["emotion,pixels,Usage", "emotion, Usage, pixels"])
def test_csv_forms(tmp_path, header):
    rows = csv_rows()
    splits = read_source(write_csv(tmp_path / "fer.csv", rows, header))
    train = [r for r in rows if r[2] == "Training"]
    assert np.array_equal(splits["train"][0], np.stack([r[1] for r in train]).reshape(-1, 48, 48).astype(np.uint8))
    assert splits["train"][1].tolist() == [r[0] for r in train]
    assert {s: len(v[0]) for s, v in splits.items()} == {"train": 5, "val": 5, "test": 4}
    assert splits["val"][2][0] == "fer.csv:3"    # the row's line in the file


def test_csv_to_hdf5_and_cli(tmp_path, capsys):
    csv_path = write_csv(tmp_path / "fer2013.csv", csv_rows())
    out = tmp_path / "out" / "fer.h5"
    assert main(["preprocess", str(csv_path), "--out", str(out), "--no-progress"]) == 0
    assert "train 5, val 5, test 4" in capsys.readouterr().out
    info = read_info(out)
    assert info["counts"] == {"train": 5, "val": 5, "test": 4} and info["source_sha256"] == source_sha256(csv_path)
    assert info["class_names"] == list(CLASS_NAMES) and not info["synthetic"]


def test_resize_only_when_asked(faces_dir, tmp_path, caplog):
    write_jpg(faces_dir / "train" / "fear" / "Training_big.jpg", seed=99, size=64)
    with pytest.raises(DataError, match=r"train/fear/Training_big\.jpg: image is 64x64, expected 48x48 "
                                        r"\(pass --resize"):
        read_source(faces_dir)
    with caplog.at_level(logging.WARNING, logger="fer_lib.data"):
        out = build_hdf5(faces_dir, tmp_path / "r.h5", resize=True, progress=False)
    assert "resized 1 of 29 images to 48x48" in caplog.text
    assert read_info(out)["counts"]["train"] == 15


# ----------------------------------------------------------------------------- bad inputs, culprit named

def test_missing_path(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="nowhere.zip"):
        build_hdf5(tmp_path / "nowhere.zip", tmp_path / "x.h5")
    assert main(["preprocess", str(tmp_path / "nowhere.zip"), "--out", str(tmp_path / "x.h5")]) == 2
    assert "fer preprocess: error: FER-2013 source not found:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rel, match", [
    ("train/joy/Training_9.jpg", r"train/joy/Training_9\.jpg: unknown emotion folder 'joy'"),
    ("valid/happy/Training_9.jpg", r"valid/happy/Training_9\.jpg: unknown layout"),
    ("test/happy/face_9.jpg", r"test/happy/face_9\.jpg: file name must start with PublicTest_ or PrivateTest_"),
    ("train/happy/PublicTest_9.jpg", r"train/happy/PublicTest_9\.jpg: a PublicTest image in folder 'train/'"),
    ("loose.jpg", r"faces/loose\.jpg: unknown layout"),
    ("x/train/happy/Training_9.jpg", r"unknown layout, images under several roots"),
])
def test_bad_layouts(faces_dir, rel, match):
    write_jpg(faces_dir / rel, seed=1)
    with pytest.raises(DataError, match=match):
        read_source(faces_dir)


def test_unknown_source_kinds(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: unknown layout, no images"):
        read_source(tmp_path / "empty")
    (tmp_path / "faces.tar").write_bytes(b"not a tar either")
    with pytest.raises(DataError, match=r"faces\.tar: unknown layout"):
        read_source(tmp_path / "faces.tar")
    (tmp_path / "bad.zip").write_bytes(b"PK but not really")
    with pytest.raises(DataError, match=r"bad\.zip: not a valid zip archive"):
        read_source(tmp_path / "bad.zip")


def test_corrupt_and_non_image_files(faces_dir, tmp_path):
    bad = faces_dir / "train" / "happy" / "Training_bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"train/happy/Training_bad\.jpg: corrupt or not an image"):
        read_source(faces_dir)
    with pytest.raises(DataError, match=r"a\.zip/train/happy/Training_bad\.jpg: corrupt or not an image"):
        read_source(zip_dir(faces_dir, tmp_path / "a.zip"))
    bad.unlink()
    (faces_dir / "test" / "sad" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"test/sad/notes\.txt: not an image file"):
        read_source(faces_dir)


def test_corrupt_zip_member_is_named(faces_dir, tmp_path):
    zip_path = zip_dir(faces_dir, tmp_path / "stored.zip", compression=zipfile.ZIP_STORED)
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo("train/fear/Training_20.jpg")
    raw = bytearray(zip_path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF    # flip a byte inside the JPEG data
    zip_path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"stored\.zip/train/fear/Training_20\.jpg: corrupt zip entry \(CRC mismatch\)"):
        read_source(zip_path)


def test_empty_split(faces_dir):
    for p in faces_dir.rglob("PrivateTest_*.jpg"):
        p.unlink()
    with pytest.raises(DataError, match=r"faces: split 'test' \(PrivateTest\) has no images"):
        read_source(faces_dir)


@pytest.mark.parametrize("row, match", [
    ("3,1 2 3,Training", r"line 3: 3 pixels, expected 2304"),
    ("7," + " ".join(["0"] * 2304) + ",Training", r"line 3: bad label '7'"),
    ("x," + " ".join(["0"] * 2304) + ",Training", r"line 3: bad label 'x'"),
    ("3," + " ".join(["0"] * 2304) + ",Train", r"line 3: bad Usage 'Train'"),
    ("3," + " ".join(["0"] * 2303) + " 1.5,Training", r"line 3: pixels are not integers"),
    ("3," + " ".join(["0"] * 2303) + " 256,Training", r"line 3: pixel values outside 0..255"),
    ("3,Training", r"line 3: 2 fields, expected 3"),
])
def test_bad_csv_rows(tmp_path, row, match):
    path = write_csv(tmp_path / "fer2013.csv", csv_rows(1))
    path.write_text(path.read_text() + row + "\n")
    with pytest.raises(DataError, match=r"fer2013\.csv " + match):
        read_source(path)


def test_bad_csv_header_and_empty_split(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels\n0,1 2\n")
    with pytest.raises(DataError, match=r"fer2013\.csv line 1: CSV header lacks column\(s\) \['usage'\]"):
        read_source(path)
    write_csv(path, [r for r in csv_rows() if r[2] != "PublicTest"])
    with pytest.raises(DataError, match=r"fer2013\.csv: split 'val' \(PublicTest\) has no images"):
        read_source(path)


# ----------------------------------------------------------------------------- atomic writes and reuse

def test_failed_ingest_keeps_the_good_file_and_leaves_no_temp(faces_dir, tmp_path, monkeypatch):
    out = build_hdf5(faces_dir, tmp_path / "fer.h5", progress=False)
    before = out.read_bytes()
    (faces_dir / "train" / "happy" / "Training_bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="Training_bad.jpg"):
        build_hdf5(faces_dir, out, progress=False)

    def fail(*args, **kwargs):      # dies half-way through writing the new file
        raise KeyboardInterrupt
    (faces_dir / "train" / "happy" / "Training_bad.jpg").unlink()
    write_jpg(faces_dir / "train" / "happy" / "Training_new.jpg", seed=7)
    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(KeyboardInterrupt):
        build_hdf5(faces_dir, out, progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "fer.h5"]    # no *.tmp left


def test_rerun_reuses_unchanged_source_and_rebuilds_changed(faces_dir, tmp_path):
    out = build_hdf5(faces_dir, tmp_path / "fer.h5", progress=False)
    def stamp():
        return out.stat().st_ino, out.stat().st_mtime_ns
    first = stamp()
    assert build_hdf5(faces_dir, out, progress=False) == out and stamp() == first
    assert build_hdf5(faces_dir, out, resize=True, progress=False) == out and stamp() == first
    build_hdf5(faces_dir, out, force=True, progress=False)
    assert stamp() != first
    write_jpg(faces_dir / "train" / "happy" / "Training_new.jpg", seed=7)
    assert read_info(build_hdf5(faces_dir, out, progress=False))["counts"]["train"] == 15


def test_output_file_mode_follows_umask(faces_dir, tmp_path):
    old = os.umask(0o022)
    try:
        out = build_hdf5(faces_dir, tmp_path / "fer.h5", progress=False)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- reader

def test_load_split_shapes_and_normalization(faces_dir, tmp_path):
    out = build_hdf5(faces_dir, tmp_path / "fer.h5", progress=False)
    x, y = load_split(out, "train")
    assert x.dtype == np.uint8 and x.shape == (14, 48, 48) and y.dtype == np.int64 and y.shape == (14,)
    xn, _ = load_split(out, "train", normalize=True)
    assert xn.dtype == np.float32 and abs(xn.mean()) < 1e-5 and abs(xn.std() - 1) < 1e-5
    info = read_info(out)
    assert np.allclose(xn, (x / 255.0 - info["mean"]) / info["std"], atol=1e-5)
    xt, yt = load_split(out, "val", normalize=True, as_tensor=True)
    assert tuple(xt.shape) == (7, 1, 48, 48) and str(xt.dtype) == "torch.float32" and str(yt.dtype) == "torch.int64"
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        load_split(out, "valid")


def test_pixel_stats_are_exact():
    x = np.random.default_rng(0).integers(0, 256, (3000, 48, 48), dtype=np.uint8)
    mean, std = pixel_stats(x)
    assert mean == pytest.approx((x / 255.0).mean(), abs=1e-12) and std == pytest.approx((x / 255.0).std(), abs=1e-12)


# ----------------------------------------------------------------------------- the real FER-2013

@pytest.mark.real_data
def test_real_fer2013_counts(real_h5, real_zip):
    info = read_info(real_h5)
    assert info["counts"] == {"train": 28709, "val": 3589, "test": 3589}
    cc = {s: np.array(v) for s, v in info["class_counts"].items()}
    for folder, (n_train, n_test) in REAL_CLASS_COUNTS.items():
        c = EMOTIONS.index(folder)
        assert (cc["train"][c], cc["val"][c] + cc["test"][c]) == (n_train, n_test), folder
    assert info["source_sha256"] == REAL_SHA256 == source_sha256(real_zip)
    x, y = load_split(real_h5, "val")
    assert x.shape == (3589, 48, 48) and x.dtype == np.uint8 and np.bincount(y).tolist() == cc["val"].tolist()
    assert 0.4 < info["mean"] < 0.6 and 0.2 < info["std"] < 0.4


def test_find_h5_takes_the_setups_file_from_the_repo_root(tmp_path, monkeypatch):
    from fer_lib.data import ROOT_ENV, SETUP_H5, find_h5
    from fer_lib.errors import UserError
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)  # any working folder: the notebooks' is notebooks/
    with pytest.raises(UserError, match=r"runs/study/smoke-real/fer2013.h5.*make study-smoke DATA="):
        find_h5()
    assert find_h5("x.h5") == "x.h5"                                        # a path is kept as given
    assert find_h5(None, source="archive.zip") == str(tmp_path / "data" / "fer2013.h5")  # 01: where to write
    for rel in reversed(SETUP_H5):                                          # the earliest that exists wins
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
        assert find_h5() == str(tmp_path / rel)


def test_a_notebook_in_a_notebooks_folder_finds_the_data_of_its_own_checkout(tmp_path, monkeypatch):
    """JupyterLab over a copy of the repo: the data beside that copy's notebooks/, never the installed
    package's checkout (which a notebook run elsewhere must not write into)."""
    from fer_lib.data import ROOT_ENV, SETUP_H5, find_h5, repo_root
    monkeypatch.delenv(ROOT_ENV, raising=False)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert repo_root() == tmp_path
    assert find_h5(None, source="fer2013.csv") == str(tmp_path / "data" / "fer2013.h5")
    (tmp_path / SETUP_H5[1]).parent.mkdir(parents=True)
    (tmp_path / SETUP_H5[1]).touch()
    assert find_h5() == str(tmp_path / SETUP_H5[1])
    monkeypatch.chdir(tmp_path)                            # elsewhere: the package's own checkout
    assert repo_root() == type(tmp_path)(__file__).resolve().parents[1]


def test_notebook_01_without_data_writes_synthetic_faces_where_the_setup_does(tmp_path, monkeypatch):
    from fer_lib.data import ROOT_ENV, SETUP_H5, find_h5
    from fer_lib.synthetic import prepare_dataset
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    info = prepare_dataset("", None, (3, 2, 2), progress=False)
    assert info["synthetic"] and info["path"] == str(tmp_path / SETUP_H5[-1]) == find_h5()
