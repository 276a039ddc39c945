"""Figures of the data step (notebook 01): class balance, sample faces, pixel intensities;
of training (notebook 02): loss and accuracy curves; and of evaluation (notebook 04, drawn by
evaluate.evaluate_checkpoint): confusion matrices, reliability, confident mistakes, Grad-CAM.

    from fer_lib.plots import plot_class_balance, plot_sample_grid, plot_pixel_histogram, plot_history
    plot_class_balance(read_info("data/fer2013.h5")).savefig("reports/latest/01_class_balance.png")
    plot_history(json.load(open("runs/vgg_small/history.json"))).savefig("reports/latest/02_training_curves.png")

Each function returns a matplotlib Figure; notebooks show it and save it to report_dir.
"""
from __future__ import annotations

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .data import CLASS_NAMES, SPLIT_USAGE, pixel_counts
from .metrics import ECE_BINS, expected_calibration_error, normalize_rows, reliability_bins
from .models import grad_cam


def plot_class_balance(info: dict):
    """Bar chart of images per class, one hue per split; `info` is read_info()'s dict."""
    counts = pd.DataFrame(info["class_counts"], index=info["class_names"])       # (7 classes, 3 splits)
    tidy = counts.rename(columns=lambda s: f"{s} ({SPLIT_USAGE[s]})").rename_axis("class") \
                 .reset_index().melt(id_vars="class", var_name="split", value_name="images")
    fig, ax = plt.subplots(figsize=(9, 4))
    sns.barplot(data=tidy, x="class", y="images", hue="split", ax=ax)
    ax.set_title("Class balance per split" + (" (SYNTHETIC faces)" if info.get("synthetic") else ""))
    for container in ax.containers:
        ax.bar_label(container, fontsize=7)
    fig.tight_layout()
    return fig


def plot_sample_grid(images: np.ndarray, labels: np.ndarray, n_per_class: int = 8, seed: int = 0,
                     class_names=CLASS_NAMES):
    """Grid of faces: one row per class, n_per_class random examples (uint8 (N,48,48), labels (N,))."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(class_names), n_per_class, figsize=(n_per_class * 1.1, len(class_names) * 1.15),
                             squeeze=False)
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        picks = rng.choice(idx, size=min(n_per_class, len(idx)), replace=False)
        for j, ax in enumerate(axes[c]):
            if j < len(picks):
                ax.imshow(images[picks[j]], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle("Random faces per class")
    fig.tight_layout()
    return fig


def plot_pixel_histogram(split_images: dict, mean: float | None = None):
    """Pixel-intensity distribution of each split ({split: uint8 images}); `mean` (in [0, 1]) drawn as a line."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for split, images in split_images.items():
        ax.plot(np.arange(256), pixel_counts(images) / images.size, label=f"{split} ({SPLIT_USAGE.get(split, split)})")
    if mean is not None:
        ax.axvline(mean * 255, color="k", ls="--", lw=1, label=f"train mean {mean * 255:.1f}")
    # log scale: FER-2013 is nearly flat except for spikes at 0 and 255 (saturated faces)
    ax.set(xlabel="pixel intensity (0-255)", ylabel="fraction of pixels (log scale)", xlim=(0, 255),
           yscale="log", title="Pixel intensities")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_history(history: list):
    """Loss and accuracy per epoch from fit()'s history (or history.json); the best val epoch marked.

    Train loss includes label smoothing (and class weights), val loss is plain cross-entropy,
    so compare their trends rather than their levels. Returns the matplotlib Figure.
    """
    if not history:
        raise ValueError("empty history: nothing to plot")
    h = pd.DataFrame(history)
    best = h.loc[h["val_acc"].idxmax()]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(h["epoch"], h["train_loss"], "o-", label="train (smoothed CE)")
    ax_loss.plot(h["epoch"], h["val_loss"], "o-", label="val (PublicTest)")
    ax_acc.plot(h["epoch"], h["train_acc"], "o-", label="train (augmented)")
    ax_acc.plot(h["epoch"], h["val_acc"], "o-", label="val (PublicTest)")
    ax_acc.axvline(best["epoch"], color="gray", ls=":", label=f"best val {best['val_acc']:.3f}")
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set(xlabel="epoch", ylabel=what)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_transfer(final: dict):
    """Each finalist's PublicTest accuracy in the search (the proxy) against at the final budget
    (fer_lib.tune.retrain_finalists' result), labelled by role; the rank correlation in the title."""
    rows = pd.DataFrame(final["finalists"])
    if rows.empty:
        raise ValueError("no finalists: nothing to plot")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(100 * rows["proxy_val_acc"], 100 * rows["final_val_acc"])
    # finalists often land close together: labels alternate sides in the order of the final score
    for i, (_, r) in enumerate(rows.sort_values("final_val_acc", ascending=False).iterrows()):
        ax.annotate(f"{r['role']} (trial {r['trial']})", (100 * r["proxy_val_acc"], 100 * r["final_val_acc"]),
                    textcoords="offset points", xytext=(6, 2) if i % 2 == 0 else (-6, -8), fontsize=8,
                    ha="left" if i % 2 == 0 else "right")
    ax.margins(x=0.25, y=0.1)  # room for the labels on both sides
    rho = final.get("spearman_proxy_final")
    ax.set(xlabel="PublicTest % in the search (proxy budget)",
           ylabel=f"PublicTest % after {final['final_budget']['epochs']} epochs",
           title="Search score against final score, Spearman " + ("n/a" if rho is None else f"{rho:+.2f}"))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- evaluation

