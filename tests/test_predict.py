"""fer predict and detect_emotions on photos made here: where the face is, bad files, aligned-face mode."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest

import fer_lib
from fer_lib import cli
from fer_lib.models import load_model
from fer_lib.predict import COLUMNS, detect_emotions
from fer_lib.synthetic import draw_face

BOX = (200, 80, 140, 140)  # x, y, w, h where the face is put


def photo(label=3, box=BOX, size=(480, 320), colour=True) -> np.ndarray:
    """A noisy grey photo with one synthetic face (upscaled draw_face) at `box`."""
    rng = np.random.default_rng(label)
    img = np.full(size[::-1], 110, np.uint8) + rng.integers(0, 4, size[::-1], dtype=np.uint8)
    x, y, w, h = box
    img[y:y + h, x:x + w] = cv2.resize(draw_face(label, np.random.default_rng(0)), (w, h),
                                       interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if colour else img


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


@pytest.mark.parametrize("colour", [True, False])
def test_the_face_is_found_where_it_was_put(tiny_checkpoint, colour):
    faces = detect_emotions(photo(colour=colour), tiny_checkpoint)
    assert len(faces) == 1
    f = faces[0]
    assert iou(f["box"], BOX) > 0.6, f["box"]
    assert list(f["proba"]) == load_model(tiny_checkpoint).class_names
    assert sum(f["proba"].values()) == pytest.approx(1, abs=1e-5)
    assert f["label"] == max(f["proba"], key=f["proba"].get) and f["confidence"] == max(f["proba"].values())


def test_detect_emotions_reads_a_path_and_is_exported(tiny_checkpoint, tmp_path):
    cv2.imwrite(str(tmp_path / "p.png"), photo())
    from_path = fer_lib.detect_emotions(str(tmp_path / "p.png"), tiny_checkpoint)
    from_array = detect_emotions(photo(), tiny_checkpoint)
    assert from_path == from_array  # png is lossless: the same pixels, the same answer
    assert detect_emotions(np.full((200, 300, 3), 110, np.uint8), tiny_checkpoint) == []  # no face, no guess


def test_no_detect_agrees_with_predict_proba_exactly(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    faces = np.stack([draw_face(c % 7, rng) for c in range(9)])  # FER-2013-shaped: (9, 48, 48) uint8
    for i, f in enumerate(faces):
        cv2.imwrite(str(tmp_path / f"face_{i}.png"), f)
    assert cli.main(["predict", str(tmp_path), "--no-detect", "--checkpoint", str(tiny_checkpoint),
                     "--out", str(tmp_path / "out")]) == 0
    rows = pd.read_csv(tmp_path / "out" / "faces.csv")
    assert list(rows.columns) == list(COLUMNS) and len(rows) == 9
    expected = load_model(tiny_checkpoint).predict_proba(faces)
    got = rows.sort_values("file")[[f"p_{c}" for c in range(7)]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert (rows[["x", "y", "w", "h"]].to_numpy() == [0, 0, 48, 48]).all()


def test_a_folder_with_a_bad_file_gives_results_for_the_others(tiny_checkpoint, tmp_path, capsys):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "a.jpg"), photo(3))
    cv2.imwrite(str(d / "sub" / "b.png"), photo(5, box=(60, 40, 160, 160)))
    cv2.imwrite(str(d / "empty_room.png"), np.full((240, 320, 3), 90, np.uint8))
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (d / "notes.txt").write_text("not an image, and not looked at")
    out = tmp_path / "out"
    code = cli.main(["predict", str(d), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--json",
                     "--annotate"])
    cap = capsys.readouterr()
    assert code == 0
    assert [line for line in cap.err.splitlines() if "broken.jpg" in line] == [
        f"fer predict: skipped {d / 'broken.jpg'}: not an image OpenCV can read"]
    assert "3 images, 2 faces, 1 without a face, 1 unreadable (skipped)" in cap.out
    rows = pd.read_csv(out / "faces.csv")
    assert sorted(rows["file"]) == [str(d / "a.jpg"), str(d / "sub" / "b.png")]
    assert iou(rows.loc[rows["file"].str.endswith("b.png"), ["x", "y", "w", "h"]].iloc[0], (60, 40, 160, 160)) > 0.6
    doc = json.loads((out / "faces.json").read_text())
    assert [u["file"] for u in doc["unreadable"]] == [str(d / "broken.jpg")]
    assert len(doc["images"]) == 3
    annotated = sorted(p.relative_to(out / "annotated").as_posix() for p in (out / "annotated").rglob("*.*"))
    assert annotated == ["photos/a.jpg", "photos/empty_room.png", "photos/sub/b.png"]
    assert cv2.imread(str(out / "annotated" / "photos" / "a.jpg")).shape == (320, 480, 3)


def test_finished_results_are_not_overwritten_silently(tiny_checkpoint, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), photo())
    args = ["predict", str(tmp_path / "a.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    assert cli.main(args) == 0
    before = (tmp_path / "o" / "faces.csv").read_bytes()
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exist" in err and "--overwrite" in err
    assert (tmp_path / "o" / "faces.csv").read_bytes() == before
    assert cli.main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing.jpg", "no such file or folder"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no images"),
    (lambda d: (d / "bad.png").write_bytes(b"\x89PNG garbage") and d / "bad.png", "none of the 1 images"),
])
def test_user_mistakes_are_one_line(tiny_checkpoint, tmp_path, capsys, make, words):
    path = make(tmp_path)
    assert cli.main(["predict", str(path), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1] and err[-1].startswith("fer predict: error:") and "Traceback" not in "".join(err)
    assert not (tmp_path / "o" / "faces.csv").exists()
