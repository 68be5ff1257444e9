"""Classification metrics of a split, NaN-safe on few-shot data, and their bootstrap CIs.

    metrics, per_class = classification_metrics(probs, targets, classes, multilabel)
    ci = bootstrap_ci(probs, targets, multilabel, seed)

acc: top-1 (single-label) or element-wise at 0.5 over known targets (multi-label); auc: mean ROC AUC
over the classes with both labels present (the paper's primary PadChest-Cl metric); ap: mean
average precision over classes with a positive. Undefined values are NaN, never an exception.

The bootstrap is hand-written rather than scipy.stats.bootstrap: resamples on which a metric is
undefined (a resample with one class only, common on small test sets) are left out here, while
scipy's percentile interval turns a single NaN resample into a NaN interval.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _class_columns(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(binary truth, score) per class, restricted to known entries."""
    for k in range(probs.shape[1]):
        if multilabel:
            known = ~np.isnan(targets[:, k])
            yield targets[known, k], probs[known, k]
        else:
            yield (targets == k).astype(np.float32), probs[:, k]


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else float("nan")


def _ap(truth: np.ndarray, score: np.ndarray) -> float:
    return float(average_precision_score(truth, score)) if truth.sum() > 0 else float("nan")


def accuracy(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Single-label: top-1. Multi-label: element-wise at 0.5 over known targets."""
    if len(probs) == 0:
        return float("nan")
    if multilabel:
        known = ~np.isnan(targets)
        return float(((probs >= 0.5) == (targets >= 0.5))[known].mean()) if known.any() else float("nan")
    return float((probs.argmax(1) == targets).mean())


def classification_metrics(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str],
                           multilabel: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """acc, mean AUC over classes with both labels present, mean AP; plus per-class AUC / AP (NaN = undefined)."""
    aucs, aps = [], []
    for truth, score in _class_columns(probs, targets, multilabel):
        aucs.append(_auc(truth, score))
        aps.append(_ap(truth, score))
    metrics = {"acc": accuracy(probs, targets, multilabel), "auc": _nanmean(aucs), "ap": _nanmean(aps)}
    per_class = {"auc": dict(zip(classes, aucs)), "ap": dict(zip(classes, aps))}
    return metrics, per_class


def bootstrap_ci(probs: np.ndarray, targets: np.ndarray, multilabel: bool, seed: int = 0,
                 n_boot: int = 200, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap CIs (rows resampled with a seeded generator) for acc, auc, ap."""
    if len(probs) == 0:
        return {}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {"acc": [], "auc": [], "ap": []}
    classes = [str(k) for k in range(probs.shape[1])]
    for _ in range(n_boot):
        rows = rng.integers(0, len(probs), len(probs))
        metrics, _ = classification_metrics(probs[rows], targets[rows], classes, multilabel)
        for key, value in metrics.items():
            samples[key].append(value)
    tail = (1 - level) / 2 * 100
    out = {}
    for key, values in samples.items():
        finite = np.array([v for v in values if not math.isnan(v)])
        if len(finite):
            out[key] = [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
    return out


__all__ = ["accuracy", "classification_metrics", "bootstrap_ci"]
