"""Per-face smoothing of per-frame class probabilities, so shown labels stop flickering.

    fer video --source clip.mp4 --checkpoint model.pt --smoother hysteresis --alpha 0.5 --margin 0.1 --k 3
    fer video ... --smoother moving_average --window 10     # the original study's fix

    from fer_lib.smoothing import Tracker, create_smoother
    s = create_smoother("ema", alpha=0.3)          # one object per face track
    label, confidence, smoothed = s.update(proba)   # proba: (7,) softmax of one frame
    tracker = Tracker(lambda: create_smoother("hysteresis"))
    for track in tracker.update(boxes):             # boxes (N, 4) x, y, w, h of one detection pass
        track.id, track.box, track.smoother.update(...)

Smoothers, chosen by name:
- none: the raw argmax of every frame.
- moving_average: mean of the last `window` frames. The original study used one
  such average shared by every face on screen; here each track owns one.
- ema: p_t = alpha * proba_t + (1 - alpha) * p_{t-1}, started at the first frame.
- hysteresis: the EMA, and the shown label changes only when another class leads
  it by `margin` in the smoothed probabilities for `k` consecutive frames
  (alpha=1 gives hysteresis on the raw probabilities). It is DEFAULT_SMOOTHER; its
  defaults (alpha 0.5, margin 0.2, k 2) are what fer_lib.stream.tune_hysteresis
  picked for models/vgg_small_fer2013.pt on the labelled PublicTest stream.

Smoothing state belongs to a face, so this module also keeps the faces apart:
Tracker matches each frame's detections to tracks by greedy IoU; every track
has an id and its own smoother, and ends when its face is gone.
"""
from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass

import numpy as np

_SMOOTHERS: dict = {}
DEFAULT_SMOOTHER = "hysteresis"


def register_smoother(cls):
    """Class decorator: make a smoother available to create_smoother under cls.name."""
    _SMOOTHERS[cls.name] = cls
    return cls


def list_smoothers() -> list[str]:
    return sorted(_SMOOTHERS)


