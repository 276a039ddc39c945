"""Faults a user meets: outputs that would land on inputs or on existing files, values out of range or of
the wrong type (on the command line and in config files), a training that diverges, a full disk, a
truncated clip, files a command does not read. Each case asserts the exit status, a one-line message
without a traceback, and that every file already there is byte-identical afterwards (test_errors.py
holds the cases of bad and missing inputs).
"""
import errno
import json
import shutil

import cv2
import h5py
import numpy as np
import pytest
import yaml
from test_errors import snapshot, train_argv
from test_video import read_frames, write_clip

from fer_lib import train
from fer_lib.cli import main
from fer_lib.errors import UserError


@pytest.fixture
def ws(tmp_path, synthetic_h5, tiny_checkpoint):
    """A workspace: data, a checkpoint, a short clip, a folder of photos with a file of another type."""
    w = tmp_path
    shutil.copy(synthetic_h5, w / "good.h5")
    shutil.copy(tiny_checkpoint, w / "good.pt")
    write_clip(w / "clip.mp4", True)
    photos = w / "photos" / "annotated"
    photos.mkdir(parents=True)
    face = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    for name in ("a.JPG", "a.jpg", "b.png", "b.tif"):
        cv2.imwrite(str(w / "photos" / name), face)
    cv2.imwrite(str(photos / "kept.png"), face)
    (w / "photos" / "notes.txt").write_text("not a photo")
    return w


