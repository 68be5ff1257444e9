"""From a RunConfig to the tables a cell trains and evaluates on; what the `xrstudy data` commands ask of sources.

    prepare(cfg) -> StudyData
        read each source (xrstudy.data.sources) -> label mode, view filter, label policy (xrstudy.data.labels)
        -> merge (xrstudy.data.merge) -> split, saved + hashed (xrstudy.data.splits)
        -> nested data fraction (pre-training) or k-shot sample (transfer, xrstudy.data.fewshot)

Three RunConfig fields choose between the corrected protocol and the authors' (`paper`):
- `label_mode`: `paper` reads each dataset as the authors' dataset class does (PadChest's 27 substring
  pathologies without null-label rows and their excluded files, `No Finding` overriding explicit
  CheXpert / MIMIC values, only MIMIC images with a label row, views compared by the authors' names,
  rows with no known label kept); PadChest-Cl is then their single-pathology task.
- `split_mode`: `paper` splits and orders each dataset as they did (`xrstudy.data.splits.paper_splits`);
  a pre-training source's held-out part is its validation set, as in their pre-training.
- `shots_mode`: `paper` draws their k-shot sets (`xrstudy.data.fewshot.sample_shots_paper`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xrstudy.config import ConfigError, RunConfig, parse_root
from xrstudy.data import fewshot, labels, merge, sources, splits

SPLIT_SEED = 0  # splits do not change with the training seed: every seed sees the same test set
# The authors' dataset order for merged pre-training sets: configs list chexpert, mimic, nih, padchest
# (`type: merge`), but `type: chexpert_mimic` concatenates MIMIC before CheXpert (datasets/builder.py).
PAPER_SOURCE_ORDER = ("chexpert", "mimic", "nih", "padchest")
PAPER_PAIR_ORDER = {frozenset({"chexpert", "mimic"}): ("mimic", "chexpert")}


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
    # Per split ("train", "valid", "test"): each row's position in `universe`, which is its row in the
    # image cache of `paths` (found while `prepare` hashes the paths once; empty: looked up by path).
    universe_rows: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        """The image paths the image cache must hold."""
        if self.universe:
            return list(self.universe)
        return sorted({str(p) for t in (self.train, self.valid, self.test) for p in t["path"]})


@dataclass(frozen=True)
class Labelled:
    """One source as read (`raw`) and after the label mode, view filter and policy (`table`). In label
    mode paper, a source whose findings the authors' reading rebuilds from the label text (PadChest) is
    read without its finding columns: `raw` then holds its metadata and `raw_labels` alone."""

    raw: pd.DataFrame
    table: pd.DataFrame
    dropped: dict[str, int]
    single_label_of: str = ""  # label_mode paper: `table` is this multi-label source's, still to be made single-label


def labelled(
    name: str,
    root: str | Path,
    *,
    views: Sequence[str] = (),
    uncertain: str = "ignore",
    label_mode: str = "terms",
    metadata_only: bool = False,
) -> Labelled:
    """Read source `name` and apply the label mode, the view filter and the uncertain-label policy.

    With `label_mode="paper"`, a target the authors built from a multi-label source (PadChest-Cl) is
    read as that source, in the target's configured views unless `views` are given."""
    source = sources.source_of(name)
    paper = label_mode == "paper"
    base = source.paper_single_label_of if paper and source.paper_single_label_of else name
    raw = sources.read_source(base, root, metadata_only, findings=not (paper and base in labels.FINDINGS_FROM_TEXT))
    if not sources.source_of(base).multilabel:
        return Labelled(raw, raw, {})
    table, dropped = labels.as_authors_read(raw) if paper else (raw, {})
    views = tuple(views) or (source.paper_views if paper else ())
    viewed = labels.filter_views(table, views, as_authors=paper)
    if len(viewed) < len(table):
        dropped[f"{name}:view"] = len(table) - len(viewed)
    table = labels.apply_policy(viewed, uncertain, no_finding="all" if paper else "blank")
    if base != name:
        table = table.assign(source=name)
    return Labelled(raw, table.reset_index(drop=True), dropped, single_label_of=base if base != name else "")


