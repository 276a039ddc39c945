"""One error convention for every `fer` command: a user's mistake is one line on stderr naming the
culprit, exit status 2, no traceback, and nothing already written is changed.

Each row: the command, a function that makes the bad input (returning the argv), the words the
message must hold, and the files that must stay byte-identical.
"""
import os
import shutil
import zipfile

import h5py
import numpy as np
import pytest
import torch
from test_data import csv_rows, write_csv, write_jpg

from fer_lib.cli import main

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@pytest.fixture
def ws(tmp_path, synthetic_h5, tiny_checkpoint):
    """A workspace: good data and checkpoint copies, a finished run, a file where a folder should be."""
    w = tmp_path
    shutil.copy(synthetic_h5, w / "good.h5")
    shutil.copy(tiny_checkpoint, w / "good.pt")
    (w / "afile").write_text("not a folder")
    return w


def faces_folder(root, bad_name=None, bad_bytes=b""):
    for e, emotion in enumerate(EMOTIONS):
        for top, name in (("train", "Training_{}.jpg"), ("test", "PublicTest_{}.jpg"), ("test", "PrivateTest_{}.jpg")):
            write_jpg(root / top / emotion / name.format(e), seed=e)
    if bad_name:
        (root / bad_name).write_bytes(bad_bytes)
    return root


def truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])
    return dst


def h5_without(src, dst, split):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        del f[split]
    return dst


def foreign_h5(dst):
    with h5py.File(dst, "w") as f:
        f["x"] = np.zeros(3)
    return dst


def plain_state_dict(dst):
    torch.save(torch.nn.Linear(2, 2).state_dict(), dst)
    return dst


def train_argv(w, data="good.h5", out="run", *extra):
    return ["train", "--data", str(w / data), "--out", str(w / out), "--model", "baseline", "--model-args",
            '{"widths": [8, 16, 32], "hidden": 32}', "--epochs", "1", "--batch-size", "32", "--progress", "false",
            *extra]


def finished_run(w):
    assert main(train_argv(w, out="done")) == 0
    return w / "done"


