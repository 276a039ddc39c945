"""fer_lib.evaluate: metrics against hand-computed cases, TTA views, temperature, end to end."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fer_lib import cli
from fer_lib.data import CLASS_NAMES, load_split
from fer_lib.environment import describe_machine
from fer_lib.evaluate import evaluate_checkpoint, parse_tta, predict_logits, published_results_table, tta_views
from fer_lib.metrics import (average_proba, bootstrap_accuracy_ci, compute_metrics, expected_calibration_error,
                             fit_temperature, reliability_bins)
from fer_lib.models import grad_cam, load_model
from fer_lib.plots import plot_confusion


def _proba_for(pred, n_classes, conf):
    """Probabilities (N, C) with `conf` on the predicted class and the rest spread evenly."""
    p = np.full((len(pred), n_classes), (1 - conf) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


# ----------------------------------------------------------------------------- metrics

def test_compute_metrics_known_confusion():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    m = compute_metrics(y_true, _proba_for(y_pred, 3, 0.8), ["a", "b", "c"], n_bootstrap=0)
    assert m["confusion"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(0.7)
    # per-class F1: a: P=3/4 R=3/4 -> 3/4; b: P=2/3 R=2/3; c: P=2/3 R=2/3 -> macro (27+24+24)/108 = 25/36
    assert m["macro_f1"] == pytest.approx(25 / 36)
    np.testing.assert_allclose(m["confusion_normalized"], [[3 / 4, 1 / 4, 0], [0, 2 / 3, 1 / 3], [1 / 3, 0, 2 / 3]])
    assert m["report"]["a"]["precision"] == pytest.approx(0.75)
    assert m["report"]["b"]["recall"] == pytest.approx(2 / 3)
    assert m["report"]["c"]["support"] == 3
    assert m["ece"] == pytest.approx(0.1)          # one bin: confidence 0.8, accuracy 0.7
    assert m["nll"] == pytest.approx(-(7 * np.log(0.8) + 3 * np.log(0.1)) / 10)  # p(true class): 0.8 or 0.1
    assert m["accuracy_ci95"] is None


def test_compute_metrics_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match"):
        compute_metrics([0, 1], np.full((3, 7), 1 / 7), CLASS_NAMES)


def test_ece_hand_made_case():
    # 4 faces at confidence 0.9 with 3 right (overconfident by 0.15),
    # 2 faces at confidence 0.55 both right (underconfident by 0.45).
    proba = np.array([[0.9, 0.1]] * 4 + [[0.55, 0.45]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    assert expected_calibration_error(proba, y) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.45)  # 0.25
    # one bin: |accuracy 5/6 - mean confidence 4.7/6|: the signs no longer cancel per bin
    assert expected_calibration_error(proba, y, n_bins=1) == pytest.approx(0.05)
    r = reliability_bins(proba, y)
    assert r["count"][13] == 4 and r["count"][8] == 2 and r["count"].sum() == 6
    assert r["accuracy"][13] == pytest.approx(0.75) and r["confidence"][8] == pytest.approx(0.55)


def test_reliability_bins_put_edges_in_the_lower_bin():
    # 0.6 and 0.2 are bin edges for 5 bins, and 0.6 * 5 is 3.0000000000000004 in floating point
    r = reliability_bins(np.array([[0.6, 0.4, 0, 0, 0], [0.2] * 5]), np.array([0, 0]), n_bins=5)
    assert r["count"].tolist() == [1, 0, 1, 0, 0]


def test_bootstrap_ci_contains_accuracy_and_is_seeded():
    correct = np.random.default_rng(0).random(500) < 0.66
    lo, hi = bootstrap_accuracy_ci(correct, 500, seed=3)
    assert lo < correct.mean() < hi
    assert 0.02 < hi - lo < 0.15      # ~ +-1.96 * sqrt(.66 * .34 / 500) = +-0.042
    assert bootstrap_accuracy_ci(correct, 500, seed=3) == [lo, hi]
    assert bootstrap_accuracy_ci(correct, 500, seed=4) != [lo, hi]


@pytest.mark.parametrize("t_true", [2.5, 0.5])
def test_fit_temperature_recovers_known_temperature(t_true):
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (8000, 7))                       # calibrated logits: labels drawn from softmax(z)
    y = (z + rng.gumbel(size=z.shape)).argmax(1)          # Gumbel-max sample
    t = fit_temperature(z * t_true, y)
    assert t == pytest.approx(t_true, rel=0.05)
    # views: two identical copies average to the same probabilities, hence the same temperature
    assert fit_temperature(np.stack([z, z]) * t_true, y) == pytest.approx(t, rel=1e-4)
    assert expected_calibration_error(average_proba(z * t_true, t), y) < \
        expected_calibration_error(average_proba(z * t_true), y)


# ----------------------------------------------------------------------------- TTA

def test_parse_tta():
    assert parse_tta(None) == parse_tta(False) == parse_tta("none") == ()
    assert parse_tta(True) == ("flip", "tencrop")
    assert parse_tta("flip, tencrop") == ("flip", "tencrop") and parse_tta(["flip"]) == ("flip",)
    with pytest.raises(ValueError, match="fivecrop"):
        parse_tta("flip,fivecrop")


def test_tta_views_shapes_and_crops():
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    assert tta_views(faces, "plain").shape == (1, 3, 48, 48)
    flip = tta_views(faces, "flip")
    assert flip.shape == (2, 3, 48, 48) and torch.equal(flip[1], torch.from_numpy(faces[:, :, ::-1].copy()))
    ten = tta_views(faces, "tencrop")
    assert ten.shape == (10, 3, 48, 48) and ten.dtype == torch.uint8
    assert torch.equal(ten[5:], ten[:5].flip(-1))
    # crops sit where they should: a change in the bottom-right corner reaches only crops covering it
    changed = faces.copy()
    changed[:, 47, 47] ^= 255
    diff = (tta_views(changed, "tencrop") != ten).flatten(1).any(1).tolist()
    assert diff[:5] == [False, False, False, True, False]
    # a flat face is the same in every view
    flat = np.full((2, 48, 48), 77, np.uint8)
    assert (tta_views(flat, "tencrop") == 77).all()


def test_flip_tta_of_a_symmetric_face_equals_plain(tiny_checkpoint):
    clf = load_model(tiny_checkpoint)
    faces = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    sym = faces.copy()
    sym[:, :, 24:] = sym[:, :, :24][:, :, ::-1]
    plain = average_proba(predict_logits(clf, sym, "plain"))
    np.testing.assert_allclose(average_proba(predict_logits(clf, sym, "flip")), plain, rtol=0, atol=1e-12)
    np.testing.assert_allclose(plain, clf.predict_proba(sym), atol=1e-6)
    assert not np.allclose(average_proba(predict_logits(clf, faces, "flip")),
                           average_proba(predict_logits(clf, faces, "plain")), atol=1e-6)


def test_grad_cam_maps_and_probabilities(tiny_checkpoint, synthetic_h5):
    clf = load_model(tiny_checkpoint)
    faces, _ = load_split(synthetic_h5, "test")
    cams, proba = grad_cam(clf, faces[:5])
    assert cams.shape == (5, 48, 48) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    np.testing.assert_allclose(proba, clf.predict_proba(faces[:5]), atol=1e-5)


# ----------------------------------------------------------------------------- tables and figures

def test_published_results_table_has_only_our_row_from_the_run():
    t = published_results_table(0.6789, [0.66, 0.69])
    assert len(t) == 5 and list(t.columns) == ["method", "PrivateTest accuracy", "protocol"]
    assert t.iloc[-1]["PrivateTest accuracy"] == "67.89% (95% CI 66.0-69.0)"
    assert t["PrivateTest accuracy"].iloc[:4].tolist() == ["65 ± 5%", "71.16%", "72.7%", "62-65%"]


def test_our_row_names_the_shipped_model_as_shipped(tmp_path):
    """A smoke run that scores the committed live model must not call it the run's own result (issue 34)."""
    from fer_lib.assets import CHECKOUT, LIVE_MODEL
    from fer_lib.evaluate import ours_label
    assert ours_label(CHECKOUT / LIVE_MODEL) == f"Ours: the shipped model {LIVE_MODEL}"
    assert ours_label(tmp_path / "train" / "best.pt") == "Ours (this run)"
    copy = tmp_path / "models" / Path(LIVE_MODEL).name  # a folder named models elsewhere is not the shipped one
    assert ours_label(copy) == "Ours (this run)"
    t = published_results_table(0.7, None, ours_label(CHECKOUT / LIVE_MODEL))
    assert t.iloc[-1]["method"] == f"Ours: the shipped model {LIVE_MODEL}" and t.iloc[-1]["PrivateTest accuracy"] == "70.00%"


