"""From a RunConfig to the tables a cell trains and evaluates on, and the `xrstudy data` commands.

    prepare(cfg) -> StudyData
        read each source (xrstudy.sources) -> view filter -> label policy (xrstudy.labels)
        -> merge (xrstudy.merge) -> split, saved + hashed (xrstudy.splits)
        -> nested data fraction (pre-training) or k-shot sample (transfer, xrstudy.fewshot)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from xrstudy import fewshot, labels, merge, sources, splits
from xrstudy.config import ConfigError, RunConfig

SPLIT_SEED = 0  # splits do not change with the training seed: every seed sees the same test set


@dataclass(frozen=True)
class StudyData:
    """The tables of one cell. `dropped` counts rows left out, by reason (nothing vanishes silently)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    classes: tuple[str, ...]
    multilabel: bool
    split_sha256: str
    shots_ids: tuple[str, ...] = ()
    dropped: dict[str, int] = field(default_factory=dict)
    split_path: str = ""
    # Every image of the dataset before the data fraction / k-shot selection: caching this set
    # once lets all cells of a target (every shot count and seed) share one image cache.
    universe: tuple[str, ...] = ()
    modality: str = "natural"  # "xray" (cached grayscale) or "natural" (colour), from the source registry

    @property
    def paths(self) -> list[str]:
        """The image paths the image cache must hold."""
        if self.universe:
            return list(self.universe)
        return sorted({str(p) for t in (self.train, self.valid, self.test) for p in t["path"]})


