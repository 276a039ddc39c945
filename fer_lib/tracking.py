"""Faces kept apart between frames: greedy IoU matching of each detection pass to the tracks, so every
face keeps an id and its own smoother, and a track ends when its face is gone.

    from fer_lib.tracking import Tracker
    tracker = Tracker(lambda: create_smoother("hysteresis"))
    for track in tracker.update(boxes):             # boxes (N, 4) x, y, w, h of one detection pass
        track.id, track.box, track.smoother.update(...)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .smoothing import create_smoother


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
