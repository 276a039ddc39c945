"""Figures of the data step (notebook 01): class balance, sample faces, pixel intensities;
and of training (notebook 02): loss and accuracy curves.

    from fer_lib.plots import plot_class_balance, plot_sample_grid, plot_pixel_histogram, plot_history
    plot_class_balance(read_info("data/fer2013.h5")).savefig("reports/latest/01_class_balance.png")
    plot_history(json.load(open("runs/vgg_small/history.json"))).savefig("reports/latest/02_training_curves.png")

Each function returns a matplotlib Figure; notebooks show it and save it to report_dir.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .data import CLASS_NAMES, SPLIT_USAGE, pixel_counts


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
