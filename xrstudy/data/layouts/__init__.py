"""Write images + labels in the on-disk layouts the real datasets are distributed in.

The demo and the tests use these writers to build miniature copies of CheXpert, NIH, PadChest,
MIMIC-CXR-JPG, ... so that `xrstudy.data.sources` reads them through exactly the code that reads the
real datasets. A `Record` is one image with its patient, study, view and labels in canonical
terms; each writer translates it into its source's own file names, columns and vocabulary.
For single-label targets `Record.label` is the class and `Record.split` the official split (train /
valid / test) the writer files it under; every such writer checks the labels it can write and raises
ValueError otherwise.

    layouts.write_layout("chexpert", root, records)

The package mirrors `xrstudy.data.sources`, one writer module per reader module (a change to a layout is
made in both): `records` (Record, the writer registry, image helpers), `xray`, `padchest`, `natural`.
The writers stay out of `xrstudy.data.sources` because they run the other way (canonical records -> files)
and only for the demo and the tests; reading a source never imports them.

These are fixture writers into a fresh folder, not the study's outputs: they write plainly (no
`xrstudy.fileio` atomic writes); the demo marks a complete tree afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# Importing the writer modules registers them.
from xrstudy.data.layouts import natural, padchest, xray  # noqa: F401, I001
from xrstudy.data.layouts.padchest import PADCHEST_PAPER_CASES, padchest_paper_records
from xrstudy.data.layouts.records import WRITERS, Record, Writer, register_writer, save_image


def write_layout(name: str, root: str | Path, records: Iterable[Record]) -> Path:
    """Write `records` under `root` in the layout of source `name` (see WRITERS)."""
    if name not in WRITERS:
        raise ValueError(f"no layout writer for {name!r}; known: {sorted(WRITERS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    WRITERS[name](root, list(records))
    return root


__all__ = [
    "Record",
    "Writer",
    "WRITERS",
    "register_writer",
    "write_layout",
    "save_image",
    "PADCHEST_PAPER_CASES",
    "padchest_paper_records",
]