CASES = {
    # checkpoints: evaluate and video
    "missing checkpoint": (lambda w: ["evaluate", "--checkpoint", str(w / "nope.pt"), "--data", str(w / "good.h5")],
                           ["checkpoint not found", "nope.pt"]),
    "zero-byte checkpoint": (lambda w: ((w / "zero.pt").write_bytes(b""),
                                        ["evaluate", "--checkpoint", str(w / "zero.pt"), "--data", str(w / "good.h5")])[1],
                             ["zero.pt", "not a readable fer_lib checkpoint", "empty file"]),
    "truncated checkpoint": (lambda w: ["evaluate", "--checkpoint", str(truncated(w / "good.pt", w / "half.pt")),
                                        "--data", str(w / "good.h5")], ["half.pt", "not a readable fer_lib checkpoint"]),
    "random-bytes checkpoint": (lambda w: ((w / "rand.pt").write_bytes(os.urandom(4096)),
                                           ["video", "--source", "0", "--checkpoint", str(w / "rand.pt")])[1],
                                ["rand.pt", "not a readable fer_lib checkpoint"]),
    "plain state_dict": (lambda w: ["evaluate", "--checkpoint", str(plain_state_dict(w / "sd.pt")),
                                    "--data", str(w / "good.h5")], ["sd.pt", "not a fer_lib checkpoint"]),
    "directory as checkpoint": (lambda w: ["evaluate", "--checkpoint", str(w), "--data", str(w / "good.h5")],
                                ["checkpoint not found"]),
    # HDF5: train and evaluate
    "missing HDF5 (train)": (lambda w: train_argv(w, "nope.h5"), ["data file not found", "nope.h5", "fer preprocess"]),
    "truncated HDF5 (train)": (lambda w: train_argv(w, truncated(w / "good.h5", w / "half.h5").name),
                               ["half.h5", "not a readable HDF5 file"]),
    "foreign HDF5 (train)": (lambda w: train_argv(w, foreign_h5(w / "other.h5").name),
                             ["other.h5", "not one written by fer preprocess"]),
    "HDF5 without PublicTest (train)": (lambda w: train_argv(w, h5_without(w / "good.h5", w / "noval.h5", "val").name),
                                        ["noval.h5", "no split 'val'", "PublicTest"]),
    "HDF5 without PrivateTest (evaluate)": (lambda w: ["evaluate", "--checkpoint", str(w / "good.pt"), "--data",
                                                       str(h5_without(w / "good.h5", w / "notest.h5", "test"))],
                                            ["notest.h5", "no split 'test'", "PrivateTest"]),
    "missing HDF5 (tune)": (lambda w: ["tune", "--data", str(w / "nope.h5"), "--out", str(w / "tune")], ["nope.h5"]),
    # sources: preprocess
    "zero-byte image in a folder": (lambda w: ["preprocess", str(faces_folder(w / "faces", "train/happy/Training_9.jpg")),
                                               "--out", str(w / "new.h5")], ["Training_9.jpg", "corrupt"]),
    "zero-byte image in a zip": (lambda w: ["preprocess", str(zipped(faces_folder(w / "faces", "test/sad/PublicTest_9.jpg"),
                                                                     w / "faces.zip")), "--out", str(w / "new.h5")],
                                 ["faces.zip", "PublicTest_9.jpg", "corrupt"]),
    "binary file as CSV": (lambda w: ((w / "fer2013.csv").write_bytes(os.urandom(3000)),
                                      ["preprocess", str(w / "fer2013.csv"), "--out", str(w / "new.h5")])[1],
                           ["fer2013.csv"]),
    "preprocess into a directory": (lambda w: ["preprocess", str(write_csv(w / "f.csv", csv_rows())), "--out", str(w)],
                                    ["is a directory"]),
    # outputs
    "train --out under a file": (lambda w: train_argv(w, out="afile/run"), ["afile", "is a file"]),
    "evaluate --out under a file": (lambda w: ["evaluate", "--checkpoint", str(w / "good.pt"), "--data",
                                               str(w / "good.h5"), "--out", str(w / "afile" / "rep")], ["afile", "is a file"]),
    "video --log under a file": (lambda w: ["video", "--source", "0", "--checkpoint", str(w / "good.pt"), "--out",
                                            str(w / "o.mp4"), "--log", str(w / "afile" / "x.csv")], ["--log", "is a file"]),
    "video --gif is a directory": (lambda w: ["video", "--source", "0", "--checkpoint", str(w / "good.pt"), "--out",
                                              str(w / "o.mp4"), "--gif", str(w)], ["--gif", "is a directory"]),
    "unreadable video": (lambda w: ((w / "clip.mp4").write_bytes(os.urandom(2000)),
                                    ["video", "--source", str(w / "clip.mp4"), "--checkpoint", str(w / "good.pt"),
                                     "--out", str(w / "o.mp4")])[1], ["clip.mp4"]),
    # photos
    "predict a missing photo": (lambda w: ["predict", str(w / "nope.jpg"), "--checkpoint", str(w / "good.pt"),
                                           "--out", str(w / "pred")], ["nope.jpg", "no such file"]),
    "predict with a truncated checkpoint": (lambda w: ["predict", str(w), "--checkpoint",
                                                       str(truncated(w / "good.pt", w / "half.pt")), "--out",
                                                       str(w / "pred")], ["half.pt", "not a readable fer_lib checkpoint"]),
    "predict --out under a file": (lambda w: ["predict", str(w), "--checkpoint", str(w / "good.pt"), "--out",
                                              str(w / "afile" / "pred")], ["afile", "is a file"]),
    # training runs
    "a finished run without --resume": (lambda w: train_argv(w, out=finished_run(w).name),
                                        ["already holds a run", "--resume", "--overwrite"]),
    "--resume without a checkpoint": (lambda w: train_argv(w, "good.h5", "empty", "--resume"),
                                      ["nothing to resume", "no last.pt"]),
    "--resume with more epochs": (lambda w: train_argv(w, "good.h5", finished_run(w).name, "--resume", "--epochs", "3"),
                                  ["another configuration", "epochs: run 1, now 3"]),
    "batch of one": (lambda w: train_argv(w, "good.h5", "run1", "--batch-size", "1"), ["batch-norm"]),
    "unknown model": (lambda w: train_argv(w, "good.h5", "run2", "--model", "resnet50"), ["unknown model 'resnet50'"]),
    "unknown config file": (lambda w: train_argv(w, "good.h5", "run3", "--config", str(w / "nope.json")),
                            ["nope.json", "not found"]),
    # the study
    "study without its data": (lambda w: ["study", "--data", str(w / "nope.zip"), "--out", str(w / "rep"),
                                          "--work", str(w / "work")], ["nope.zip", "not found"]),
}


def zipped(folder, zip_path):
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return zip_path


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_user_mistake_is_one_line_and_status_2(case, ws, capsys):
    make, words = CASES[case]
    argv = make(ws)
    capsys.readouterr()
    before = snapshot(ws)
    assert main(argv) == 2, case
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    # what a terminal shows: a progress bar cleared with \r leaves only the error line
    lines = [line.split("\r")[-1] for line in err.strip().split("\n") if line.split("\r")[-1].strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fer {argv[0]}: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "weights_only" not in lines[0]
    assert snapshot(ws) == before  # nothing written, nothing changed, no half-made folder