def create_smoother(name: str = DEFAULT_SMOOTHER, **kwargs):
    """A fresh smoother; None kwargs are dropped so CLI defaults keep the smoother's own."""
    if name not in _SMOOTHERS:
        raise ValueError(f"unknown smoother {name!r}; choose from {list_smoothers()}")
    cls = _SMOOTHERS[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if set(kwargs) - allowed:
        raise ValueError(f"smoother {name!r} takes {sorted(allowed) or 'no settings'}; "
                         f"got {sorted(set(kwargs) - allowed)}")
    return cls(**kwargs)


def smoother_settings(smoother) -> dict:
    """The settings a smoother was built with, e.g. {'alpha': 0.5, 'margin': 0.1, 'k': 3}."""
    names = list(inspect.signature(type(smoother).__init__).parameters)[1:]
    return {n: getattr(smoother, n) for n in names}


def _as_proba(proba) -> np.ndarray:
    p = np.asarray(proba, np.float64)
    if p.ndim != 1 or not np.isfinite(p).all():
        raise ValueError(f"expected one finite probability vector (C,), got shape {p.shape}")
    return p


@register_smoother
class NoSmoothing:
    """The raw argmax; the baseline every smoother is measured against."""
    name = "none"

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        pass

    def smooth(self, p: np.ndarray) -> np.ndarray:
        return p

    def update(self, proba) -> tuple[int, float, np.ndarray]:
        """(shown label, its smoothed probability, smoothed probabilities (C,))."""
        p = self.smooth(_as_proba(proba))
        label = int(p.argmax())
        return label, float(p[label]), p


@register_smoother
class MovingAverage(NoSmoothing):
    """Mean of the last `window` frames (fewer at the start of a track)."""
    name = "moving_average"

    def __init__(self, window: int = 10):
        if int(window) < 1:
            raise ValueError(f"moving_average window must be >= 1 frame, got {window}")
        self.window = int(window)
        self.reset()

    def reset(self) -> None:
        self.history = deque(maxlen=self.window)

    def smooth(self, p: np.ndarray) -> np.ndarray:
        self.history.append(p)
        return np.mean(self.history, axis=0)


@register_smoother
class EMA(NoSmoothing):
    """Exponential moving average; alpha is the weight of the newest frame."""
    name = "ema"

    def __init__(self, alpha: float = 0.3):
        if not 0 < alpha <= 1:
            raise ValueError(f"ema alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.reset()

    def reset(self) -> None:
        self.p = None

    def smooth(self, p: np.ndarray) -> np.ndarray:
        self.p = p.copy() if self.p is None else self.alpha * p + (1 - self.alpha) * self.p
        return self.p


@register_smoother
class Hysteresis(EMA):
    """EMA, plus a sticky shown label: a challenger must lead by `margin` for `k` frames in a row."""
    name = "hysteresis"

    def __init__(self, alpha: float = 0.5, margin: float = 0.2, k: int = 2):
        if margin < 0 or int(k) < 1:
            raise ValueError(f"hysteresis needs margin >= 0 and k >= 1, got margin={margin}, k={k}")
        self.margin, self.k = float(margin), int(k)
        super().__init__(alpha)

    def reset(self) -> None:
        super().reset()
        self.shown, self.challenger, self.streak = None, None, 0

    def update(self, proba) -> tuple[int, float, np.ndarray]:
        p = self.smooth(_as_proba(proba))
        lead = int(p.argmax())
        if self.shown is None:
            self.shown = lead
        elif lead != self.shown and p[lead] - p[self.shown] >= self.margin:
            # The streak counts frames of the same challenger; another leader restarts it.
            self.streak = self.streak + 1 if lead == self.challenger else 1
            self.challenger = lead
            if self.streak >= self.k:
                self.shown, self.challenger, self.streak = lead, None, 0
        else:
            self.challenger, self.streak = None, 0
        return self.shown, float(p[self.shown]), p


# ----------------------------------------------------------------------------- tracks

def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlap areas of boxes a (N, 4) and b (M, 4), both x, y, w, h -> (N, M)."""
    a, b = a[:, None], b[None]
    iw = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes a (N, 4) and b (M, 4) -> (N, M)."""
    inter = box_intersection(a, b)
    return inter / np.maximum((a[:, 2] * a[:, 3])[:, None] + b[:, 2] * b[:, 3] - inter, 1e-9)


def drop_nested(boxes: np.ndarray, cover: float = 0.6) -> np.ndarray:
    """Drop boxes mostly (>= cover of their area) inside a larger box: Haar's eye-level false faces."""
    area = boxes[:, 2] * boxes[:, 3]
    inside = (box_intersection(boxes, boxes) >= cover * area[:, None]) & (area[:, None] < area[None])
    return boxes[~inside.any(1)]  # row i lies inside some larger box j


@dataclass
class Track:
    id: int
    box: np.ndarray          # (4,) x, y, w, h
    smoother: object         # this face's own smoother (fer_lib.smoothing)
    misses: int = 0          # detection passes since it was last seen


class Tracker:
    """Greedy IoU association: each detection continues its best-overlapping track or starts one."""

    def __init__(self, make_smoother=create_smoother, iou: float = 0.3, max_missed: int = 3):
        self.make_smoother, self.iou, self.max_missed = make_smoother, iou, max_missed
        self.tracks: list[Track] = []
        self.next_id = 0

    def update(self, boxes) -> list[Track]:
        """Feed one detection pass; returns the tracks seen in it (matched or new)."""
        boxes = drop_nested(np.asarray(boxes, np.float32).reshape(-1, 4))
        iou = box_iou(np.array([t.box for t in self.tracks], np.float32).reshape(-1, 4), boxes)
        pairs = sorted(zip(iou[iou >= self.iou], *np.nonzero(iou >= self.iou)), key=lambda p: -p[0])
        matched_t, matched_d = set(), set()
        for _, i, j in pairs:  # best overlaps first; each track and detection used once
            if i not in matched_t and j not in matched_d:
                matched_t.add(i), matched_d.add(j)
                self.tracks[i].box, self.tracks[i].misses = boxes[j], 0
        for i, t in enumerate(self.tracks):
            t.misses += i not in matched_t
        self.tracks = [t for t in self.tracks if t.misses < self.max_missed]
        for j in sorted(set(range(len(boxes))) - matched_d):
            self.tracks.append(Track(self.next_id, boxes[j], self.make_smoother()))
            self.next_id += 1
        return self.visible()

    def visible(self) -> list[Track]:
        """Tracks seen in the last detection pass. Missed ones stay hidden, keeping their id and
        smoother for a face the detector loses briefly, and end after max_missed passes."""
        return [t for t in self.tracks if t.misses == 0]
