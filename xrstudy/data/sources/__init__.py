"""One adapter per dataset, all with the same interface: `read_source(name, root) -> canonical table`.

Each adapter reads the source's own files exactly as distributed (label files plain or gzipped)
and returns the canonical table of `xrstudy.data.labels` (META_COLUMNS + one float column per finding
with 1 / 0 / -1 / NaN, or a `label` column for single-label targets). Uncertain labels are kept
as -1 here; `labels.apply_policy` resolves them.

`metadata_only=True` reads the label files alone (the images may be absent), so the real label
files can be counted, merged and split at full size. Without it, a missing image folder is an
error; a missing single image is left to the image cache, which quarantines and reports it.

Bad input raises `SourceError` naming the file, the row (line number in the file, header = 1)
and the column, with what was expected.

The package, read top down (each module imports only the ones above it):
    registry   Source entries (with their read-cache policy), register, source_of, read_source
    tables     the shared reader: label-file rules (CSV / text, UTF-8, special files, line numbers), canonical()
    xray       CheXpert, MIMIC-CXR-JPG, NIH ChestX-ray14, COVIDx CXR-2, Tuberculosis
    padchest   PadChest and PadChest-Cl
    natural    ImageFolder trees, CIFAR-10 / CIFAR-100, Oxford-IIIT Pets, Oxford Flowers-102
Importing the package registers every adapter. The writers of miniature copies in these layouts
(demo and tests) are `xrstudy.data.layouts`, split the same way.
"""

from __future__ import annotations

# Importing the adapter modules registers them (pre-training X-ray sources first, as `list(SOURCES)` shows).
from xrstudy.data.sources import natural, padchest, xray  # noqa: F401, I001
from xrstudy.data.sources.registry import (
    CACHE_READS,
    SOURCES,
    CacheReads,
    Reader,
    Source,
    SourceError,
    clear_read_cache,
    read_source,
    register,
    root_signature,
    source_of,
)
from xrstudy.data.sources.tables import (
    NOTES,
    canonical,
    check_unique,
    check_values,
    find_file,
    line_of,
    lines_of,
    notes_of,
    optional_file,
    read_table,
    read_text,
    require_images,
)

__all__ = [
    "SOURCES",
    "Source",
    "SourceError",
    "Reader",
    "CacheReads",
    "CACHE_READS",
    "register",
    "read_source",
    "source_of",
    "root_signature",
    "clear_read_cache",
    "canonical",
    "read_table",
    "read_text",
    "find_file",
    "optional_file",
    "check_unique",
    "check_values",
    "require_images",
    "line_of",
    "lines_of",
    "notes_of",
    "NOTES",
]
