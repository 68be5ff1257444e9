"""The registry of sources: one `Source` entry per dataset, `read_source(name, root)` and its read cache.

An entry says what a plan needs without the files (published sizes, classes, pipeline) and how its
reads may be cached (`cache_reads`); the adapters themselves live in `xray`, `padchest` and `natural`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from xrstudy.data.labels import META_COLUMNS


class SourceError(ValueError):
    """A source's files are not what its adapter expects."""


Reader = Callable[[str, Path, bool], pd.DataFrame]  # (registry name, root, metadata_only) -> table

# Which reads of a source may be answered from the read cache (keyed by the files at the top of the root):
#   "never"          the table depends on more than those files (an ImageFolder tree, images found by a walk)
#   "always"         its label files lie at the top of the root and its image paths follow from the labels
#   "metadata_only"  only reads with metadata_only=True (NIH: otherwise it scans its image folders)
CacheReads = Literal["never", "always", "metadata_only"]
CACHE_READS: tuple[CacheReads, ...] = ("never", "always", "metadata_only")


@dataclass(frozen=True)
class Source:
    name: str
    read: Reader
    multilabel: bool  # multi-label findings (X-ray pre-training sources) or one `label` per image
    modality: str  # "xray" or "natural": images are grayscale or colour
    layout: str  # what `root` must hold, for error messages and the README
    cache_reads: CacheReads = "never"  # which reads the read cache may answer (see CacheReads)
    # What a plan needs without the files (xrstudy sweep plan with no roots):
    published_train_size: int | None = None  # training images of the paper's split, as published
    published_classes: int | None = None  # classes of a single-label target (few-shot sizes without the files)
    # Training images of every class where all classes have as many (CIFAR): a k-shot set with k at most this
    # holds exactly k per class, whichever sampler draws it.
    class_size: int | None = None
    native_hw: tuple[int, int] | None = None  # typical original (height, width); None = large (>= 96 px)
    transfer_pipeline: str = "bit"  # "bit": BiT-HyperRule resolution | "xray": the pre-training X-ray pipeline
    # False for images with a handedness (handwriting): training augmentation then never mirrors them.
    mirror_invariant: bool = True
    shares_images_with: tuple[str, ...] = ()  # sources whose images this one contains (leak check)
    # (mean, std) the authors' fine-tuning config of this target sets (`data.mean` / `data.std`); used when
    # the init's pre-training config sets none (their ImageNet models): xrstudy.training.recipes.input_stats.
    input_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # Pre-training sources: training images per canonical view in the paper's split, as published
    # (the plan sums the views a cell keeps); ((view, images), ...).
    published_train_by_view: tuple[tuple[str, int], ...] = ()
    # How the authors' code builds this target's k-shot set (shots_mode: paper), from the dataset class it
    # uses: "label_array" (it has a `labels` array: finetune.py draws per class) or "kshot_finder" (BiT's
    # fewshot.find_fewshot_indices over a seeded shuffled DataLoader); "" for pre-training sources.
    paper_fewshot: str = ""
    # label_mode: paper builds this single-label target from that multi-label source: its images with
    # exactly one finding positive (the authors' --multilabel-force-classification), read in `paper_views`.
    paper_single_label_of: str = ""
    paper_views: tuple[str, ...] = ()
    # An X-ray target the authors read with torchvision's default_loader (PIL `convert("RGB")`: colour files
    # stay colour; datasets/covidx_cxr2.py:21, tuberculosis.py:27); their CheXpert / MIMIC / NIH / PadChest
    # readers keep one channel. loader_mode paper caches such a target in colour.
    paper_keeps_colour: bool = False
    # Reads the canonical table without its finding columns, where building them is costly and a caller
    # replaces them anyway (PadChest: ~190 term columns of 161k rows, rebuilt by label_mode paper).
    read_without_findings: Reader | None = None
    # Classes of the authors' reading (label_mode paper) that hold no training image: a paper k-shot set has at
    # most k x (published_classes - these) images, an exact one cannot be drawn (PadChest-Cl: Consolidation).
    paper_empty_classes: tuple[str, ...] = ()
    # `batch_split` of the authors' fine-tuning config of this target (configs/finetune/*.yaml, their ImageFolder
    # template included): their micro-batch, the group loader_mode paper weighs and MixUp pairs within, is
    # batch // batch_split (CIFAR 128 // 2 = 64, every other target 128 // 32 = 4; xrstudy.training.recipes).
    paper_batch_split: int = 32

    def __post_init__(self) -> None:
        if self.cache_reads not in CACHE_READS:
            raise ValueError(
                f"Source {self.name!r}: cache_reads = {self.cache_reads!r}; expected one of {list(CACHE_READS)}"
            )

    def caches(self, metadata_only: bool) -> bool:
        """Whether a read of this source (with this `metadata_only`) may be answered from the read cache."""
        return self.cache_reads == "always" or (self.cache_reads == "metadata_only" and metadata_only)