def read_labelled(
    name: str,
    root: str | Path,
    *,
    views: Sequence[str] = (),
    uncertain: str = "ignore",
    metadata_only: bool = False,
    label_mode: str = "terms",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the source's table as read, the table after the label mode, the view filter and the policy)."""
    read = labelled(name, root, views=views, uncertain=uncertain, label_mode=label_mode, metadata_only=metadata_only)
    table = read.table
    if read.single_label_of:
        table = labels.single_label(table, labels.finding_columns(table))
    return read.raw, table


def _split_seed(mode: str) -> int:
    return splits.PAPER_SEED if mode == "paper" else SPLIT_SEED


def paper_order(names: Sequence[str]) -> tuple[str, ...]:
    """Pre-training sources in the order the authors' builder concatenates them."""
    if frozenset(names) in PAPER_PAIR_ORDER:
        return PAPER_PAIR_ORDER[frozenset(names)]
    rank = {name: i for i, name in enumerate(PAPER_SOURCE_ORDER)}
    return tuple(sorted(names, key=lambda n: rank.get(n, len(rank))))


def split_table(
    table: pd.DataFrame, mode: str, *, seed: int | None = None, valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Assign splits (paper: the authors' rules and order); returns the table and rows left out."""
    if mode == "paper":
        return splits.paper_splits(table)
    seed = _split_seed(mode) if seed is None else seed
    return splits.assign_splits(table, mode, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction), {}


@dataclass(frozen=True)
class _Tables:
    table: pd.DataFrame  # every row with its split, before the data fraction / k-shot selection
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    classes: tuple[str, ...]
    multilabel: bool
    dropped: dict[str, int]
    shots_ids: tuple[str, ...]
    modality: str


@dataclass(frozen=True)
class _Split:
    table: pd.DataFrame  # every row with its split, in the split's order
    classes: tuple[str, ...]
    multilabel: bool
    dropped: dict[str, int]
    modality: str


def _split_stage(cfg: RunConfig) -> _Split:
    """Read, relabel, filter, merge and split the cell's data (no data fraction, no k-shot yet)."""
    names = tuple(cfg.sources) if cfg.kind == "pretrain" else (cfg.target,)
    if cfg.kind == "pretrain" and cfg.split_mode == "paper":
        names = paper_order(names)
    kinds = {sources.source_of(n).multilabel for n in names}
    if len(kinds) > 1:
        raise ConfigError(f"sources {list(names)} mix multi-label and single-label datasets")
    multilabel = kinds.pop()
    dropped: dict[str, int] = {}
    reads = []
    for name in names:
        # Views select pre-training images; a transfer target keeps its images (the authors': its configured views).
        views = cfg.views if cfg.kind == "pretrain" else ()
        read = labelled(
            name,
            cfg.root_of(name),
            views=views,
            uncertain=cfg.uncertain,
            label_mode=cfg.label_mode,
            metadata_only=cfg.metadata_only,
        )
        dropped.update(read.dropped)
        reads.append(read)
    tables = [r.table for r in reads]
    table = merge.merge_sources(tables, cfg.labels) if multilabel else pd.concat(tables, ignore_index=True)

    table, outside = split_table(table, cfg.split_mode)
    dropped.update(outside)
    if cfg.kind == "pretrain" and cfg.split_mode == "paper":
        table = _held_out_is_valid(table)
    single_label_of = reads[0].single_label_of if not multilabel else ""
    if single_label_of:  # the authors' --multilabel-force-classification, after their split
        classes = tuple(labels.finding_columns(table))
        table = labels.single_label(table, classes).reset_index(drop=True)
    elif multilabel:
        classes = tuple(labels.finding_columns(table))
    else:
        classes = tuple(sorted(table["label"].unique()))
    modality = "xray" if all(sources.source_of(n).modality == "xray" for n in names) else "natural"
    return _Split(table, classes, multilabel, dropped, modality)


def _tables(cfg: RunConfig, stage: _Split | None = None) -> _Tables:
    """Everything of `prepare` but the split file: pure, no file written (`stage`: a ready split stage)."""
    stage = stage or _split_stage(cfg)
    table, classes, multilabel, dropped = stage.table, stage.classes, stage.multilabel, dict(stage.dropped)
    train, valid, test = (table[(table["split"] == s).to_numpy()].reset_index(drop=True) for s in splits.SPLITS)
    if multilabel and cfg.label_mode != "paper":  # rows without a single known label add nothing to a masked loss
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
        train = _shots(cfg, train, classes, multilabel).reset_index(drop=True)
        shots_ids = tuple(train["image_id"])
    return _Tables(table, train, valid, test, classes, multilabel, dropped, shots_ids, stage.modality)


def _held_out_is_valid(table: pd.DataFrame) -> pd.DataFrame:
    """The authors validate pre-training on each source's held-out part: NIH's test list and PadChest's
    10 % become `valid` where a source has no validation split of its own (CheXpert valid.csv, MIMIC
    validate are kept; MIMIC's test split, which they never read, stays test)."""
    split = table["split"].to_numpy(dtype=object, copy=True)
    for source in pd.unique(table["source"]):
        rows = (table["source"] == source).to_numpy()
        if not (split[rows] == "valid").any():
            split[rows & (split == "test")] = "valid"
    return table.assign(split=split.astype(str))


def _shots(cfg: RunConfig, train: pd.DataFrame, classes: tuple[str, ...], multilabel: bool) -> pd.DataFrame:
    try:
        if cfg.shots_mode == "paper":
            kind = sources.source_of(cfg.target).paper_fewshot
            if multilabel or not kind:
                raise fewshot.FewShotError(
                    f"shots_mode paper: the authors drew no k-shot sets of {cfg.target!r} "
                    f"(multi-label or not a target of theirs); use shots_mode exact"
                )
            return fewshot.sample_shots_paper(train, cfg.shots, cfg.seed, classes, kind)
        return fewshot.sample_shots(train, cfg.shots, cfg.seed, classes=classes if multilabel else None)
    except fewshot.FewShotError as err:
        raise ConfigError(f"{cfg.name}: {err}") from None


def prepare(cfg: RunConfig) -> StudyData:
    """Train / valid / test tables, classes and split hash of a study cell."""
    built = _tables(cfg)
    split_path, split_sha = splits.save_split_by_content(built.table, Path(cfg.out_dir) / "splits")
    universe, rows = universe_of(built.table, {"train": built.train, "valid": built.valid, "test": built.test})
    return StudyData(
        train=built.train,
        valid=built.valid,
        test=built.test,
        classes=built.classes,
        multilabel=built.multilabel,
        split_sha256=split_sha,
        shots_ids=built.shots_ids,
        dropped=built.dropped,
        split_path=str(split_path),
        universe=universe,
        modality=built.modality,
        universe_rows=rows,
    )


def universe_of(table: pd.DataFrame, parts: dict[str, pd.DataFrame]) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """The sorted unique image paths of `table` (the rows of its image cache), and the position of each
    row of every part (tables of `table`'s rows) among them: one factorisation of all the paths in C,
    so the training path looks up no path (`xrstudy.training.train.open_splits`)."""
    pieces = [table["path"], *(part["path"] for part in parts.values())]
    codes, uniques = pd.factorize(pd.concat(pieces, ignore_index=True).astype(str), sort=True)
    universe = tuple(uniques.tolist())
    if (codes < 0).any():
        raise ValueError("universe_of: a table row has no image path")
    # The parts' paths are the table's, and the order is Python's (UTF-8 byte order = code point order).
    if not np.bincount(codes[: len(table)], minlength=len(universe)).all() or not all(
        map(operator.lt, universe, universe[1:])
    ):
        raise ValueError("universe_of: the parts hold paths outside the table, or the paths did not sort as str")
    ends = np.cumsum([len(piece) for piece in pieces])
    return universe, {name: codes[start:end].astype(np.int64) for name, start, end in zip(parts, ends[:-1], ends[1:])}


# ---- one cache of tables: what the planner asks of every cell ---------------------------------------
# The fields that decide a cell's full table (every row with its split, before the data fraction and the
# k-shot draw), defined once: every cell that agrees on them shares one read, relabel, merge and split.
TABLE_FIELDS = (
    "kind",
    "sources",
    "target",
    "roots",
    "labels",
    "views",
    "uncertain",
    "label_mode",
    "split_mode",
    "metadata_only",
)
# ... and the fields that then decide its training set.
TRAINING_SET_FIELDS = ("data_fraction", "shots", "shots_mode", "seed")
TABLES_KEPT = 4  # full tables kept (the real ones are hundreds of MB)


@dataclass(frozen=True)
class TrainingSet:
    """What `prepare(cfg)` trains on, without building it again: its size, its k-shot image ids (in the sampler's
    order; empty when full), the first training image of the full set, and the images of the dataset."""

    size: int
    shots_ids: tuple[str, ...]
    first_path: str  # of the full training set (the planner reads its header for the image size)
    universe: int  # distinct images of the full table (the image cache)
    evaluated: int  # valid + test images


def table_config(cfg: RunConfig) -> RunConfig:
    """`cfg` reduced to TABLE_FIELDS (every other field at its default): equal for every cell sharing a full table."""
    return RunConfig(name=cfg.target or "+".join(cfg.sources), **{f: getattr(cfg, f) for f in TABLE_FIELDS})


def training_config(cfg: RunConfig) -> RunConfig:
    """`cfg` reduced to TABLE_FIELDS + TRAINING_SET_FIELDS; the seed and the k-shot mode only count for a k-shot set."""
    kept = {f: getattr(cfg, f) for f in TRAINING_SET_FIELDS if cfg.shots or f in ("data_fraction", "shots")}
    return table_config(cfg).replace(**kept)


def files_signature(cfg: RunConfig) -> tuple:
    """The label files behind `cfg.roots` (name, size, mtime at the top of each root): an edited file is read afresh."""
    return tuple(
        sorted((name, sources.root_signature(path) if path.is_dir() else ()) for name, path in cfg.root_map.items())
    )


@functools.lru_cache(maxsize=TABLES_KEPT)
def _full_table(data: RunConfig, files: tuple) -> _Split:
    return _split_stage(data)


@functools.lru_cache(maxsize=4096)
def _training_set(cell: RunConfig, files: tuple) -> TrainingSet:
    stage = _full_table(table_config(cell), files)
    built = _tables(cell, stage)
    full = built.train if not cell.shots else _tables(cell.replace(shots=0), stage).train
    split = stage.table["split"]
    return TrainingSet(
        size=len(built.train),
        shots_ids=built.shots_ids,
        first_path=str(full["path"].iloc[0]) if len(full) else "",
        universe=int(stage.table["path"].nunique()),
        evaluated=int(split.isin(("valid", "test")).sum()),
    )


def full_table(cfg: RunConfig) -> _Split:
    """The cell's full table (`_split_stage`), built once per TABLE_FIELDS and label files (least recently used
    dropped first). Pure: no split file is written."""
    return _full_table(table_config(cfg), files_signature(cfg))


def training_set(cfg: RunConfig) -> TrainingSet:
    """The training set `prepare(cfg)` builds, from the cached full table: every shot count and seed of a target
    reads, relabels and splits its files once. Pure: no split file is written."""
    cell = training_config(cfg)
    return _training_set(cell, files_signature(cell))


def train_size(cfg: RunConfig) -> int:
    """`len(prepare(cfg.replace(metadata_only=True)).train)` from the label files alone (`training_set`)."""
    return training_set(cfg.replace(metadata_only=True)).size


# ---- summaries (the JSON of `xrstudy data inspect / merge`) ---------------------------------
def class_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per finding (or class) positive / negative / unknown counts."""
    if "label" in table.columns:
        counts = table["label"].value_counts()
        return {
            str(c): {"positive": int(n), "negative": int(len(table) - n), "unknown": 0}
            for c, n in sorted(counts.items())
        }
    return labels.label_counts(table)


def inspect_source(
    name: str,
    root: str | Path,
    views: Sequence[str] = (),
    uncertain: str = "ignore",
    metadata_only: bool = False,
    *,
    label_mode: str = "terms",
    split_mode: str | None = None,
) -> dict[str, Any]:
    """source, images and patients (after the label mode and view filter), views (before it), labels;
    single-label targets add `classes` (every class, in class order) and images per class; a
    `split_mode` adds images per split and per class of each split."""
    read = labelled(name, root, views=views, uncertain=uncertain, label_mode=label_mode, metadata_only=metadata_only)
    raw, table, classes = read.raw, read.table, ()
    if split_mode is not None:
        table = split_table(table, split_mode)[0]
    if read.single_label_of:
        classes = tuple(labels.finding_columns(table))
        table = labels.single_label(table, classes)
    elif "label" in table.columns:
        classes = tuple(sorted(table["label"].unique()))
    summary: dict[str, Any] = {
        "source": name,
        "images": int(len(table)),
        "patients": int(table["patient_id"].nunique()),
        "views": {str(v): int(n) for v, n in raw["view"].value_counts().sort_index().items()},
        "labels": class_counts(table),
        "notes": sources.notes_of(raw),  # what the reader counted or fell back to, e.g. age_unreadable
    }
    if classes:
        summary["classes"] = list(classes)
        summary["per_class"] = _per_class(table, classes)
    if read.dropped:
        summary["dropped"] = dict(read.dropped)
    if split_mode is not None:
        summary["splits"] = {s: int((table["split"] == s).sum()) for s in splits.SPLITS}
        if classes:
            summary["per_class_per_split"] = {s: _per_class(table[table["split"] == s], classes) for s in splits.SPLITS}
    return summary


def _per_class(table: pd.DataFrame, classes: Sequence[str]) -> dict[str, int]:
    counts = table["label"].value_counts()
    return {str(c): int(counts.get(c, 0)) for c in classes}


def merge_entries(
    entries: Sequence[str],
    *,
    label_set: str = "intersection",
    views: Sequence[str] = (),
    uncertain: str = "ignore",
    metadata_only: bool = False,
    label_mode: str = "terms",
) -> pd.DataFrame:
    """Read NAME=DIR entries, apply the label mode, filter, apply the policy, merge."""
    tables = []
    for entry in entries:
        name, root = parse_root(entry, origin="--source")
        tables.append(
            labelled(
                name, root, views=views, uncertain=uncertain, label_mode=label_mode, metadata_only=metadata_only
            ).table
        )
    return merge.merge_sources(tables, label_set)


def merge_summary(table: pd.DataFrame) -> dict[str, Any]:
    return {
        "images": int(len(table)),
        "patients": int(table["patient_id"].nunique()),
        "labels": labels.finding_columns(table),
        "per_source": {str(s): int(n) for s, n in table["source"].value_counts().sort_index().items()},
        "counts": labels.label_counts(table),
    }


@dataclass(frozen=True)
class SplitWritten:
    """What `write_split` wrote: the file, its SHA-256, images per split, rows left out and why, and
    the patients found on more than one side."""

    path: Path
    sha256: str
    counts: dict[str, int]
    left_out: dict[str, int]
    patient_overlap: int


def write_split(
    name: str,
    root: str | Path,
    out: str | Path,
    *,
    mode: str = "patient",
    views: Sequence[str] = (),
    label_mode: str | None = None,
    metadata_only: bool = False,
    seed: int | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> SplitWritten:
    """Split one source as `mode` says and save the split file (`xrstudy data split`). The label mode
    defaults to the authors' with the paper split, else to the exact terms."""
    label_mode = label_mode or ("paper" if mode == "paper" else "terms")
    read = labelled(name, root, views=views, label_mode=label_mode, metadata_only=metadata_only)
    table, outside = split_table(
        read.table, mode, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction
    )
    if read.single_label_of:
        table = labels.single_label(table, labels.finding_columns(table))
    sha = splits.save_split(table, out)
    counts = {s: int((table["split"] == s).sum()) for s in splits.SPLITS}
    return SplitWritten(Path(out), sha, counts, {**read.dropped, **outside}, splits.patient_overlap(table))


def shot_ids(cfg: RunConfig) -> tuple[tuple[str, ...], int]:
    """(the k-shot image ids of a transfer cell in the sampler's order, its full training-set size);
    pure: no split file is written. A full-shot cell (shots 0) has no k-shot set: a ConfigError, not an empty list."""
    if cfg.shots < 1:
        raise ConfigError(
            f"{cfg.name}: shots {cfg.shots} is full shot (every training image), which has no k-shot set to "
            f"list; ask for k >= 1 images per class"
        )
    built = _tables(cfg)
    return built.shots_ids, int((built.table["split"] == "train").sum())


__all__ = [
    "StudyData",
    "Labelled",
    "prepare",
    "universe_of",
    "train_size",
    "training_set",
    "full_table",
    "TrainingSet",
    "TABLE_FIELDS",
    "TRAINING_SET_FIELDS",
    "labelled",
    "read_labelled",
    "split_table",
    "paper_order",
    "inspect_source",
    "merge_entries",
    "merge_summary",
    "write_split",
    "SplitWritten",
    "shot_ids",
]
