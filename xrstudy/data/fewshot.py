"""Few-shot training sets: k images per class, deterministic per seed, never from the test split.

`shots_mode: exact` -- single-label targets: exactly k images of every class. Multi-label: a small
set with at least k positives of every class, built greedily (rarest class first; among its
positives, prefer images that are also positive for other classes still short of k) -- the smallest
set this finds, not a proven minimum.

`shots_mode: paper` -- the authors' sets (`finetune.py`, `mktrainval`), over the training set in
their dataset's order (`xrstudy.data.splits.paper_splits`), by the kind their dataset class allows
(`Source.paper_fewshot`):
- "label_array": per class in class order, `RandomState(seed)` shuffles the class's positions and
  keeps the first k (fewer when the class is short), then shuffles the concatenation;
- "kshot_finder": BiT's `find_fewshot_indices` (`transfer_learning/finetuning/fewshot.py`): a DataLoader
  shuffled by a `torch.Generator` seeded with the seed, keeping per class the last k positions seen
  until every class has k, then `RandomState(seed)` shuffles them.
The chosen `image_id`s go into the result (`StudyData.shots_ids`), in the sampler's order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import pandas as pd


class FewShotError(ValueError):
    """The pool cannot provide k images per class."""


def _check_pool(pool: pd.DataFrame) -> None:
    if "split" in pool.columns and pool["split"].isin(["test", "valid"]).any():
        raise FewShotError("few-shot sampling draws from the training split only; the pool holds valid/test rows")


def _check_shots(k: int) -> None:
    if k <= 0:
        raise FewShotError(f"k={k}; expected a positive number of shots (0 = full is handled by the caller)")


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
    _check_shots(k)
    if classes is None:
        return sample_single_label(pool, k, seed)
    return sample_multi_label(pool, k, seed, classes)


# ---- the authors' samplers (shots_mode: paper) ----------------------------------------------------
FINDER_BATCH = 1024  # the finder's DataLoader batch size (its order does not depend on it)


def label_array_shots(labels: np.ndarray, n_classes: int, k: int, seed: int) -> np.ndarray:
    """Positions chosen by finetune.py's branch for datasets with a `labels` array (class indices)."""
    rng = np.random.RandomState(seed)
    positions = np.arange(len(labels))
    chosen = []
    for cls in range(n_classes):
        of_class = positions[np.asarray(labels) == cls]
        rng.shuffle(of_class)
        chosen.append(of_class[:k])
    picked = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    rng.shuffle(picked)
    return picked


def finder_order(n: int, seed: int) -> list[int]:
    """The order in which a DataLoader(shuffle=True, generator=Generator().manual_seed(seed)) visits
    0..n-1: building its iterator draws the worker base seed from the generator first, then the
    RandomSampler draws one randperm (torch 1.7, the authors' pin, and later releases)."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # _BaseDataLoaderIter's _base_seed
    return torch.randperm(n, generator=generator).tolist()


def kshot_finder_shots(labels: Sequence[int], n_classes: int, k: int, seed: int) -> list[int]:
    """Positions chosen by BiT's find_fewshot_indices (the authors' fewshot.py) for classes 0..n_classes-1."""
    kept: dict[int, deque] = {}
    found = 0
    for position in finder_order(len(labels), seed):
        queue = kept.setdefault(int(labels[position]), deque(maxlen=k))
        found += len(queue) < k
        queue.append(position)
        if found == k * n_classes:
            break
    else:
        short = {c: len(kept.get(c, ())) for c in range(n_classes) if len(kept.get(c, ())) < k}
        raise FewShotError(
            f"the k-shot finder needs {k} training images of each of {n_classes} classes; "
            f"short: {short} (class index: images)"
        )
    chosen = [position for queue in kept.values() for position in queue]
    np.random.RandomState(seed).shuffle(chosen)
    return chosen


# `Source.paper_fewshot` -> the sampler of the authors' dataset class: (labels, n_classes, k, seed) -> positions
PAPER_SAMPLERS = {"label_array": label_array_shots, "kshot_finder": kshot_finder_shots}
PAPER_KINDS = tuple(PAPER_SAMPLERS)


def sample_shots_paper(
    pool: pd.DataFrame, k: int, seed: int, classes: Sequence[str], kind: str, label_column: str = "label"
) -> pd.DataFrame:
    """The authors' k-shot rows of a single-label training pool (rows in their dataset's order), in the
    order their sampler returns them; `classes` gives the class indices."""
    _check_pool(pool)
    _check_shots(k)
    if kind not in PAPER_SAMPLERS:
        raise FewShotError(f"paper few-shot kind {kind!r}; expected one of {PAPER_KINDS}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(pool[label_column]) - set(index))
    if unknown:
        raise FewShotError(f"labels {unknown[:5]} are not among the classes {list(classes)[:10]}")
    labels = pool[label_column].map(index).to_numpy(dtype=np.int64)
    positions = PAPER_SAMPLERS[kind](labels, len(classes), k, seed)
    return pool.iloc[np.asarray(positions, dtype=np.int64)]


__all__ = [
    "sample_shots",
    "sample_single_label",
    "sample_multi_label",
    "sample_shots_paper",
    "label_array_shots",
    "kshot_finder_shots",
    "finder_order",
    "PAPER_KINDS",
    "PAPER_SAMPLERS",
    "FewShotError",
]