def read_labelled(name: str, root: str | Path, *, views: Sequence[str] = (), uncertain: str = "ignore",
                  metadata_only: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the source's table as read, the table after the view filter and the label policy)."""
    table = sources.read_source(name, root, metadata_only)
    if not sources.source_of(name).multilabel:
        return table, table
    return table, labels.apply_policy(labels.filter_views(table, views), uncertain)


def _split_seed(mode: str) -> int:
    return splits.PAPER_SEED if mode == "paper" else SPLIT_SEED


def prepare(cfg: RunConfig) -> StudyData:
    """Train / valid / test tables, classes and split hash of a study cell."""
    names = tuple(cfg.sources) if cfg.kind == "pretrain" else (cfg.target,)
    kinds = {sources.source_of(n).multilabel for n in names}
    if len(kinds) > 1:
        raise ConfigError(f"{cfg.name}: sources {list(names)} mix multi-label and single-label datasets")
    multilabel = kinds.pop()
    dropped: dict[str, int] = {}
    tables = []
    for name in names:
        # Views select pre-training images; a transfer target keeps all of its images.
        views = cfg.views if cfg.kind == "pretrain" else ()
        raw, table = read_labelled(name, cfg.root_of(name), views=views, uncertain=cfg.uncertain,
                                   metadata_only=cfg.metadata_only)
        if len(raw) > len(table):
            dropped[f"{name}:view"] = len(raw) - len(table)
        tables.append(table)
    if multilabel:
        table = merge.merge_sources(tables, cfg.labels)
        classes = tuple(labels.finding_columns(table))
    else:
        table = pd.concat(tables, ignore_index=True)
        classes = tuple(sorted(table["label"].unique()))

    table = splits.assign_splits(table, cfg.split_mode, seed=_split_seed(cfg.split_mode))
    split_path, split_sha = splits.save_split_by_content(table, Path(cfg.out_dir) / "splits")
    train, valid, test = (table[table["split"] == s].reset_index(drop=True) for s in splits.SPLITS)
    universe = tuple(sorted(set(table["path"].astype(str))))

    if multilabel:  # rows without a single known label add nothing to a masked loss
        unlabelled = train[list(classes)].isna().all(axis=1)
        if unlabelled.any():
            dropped["train:no_known_label"] = int(unlabelled.sum())
            train = train[~unlabelled].reset_index(drop=True)
    if cfg.kind == "pretrain" and cfg.data_fraction < 1:
        subset = splits.fraction_subset(train, cfg.data_fraction, seed=SPLIT_SEED).reset_index(drop=True)
        dropped["train:data_fraction"] = len(train) - len(subset)
        train = subset
    shots_ids: tuple[str, ...] = ()
    if cfg.kind == "transfer" and cfg.shots > 0:
        try:
            train = fewshot.sample_shots(train, cfg.shots, cfg.seed, classes=classes if multilabel else None)
        except fewshot.FewShotError as err:
            raise ConfigError(f"{cfg.name}: {err}") from None
        train = train.reset_index(drop=True)
        shots_ids = tuple(train["image_id"])
    modality = "xray" if all(sources.source_of(n).modality == "xray" for n in names) else "natural"
    return StudyData(train=train, valid=valid, test=test, classes=classes, multilabel=multilabel,
                     split_sha256=split_sha, shots_ids=shots_ids, dropped=dropped, split_path=str(split_path),
                     universe=universe, modality=modality)


# ---- summaries (the JSON of `xrstudy data inspect / merge`) ---------------------------------
def class_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per finding (or class) positive / negative / unknown counts."""
    if "label" in table.columns:
        counts = table["label"].value_counts()
        return {str(c): {"positive": int(n), "negative": int(len(table) - n), "unknown": 0}
                for c, n in sorted(counts.items())}  # fmt: skip
    return labels.label_counts(table)


def inspect_source(name: str, root: str | Path, views: Sequence[str] = (), uncertain: str = "ignore",
                   metadata_only: bool = False) -> dict[str, Any]:
    """source, images and patients (after the view filter), views (before it), labels (after policy)."""
    raw, table = read_labelled(name, root, views=views, uncertain=uncertain, metadata_only=metadata_only)
    return {
        "source": name,
        "images": int(len(table)),
        "patients": int(table["patient_id"].nunique()),
        "views": {str(v): int(n) for v, n in raw["view"].value_counts().sort_index().items()},
        "labels": class_counts(table),
        "notes": sources.notes_of(raw),  # what the reader counted or fell back to, e.g. age_unreadable
    }


def merge_entries(entries: Sequence[str], *, label_set: str = "intersection", views: Sequence[str] = (),
                  uncertain: str = "ignore", metadata_only: bool = False) -> pd.DataFrame:
    """Read NAME=DIR entries, filter, apply the policy, merge."""
    tables = []
    for entry in entries:
        name, sep, root = entry.partition("=")
        if not sep:
            raise ValueError(f"--source {entry!r}; expected NAME=DIR")
        tables.append(read_labelled(name, root, views=views, uncertain=uncertain, metadata_only=metadata_only)[1])
    return merge.merge_sources(tables, label_set)


def merge_summary(table: pd.DataFrame) -> dict[str, Any]:
    return {
        "images": int(len(table)),
        "patients": int(table["patient_id"].nunique()),
        "labels": labels.finding_columns(table),
        "per_source": {str(s): int(n) for s, n in table["source"].value_counts().sort_index().items()},
        "counts": labels.label_counts(table),
    }


def write_table(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)


# ---- command handlers (the parser is xrstudy.cli) ----------------------------------------
def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=None if len(json.dumps(summary)) < 200 else 1))
        return
    for key, value in summary.items():
        if isinstance(value, dict) and value and isinstance(next(iter(value.values())), dict):
            print(f"{key}:")
            print(pd.DataFrame(value).T.to_string())
        else:
            print(f"{key}: {value}")


def cmd_inspect(args: argparse.Namespace) -> int:
    _print(inspect_source(args.source, args.root, args.views, args.uncertain, args.metadata_only), args.json)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    table = merge_entries(args.source, label_set=args.labels, views=args.views, uncertain=args.uncertain,
                          metadata_only=args.metadata_only)
    if args.out:
        write_table(table, args.out)
        print(f"wrote {len(table)} rows to {args.out}", file=sys.stderr)
    _print(merge_summary(table), args.json)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    table = sources.read_source(args.source, args.root, args.metadata_only)
    seed = args.seed if args.seed is not None else _split_seed(args.mode)
    table = splits.assign_splits(table, args.mode, seed=seed, valid_fraction=args.valid_fraction,
                                 test_fraction=args.test_fraction)
    sha = splits.save_split(table, args.out)
    counts = table["split"].value_counts().to_dict()
    print(f"{args.out}: {counts}, patients in more than one split: {splits.patient_overlap(table)}", file=sys.stderr)
    print(sha)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    import os

    from xrstudy import images

    table = labels.filter_views(sources.read_source(args.source, args.root), args.views)
    mode = args.mode or ("L" if sources.source_of(args.source).modality == "xray" else "RGB")
    workers = args.workers or os.cpu_count() or 1
    cache = images.build_cache(sorted(table["path"].astype(str)), args.size, args.cache_dir, mode, workers)
    print(cache.report())
    return 0


__all__ = ["StudyData", "prepare", "inspect_source", "merge_entries", "merge_summary", "read_labelled", "cmd_inspect", "cmd_merge",
           "cmd_split", "cmd_cache"]
