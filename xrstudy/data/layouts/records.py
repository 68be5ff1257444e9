"""What every layout writer shares: the `Record` it writes, the writer registry and the image / file helpers."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


@dataclass(frozen=True)
class Record:
    """One image in canonical terms. `findings`: canonical name -> 1, 0, -1 (uncertain) or None."""

    patient: int
    study: int
    view: str  # canonical: PA, AP, AP_SUPINE, LATERAL, COSTAL, OTHER
    sex: str  # "M", "F" or ""
    age: int
    findings: dict[str, float | None]
    split: str  # train, valid, test
    image: np.ndarray = field(repr=False)
    label: str = ""  # single-label targets: the class name
    # The source's own label text, written as it is (None: made from `findings`). PadChest: the `Labels`
    # cell ("" = empty, as in 103 rows of the real file); MIMIC: "" = the study has no label row.
    raw: str | None = None
    file: str = ""  # the image's file name where a writer takes it from the record (PadChest ImageID)


Writer = Callable[[Path, list[Record]], None]
WRITERS: dict[str, Writer] = {}


def register_writer(name: str) -> Callable[[Writer], Writer]:
    """Register the writer of layout `name` (a registry name of `xrstudy.data.sources`, or a variant of one)."""

    def add(fn: Writer) -> Writer:
        WRITERS[name] = fn
        return fn

    return add


def save_image(path: Path, image: np.ndarray) -> None:
    """PNG keeps 16 bits (PadChest); JPEG is 8-bit like CheXpert / MIMIC-CXR-JPG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path)


def write_csv_gz(path: Path, frame: pd.DataFrame) -> None:
    # mtime=0: byte-identical files on every run.
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(frame.to_csv(index=False).encode())


def as_uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else np.round(image / 257.0).astype(np.uint8)


def rgb(image: np.ndarray, size: int | None = None) -> np.ndarray:
    """An RGB uint8 copy of a grey or colour image, optionally resized to size x size."""
    picture = Image.fromarray(as_uint8(image)).convert("RGB")
    if size is not None and picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(picture)


def check_labels(name: str, records: list[Record], allowed: Iterable[str] | None = None) -> None:
    """Every record of a single-label writer has a label (one of `allowed`, when given); ValueError otherwise."""
    allowed = set(allowed) if allowed is not None else None
    bad = sorted({r.label for r in records if not r.label or (allowed is not None and r.label not in allowed)})
    if bad:
        raise ValueError(
            f"{name} writer: labels {bad}; expected {sorted(allowed) if allowed else 'non-empty class names'}"
        )


__all__ = [
    "Record",
    "Writer",
    "WRITERS",
    "register_writer",
    "save_image",
    "write_csv_gz",
    "as_uint8",
    "rgb",
    "check_labels",
]