def fer(argv, capsys, status):
    """Run `fer argv` in-process; assert its status and a one-line message; return that line."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == status
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.strip().split("\n") if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1, err
    return lines[0]


def video(w, *extra):
    return ["video", "--source", w / "clip.mp4", "--checkpoint", w / "good.pt", *extra]


REFUSED = {  # (argv, words of the message): exit 2, nothing written or changed
    # outputs on inputs, whatever --overwrite says
    "video --out is the clip": (lambda w: video(w, "--out", w / "clip.mp4", "--overwrite"), ["--out", "is an input"]),
    "video --log is the checkpoint": (lambda w: video(w, "--out", w / "o.mp4", "--log", w / "good.pt", "--overwrite"),
                                      ["--log", "is an input"]),
    "video --gif is --out": (lambda w: video(w, "--out", w / "o.mp4", "--gif", w / "o.mp4"), ["--gif", "also the --out"]),
    "train --export is its data": (lambda w: train_argv(w, "good.h5", "run", "--export", w / "good.h5", "--overwrite"),
                                   ["--export", "is an input"]),
    "predict into its own input folder": (lambda w: ["predict", w / "photos" / "annotated", "--out", w / "photos",
                                                     "--annotate", "--overwrite", "--checkpoint", w / "good.pt"],
                                          ["annotated", "would hold the input"]),
    "preprocess onto its CSV": (lambda w: ((w / "f.csv").write_text("emotion,pixels,Usage\n"),
                                           ["preprocess", w / "f.csv", "--out", w / "f.csv", "--overwrite"])[1],
                                ["--out", "is an input"]),
    "quantize onto its checkpoint": (lambda w: ["quantize", w / "good.pt", "--data", w / "good.h5", "--out", w / "good.pt",
                                                "--overwrite"], ["--out", "is an input"]),
    "ensemble onto a member": (lambda w: ["ensemble", w / "good.pt", w / "good.pt", "--out", w / "good.pt", "--overwrite"],
                               ["--out", "is an input"]),
    "evaluate onto its data folder": (lambda w: ["evaluate", "--checkpoint", w / "good.pt", "--data", w / "good.h5",
                                                 "--out", w / "good.h5"], ["--out"]),
    # existing files without --overwrite
    "train --export exists": (lambda w: train_argv(w, "good.h5", "run", "--export", w / "good.pt"),
                              ["--export", "exists", "--overwrite"]),
    "video --out exists": (lambda w: ((w / "o.mp4").write_bytes(b"old"), video(w, "--out", w / "o.mp4"))[1],
                           ["--out", "exists", "--overwrite"]),
    "video --log exists": (lambda w: ((w / "f.csv").write_text("old"), video(w, "--out", w / "o.mp4", "--log", w / "f.csv"))[1],
                           ["--log", "exists"]),
    "preprocess over another file": (lambda w: ((w / "f.csv").write_text("emotion,pixels,Usage\n"),
                                                ["preprocess", w / "f.csv", "--out", w / "good.h5"])[1],
                                     ["good.h5", "exists", "--overwrite"]),
    "synthetic over a file": (lambda w: ["synthetic", w / "good.h5"], ["exists", "--overwrite"]),
    "evaluate over a report": (lambda w: ((w / "rep").mkdir(), (w / "rep" / "metrics.json").write_text("{}"),
                                          ["evaluate", "--checkpoint", w / "good.pt", "--data", w / "good.h5", "--out",
                                           w / "rep"])[2], ["metrics.json", "exists"]),
    # values out of range, or of the wrong type
    "video --detect-every 0": (lambda w: video(w, "--out", w / "o.mp4", "--detect-every", "0"),
                               ["--detect-every 0", "at least 1"]),
    "video --alpha 0": (lambda w: video(w, "--out", w / "o.mp4", "--alpha", "0"), ["--alpha", "above 0"]),
    "video --smoother unknown": (lambda w: video(w, "--out", w / "o.mp4", "--smoother", "kalman"), ["--smoother", "one of"]),
    "predict --scale-factor 1": (lambda w: ["predict", w / "photos", "--scale-factor", "1", "--checkpoint", w / "good.pt",
                                            "--out", w / "pred"], ["--scale-factor 1.0", "above 1.0"]),
    "train --label-smoothing 2": (lambda w: train_argv(w, "good.h5", "run", "--label-smoothing", "2"),
                                  ["--label-smoothing 2.0", "below 1.0"]),
    "train --crop 99": (lambda w: train_argv(w, "good.h5", "run", "--crop", "99"), ["--crop 99", "48"]),
    "train --lr nan": (lambda w: train_argv(w, "good.h5", "run", "--lr", "nan"), ["--lr nan", "finite"]),
    "train --lr 0": (lambda w: train_argv(w, "good.h5", "run", "--lr", "0"), ["--lr 0.0", "above 0"]),
    "train --epochs 0": (lambda w: train_argv(w, "good.h5", "run", "--epochs", "0"), ["--epochs 0", "at least 1"]),
    "config flip: \"no\"": (lambda w: ((w / "c.yaml").write_text('flip: "no"\n'),
                                       train_argv(w, "good.h5", "run", "--config", w / "c.yaml"))[1],
                            ["--flip no (flip)", "true or false"]),
    "config lr: 1e-3 (YAML text)": (lambda w: ((w / "c.yaml").write_text("lr: 1e-3\n"),
                                               train_argv(w, "good.h5", "run", "--config", w / "c.yaml"))[1],
                                    ["--lr 1e-3 (lr)", "text"]),
    "config step_size: 2.5": (lambda w: ((w / "c.json").write_text('{"step_size": 2.5}'),
                                         train_argv(w, "good.h5", "run", "--config", w / "c.json"))[1],
                              ["--step-size 2.5", "whole number"]),
    "tune --reduction-factor 1": (lambda w: ["tune", "--data", w / "good.h5", "--out", w / "tune", "--reduction-factor", "1"],
                                  ["--reduction-factor", "at least 2"]),
    "evaluate --tta mirror": (lambda w: ["evaluate", "--checkpoint", w / "good.pt", "--data", w / "good.h5", "--tta", "mirror"],
                              ["--tta mirror", "unknown TTA"]),
    "ensemble --storage int4": (lambda w: ["ensemble", w / "good.pt", "--out", w / "e.pt", "--storage", "int4"],
                                ["--storage", "one of"]),
    "predict --batch-size 0": (lambda w: ["predict", w / "photos", "--batch-size", "0", "--checkpoint", w / "good.pt",
                                          "--out", w / "pred"], ["--batch-size 0", "at least 1"]),
    "tune --threads 0": (lambda w: ["tune", "--data", w / "good.h5", "--out", w / "tune", "--threads", "0"], ["--threads 0"]),
    "synthetic --per-class 0": (lambda w: ["synthetic", w / "new.h5", "--per-class", "0", "1", "1"], ["--per-class"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_command_changes_nothing(case, ws, capsys):
    make, words = REFUSED[case]
    argv = make(ws)
    before = snapshot(ws)
    line = fer(argv, capsys, 2)
    assert line.startswith(f"fer {argv[0]}: error: ")
    for word in words:
        assert word in line, (word, line)
    assert snapshot(ws) == before


def test_labels_out_of_range_are_found_when_the_file_is_opened(ws, capsys):
    with h5py.File(ws / "good.h5", "a") as f:
        labels = f["train"]["labels"][:]
        labels[5] = 9
        f["train"]["labels"][...] = labels
    before = snapshot(ws)
    line = fer(train_argv(ws, "good.h5", "run"), capsys, 2)
    assert "label(s) outside 0..6" in line and "9 at index 5" in line and "'train'" in line
    assert snapshot(ws) == before  # no run folder


def test_one_schema_for_flags_files_and_python():
    """The dataclass is the schema: Python callers and profiles get the flag's check."""
    from fer_lib.evaluate import EvalConfig
    from fer_lib.tune import TuneConfig
    from fer_lib.video import VideoConfig
    with pytest.raises(UserError, match="--flip no"):
        train.TrainConfig(flip="no")
    with pytest.raises(UserError, match="--detect-every 0"):
        VideoConfig(detect_every=0)
    with pytest.raises(UserError, match="--pruner asha"):
        TuneConfig(pruner="asha")
    with pytest.raises(UserError, match="--n-bootstrap -1"):
        EvalConfig(n_bootstrap=-1)
    assert train.TrainConfig(epochs=3.0).epochs == 3 and isinstance(train.TrainConfig(epochs=3.0).epochs, int)
    assert train.TrainConfig(lr=1).lr == 1 and VideoConfig(end=None).end is None