def test_plot_confusion_annotates_counts_and_rates():
    cm = [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    counts = [t.get_text() for t in plot_confusion(cm, ["a", "b", "c"]).axes[0].texts]
    rates = [t.get_text() for t in plot_confusion(cm, ["a", "b", "c"], normalize=True).axes[0].texts]
    assert counts[:3] == ["3", "1", "0"] and rates[:3] == ["0.75", "0.25", "0.00"]


# ----------------------------------------------------------------------------- end to end

def test_fer_evaluate_end_to_end(tiny_checkpoint, synthetic_h5, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_h5),
                     "--out", str(out), "--tta", "flip,tencrop", "--bootstrap", "50"]) == 0
    assert "test (PrivateTest)" in capsys.readouterr().out
    expected = {"metrics.json", "published_results.csv", "confident_mistakes_test.png", "gradcam_test.png",
                "reliability_val.png", "reliability_test.png"} | \
        {f"confusion_{s}_{k}.png" for s in ("val", "test") for k in ("counts", "normalized")}
    assert {p.name for p in out.iterdir()} == expected
    m = json.loads((out / "metrics.json").read_text())
    assert {"checkpoint", "checkpoint_sha256", "data_sha256", "model_name", "timestamp", "temperature",
            "val", "test"} <= set(m)
    assert m["checkpoint_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert m["data_sha256"] == hashlib.sha256(synthetic_h5.read_bytes()).hexdigest()
    assert m["model_name"] == "vgg_small" and m["synthetic_data"] is True
    assert m["ours"] == "Ours (this run)"
    assert "Ours (this run)" in (out / "published_results.csv").read_text()
    ck = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    # the report names the recipe it scores, with the training machine's absolute paths made relative
    portable = {k: os.path.relpath(v) if k in ("data", "out") and os.path.isabs(v) else v for k, v in ck["config"].items()}
    assert m["train_config"] == portable and not os.path.isabs(m["train_config"]["out"])
    assert m["training"] == {"epochs_run": len(ck["history"]),
                             "wall_s": round(sum(r["time_s"] for r in ck["history"]), 1),
                             "median_epoch_s": round(float(np.median([r["time_s"] for r in ck["history"]])), 1),
                             "ran_on": [describe_machine(ck["machine"])]}
    assert set(m["temperature"]) == set(m["val"]) == set(m["test"]) == {"plain", "flip", "tencrop"}
    faces, y = load_split(synthetic_h5, "test")
    test = m["test"]["plain"]
    assert test["n"] == 70
    assert test["accuracy"] == pytest.approx((load_model(tiny_checkpoint).predict(faces) == y).mean())
    assert test["accuracy_ci95"][0] <= test["accuracy"] <= test["accuracy_ci95"][1]
    assert {"ece", "ece_temperature", "macro_f1", "report", "confusion", "confusion_normalized"} <= set(test)
    assert np.sum(test["confusion"]) == 70


def test_temperature_never_reads_test(tiny_checkpoint, synthetic_h5, tmp_path):
    scrambled = tmp_path / "scrambled.h5"
    shutil.copy(synthetic_h5, scrambled)
    with h5py.File(scrambled, "a") as f:  # other PrivateTest labels, PublicTest untouched
        f["test/labels"][...] = 0
    kw = dict(tta="flip", n_bootstrap=0, figures=False, progress=False)
    a = evaluate_checkpoint(tiny_checkpoint, synthetic_h5, tmp_path / "a", **kw)
    b = evaluate_checkpoint(tiny_checkpoint, scrambled, tmp_path / "b", **kw)
    assert a["temperature"] == b["temperature"] and a["val"] == b["val"]
    assert a["test"]["plain"]["confusion"] != b["test"]["plain"]["confusion"]


def test_missing_checkpoint_is_named(synthetic_h5, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        evaluate_checkpoint(tmp_path / "nope.pt", synthetic_h5, tmp_path / "out")


@pytest.mark.real_data
def test_evaluate_on_real_data(tiny_checkpoint, real_h5, tmp_path):
    m = evaluate_checkpoint(tiny_checkpoint, real_h5, tmp_path, n_bootstrap=20, figures=False, progress=False)
    assert m["val"]["plain"]["n"] == 3589 and m["test"]["plain"]["n"] == 3589
    assert m["synthetic_data"] is False and sum(map(sum, m["test"]["plain"]["confusion"])) == 3589


def test_report_folders_keep_runs_apart():
    from fer_lib.evaluate import report_dir_for
    assert report_dir_for("models/vgg_small_fer2013.pt") == Path("reports/vgg_small_fer2013")
    assert report_dir_for("runs/a/best.pt") != report_dir_for("runs/b/best.pt")
    assert report_dir_for("runs/a/best.pt", "out") == Path("out/a-best")
