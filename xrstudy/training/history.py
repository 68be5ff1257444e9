"""A run's training history as numbers and files, without torch (`xrstudy sweep status` and the figures read it).

    every = log_interval(total_steps, cfg.log_every)     # 0 -> about 200 points; every step when <= 200 steps
    rows = read_rows(run_dir / HISTORY_FILE)              # the rows of history.csv (a torn last line is dropped)
    result["history"] = for_result(rows)                  # <= 200 points, column-wise, for the result JSON

`history.csv` has one row per logged step, steps strictly increasing (`COLUMNS`); `step` counts the
optimiser steps done, so a row at step 200 describes steps 101-200 when rows are 100 apart. Values
that were not measured (GPU memory on a CPU, validation between epochs) are empty. The callback that
writes it (and the TensorBoard scalars under `tensorboard/`) is `xrstudy.training.monitor.HistoryLogger`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from xrstudy.fileio import atomic_write_text
from xrstudy.results.store import HISTORY_POINTS, json_safe

HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "tensorboard"
TRAIN_STATE_FILE = "train_state.pt"  # what a killed run resumes from (train.run); named here for `sweep status`
TARGET_POINTS = 200  # log_every = 0: about this many rows per run

# Column -> what it holds. Names with a "/" are TensorBoard tags as they are; the others are written
# under "progress/".
COLUMNS: dict[str, str] = {
    "step": "optimiser steps done",
    "epoch": "data epochs done (images seen / training images)",
    "images": "training images seen (global batch x steps)",
    "train/loss": "mean training loss over the steps since the previous row (all ranks)",
    "train/lr": "learning rate of the row's last step",
    "train/grad_norm": "global L2 norm of the gradients of the row's last step, before AGC",
    "train/images_per_s": "images per second since the previous row (all ranks together)",
    "train/data_wait": "fraction of that time the step waited for its batch",
    "train/gpu_peak_gib": "peak GPU memory allocated since the previous row (GiB; CUDA only)",
    "valid/loss": "validation loss (pre-training: every epoch)",
    "valid/acc": "validation accuracy",
    "valid/auc": "validation mean AUC",
    "valid/ap": "validation mean AP",
    "probe/C": "a linear probe's row: the regression's inverse L2 strength (one row per fit; the last is the chosen)",
    "elapsed_s": "training seconds since the run started (across resumes, validation excluded)",
    "total_steps": "optimiser steps of the whole run",
}
FIELDS: tuple[str, ...] = tuple(COLUMNS)
INTEGER_FIELDS = frozenset({"step", "images", "total_steps"})


def log_interval(total_steps: int, log_every: int = 0) -> int:
    """Steps between two history rows: `log_every` when set, else about TARGET_POINTS rows per run
    (every step for a run of TARGET_POINTS steps or fewer)."""
    if log_every > 0:
        return int(log_every)
    return max(1, math.ceil(total_steps / TARGET_POINTS))


def tensorboard_tag(column: str) -> str:
    return column if "/" in column else f"progress/{column}"


# ---- history.csv ---------------------------------------------------------------------------------
def format_row(row: dict[str, Any]) -> str:
    """One CSV line (header order); None and NaN are empty, floats keep 7 significant digits."""

    def cell(name: str) -> str:
        value = row.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if name in INTEGER_FIELDS:
            return str(int(value))
        return f"{float(value):.7g}"

    return ",".join(cell(name) for name in FIELDS) + "\n"


HEADER = ",".join(FIELDS) + "\n"


def _parse(header: Sequence[str], values: Sequence[str]) -> dict[str, Any] | None:
    """A row as numbers (None where empty); None when the line is torn or not numbers."""
    if len(values) != len(header):
        return None
    row: dict[str, Any] = {}
    try:
        for name, text in zip(header, values):
            if text == "":
                row[name] = None
            elif name in INTEGER_FIELDS:
                row[name] = int(text)
            else:
                row[name] = float(text)
    except ValueError:
        return None
    return row if row.get("step") is not None else None


def _complete(text: str) -> str:
    """`text` without a last line that has no newline: every row is written with its newline, so one without
    it was cut by a kill or a full disk (even where the cut leaves the right number of fields: `...,5` of
    `...,500`)."""
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


def parse_rows(text: str) -> list[dict[str, Any]]:
    """The rows of history.csv text; a torn or foreign line (a kill mid-write, a full disk) is left out."""
    reader = csv.reader(io.StringIO(_complete(text)))
    header = next(reader, None)
    if not header or header[0] != "step":
        return []
    rows = []
    for values in reader:
        row = _parse(header, values)
        if row is not None and (not rows or row["step"] > rows[-1]["step"]):
            rows.append(row)
    return rows


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a history file (none when it does not exist)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return parse_rows(text)


def last_row(path: str | os.PathLike[str], tail_bytes: int = 8192) -> dict[str, Any] | None:
    """The last complete row of a history file, reading its header and its end only (`sweep status`
    asks this of every running cell)."""
    try:
        with open(path, "rb") as handle:
            header = handle.readline().decode("utf-8", "replace").strip().split(",")
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - tail_bytes))
            tail = handle.read().decode("utf-8", "replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if not header or header[0] != "step":
        return None
    for line in reversed(_complete(tail).splitlines()):
        row = _parse(header, next(csv.reader([line]), []))
        if row is not None:
            return row
    return None


def keep_until(path: str | os.PathLike[str], step: int) -> list[dict[str, Any]]:
    """Rewrite the history file with its rows up to `step` (what a resumed run continues from: the rows
    of steps it will run again are dropped, as is a torn last line); returns the rows kept."""
    path = Path(path)
    kept = [row for row in read_rows(path) if row["step"] <= step]
    atomic_write_text(path, HEADER + "".join(format_row(row) for row in kept))
    return kept


# ---- the result's copy ----------------------------------------------------------------------------
def _picks(count: int, points: int) -> list[int]:
    """`points` indices spread evenly over range(count), first and last included."""
    if count <= points:
        return list(range(count))
    if points <= 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (points - 1)) for i in range(points)})


def for_result(rows: Sequence[dict[str, Any]], points: int = HISTORY_POINTS) -> dict[str, list[Any]]:
    """At most `points` rows, column-wise (`{"step": [...], "train/loss": [...]}`), for the result JSON:
    every row with a validation value while they fit, the others spread evenly, first and last kept.
    Columns never measured are left out (step and train/loss stay); NaN becomes None."""
    if not rows:
        return {}
    ends = {0, len(rows) - 1}  # the first and the last row, always
    validated = [
        i
        for i, row in enumerate(rows)
        if i not in ends and any(row.get(c) is not None for c in FIELDS if c[:6] == "valid/")
    ]
    room = max(0, points - len(ends))
    if len(validated) >= room:
        chosen = sorted(ends | {validated[i] for i in _picks(len(validated), room)})
    else:
        others = [i for i in range(len(rows)) if i not in ends and i not in set(validated)]
        chosen = sorted(ends | set(validated) | {others[i] for i in _picks(len(others), room - len(validated))})
    columns: dict[str, list[Any]] = {}
    for name in FIELDS:
        values = [json_safe(rows[i].get(name)) for i in chosen]
        if name in ("step", "train/loss") or any(v is not None for v in values):
            columns[name] = values
    return columns


def rows_of_result(history: dict[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """A result's `history` (column-wise) back as rows."""
    names = list(history)
    return [dict(zip(names, values)) for values in zip(*(history[n] for n in names))]


# ---- divergence -----------------------------------------------------------------------------------
class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number: the cell stops, its result is `failed`."""

    def __init__(self, step: int, value: float, last_finite: tuple[int, float] | None):
        self.step, self.value, self.last_finite = step, value, last_finite
        what = "NaN" if math.isnan(value) else ("+inf" if value > 0 else "-inf")
        last = (
            f"last finite loss {last_finite[1]:.4g} at step {last_finite[0]}"
            if last_finite
            else "no finite loss before it"
        )
        self.cause = f"loss became {what} at step {step} ({last})"
        super().__init__(self.cause)

    def __str__(self) -> str:  # fastai prefixes the callback's name to args[0]; the cause stays one line
        return self.cause


__all__ = [
    "HISTORY_FILE",
    "TENSORBOARD_DIR",
    "TRAIN_STATE_FILE",
    "TARGET_POINTS",
    "COLUMNS",
    "FIELDS",
    "HEADER",
    "log_interval",
    "tensorboard_tag",
    "format_row",
    "parse_rows",
    "read_rows",
    "last_row",
    "keep_until",
    "for_result",
    "rows_of_result",
    "TrainingDiverged",
]
