"""The live-video pipeline end to end on tiny clips made here, its log, and its errors on bad inputs."""
import csv

import cv2
import numpy as np
import pytest

from fer_lib import cli
from fer_lib.synthetic import draw_face
from fer_lib.tracking import Tracker
from fer_lib.video import (VideoError, create_detector, crop_face, format_summary, open_source, run_pipeline,
                           show_in_notebook, track_summary)

FPS, N_FRAMES, SIZE = 24.0, 24, (480, 240)


def write_clip(path, faces: bool) -> str:
    """24 frames at 24 fps: two synthetic faces (upscaled draw_face) drifting right, or none."""
    rng = np.random.default_rng(0)
    big = [cv2.resize(draw_face(c, np.random.default_rng(0)), (140, 140), interpolation=cv2.INTER_CUBIC)
           for c in (3, 5)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for i in range(N_FRAMES):
        frame = np.full(SIZE[::-1], 100, np.uint8) + rng.integers(0, 3, SIZE[::-1], dtype=np.uint8)
        if faces:
            frame[50:190, 20 + i:160 + i] = big[0]
            frame[60:200, 290 + i:430 + i] = big[1]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return str(path)


def read_frames(path) -> list:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (r := cap.read())[0]:
        frames.append(r[1])
    return frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {"faces": write_clip(d / "faces.mp4", True), "empty": write_clip(d / "empty.mp4", False)}


def test_crop_face_margin_and_edges():
    img = np.zeros((100, 100), np.uint8)
    img[20:68, 20:68] = 255
    assert (crop_face(img, (20, 20, 48, 48)) == 255).all()                      # the box, exactly
    grown = crop_face(img, (20, 20, 48, 48), margin=0.25)                       # 72 px around it
    assert grown.shape == (48, 48) and grown.mean() == pytest.approx(255 * 48 ** 2 / 72 ** 2, rel=0.02)
    edge = crop_face(img, (-30, 60, 60, 60))                                   # past the frame: replicated
    assert edge.shape == (48, 48) and edge.dtype == np.uint8


def test_haar_finds_the_synthetic_faces(clips):
    detect = create_detector("haar", scale=0.5)
    frame = read_frames(clips["faces"])[0]
    boxes = detect(frame, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    assert len(boxes) == 2 and sorted(boxes[:, 0] // 240) == [0, 1]          # one face per half


def test_pipeline_end_to_end(clips, tiny_checkpoint, tmp_path, capsys):
    out, log, gif = tmp_path / "o.mp4", tmp_path / "frames.csv", tmp_path / "o.gif"
    r = run_pipeline(clips["faces"], tiny_checkpoint, out, log=str(log), gif=str(gif), gif_every=4, bars=True)
    assert r["frames"] == N_FRAMES and r["size"] == SIZE and r["source_fps"] == pytest.approx(FPS)
    assert not r["no_faces"] and r["tracks"] == 2                  # two faces, two ids, kept all clip long
    assert {rec["track_id"] for rec in r["records"]} == {0, 1} and len(r["records"]) == 2 * N_FRAMES
    assert set(r["stage_s"]) == {"decode", "detect", "classify", "draw", "encode"} and r["fps"] > 0
    frames = read_frames(out)
    assert len(frames) == N_FRAMES and frames[0].shape == (SIZE[1], SIZE[0], 3)
    assert not list(tmp_path.glob("*.partial*"))
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * N_FRAMES
    assert list(rows[0])[:14] == ["frame", "time_s", "track_id", "x", "y", "w", "h"] + [f"p_{c}" for c in range(7)]
    assert {"label", "label_name", "confidence"} <= set(rows[0])
    assert [int(r["frame"]) for r in rows[::2]] == list(range(N_FRAMES))
    assert float(rows[2]["time_s"]) == pytest.approx(1 / FPS, abs=1e-4)
    assert sum(float(rows[5][f"p_{c}"]) for c in range(7)) == pytest.approx(1, abs=1e-5)
    from PIL import Image
    with Image.open(gif) as im:
        assert im.n_frames == N_FRAMES // 4 and im.size == (320, 160)
    assert "2 face tracks" in format_summary(r)
    # Beside the frame log, what each face showed over the clip: one row per track.
    tracks = list(csv.DictReader(open(tmp_path / "frames_tracks.csv", newline="")))
    assert [int(t["track_id"]) for t in tracks] == [0, 1] and [int(t["frames"]) for t in tracks] == [N_FRAMES] * 2
    for t in tracks:
        shares = {k[6:]: float(v) for k, v in t.items() if k.startswith("share_")}
        assert len(shares) == 7 and sum(shares.values()) == pytest.approx(1)
        assert t["dominant"] == max(shares, key=shares.get)
        assert float(t["first_s"]) == 0 and float(t["last_s"]) == pytest.approx((N_FRAMES - 1) / FPS, abs=1e-4)
    clip = r["clip_summary"]
    assert clip["face_frames"] == 2 * N_FRAMES and sum(clip["shares"].values()) == pytest.approx(1)
    assert f"top emotion over the clip: {clip['top']}" in format_summary(r)


def test_track_summary_counts_the_shown_labels():
    names = ["A", "B", "C"]
    recs = [{"track_id": 0, "time_s": t, "label": lab} for t, lab in ((0.0, 1), (0.1, 1), (0.2, 1), (0.3, 2))]
    recs += [{"track_id": 4, "time_s": 0.2, "label": 0}]
    rows, clip = track_summary(recs, names)
    assert rows == [
        {"track_id": 0, "first_s": 0.0, "last_s": 0.3, "frames": 4, "dominant": "B",
         "share_A": 0.0, "share_B": 0.75, "share_C": 0.25},
        {"track_id": 4, "first_s": 0.2, "last_s": 0.2, "frames": 1, "dominant": "A",
         "share_A": 1.0, "share_B": 0.0, "share_C": 0.0}]
    assert clip == {"face_frames": 5, "top": "B", "shares": {"A": 0.2, "B": 0.6, "C": 0.2}}
    assert track_summary([], names) == ([], {"face_frames": 0, "top": None, "shares": dict.fromkeys(names, 0.0)})


def test_frames_reach_a_callback_and_an_interrupt_keeps_what_was_made(clips, tiny_checkpoint, tmp_path):
    seen = []

    def on_frame(frame):
        if len(seen) == 5:
            raise KeyboardInterrupt  # what a notebook's stop button sends
        seen.append(frame.shape)
    r = run_pipeline(clips["faces"], tiny_checkpoint, tmp_path / "o.mp4", on_frame=on_frame, interruptible=True)
    assert r["frames"] == 5 and seen == [(SIZE[1], SIZE[0], 3)] * 5
    assert sorted({rec["frame"] for rec in r["records"]}) == list(range(5))
    assert len(read_frames(tmp_path / "o.mp4")) == 5
    with pytest.raises(KeyboardInterrupt):  # a script's Ctrl-C still stops the script
        run_pipeline(clips["faces"], tiny_checkpoint, tmp_path / "p.mp4", on_frame=on_frame)
    assert not (tmp_path / "p.mp4").exists()
    r = run_pipeline(clips["faces"], tiny_checkpoint, out=None, end=0.25)  # no file at all
    assert r["frames"] == 6 and r["out"] is None and not list(tmp_path.glob("*.partial*"))


def test_show_in_notebook_updates_one_display(clips, tiny_checkpoint, monkeypatch):
    import IPython.display
    updates = []

    class Handle:
        def update(self, obj):
            updates.append(obj)
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: Handle())
    r = show_in_notebook(clips["faces"], tiny_checkpoint, seconds=0.25, width=240)
    assert r["frames"] == 6 and len(updates) == 6
    assert cv2.imdecode(np.frombuffer(updates[0].data, np.uint8), cv2.IMREAD_COLOR).shape == (120, 240, 3)


def test_the_live_model_is_the_default(clips, tmp_path, monkeypatch):
    from fer_lib import models
    monkeypatch.chdir(tmp_path)  # found from anywhere, as from notebooks/
    assert models.resolve_checkpoint() == models.Path(models.__file__).resolve().parents[1] / models.LIVE_MODEL
    monkeypatch.setattr(models, "LIVE_MODEL", "models/gone.pt")
    with pytest.raises(models.UserError, match="default live model is missing; give --checkpoint"):
        models.resolve_checkpoint()


def test_pipeline_window_and_smoother(clips, tiny_checkpoint, tmp_path):
    kw = dict(start=0.5, end=0.75, smoother="none", detect_every=1)
    r = run_pipeline(clips["faces"], tiny_checkpoint, tmp_path / "o.mp4", batch=False, **kw)
    assert r["frames"] == 6 and min(rec["frame"] for rec in r["records"]) == 12
    for rec in r["records"]:   # no smoothing: the shown label is the raw argmax
        assert rec["label"] == int(np.argmax([rec[f"p_{c}"] for c in range(7)]))
    # Decoding in a thread of its own and batching the faces change the speed, not the result.
    seq = run_pipeline(clips["faces"], tiny_checkpoint, tmp_path / "o.mp4", sequential=True, **kw)
    assert [(a["frame"], a["track_id"], a["label"]) for a in seq["records"]] == \
        [(a["frame"], a["track_id"], a["label"]) for a in r["records"]]
    np.testing.assert_allclose([a["p_3"] for a in seq["records"]], [a["p_3"] for a in r["records"]], atol=1e-5)


def test_clip_without_faces_still_gives_a_video(clips, tiny_checkpoint, tmp_path):
    log = tmp_path / "frames.csv"
    r = run_pipeline(clips["empty"], tiny_checkpoint, tmp_path / "o.mp4", log=str(log))
    assert r["no_faces"] and r["records"] == [] and r["tracks"] == 0
    assert len(read_frames(tmp_path / "o.mp4")) == N_FRAMES
    assert log.read_text().startswith("frame,time_s,track_id,x,y,w,h,p_0")
    assert "no faces detected" in format_summary(r)


def test_bad_inputs(tmp_path, tiny_checkpoint, clips):
    with pytest.raises(VideoError, match="nope.avi: no such video file"):
        open_source(tmp_path / "nope.avi")
    garbage = tmp_path / "notes.avi"
    garbage.write_text("this is a text file, not a video\n")
    with pytest.raises(VideoError, match="notes.avi: not a readable video"):
        run_pipeline(garbage, tiny_checkpoint, tmp_path / "o.mp4")
    with pytest.raises(VideoError, match="camera index 99 is not available"):
        open_source("99")
    with pytest.raises(VideoError, match="missing.pt: no such checkpoint file"):
        run_pipeline(clips["faces"], tmp_path / "missing.pt", tmp_path / "o.mp4")
    with pytest.raises(VideoError, match="needs --yunet-model"):
        create_detector("yunet")
    with pytest.raises(ValueError, match="--smoother kalman .*one of ema, hysteresis"):
        run_pipeline(clips["faces"], tiny_checkpoint, tmp_path / "o.mp4", smoother="kalman")
    with pytest.raises(VideoError, match="no frame could be read at 5.0 s"):
        run_pipeline(clips["faces"], tiny_checkpoint, tmp_path / "o.mp4", start=5.0)
    with pytest.raises(VideoError, match="--show needs a desktop OpenCV"):  # headless build in CI
        run_pipeline(clips["faces"], tiny_checkpoint, tmp_path / "o.mp4", show=True)
    assert not list(tmp_path.glob("*.mp4"))  # nothing half-written left behind


def test_cli(clips, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    assert cli.main(["video", "--source", clips["faces"], "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                     "--smoother", "ema", "--alpha", "0.5", "--detect-every", "3", "--end", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "12 frames in" in text and "ms, classify" in text and out.exists()
    assert cli.main(["video", "--source", str(tmp_path / "nope.mp4"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "error: " in capsys.readouterr().err


@pytest.mark.real_data
def test_megamind_few_frames(real_video, tiny_checkpoint, tmp_path):
    r = run_pipeline(real_video, tiny_checkpoint, tmp_path / "mm.mp4", end=1.5)
    assert r["frames"] == 36 and r["size"] == (720, 528)
    assert len(read_frames(tmp_path / "mm.mp4")) == 36
    faces = {rec["frame"] for rec in r["records"]}
    assert len(faces) >= 30  # the speaking face is found in (almost) every frame


def test_tracker_on_detector_boxes(clips):
    """The tracker keeps both synthetic faces' ids across the real detector's boxes."""
    detect, tr = create_detector("haar", scale=0.5), Tracker()
    for frame in read_frames(clips["faces"]):
        tr.update(detect(frame, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)))
    assert sorted(t.id for t in tr.visible()) == [0, 1] and tr.next_id == 2
