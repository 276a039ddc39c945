"""Per-face smoothing of per-frame class probabilities, so shown labels stop flickering.

    fer video --source clip.mp4 --checkpoint model.pt --smoother hysteresis --alpha 0.5 --margin 0.1 --k 3
    fer video ... --smoother moving_average --window 10     # the original study's fix

    from fer_lib.smoothing import create_smoother
    s = create_smoother("ema", alpha=0.3)          # one object per face track (fer_lib.tracking)
    label, confidence, smoothed = s.update(proba)   # proba: (7,) softmax of one frame

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

Smoothing state belongs to a face: fer_lib.tracking keeps the faces apart and gives
each track its own smoother.
"""
from __future__ import annotations

import inspect
from collections import deque

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
