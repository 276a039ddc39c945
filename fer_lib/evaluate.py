"""Evaluate a checkpoint: PublicTest and PrivateTest reported separately, with a bootstrap
interval, per-class metrics, calibration, test-time augmentation and pictures.

    fer evaluate --checkpoint models/vgg_small_kd_fer2013.pt --data data/fer2013.h5
    fer evaluate --checkpoint runs/vgg_small/best.pt --data data/fer2013.h5 --tta flip,tencrop --bootstrap 1000

Writes metrics.json and the figures into reports/<checkpoint stem>/ (or --out). The
temperature is fitted on PublicTest ("val") only and then applied to PrivateTest ("test");
nothing here picks anything by looking at "test".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .assets import shipped_name
from .data import SPLIT_USAGE, load_split, read_info, source_sha256
from .errors import check_output_path
from .flags import add_dataclass_arguments, check_settings, dataclass_from_arguments, setting
from .io import read_config, write_atomic
from .metrics import (ECE_BINS, average_proba, compute_metrics, expected_calibration_error, fit_temperature,
                      negative_log_likelihood)
from .models import load_model
from .progress import bar

TTA_MODES = ("flip", "tencrop")
EVAL_SPLITS = ("val", "test")  # PublicTest, PrivateTest: Training is never scored here


# ----------------------------------------------------------------------------- test-time augmentation

def parse_tta(tta) -> tuple[str, ...]:
    """None/False/"none" -> (); True -> both modes; "flip,tencrop" or a list -> checked tuple."""
    if tta is None or isinstance(tta, bool):
        return TTA_MODES if tta else ()
    items = tta.split(",") if isinstance(tta, str) else tta
    modes = tuple(m.strip() for m in items if m.strip() not in ("", "none"))
    unknown = sorted(set(modes) - set(TTA_MODES))
    if unknown:
        raise ValueError(f"unknown TTA mode(s) {unknown}; choose from {', '.join(TTA_MODES)} or none")
    return modes


@dataclass
class EvalConfig:
    tta: str = setting("none", check=parse_tta)  # test-time augmentation: none | flip | tencrop | flip,tencrop
    n_bootstrap: int = setting(1000, low=0)  # bootstrap resamples for the accuracy interval (0: none)
    seed: int = setting(0, low=0)     # bootstrap seed

    def __post_init__(self):
        check_settings(self)


def tta_views(faces, mode: str = "plain", crop: int = 44, resize: bool = True) -> torch.Tensor:
    """uint8 faces (N, 48, 48) -> uint8 views (V, N, 48, 48), or (V, N, crop, crop) without resize.

    plain: V=1. flip: the faces and their mirror images, V=2. tencrop: the four corner crops
    and the centre crop of side `crop`, then their mirrors, V=10. For a model trained at 48 px
    each crop is resized back to 48x48 (bilinear): a 44->48 zoom (x1.09) with a 2-px shift lies
    inside the training augmentation (scale 0.9-1.1, shift 10%), padding would add borders. For
    a model trained on random crops of side `crop` (resize=False) the crops go in as they are.
    """
    x = torch.as_tensor(np.ascontiguousarray(faces))
    if mode == "plain":
        return x[None]
    if mode == "flip":
        return torch.stack([x, x.flip(-1)])
    if mode != "tencrop":
        raise ValueError(f"unknown view mode {mode!r}; choose plain, flip or tencrop")
    h, w = x.shape[-2:]
    if not 0 < crop <= min(h, w):
        raise ValueError(f"crop {crop} must be in 1..{min(h, w)}")
    offsets = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), ((h - crop) // 2, (w - crop) // 2)]
    if resize:
        xf = x[:, None].float()  # (N, 1, 48, 48)
        crops = torch.stack([F.interpolate(xf[..., i:i + crop, j:j + crop], size=(h, w), mode="bilinear",
                                           align_corners=False)[:, 0] for i, j in offsets])  # (5, N, 48, 48)
        crops = crops.round().clamp(0, 255).to(torch.uint8)  # the Classifier takes uint8 faces
    else:
        crops = torch.stack([x[..., i:i + crop, j:j + crop] for i, j in offsets])  # (5, N, crop, crop)
    return torch.cat([crops, crops.flip(-1)])


def predict_logits(clf, faces, mode: str = "plain") -> np.ndarray:
    """Logits of every view of every face: (V, N, C) float32. A crop-trained classifier gets its
    own crop side for ten-crop, and its centre crop (inside the Classifier) otherwise."""
    cropped = clf.input_size < 48
    views = tta_views(faces, mode, crop=clf.input_size if cropped else 44, resize=not cropped)
    return np.stack([clf.predict_logits(v).numpy() for v in views])


# ----------------------------------------------------------------------------- tables

def ours_label(checkpoint) -> str:
    """The name of our row: the shipped model by its file, or this run's own checkpoint."""
    shipped = shipped_name(checkpoint)
    return f"Ours: the shipped model {shipped}" if shipped else "Ours (this run)"