SOURCES: dict[str, Source] = {}


def register(name: str, *, multilabel: bool, modality: str, layout: str, **facts: object) -> Callable[[Reader], Reader]:
    """Register an adapter; `facts` fill the optional Source fields (cache policy, published sizes, ...)."""

    def add(read: Reader) -> Reader:
        SOURCES[name] = Source(name, read, multilabel, modality, layout, **facts)  # type: ignore[arg-type]
        return read

    return add


def source_of(name: str) -> Source:
    """The adapter of `name`; a name outside the registry is read as an ImageFolder tree."""
    if name in SOURCES:
        return SOURCES[name]
    return dataclasses.replace(SOURCES["imagefolder"], name=name)


def read_source(name: str, root: str | Path, metadata_only: bool = False, *, findings: bool = True) -> pd.DataFrame:
    """The canonical table of source `name` stored under `root` (a fresh copy on every call).

    `findings=False`: the table without its finding columns (metadata, `raw_labels`, a single-label
    `label`), for callers that rebuild the findings from `raw_labels`; a source with a
    `read_without_findings` reader then skips building them."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise SourceError(f"{name}: root {root} is not a directory; expected {source_of(name).layout}")
    source = source_of(name)
    whole = findings or source.read_without_findings is None
    if not source.caches(metadata_only):
        read = source.read if whole else source.read_without_findings
        return _without_findings(read(name, root, metadata_only), findings)
    table = _cached_read(name, str(root), metadata_only, root_signature(root), whole)
    # With pandas' copy-on-write (always on from pandas 3) a shallow copy already protects the cache.
    return _without_findings(table, findings).copy(deep=not _COPY_ON_WRITE)


def _without_findings(table: pd.DataFrame, findings: bool) -> pd.DataFrame:
    if findings:
        return table
    kept = [c for c in table.columns if c in META_COLUMNS or c == "label"]
    return table[kept] if len(kept) < len(table.columns) else table


# Sweeps in a warm kernel and notebooks read the same label files again and again; parsing the
# real ones takes seconds. Keyed by the size and mtime of the files at the top of the root, so an
# edited label file is read afresh; which sources and reads qualify is each entry's `cache_reads`.
# Real tables are hundreds of MB: a few are kept, the least recently used dropped first.
READ_CACHE_SIZE = 4
_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3


@functools.lru_cache(maxsize=READ_CACHE_SIZE)
def _cached_read(name: str, root: str, metadata_only: bool, signature: tuple, whole: bool) -> pd.DataFrame:
    """One read of a source, shared by every caller with the same files (`signature`); never handed out
    as is (`read_source` copies it)."""
    source = source_of(name)
    read = source.read if whole else source.read_without_findings
    return read(name, Path(root), metadata_only)


def clear_read_cache() -> None:
    """Forget every cached read (tests that count reads; nothing else needs it: edits are noticed)."""
    _cached_read.cache_clear()


def root_signature(root: Path) -> tuple:
    """(name, size, mtime) of every entry at the top of `root`: changes when a label file there changes."""

    def signature(entry: os.DirEntry) -> tuple:
        try:
            info = entry.stat()
        except OSError:  # a broken link: the adapter says what is wrong with it
            info = entry.stat(follow_symlinks=False)
        return entry.name, info.st_size, info.st_mtime_ns

    with os.scandir(root) as entries:
        return tuple(sorted(signature(e) for e in entries))


__all__ = [
    "SourceError",
    "Source",
    "Reader",
    "CacheReads",
    "CACHE_READS",
    "SOURCES",
    "register",
    "source_of",
    "read_source",
    "root_signature",
    "clear_read_cache",
]
