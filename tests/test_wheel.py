"""The wheel as a new user gets it: built, installed into a fresh virtual environment outside the checkout,
and `fer predict` run on a face photo from another folder finds the live model it carries."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_lib.synthetic import draw_face

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=900):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def test_the_installed_wheel_carries_the_live_model(tmp_path):
    # Built from a copy, so that the checkout gets no build/ folder.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "runs", "data",
                                                             "reports", "notebooks", "tests", "__pycache__"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src], tmp_path)
    wheel, = wheels.glob("fer_lib-*.whl")
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "fer_lib/live/vgg_crop44_int8_fer2013.pt" in names and "fer_lib/live/vgg_crop44_int8_fer2013.md" in names
    assert not [n for n in names if n.endswith(".pt") and "int8" not in n]  # the other models stay in the repo

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    pip, fer = venv / "bin" / "pip", venv / "bin" / "fer"
    _run([pip, "install", "-q", "torch==2.13.0"], tmp_path)  # the pinned CPU wheel, first (README)
    _run([pip, "install", "-q", "--no-index", "--find-links", wheels, "--no-deps", "fer_lib"], tmp_path)
    _run([pip, "install", "-q", "fer_lib[onnx]"], tmp_path)  # its dependencies; fer_lib itself is installed

    away = tmp_path / "elsewhere"
    away.mkdir()
    img = np.full((320, 480), 110, np.uint8)
    img[80:220, 200:340] = cv2.resize(draw_face(3, np.random.default_rng(0)), (140, 140), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(away / "face.jpg"), img)
    for backend in ("onnx", "torch"):
        t = time.perf_counter()
        r = _run([fer, "predict", "face.jpg", "--backend", backend, "--out", f"p_{backend}"], away)
        print(f"fer predict --backend {backend} from the wheel: {time.perf_counter() - t:.2f} s wall")
        assert "1 images, 1 faces" in r.stdout
        rows = (away / f"p_{backend}" / "faces.csv").read_text().splitlines()
        assert len(rows) == 2 and rows[1].split(",")[-2] in ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise",
                                                               "Neutral")
    r = _run([venv / "bin" / "python", "-c", "import fer_lib; print(fer_lib.detect_emotions('face.jpg')[0]['label'])"],
             away)
    assert r.stdout.strip() == rows[1].split(",")[-2]
    assert "PrivateTest" in _run([fer, "models"], away).stdout