def published_results_table(our_acc: float, our_ci=None, label: str = "Ours (this run)",
                            others=()) -> pd.DataFrame:
    """Our PrivateTest accuracy beside published FER-2013 results; only our rows (named by label: this run's
    checkpoint or the shipped model, ours_label; then each of `others`, (label, accuracy, ci)) come from an
    evaluation."""
    def ours(acc, ci):
        return f"{100 * acc:.2f}%" + (f" (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else "")
    protocol = "train on Training, select and calibrate on PublicTest, report PrivateTest once"
    rows = [
        ("Human estimate (Goodfellow et al. 2013)", "65 ± 5%", "human labellers on a sample of the images"),
        ("Challenge winner, Tang 2013 (CNN + linear SVM)", "71.16%",
         "Kaggle ICML 2013: PublicTest as leaderboard, PrivateTest scored once"),
        ("VGG, Pramerdorfer & Kampel 2016", "72.7%", "train on Training, select on PublicTest, report PrivateTest"),
        ("Original study (this project's predecessor)", "62-65%", "tuned on the test set (leakage)"),
        (label, ours(our_acc, our_ci), protocol),
        *((name, ours(acc, ci), protocol) for name, acc, ci in others),
    ]
    return pd.DataFrame(rows, columns=["method", "PrivateTest accuracy", "protocol"])


def summary_table(metrics: dict) -> pd.DataFrame:
    """One row per (split, view mode) of a metrics dict from evaluate_checkpoint."""
    rows = []
    for split in EVAL_SPLITS:
        for mode, m in metrics[split].items():
            ci = m["accuracy_ci95"] or [np.nan, np.nan]
            rows.append({"split": f"{split} ({SPLIT_USAGE[split]})", "views": mode, "n": m["n"],
                         "accuracy": m["accuracy"], "ci95_low": ci[0], "ci95_high": ci[1],
                         "macro_f1": m["macro_f1"], "ece": m["ece"], "ece_temperature": m.get("ece_temperature")})
    return pd.DataFrame(rows).set_index(["split", "views"])


def report_table(metrics: dict, split: str = "test", views: str = "plain") -> pd.DataFrame:
    """scikit-learn's per-class report from a metrics dict as a table (precision, recall, f1, support)."""
    report = metrics[split][views]["report"]
    return pd.DataFrame({k: v for k, v in report.items() if k != "accuracy"}).T


# ----------------------------------------------------------------------------- the whole evaluation

def report_dir_for(checkpoint, root="reports") -> Path:
    """reports/<checkpoint stem>/, one folder per evaluated checkpoint; fer train's generic
    best.pt and last.pt are told apart by their run folder: runs/vgg_small/best.pt -> reports/vgg_small-best/."""
    p = Path(checkpoint)
    return Path(root) / (f"{p.parent.name}-{p.stem}" if p.stem in ("best", "last") else p.stem)


def _save_figure(fig, path: Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def training_summary(history) -> dict | None:
    """Epochs run, training wall time, median epoch time and the machines that ran them, from a checkpoint's history."""
    if not history:
        return None
    times = [r["time_s"] for r in history if "time_s" in r]
    machines = list(dict.fromkeys(r["ran_on"] for r in history if r.get("ran_on")))
    return {"epochs_run": len(history), "wall_s": round(sum(times), 1),
            "median_epoch_s": round(float(np.median(times)), 1) if times else None,
            **({"ran_on": machines} if machines else {})}  # runs before 2026-12 did not record it


def _portable(config: dict | None) -> dict | None:
    """The training config with its absolute paths written relative to the working folder: the
    metrics.json of a committed model must not carry the path of the machine that trained it."""
    if not config:
        return config
    return {k: os.path.relpath(v) if k in ("data", "out", "teacher", "init") and isinstance(v, str) and os.path.isabs(v)
            else v for k, v in config.items()}


def _plain(o):
    """json.dumps fallback for numpy scalars and arrays."""
    return o.item() if isinstance(o, np.generic) else o.tolist()


def evaluate_checkpoint(checkpoint, h5, out_dir=None, tta=(), n_bootstrap: int = 1000, temperature: bool = True,
                        seed: int = 0, figures: bool = True, progress: bool = True) -> dict:
    """Score `checkpoint` on PublicTest ("val") and PrivateTest ("test") of `h5`, plain and with
    each TTA mode; write metrics.json and figures into out_dir; return the metrics dict."""
    checkpoint, h5 = Path(checkpoint), Path(h5)
    for path, what in ((checkpoint, "checkpoint"), (h5, "data file")):
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
    out_dir = Path(out_dir) if out_dir else report_dir_for(checkpoint)
    check_output_path(out_dir / "metrics.json", "--out")  # before minutes of prediction
    clf, info = load_model(checkpoint), read_info(h5)
    if info["class_names"] != clf.class_names:
        raise ValueError(f"{h5}: classes {info['class_names']} differ from {checkpoint}'s {clf.class_names}")
    modes = ("plain",) + parse_tta(tta)
    data = {split: load_split(h5, split) for split in EVAL_SPLITS}  # (faces uint8 (N,48,48), labels (N,))
    logits = {(s, m): predict_logits(clf, data[s][0], m)  # (V, N, C)
              for s, m in bar([(s, m) for s in EVAL_SPLITS for m in modes], desc="predict", leave=False,
                              disable=not progress, mininterval=2)}
    # One temperature per view mode, fitted on PublicTest labels only.
    temps = {m: fit_temperature(logits["val", m], data["val"][1]) for m in modes} if temperature else None
    metrics = {
        "checkpoint": str(checkpoint), "checkpoint_sha256": source_sha256(checkpoint),
        "ours": ours_label(checkpoint),  # the published-results row: a shipped model is never "this run's"
        "data": str(h5), "data_sha256": source_sha256(h5), "data_source_sha256": info["source_sha256"],
        "synthetic_data": info["synthetic"], "model_name": clf.meta.get("model_name"),
        "model_args": clf.meta.get("model_args"), "checkpoint_epoch": clf.meta.get("epoch"),
        "train_config": _portable(clf.meta.get("config")), "training": training_summary(clf.meta.get("history")),
        # int8 kernels differ a little between CPU generations (AVX2, AVX-512 VNNI): say which ran
        "quantization": clf.meta.get("quantization") and {**clf.meta["quantization"],
                                                           "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "class_names": clf.class_names, "splits": {s: SPLIT_USAGE[s] for s in EVAL_SPLITS},
        "tta": list(modes[1:]), "n_bootstrap": n_bootstrap, "seed": seed, "ece_bins": ECE_BINS, "temperature": temps,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for split in EVAL_SPLITS:
        y = data[split][1]
        metrics[split] = {}
        for m in modes:
            r = compute_metrics(y, average_proba(logits[split, m]), clf.class_names, n_bootstrap, seed)
            if temps:
                scaled = average_proba(logits[split, m], temps[m])
                r["ece_temperature"] = expected_calibration_error(scaled, y)
                r["nll_temperature"] = negative_log_likelihood(scaled, y)
            metrics[split][m] = r
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures:
        _write_figures(metrics, clf, data, logits, out_dir)
    text = json.dumps(metrics, indent=2, default=_plain)
    write_atomic(out_dir / "metrics.json", lambda tmp: Path(tmp).write_text(text))  # last: marks completion
    return metrics


def _write_figures(metrics, clf, data, logits, out_dir: Path) -> None:
    """Confusion and reliability per split (plain views); mistakes and Grad-CAM on PrivateTest."""
    from .plots import plot_confident_mistakes, plot_confusion, plot_reliability, plot_saliency  # plots imports us
    names, temps = clf.class_names, metrics["temperature"]
    for split in EVAL_SPLITS:
        usage = SPLIT_USAGE[split]
        for norm, kind in ((False, "counts"), (True, "normalized")):
            fig = plot_confusion(metrics[split]["plain"]["confusion"], names, norm, title=f"{usage}: {kind}")
            _save_figure(fig, out_dir / f"confusion_{split}_{kind}.png")
        y = data[split][1]
        curves = {"softmax": (average_proba(logits[split, "plain"]), y)}
        if temps:
            curves[f"temperature {temps['plain']:.2f}"] = (average_proba(logits[split, "plain"], temps["plain"]), y)
        _save_figure(plot_reliability(curves, title=f"{usage}: reliability"), out_dir / f"reliability_{split}.png")
    faces, y = data["test"]
    fig = plot_confident_mistakes(faces, y, average_proba(logits["test", "plain"]), names,
                                  title="PrivateTest: most confident mistake per (true, predicted) pair")
    _save_figure(fig, out_dir / "confident_mistakes_test.png")
    _save_figure(plot_saliency(clf, faces, y, title="PrivateTest: Grad-CAM"), out_dir / "gradcam_test.png")
    table = published_results_table(metrics["test"]["plain"]["accuracy"], metrics["test"]["plain"]["accuracy_ci95"],
                                    metrics["ours"])
    write_atomic(out_dir / "published_results.csv", lambda tmp: table.to_csv(tmp, index=False))


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by fer train")
    p.add_argument("--data", default="data/fer2013.h5", help="HDF5 written by fer preprocess")
    p.add_argument("--out", help="folder for metrics.json and figures (default reports/<checkpoint stem>)")
    p.add_argument("--config", help="a profile (configs/profiles/full.yaml): its `evaluate` section")
    add_dataclass_arguments(p, EvalConfig, flags={"n_bootstrap": "--bootstrap"})
    p.add_argument("--no-temperature", action="store_true", help="skip temperature scaling")
    p.add_argument("--overwrite", action="store_true", help="replace the metrics.json and figures OUT already holds")


def run(args) -> int:
    cfg = dataclass_from_arguments(args, EvalConfig, read_config(args.config).get("evaluate", {}) if args.config else {})
    out = Path(args.out) if args.out else report_dir_for(args.checkpoint)
    check_output_path(out / "metrics.json", "--out", overwrite=args.overwrite, inputs=(args.checkpoint, args.data))
    m = evaluate_checkpoint(args.checkpoint, args.data, out, tta=cfg.tta, n_bootstrap=cfg.n_bootstrap,
                            temperature=not args.no_temperature, seed=cfg.seed)
    print(summary_table(m).to_string(float_format="%.4f"))
    if m["temperature"]:
        print("temperature fitted on PublicTest: " + ", ".join(f"{k} {t:.3f}" for k, t in m["temperature"].items()))
    print(f"wrote {out}/metrics.json and figures")
    return 0
