"""fer_lib.synthetic: FER-shaped, balanced, deterministic, marked synthetic, and learnable."""
import cv2
import numpy as np
import pytest

from fer_lib.data import CLASS_NAMES, load_split, read_info
from fer_lib.synthetic import SYNTHETIC_NOTICE, draw_face, make_splits, prepare_dataset, write_synthetic_h5


def test_splits_are_fer_shaped_and_balanced():
    splits = make_splits((5, 3, 2), seed=0)
    for split, n in zip(("train", "val", "test"), (5, 3, 2)):
        images, labels, names = splits[split]
        assert images.shape == (7 * n, 48, 48) and images.dtype == np.uint8
        assert labels.dtype == np.int8 and np.bincount(labels, minlength=7).tolist() == [n] * 7
        assert len(names) == 7 * n and names[0] == f"synthetic_{split}_0"
    assert splits["train"][0].std() > 20      # faces, not blank frames


def test_deterministic_for_a_seed():
    a, b, c = make_splits((3, 1, 1), seed=0), make_splits((3, 1, 1), seed=0), make_splits((3, 1, 1), seed=1)
    assert all(np.array_equal(a[s][0], b[s][0]) and np.array_equal(a[s][1], b[s][1]) for s in a)
    assert not np.array_equal(a["train"][0], c["train"][0])
    face = draw_face(3, np.random.default_rng(0))
    assert face.shape == (48, 48) and face.dtype == np.uint8


def test_h5_is_marked_synthetic_and_readable(tmp_path):
    out = write_synthetic_h5(tmp_path / "syn.h5", n_per_class=(4, 2, 2), seed=0)
    info = read_info(out)
    assert info["synthetic"] is True and info["source_sha256"] == "synthetic-0"
    assert info["counts"] == {"train": 28, "val": 14, "test": 14} and info["class_names"] == list(CLASS_NAMES)
    x, y = load_split(out, "train", normalize=True)
    assert x.shape == (28, 48, 48) and abs(x.mean()) < 1e-5 and np.bincount(y).tolist() == [4] * 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn.h5"]


def test_classes_are_learnable():
    """A linear model on (24x24, per-image standardized) pixels beats 50% on held-out faces; chance is 14%."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    def features(x):   # (N, 48, 48) uint8 -> (N, 576)
        x = np.stack([cv2.resize(i, (24, 24), interpolation=cv2.INTER_AREA) for i in x]).reshape(len(x), -1)
        return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)

    splits = make_splits((80, 0, 40), seed=0)
    with threadpool_limits(1):    # BLAS threads fighting over a busy CPU make this 100x slower
        clf = LogisticRegression(C=0.1, max_iter=1000).fit(features(splits["train"][0]), splits["train"][1])
    acc = clf.score(features(splits["test"][0]), splits["test"][1])
    assert acc > 0.5, f"held-out accuracy {acc:.3f}"


def test_prepare_dataset_never_overwrites_real_data(tmp_path, capsys):
    h5 = tmp_path / "fer.h5"
    info = prepare_dataset("", h5, synthetic_per_class=(2, 1, 1))
    assert info["synthetic"] and info["path"] == str(h5) and SYNTHETIC_NOTICE in capsys.readouterr().out

    # a real (non-synthetic) file at h5_path is kept when no source is given
    csv = tmp_path / "fer2013.csv"
    rows = [f"{i % 7},{' '.join(['7'] * 2304)},{('Training', 'PublicTest', 'PrivateTest')[i % 3]}" for i in range(6)]
    csv.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    assert not prepare_dataset(csv, h5, progress=False)["synthetic"]
    info = prepare_dataset("", h5)
    assert not info["synthetic"] and info["counts"] == {"train": 2, "val": 2, "test": 2}
    assert "SYNTHETIC" not in capsys.readouterr().out


@pytest.mark.parametrize("label", range(7))
def test_every_expression_draws(label):
    faces = np.stack([draw_face(label, np.random.default_rng(s)) for s in range(3)])
    assert faces.shape == (3, 48, 48) and len({f.tobytes() for f in faces}) == 3
