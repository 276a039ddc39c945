"""Smoothers on scripted probability sequences (exact outputs) and track association on scripted boxes."""
import numpy as np
import pytest

from fer_lib.smoothing import create_smoother, list_smoothers, smoother_settings
from fer_lib.tracking import Tracker, box_iou, drop_nested


def run(smoother, probs):
    return [smoother.update(p) for p in probs]


def test_registry_and_settings():
    assert list_smoothers() == ["ema", "hysteresis", "moving_average", "none"]
    assert smoother_settings(create_smoother("ema", alpha=0.25)) == {"alpha": 0.25}
    assert smoother_settings(create_smoother("ema", alpha=None)) == {"alpha": 0.3}  # None keeps the default
    with pytest.raises(ValueError, match="unknown smoother 'median'"):
        create_smoother("median")
    with pytest.raises(ValueError, match=r"'ema' takes \['alpha'\]; got \['window'\]"):
        create_smoother("ema", window=5)
    with pytest.raises(ValueError, match="alpha must be in"):
        create_smoother("ema", alpha=0)
    with pytest.raises(ValueError, match="expected one finite probability vector"):
        create_smoother("none").update(np.ones((2, 7)))


def test_none_is_raw_argmax():
    label, conf, p = create_smoother("none").update([0.1, 0.6, 0.3])
    assert (label, conf) == (1, 0.6) and p.tolist() == [0.1, 0.6, 0.3]


def test_moving_average_exact():
    out = run(create_smoother("moving_average", window=2), [[0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.0, 0.2, 0.8]])
    assert [o[0] for o in out] == [0, 1, 1]
    np.testing.assert_allclose([o[2] for o in out], [[0.6, 0.4, 0.0], [0.4, 0.6, 0.0], [0.1, 0.5, 0.4]])
    assert out[2][1] == pytest.approx(0.5)


def test_ema_exact_and_reset():
    s = create_smoother("ema", alpha=0.25)
    out = run(s, [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]])
    # Starts at the first frame, then p = 0.25 * new + 0.75 * old (exact in binary).
    assert [o[2].tolist() for o in out] == [[1, 0, 0], [0.75, 0.25, 0], [0.5625, 0.4375, 0],
                                            [0.421875, 0.578125, 0]]
    assert [o[0] for o in out] == [0, 0, 0, 1] and out[3][1] == 0.578125
    s.reset()
    assert s.update([0, 0, 1])[2].tolist() == [0, 0, 1]


def test_hysteresis_switch_timing():
    a, b, close = [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.45, 0.55, 0.0]
    s = create_smoother("hysteresis", alpha=1.0, margin=0.2, k=3)  # alpha 1: on the raw probabilities
    seq = [a, a, b, b, a, close, close, close, close, b, b, b, b, a]
    shown = [o[0] for o in run(s, seq)]
    # b leads twice (streak broken by a), 'close' leads by only 0.1 < margin, then b 3x in a row.
    assert shown == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert s.update(b)[1] == pytest.approx(0.9)  # the confidence is the shown label's probability


def test_hysteresis_k1_margin0_equals_ema():
    probs = np.random.default_rng(0).dirichlet(np.ones(7), size=200)
    h = [o[0] for o in run(create_smoother("hysteresis", alpha=0.4, margin=0.0, k=1), probs)]
    e = [o[0] for o in run(create_smoother("ema", alpha=0.4), probs)]
    assert h == e


def test_box_iou_and_nested():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0, 1]])
    boxes = np.array([[0, 0, 100, 100], [20, 20, 30, 30], [90, 90, 40, 40]], np.float32)
    np.testing.assert_array_equal(drop_nested(boxes), boxes[[0, 2]])  # the eye-sized box inside goes


def test_tracker_ids_persist_new_and_ending_tracks():
    tr = Tracker(iou=0.3, max_missed=2)
    face1 = np.array([100, 100, 50, 50], np.float32)
    face2 = np.array([300, 100, 60, 60], np.float32)
    assert [t.id for t in tr.update([face1])] == [0]
    for step in range(1, 4):  # both move a little: ids persist
        seen = tr.update([face2 + [0, 2 * step, 0, 0], face1 + [3 * step, 0, 0, 0]] if step > 1 else [face1 + 3])
        assert sorted(t.id for t in seen) == ([0] if step == 1 else [0, 1])
    s0 = next(t for t in tr.tracks if t.id == 0).smoother
    assert [t.id for t in tr.update([face2 + [0, 8, 0, 0]])] == [1]      # face 1 missed once: hidden
    assert sorted(t.id for t in tr.tracks) == [0, 1]
    back = tr.update([face1 + [9, 0, 0, 0], face2 + [0, 8, 0, 0]])     # ... and back with its smoother
    assert sorted(t.id for t in back) == [0, 1] and next(t for t in back if t.id == 0).smoother is s0
    tr.update([face2])
    tr.update([face2])                                                # face 1 gone for 2 passes: ended
    assert [t.id for t in tr.tracks] == [1]
    assert [t.id for t in tr.update([face2, face1])] == [1, 2]       # a returning face is a new track
    assert [t.id for t in tr.update([])] == [] and tr.next_id == 3
