"""The vectorised bootstrap equals the one it replaced, bit for bit.

`_reference_bootstrap_ci` is the former implementation (one `classification_metrics` call, i.e.
2 x classes scikit-learn calls, per resample); every comparison is exact (`==` on the floats).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrstudy.training.metrics import bootstrap_ci, percentile_intervals, resample_metrics_one_by_one


def _reference_bootstrap_ci(probs, targets, multilabel, seed=0, n_boot=200, level=0.95):
    """The former bootstrap_ci: the same seeded resamples, one classification_metrics call each."""
    if len(probs) == 0:
        return {}
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, len(probs), len(probs)) for _ in range(n_boot)]
    return percentile_intervals(resample_metrics_one_by_one(probs, targets, multilabel, rows), level)


def _multilabel(rng, n, classes, missing=0.3, rounding=None, prevalence=0.3):
    targets = (rng.random((n, classes)) < prevalence).astype(np.float32)
    targets[rng.random((n, classes)) < missing] = np.nan
    probs = np.clip(rng.random((n, classes)) * 0.7 + np.nan_to_num(targets) * 0.3, 0, 1).astype(np.float32)
    if rounding:
        probs = np.round(probs, rounding)  # many ties
    return probs, targets


def _single_label(rng, n, classes, rounding=None):
    targets = rng.integers(0, classes, n)
    probs = rng.random((n, classes)) + np.eye(classes)[targets] * 0.5
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    if rounding:
        probs = np.round(probs, rounding)
    return probs, targets


CASES = {
    "multilabel": lambda rng: _multilabel(rng, 300, 6),
    "multilabel, ties": lambda rng: _multilabel(rng, 400, 5, rounding=1),
    "multilabel, rare positives": lambda rng: _multilabel(rng, 40, 7, prevalence=0.04),
    "multilabel, a class never known": lambda rng: _multilabel(rng, 50, 3, missing=1.0),
    "multilabel, few known": lambda rng: _multilabel(rng, 30, 4, missing=0.9),
    "multilabel, long curves": lambda rng: _multilabel(rng, 2500, 2, missing=0.1),
    "single-label": lambda rng: _single_label(rng, 200, 10),
    "single-label, ties": lambda rng: _single_label(rng, 150, 3, rounding=1),
    "single-label, tiny": lambda rng: _single_label(rng, 3, 4),
    "single-label, one row": lambda rng: _single_label(rng, 1, 3),
    "few-shot": lambda rng: _single_label(rng, 8, 2),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_equals_the_former_implementation(case, seed):
    probs, targets = CASES[case](np.random.default_rng(seed + 100))
    multilabel = case.startswith(("multilabel", "few"))
    if case == "few-shot":
        multilabel, targets = True, np.eye(2, dtype=np.float32)[targets]
    assert bootstrap_ci(probs, targets, multilabel, seed, n_boot=60) == _reference_bootstrap_ci(
        probs, targets, multilabel, seed, n_boot=60
    )


def test_every_resample_metric_equals_scikit_learn():
    """Not only the percentiles: each resample's values, NaN where undefined, in order."""
    from xrstudy.training.metrics import _resample_metrics

    rng = np.random.default_rng(3)
    for probs, targets, multilabel in [
        (*_multilabel(rng, 120, 5, rounding=2), True),
        (*_multilabel(rng, 25, 4, missing=0.6, prevalence=0.1), True),
        (*_single_label(rng, 90, 4, rounding=2), False),
    ]:
        rows = [rng.integers(0, len(probs), len(probs)) for _ in range(40)]
        fast = _resample_metrics(probs, targets, multilabel, rows)
        slow = resample_metrics_one_by_one(probs, targets, multilabel, rows)
        for key in ("acc", "auc", "ap"):
            for i, (got, want) in enumerate(zip(fast[key], slow[key], strict=True)):
                assert (math.isnan(got) and math.isnan(want)) or got == want, (key, i)


def test_degenerate_inputs_fall_back_or_stay_undefined():
    # one label only: AUC undefined in every resample, AP defined
    few = bootstrap_ci(np.array([[0.2], [0.9]]), np.array([[1.0], [1.0]]), multilabel=True, seed=0, n_boot=20)
    assert "auc" not in few and few["ap"] == [1.0, 1.0]
    # nothing known at all: no CI at all
    assert bootstrap_ci(np.full((4, 2), 0.5), np.full((4, 2), np.nan), True, n_boot=10) == {}
    # targets outside {0, 1} and NaN scores take scikit-learn's path, which rejects them as before
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([[0.2], [0.9], [0.4]]), np.array([[0.5], [1.0], [0.0]]), True, n_boot=5)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([[np.nan], [0.9]]), np.array([[0.0], [1.0]]), True, n_boot=5)
