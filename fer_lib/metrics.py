"""What a set of predictions scores: accuracy with a bootstrap interval, macro-F1, scikit-learn's
per-class report, the confusion matrix, calibration (reliability bins, ECE, NLL) and a temperature
fitted on PublicTest. Arrays in, numbers out: nothing here knows about models or files.

    from fer_lib.metrics import compute_metrics
    m = compute_metrics(y_true, proba, class_names, n_bootstrap=1000)   # proba (N, C)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, confusion_matrix, f1_score

ECE_BINS = 15


def average_proba(logits, temperature: float = 1.0) -> np.ndarray:
    """(V, N, C) or (N, C) logits -> (N, C): softmax(logits / T) averaged over the views."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    z = z[None] if z.ndim == 2 else z
    return torch.softmax(z / temperature, -1).mean(0).numpy()


def normalize_rows(cm) -> np.ndarray:
    """Row-normalized confusion matrix (recall per true class); empty rows stay zero."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def bootstrap_accuracy_ci(correct, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> list:
    """Percentile bootstrap interval of the mean of `correct` (N,) 0/1, resampling faces."""
    correct = np.asarray(correct, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(correct), size=(n_bootstrap, len(correct)))
    return np.quantile(correct[idx].mean(1), [(1 - level) / 2, (1 + level) / 2]).tolist()


def reliability_bins(proba, y, n_bins: int = ECE_BINS) -> dict:
    """Equal-width confidence bins ((k-1)/M, k/M]: count, mean confidence and accuracy per bin."""
    proba, y = np.asarray(proba), np.asarray(y)
    conf, correct = proba.max(1), (proba.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.searchsorted(edges[1:-1], conf, side="left")  # a confidence on an edge joins the lower bin
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    mean = lambda v: np.divide(np.bincount(b, v, n_bins), count, out=np.zeros(n_bins), where=count > 0)  # noqa: E731
    return {"edges": edges, "count": count, "confidence": mean(conf), "accuracy": mean(correct)}


def expected_calibration_error(proba, y, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy - mean confidence| (Guo et al. 2017)."""
    r = reliability_bins(proba, y, n_bins)
    return float(np.sum(r["count"] / r["count"].sum() * np.abs(r["accuracy"] - r["confidence"])))


def negative_log_likelihood(proba, y) -> float:
    proba, y = np.asarray(proba), np.asarray(y)
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean())


def compute_metrics(y_true, proba, class_names, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Accuracy with its 95% bootstrap interval, macro-F1, scikit-learn's per-class report,
    the confusion matrix (counts and row-normalized), ECE and NLL of probabilities (N, C)."""
    y_true, proba = np.asarray(y_true).astype(np.int64), np.asarray(proba)
    if proba.ndim != 2 or proba.shape != (len(y_true), len(class_names)):
        raise ValueError(f"proba {proba.shape} does not match {len(y_true)} labels x {len(class_names)} classes")
    labels = list(range(len(class_names)))
    y_pred = proba.argmax(1)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "n": len(y_true),
        "accuracy": float((y_pred == y_true).mean()),
        "accuracy_ci95": bootstrap_accuracy_ci(y_pred == y_true, n_bootstrap, seed) if n_bootstrap else None,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "report": classification_report(y_true, y_pred, labels=labels, target_names=list(class_names),
                                        output_dict=True, zero_division=0),
        "confusion": cm.tolist(),
        "confusion_normalized": normalize_rows(cm).tolist(),
        "ece": expected_calibration_error(proba, y_true),
        "nll": negative_log_likelihood(proba, y_true),
    }


def fit_temperature(logits_val, y_val, max_iter: int = 100) -> float:
    """The T minimizing the NLL of softmax(logits / T) (averaged over views when (V, N, C)),
    by L-BFGS on log T. Give it PublicTest logits only: T is a fitted parameter."""
    z = torch.as_tensor(np.asarray(logits_val), dtype=torch.float64)
    z = z[None] if z.ndim == 2 else z  # (V, N, C)
    y = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # log of the view-averaged probability, computed stably: logsumexp_v log_softmax - log V
        logp = torch.logsumexp(torch.log_softmax(z / log_t.exp(), -1), 0) - np.log(len(z))  # (N, C)
        loss = F.nll_loss(logp, y)
        loss.backward()
        return loss
    opt.step(closure)
    return float(log_t.detach().exp())
