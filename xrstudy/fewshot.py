"""Few-shot training sets: k images per class, deterministic per seed, never from the test split.

Single-label targets: exactly k images of every class. Multi-label: a small set with at least k
positives of every class, built greedily (rarest class first; among its positives, prefer images
that are also positive for other classes still short of k) -- the smallest set this finds, not a
proven minimum. The chosen `image_id`s go into the result (`StudyData.shots_ids`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


class FewShotError(ValueError):
    """The pool cannot provide k images per class."""


def _check_pool(pool: pd.DataFrame) -> None:
    if "split" in pool.columns and pool["split"].isin(["test", "valid"]).any():
        raise FewShotError("few-shot sampling draws from the training split only; the pool holds valid/test rows")


def sample_single_label(pool: pd.DataFrame, k: int, seed: int, label_column: str = "label") -> pd.DataFrame:
    """Exactly k rows per class (classes sorted; rows ordered by image_id before drawing)."""
    _check_pool(pool)
    rng = np.random.default_rng([seed, k])
    ordered = pool.sort_values("image_id", kind="stable")
    chosen = []
    for name, rows in ordered.groupby(label_column, sort=True):
        if len(rows) < k:
            raise FewShotError(f"class {name!r} has {len(rows)} training images; {k}-shot needs {k}")
        chosen.append(rows.iloc[np.sort(rng.choice(len(rows), size=k, replace=False))])
    return pd.concat(chosen) if chosen else ordered.iloc[:0]


def sample_multi_label(pool: pd.DataFrame, k: int, seed: int, classes: Sequence[str]) -> pd.DataFrame:
    """A small set with >= k positives (value 1) of every class."""
    _check_pool(pool)
    ordered = pool.sort_values("image_id", kind="stable")
    positive = ordered[list(classes)].to_numpy(dtype=np.float32, na_value=np.nan) == 1.0
    short = [c for c, n in zip(classes, positive.sum(0)) if n < k]
    if short:
        raise FewShotError(f"classes {short} have fewer than {k} positive training images")
    rng = np.random.default_rng([seed, k])
    tiebreak = rng.random(len(ordered))  # a random but seed-fixed preference among equal candidates
    counts = np.zeros(len(classes), int)
    taken = np.zeros(len(ordered), bool)
    for c in np.argsort(positive.sum(0), kind="stable"):  # rarest first
        while counts[c] < k:
            candidates = np.flatnonzero(positive[:, c] & ~taken)
            needed = (counts < k).astype(float)
            score = positive[candidates].astype(float) @ needed + tiebreak[candidates] * 0.5
            pick = candidates[np.argmax(score)]
            taken[pick] = True
            counts += positive[pick]
    return ordered[taken]


def sample_shots(pool: pd.DataFrame, k: int, seed: int, *, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """k-shot subset of the training pool; `classes` given = multi-label finding columns."""
    if k <= 0:
        raise FewShotError(f"k={k}; expected a positive number of shots (0 = full is handled by the caller)")
    if classes is None:
        return sample_single_label(pool, k, seed)
    return sample_multi_label(pool, k, seed, classes)


__all__ = ["sample_shots", "sample_single_label", "sample_multi_label", "FewShotError"]