def test_a_profile_with_a_bad_value_names_it(tmp_path):
    from fer_lib.profiles import PROFILE_DIR, load_profile
    profile = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    profile["video"] = {**(profile.get("video") or {}), "detect_every": 0}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    with pytest.raises(UserError, match="--detect-every 0"):
        load_profile(tmp_path / "p.yaml")


def test_a_diverging_training_stops_and_keeps_its_last_good_epoch(ws, capsys, monkeypatch):
    """A non-finite loss in epoch 2 ends the run with exit 1: last.pt keeps epoch 1, best.pt is epoch 1's,
    and nothing is exported."""
    real = train.F.cross_entropy
    calls = {"n": 0}

    def loss(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] > n_batches else out
    with h5py.File(ws / "good.h5") as f:
        n_batches = len(f["train"]["labels"]) // 32  # the first epoch's batches train normally
    monkeypatch.setattr(train.F, "cross_entropy", loss)
    line = fer(train_argv(ws, "good.h5", "run", "--epochs", "3", "--export", ws / "out.pt"), capsys, 1)
    assert "epoch 2" in line and "loss became nan" in line and "diverged" in line and "keeps epoch 1" in line
    assert not (ws / "out.pt").exists()
    for name in ("last.pt", "best.pt"):
        assert train.load_checkpoint(ws / "run" / name)["epoch"] == 1
    assert len(json.loads((ws / "run" / "history.json").read_text())) == 1