def plot_confusion(cm, class_names, normalize: bool = False, ax=None, title: str | None = None):
    """Seaborn heatmap of a confusion matrix (rows: true class); normalize divides each row by its count."""
    cm = normalize_rows(cm) if normalize else np.asarray(cm, dtype=np.int64)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    sns.heatmap(cm, annot=True, fmt=".2f" if normalize else "d", cmap="Blues", square=True, cbar=False,
                vmin=0, vmax=1 if normalize else None, xticklabels=class_names, yticklabels=class_names, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=title or ("row-normalized (recall)" if normalize else "counts"))
    return ax.figure


def plot_reliability(curves: dict, n_bins: int = ECE_BINS, ax=None, title: str = "reliability"):
    """Accuracy against mean confidence per bin for each {label: (proba (N, C), y (N,))},
    ECE in the legend, the share of faces per bin (first curve) as grey bars."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for i, (label, (proba, y)) in enumerate(curves.items()):
        r = reliability_bins(proba, y, n_bins)
        if i == 0:
            ax.bar(r["edges"][:-1], r["count"] / r["count"].sum(), width=1 / n_bins, align="edge",
                   color="0.85", label="share of faces")
        keep = r["count"] > 0
        ax.plot(r["confidence"][keep], r["accuracy"][keep], "o-",
                label=f"{label} (ECE {expected_calibration_error(proba, y, n_bins):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return ax.figure


def plot_confident_mistakes(faces, y_true, proba, class_names, title: str = "most confident mistakes"):
    """A C x C grid: cell (true t, predicted p) shows the most confident face of class t
    predicted as p, titled with its confidence; empty when the pair never happens."""
    y_true, pred, conf = np.asarray(y_true), np.asarray(proba).argmax(1), np.asarray(proba).max(1)
    c = len(class_names)
    fig, axes = plt.subplots(c, c, figsize=(1.35 * c, 1.45 * c), squeeze=False)
    for t in range(c):
        for p in range(c):
            ax = axes[t, p]
            ax.set(xticks=[], yticks=[])
            idx = np.flatnonzero((y_true == t) & (pred == p))
            if t != p and len(idx):
                i = idx[np.argmax(conf[idx])]
                ax.imshow(faces[i], cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{conf[i]:.2f}", fontsize=8)
            else:
                ax.set_facecolor("0.92" if t == p else "white")
        axes[t, 0].set_ylabel(class_names[t], fontsize=8), axes[-1, t].set_xlabel(class_names[t], fontsize=8)
    fig.supylabel("true"), fig.supxlabel("predicted"), fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_saliency(clf, faces, y_true, per_class: int = 3, title: str = "Grad-CAM, last conv layer"):
    """Grad-CAM of the predicted class over the first `per_class` faces of each true class
    (one row per class); titles give the prediction and its confidence (green right, red wrong)."""
    y_true, names = np.asarray(y_true), clf.class_names
    fig, axes = plt.subplots(len(names), per_class, figsize=(1.6 * per_class, 1.6 * len(names)), squeeze=False)
    for c, row in enumerate(axes):
        idx = np.flatnonzero(y_true == c)[:per_class]
        cams, proba = grad_cam(clf, faces[idx]) if len(idx) else ([], [])
        row[0].set_ylabel(names[c], fontsize=9)
        for j, ax in enumerate(row):
            ax.set(xticks=[], yticks=[])
            if j < len(idx):
                p = proba[j].argmax()
                ax.imshow(faces[idx[j]], cmap="gray", vmin=0, vmax=255)
                ax.imshow(cams[j], cmap="jet", alpha=0.4, vmin=0, vmax=1)
                ax.set_title(f"{names[p]} {proba[j, p]:.2f}", fontsize=8, color="green" if p == c else "red")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- notebook 05: video and stream

def plot_frame_strip(video_path, n: int = 4, cols: int = 2, frame_width: float = 5.5):
    """n evenly spaced frames of a video (the first and last left out: often black), `cols` to a row,
    each frame_width inches wide: about as large as the clip itself, so that the labels can be read."""
    cap = cv2.VideoCapture(str(video_path))
    total, w, h = (int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH,
                                             cv2.CAP_PROP_FRAME_HEIGHT))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * frame_width, rows * (frame_width * h / w + 0.3)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, np.linspace(0, total - 1, n + 2)[1:-1].round().astype(int)):
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        if ok:
            ax.imshow(frame[..., ::-1])
        ax.set_title(f"frame {i}", fontsize=10)
    cap.release()
    fig.tight_layout()
    return fig


def plot_timeline(records: list, class_names, max_tracks: int = 3):
    """Per track (the longest ones): each class's raw probability (thin) and smoothed one (thick)."""
    df = pd.DataFrame(records)
    tracks = sorted(df["track_id"].value_counts().index[:max_tracks]) if len(df) else []
    fig, axes = plt.subplots(max(len(tracks), 1), 1, figsize=(11, 2.4 * max(len(tracks), 1)), sharex=True,
                             squeeze=False)
    for ax, tid in zip(axes[:, 0], tracks):
        d = df[df["track_id"] == tid]
        for c, name in enumerate(class_names):
            ax.plot(d["time_s"], d[f"p_{c}"], color=plt.cm.tab10(c), lw=0.7, alpha=0.5)
            ax.plot(d["time_s"], d[f"s_{c}"], color=plt.cm.tab10(c), lw=2, label=name)
        ax.set_ylabel(f"track #{tid}")
        ax.set_ylim(0, 1)
    if not tracks:
        axes[0, 0].text(0.5, 0.5, "no faces detected", ha="center", transform=axes[0, 0].transAxes)
    axes[0, 0].legend(ncol=7, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.35))
    axes[-1, 0].set_xlabel("time (s); thin: raw, thick: smoothed")
    fig.tight_layout()
    return fig


