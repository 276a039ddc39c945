"""The labelled face stream and the flicker / delay / accuracy measurement of smoothers."""
import cv2
import numpy as np
import pytest

from fer_lib.stream import (change_delays, count_switches, format_table, make_stream, measure_smoothers,
                            recognized_changes, score_labels, smooth_sequence, tune_hysteresis, write_stream_video)


def test_switches_and_delays_exact():
    truth = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    shown = [0, 3, 0, 0, 0, 1, 1, 1, 1, 1]
    assert count_switches(shown) == 3
    delays, reached = change_delays(shown, truth)   # 1 is shown 2 frames after its change; 2 never (run: 3)
    assert delays.tolist() == [2, 3] and reached.tolist() == [True, False]
    assert score_labels(shown, truth, fps=10) == {"accuracy": 0.4, "switches_per_s": 3.0, "median_delay": 2.5,
                                                  "reached": 0.5}
    raw = [0, 0, 0, 1, 1, 1, 5, 2, 5, 5]            # the network sees the change to 1, not the one to 2
    assert recognized_changes(raw, truth).tolist() == [True, False]
    assert score_labels(shown, truth, 10, recognized_changes(raw, truth))["median_delay"] == 2.0


def flickery_probs(truth, flip: float, seed: int = 0):
    """One-hot-ish probabilities that follow the truth but flip to a random class on some frames."""
    rng = np.random.default_rng(seed)
    said = np.where(rng.random(len(truth)) < flip, rng.integers(0, 7, len(truth)), truth)
    probs = np.full((len(truth), 7), 0.05)
    probs[np.arange(len(truth)), said] = 0.7
    return probs, said


def test_measure_smoothers_on_scripted_probabilities():
    truth = np.repeat([3, 0, 6, 3, 5], 60)
    probs, said = flickery_probs(truth, flip=0.15)
    stream = type("S", (), {"labels": truth, "fps": 24.0, "crops": None, "split": "val"})()
    rows = measure_smoothers(None, stream, {"raw": ("none", {}), "hyst": ("hysteresis", {"alpha": 0.5, "margin": 0.1, "k": 3})},
                             probs=probs)
    raw, hyst = rows
    assert raw["accuracy"] == pytest.approx(np.mean(said == truth))
    assert raw["switches_per_s"] == pytest.approx(count_switches(said) * 24 / 300)
    assert raw["switch_cut"] == 1 and raw["accuracy_drop_pts"] == 0 and raw["settings"] == ""
    assert hyst["settings"] == "alpha=0.5, margin=0.1, k=3"
    # Isolated flips never last k frames: the shown label switches only at the 4 true changes.
    assert hyst["switches_per_s"] == pytest.approx(4 * 24 / 300) and hyst["accuracy"] > raw["accuracy"]
    assert hyst["median_delay"] <= 6 and hyst["meets_target"]
    shown = smooth_sequence(probs, "hysteresis", alpha=0.5, margin=0.1, k=3)
    assert count_switches(shown) == 4 and "| hyst | alpha=0.5" in format_table(rows)


def test_make_stream_is_deterministic_and_labelled(synthetic_h5):
    kw = dict(n_runs=5, run_frames=(10, 20), seed=3)
    s = make_stream(synthetic_h5, "val", **kw)
    n = len(s.labels)
    assert s.crops.shape == (n, 48, 48) and s.crops.dtype == np.uint8 and 50 <= n <= 100
    assert s.runs[0] == 0 and s.runs[-1] == 4 and (np.diff(s.runs) >= 0).all()
    for r in range(5):  # one face, one label per run, 10-20 frames each
        assert len(set(s.labels[s.runs == r])) == 1 and 10 <= np.sum(s.runs == r) <= 20
    assert s.crops[0].std() > 10 and not np.array_equal(s.crops[0], s.crops[1])  # perturbed per frame
    again = make_stream(synthetic_h5, "val", **kw)
    np.testing.assert_array_equal(s.crops, again.crops)
    np.testing.assert_array_equal(s.labels, again.labels)
    assert s.config["seed"] == 3 and s.split == "val"


def test_tuning_refuses_test_split_and_ranks(synthetic_h5):
    s = make_stream(synthetic_h5, "test", n_runs=2, run_frames=(5, 5))
    with pytest.raises(ValueError, match="tune on the 'val' stream"):
        tune_hysteresis(None, s, probs=np.zeros((len(s.labels), 7)))
    truth = np.repeat([3, 0, 6, 3, 5], 60)
    probs, _ = flickery_probs(truth, flip=0.15)
    stream = type("S", (), {"labels": truth, "fps": 24.0, "crops": None, "split": "val"})()
    rows = tune_hysteresis(None, stream, alphas=(0.5, 1.0), margins=(0.1,), ks=(1, 3), probs=probs)
    assert len(rows) == 4 and rows[0]["chosen_rule"] and rows[0]["switch_cut"] == max(r["switch_cut"] for r in rows)
    assert not rows[-1]["chosen_rule"] and rows[-1]["settings"] == "alpha=1.0, margin=0.1, k=1"  # flickers as raw


def test_write_stream_video(synthetic_h5, tmp_path):
    n = write_stream_video(tmp_path / "s.mp4", synthetic_h5, "val", n_runs=2, run_frames=(6, 6))
    cap = cv2.VideoCapture(str(tmp_path / "s.mp4"))
    assert n == 12 and cap.get(cv2.CAP_PROP_FRAME_COUNT) == 12 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 320