def test_non_finite_weights_stop_the_run(synthetic_h5, tmp_path):
    cfg = train.resolve_config(data=str(synthetic_h5), out=str(tmp_path / "r"), model="baseline",
                               model_args={"widths": [8, 16, 32], "hidden": 32}, epochs=1, batch_size=32,
                               progress=False)
    s = train.setup(cfg)
    train.check_finite(s.model)  # a fresh model is fine
    next(s.model.parameters()).data[0] = float("inf")
    with pytest.raises(train.Diverged, match="no longer finite"):
        train.check_finite(s.model)


def test_a_full_disk_is_one_line_and_keeps_what_was_there(ws, capsys, monkeypatch):
    """No space left when a checkpoint is written: exit 1, the path and the cause, no partial file; the
    run's folder, made by this command, is gone."""
    from fer_lib import io
    real = io.Path.write_bytes

    def full(self, data):
        if ".partial" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(io.Path, "write_bytes", full)
    before = snapshot(ws)
    line = fer(train_argv(ws, "good.h5", "run"), capsys, 1)
    assert line == f"fer train: error: {ws / 'run' / 'last.pt'}: No space left on device"
    assert snapshot(ws) == before


def test_preprocess_checks_the_space_before_writing(ws, capsys, monkeypatch):
    from test_data import csv_rows, write_csv
    write_csv(ws / "f.csv", csv_rows())
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    before = snapshot(ws)
    line = fer(["preprocess", ws / "f.csv", "--out", ws / "new.h5"], capsys, 1)
    assert str(ws / "new.h5") in line and "No space left on device" in line and "MB needed" in line
    assert snapshot(ws) == before


def test_a_truncated_clip_warns_with_the_frame_it_stopped_at(ws, capsys, caplog):
    """An AVI cut in half: its header still promises every frame; the run says where the file ended."""
    avi, frames = ws / "clip.avi", read_frames(ws / "clip.mp4")
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 24, frames[0].shape[1::-1])
    for frame in frames * 4:
        writer.write(frame)
    writer.release()
    raw = avi.read_bytes()
    (ws / "cut.avi").write_bytes(raw[:len(raw) // 2])
    capsys.readouterr()
    assert main(["video", "--source", str(ws / "cut.avi"), "--checkpoint", str(ws / "good.pt"),
                 "--out", str(ws / "o.mp4")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "cut.avi: the clip stopped at frame" in warned[0] and f"of {4 * len(frames)}" in warned[0]
    caplog.clear()
    assert main(["video", "--source", str(avi), "--checkpoint", str(ws / "good.pt"), "--out", str(ws / "o2.mp4")]) == 0
    assert not [r for r in caplog.records if "stopped at frame" in r.getMessage()]  # the whole file: no warning


def test_predict_keeps_names_apart_and_says_what_it_skipped(ws, capsys):
    """a.JPG and a.jpg, b.png and b.tif: four annotated files; the .txt and the output folder's own files
    are not read, and the .txt is named."""
    capsys.readouterr()
    assert main(["predict", str(ws / "photos"), "--out", str(ws / "photos" / "pred"), "--annotate", "--no-detect",
                 "--checkpoint", str(ws / "good.pt")]) == 0
    err = capsys.readouterr().err
    assert "notes.txt" not in err and "1 file(s) of types it does not read (.txt)" in err
    made = sorted(p.relative_to(ws / "photos" / "pred" / "annotated").as_posix()
                  for p in (ws / "photos" / "pred" / "annotated").rglob("*") if p.is_file())
    assert made == ["photos/a.JPG", "photos/a_2.jpg", "photos/annotated/kept.png", "photos/b.png", "photos/b.tif.png"]
    # run again with --overwrite: the previous outputs (inside the input folder) are not read as inputs
    assert main(["predict", str(ws / "photos"), "--out", str(ws / "photos" / "pred"), "--annotate", "--no-detect",
                 "--overwrite", "--checkpoint", str(ws / "good.pt")]) == 0
    rows = (ws / "photos" / "pred" / "faces.csv").read_text().strip().split("\n")
    assert len(rows) == 1 + 5