def plot_stream_labels(truth, shown: dict, fps: float, class_names, frames: int = 480):
    """The true label per frame and what each smoother shows (shown: {name: labels per frame},
    e.g. fer_lib.stream.shown_sequences) over the first frames: flicker, seen."""
    n = min(frames, len(truth))
    t = np.arange(n) / fps
    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.step(t, np.asarray(truth)[:n], where="post", color="k", lw=3, alpha=0.35, label="truth")
    for i, (label, labels) in enumerate(shown.items()):
        ax.step(t, np.asarray(labels)[:n] + 0.1 * (i + 1), where="post", lw=1, label=label)  # offset: no hiding
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("time (s)")
    ax.legend(ncol=len(shown) + 1, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.2))
    fig.tight_layout()
    return fig


def plot_stage_times(result: dict):
    """Milliseconds per frame of each pipeline stage (wall clock and CPU), against the 2x real-time budget."""
    df = pd.DataFrame({"wall clock": {**result["stage_s"], "total": result["wall_s"]},
                       "CPU (all threads)": {**result["stage_cpu_s"], "total": result["cpu_s"]}})
    df *= 1000 / max(result["frames"], 1)
    ax = df.plot.barh(figsize=(8, 3))
    ax.axvline(1000 / (2 * result["source_fps"]), color="r", ls="--", label="total's budget for 2x real time")
    ax.set_xlabel("ms per frame")
    ax.legend(fontsize=8)
    ax.invert_yaxis()
    ax.figure.tight_layout()
    return ax.figure
