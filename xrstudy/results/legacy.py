"""The paper's published results as an xrstudy results store, in xrstudy's names.

    xrstudy results import-legacy DIR --results STORE

The authors publish one CSV per target and metric, `finetuning_results_{dataset}_test_{metric}.csv`
(their `results/`), one row per (run, metric): metric_value, metric, path, seed, shot, pretrained_model,
dataset, last_step. The import
- renames datasets and metrics to xrstudy's (`DATASET_NAMES`, `METRIC_NAMES`), so paper rows and new
  runs share target, metric, pretrained_model (`{source}_bit{50x1|152x4}`) and shot in the tidy table;
- keeps the per-class files (`test/average_precision_class_0`, `test/f1_0`, `test/recall_0`: class 0 of
  the authors' class order) as per-class entries (`per_class["ap"]["0"]`), not as headline metrics;
- records the paper's cell in the config (transfer, target, arch, init "paper", init_label, shots,
  seed), its `last_step`, and the original names, files and lines under `legacy`;
- accounts for every row: rows read = rows stored (the published files repeat rows; repeats are merged
  and counted). Rows are grouped into runs by the normalised cell (target, shots, seed, model), so
  `covidx_cxr2` and `covidx`, `0_shot` and `full_shot`, `05_shot` and `5_shot` are one run. A blank or
  malformed field, a value that is not finite or (accuracy, AUC, AP, F1, recall, precision) outside
  [0, 1], a metric name without a slash, or one (run, metric) with two values stops the import with the
  file, line and column; every result is validated before the first is written; nothing is dropped.
  Files whose names do not follow `finetuning_results_{dataset}_{metric}.csv` are listed, not read.
Paper runs get the run id `paper-<12 hex>`, never a new run's id: a paper row never counts as done work.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd

from xrstudy.config import ConfigError, RunConfig, shot_label
from xrstudy.fileio import NotRegularFileError, read_regular_file
from xrstudy.results.store import SCHEMA, ResultError, save, validate
from xrstudy.yamlfiles import shorten

LEGACY_COLUMNS = ("metric_value", "metric", "path", "seed", "shot", "pretrained_model", "dataset", "last_step")
RUN_KEY = ("dataset", "pretrained_model", "shot", "seed")
REQUIRED = ("metric_value", "metric", "seed", "shot", "pretrained_model", "dataset")  # path, last_step may be blank
_LEGACY_FILE = re.compile(r"finetuning_results_(?P<target>.+)_(?P<metric>[^_]+)\.csv")
# Names a legacy file might carry that the pattern above does not read: listed, so none is skipped unseen.
_LOOKS_LEGACY = re.compile(r"(?i)(finetuning_results.*|.*\.(csv|tsv)(\.(gz|bz2|xz|zip))?)")
# Metrics whose value is a fraction (the headline metric's last part, or a per-class measure).
UNIT_INTERVAL_METRICS = frozenset({"acc", "accuracy", "auc", "ap", "f1", "recall", "precision"})

# The authors' dataset names (their finetune configs) -> xrstudy's target registry names.
DATASET_NAMES = {
    "covidx_cxr2": "covidx",
    "tuberculosis_full": "tuberculosis",
    "flowers_oversampling": "flowers102",  # their Flowers runs: swapped train/test, class-balanced oversampling
    "padchest": "padchest-cl",  # their padchest finetune config is the 27-class single-label task
}
METRIC_NAMES = {"test/mean_auc": "test/auc", "test/mean_average_precision": "test/ap"}
# Per-class metrics of their finetune.py: name pattern -> xrstudy per_class measure.
PER_CLASS_METRICS = (
    (re.compile(r"test/average_precision_class_(?P<cls>\d+)"), "ap"),
    (re.compile(r"test/AUC_class_(?P<cls>\d+)"), "auc"),
    (re.compile(r"test/f1_(?P<cls>\d+)"), "f1"),
    (re.compile(r"test/recall_(?P<cls>\d+)"), "recall"),
    (re.compile(r"test/precision_(?P<cls>\d+)"), "precision"),
)


def parse_shot(shot: str) -> int:
    """`500_shot` -> 500, `full_shot` -> 0."""
    if shot == "full_shot":
        return 0
    match = re.fullmatch(r"(\d+)_shot", str(shot))
    if not match:
        raise ResultError(f"shot {shot!r}; expected '<k>_shot' or 'full_shot'")
    return int(match.group(1))


def parse_pretrained_model(name: str) -> tuple[str, str]:
    """`imagenet21k_bit152x4` -> (`imagenet21k`, `resnetv2_152x4_bit`)."""
    source, sep, size = str(name).rpartition("_bit")
    if not sep or not source or not re.fullmatch(r"\d+x\d+", size):
        raise ResultError(f"pretrained_model {name!r}; expected '{{source}}_bit{{50x1|152x4|...}}'")
    return source, f"resnetv2_{size}_bit"


def xrstudy_metric(metric: str) -> tuple[str, str | None]:
    """The paper's metric name -> (headline metric, None) or (per_class measure, class id)."""
    for pattern, measure in PER_CLASS_METRICS:
        if (match := pattern.fullmatch(metric)) is not None:
            return measure, match["cls"]
    return METRIC_NAMES.get(metric, metric), None


# ---- reading ------------------------------------------------------------------------------------
def _number(text: str, kind: type) -> float | int | None:
    value = float(text)  # ValueError on anything that is not a number
    if kind is int:
        if not value.is_integer():
            raise ValueError(f"{text!r} is not a whole number")
        return int(value)
    if math.isinf(value):  # 'inf', '-inf', '1e999': JSON has no infinity, and no metric reaches one
        raise ValueError(f"{text!r} is not a finite number")
    return None if math.isnan(value) else value  # NaN: the run had no value (a class without positives)


def _is_fraction(metric: str) -> bool:
    name, cls = xrstudy_metric(metric)
    return (name if cls is not None else name.rpartition("/")[2]) in UNIT_INTERVAL_METRICS


def run_key(row: dict[str, Any]) -> tuple[str, str, str, int, int]:
    """The cell a typed legacy row belongs to, in xrstudy's names: (target, init_label, arch, shots, seed).
    Rows are grouped by it, so two spellings of one cell (`covidx_cxr2` / `covidx`, `0_shot` / `full_shot`,
    `05_shot` / `5_shot`) are one run, as their run id is one."""
    source, arch = parse_pretrained_model(row["pretrained_model"])
    return DATASET_NAMES.get(row["dataset"], row["dataset"]), source, arch, parse_shot(row["shot"]), int(row["seed"])


def _parse(record: dict[str | None, Any], where: str) -> tuple[dict[str, Any] | None, list[str]]:
    """One CSV record -> typed row, or the problems found (each naming `where` = file:line)."""
    if None in record:
        return None, [f"{where}: more fields than the header ({record[None]!r} left over)"]
    short = [c for c, v in record.items() if v is None]
    if short:
        return None, [f"{where}: too few fields (no {short[0]!r})"]
    blank = [c for c in REQUIRED if not str(record[c]).strip()]
    if blank:
        return None, [f"{where}: blank {', '.join(repr(c) for c in blank)}"]
    row: dict[str, Any] = {c: str(record[c]).strip() for c in LEGACY_COLUMNS}
    column = ""
    try:
        for column, kind in (("seed", int), ("metric_value", float), ("last_step", int)):
            row[column] = _number(row[column], kind) if row[column] or column != "last_step" else None
        column = "shot"
        parse_shot(row["shot"])
        column = "pretrained_model"
        parse_pretrained_model(row["pretrained_model"])
    except (ValueError, ResultError) as err:
        return None, [f"{where}, column {column!r}: {err}"]
    name, cls = xrstudy_metric(row["metric"])
    if cls is None and "/" not in name:
        return None, [f"{where}, column 'metric': {shorten(row['metric'])}; expected a name like 'test/acc'"]
    value = row["metric_value"]
    if value is not None and _is_fraction(row["metric"]) and not 0.0 <= value <= 1.0:
        return None, [f"{where}, column 'metric_value': {value!r} is outside [0, 1] for {row['metric'][:80]}"]
    if not 0 <= row["seed"] < 2**32:
        return None, [f"{where}, column 'seed': {row['seed']}; expected an integer from 0 to 2**32 - 1"]
    return row, []


def _read_file(path: Path, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The typed rows of one legacy file (`name`: its path below the legacy folder) and its problems."""
    rows, problems = [], []
    try:
        reader = csv.DictReader(StringIO(read_regular_file(path).decode("utf-8"), newline=""))
        missing = set(LEGACY_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ResultError(f"{path}: missing columns {sorted(missing)}; expected {list(LEGACY_COLUMNS)}")
        for record in reader:  # csv skips empty lines; a line of empty fields is reported as blank
            row, found = _parse(record, f"{name}:{reader.line_num}")
            problems += found
            if row is not None:
                rows.append({**row, "file": name, "line": reader.line_num})
    except NotRegularFileError as err:  # a FIFO named *.csv is refused, not waited on (as results.load)
        raise ResultError(f"{path}: a {err.kind}, not a legacy results file; only regular files are read") from None
    except UnicodeDecodeError as err:
        raise ResultError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except csv.Error as err:
        raise ResultError(f"{path}: not a CSV file ({err})") from None
    return rows, problems


def legacy_files(legacy_dir: str | Path) -> tuple[list[Path], list[str]]:
    """(the `finetuning_results_{dataset}_{metric}.csv` files under `legacy_dir`, the other files that look
    like results but are not named so: CSVs, compressed CSVs, `finetuning_results*`), both sorted; the
    second as paths below `legacy_dir`, so an import can say what it did not read."""
    legacy_dir = Path(legacy_dir)
    if not legacy_dir.is_dir():
        raise ResultError(f"{legacy_dir}: no such directory of finetuning_results_*.csv files")
    read, unread = [], []
    for path in sorted(legacy_dir.rglob("*")):
        if path.is_dir():
            continue
        if _LEGACY_FILE.fullmatch(path.name):
            read.append(path)
        elif _LOOKS_LEGACY.fullmatch(path.name):
            unread.append(path.relative_to(legacy_dir).as_posix())
    return read, unread


def read_legacy(legacy_dir: str | Path) -> pd.DataFrame:
    """Every row of every `finetuning_results_*.csv` under `legacy_dir`, typed, with its `file` (the path below
    `legacy_dir`) and `line`.

    Repeated rows are kept (`legacy_results` merges them); any malformed row is a ResultError that lists
    the file:line and column of each (up to 10) and the count."""
    legacy_dir = Path(legacy_dir)
    paths, unread = legacy_files(legacy_dir)
    if not paths:
        also = f" (found {len(unread)} other: {shorten(unread, 200)})" if unread else ""
        raise ResultError(f"{legacy_dir}: no finetuning_results_{{target}}_{{metric}}.csv files{also}")
    rows, problems = [], []
    for path in paths:
        found_rows, found_problems = _read_file(path, path.relative_to(legacy_dir).as_posix())
        rows += found_rows
        problems += found_problems
    if problems:
        raise ResultError(
            f"{legacy_dir}: {len(problems)} row(s) cannot be imported (nothing was written): "
            + "; ".join(problems[:10])
            + (" ..." if len(problems) > 10 else "")
        )
    return pd.DataFrame(rows, columns=[*LEGACY_COLUMNS, "file", "line"])


# ---- rows -> results ----------------------------------------------------------------------------
def _lines(group: pd.DataFrame) -> str:
    return ", ".join(f"{f}:{n}" for f, n in zip(group["file"], group["line"]))


def _spelling(values: pd.Series) -> str:
    """The raw spelling(s) of one cell's field: `covidx_cxr2`, or `covidx | covidx_cxr2` when both occur."""
    return " | ".join(sorted(set(values)))


def _run(key: tuple[Any, ...], group: pd.DataFrame, problems: list[str]) -> dict[str, Any] | None:
    target, source, arch, shots, seed = key
    model = _spelling(group["pretrained_model"])
    where = f"{target}/{source}_bit{arch.split('_')[1]}/{shot_label(shots)}/seed {seed}"
    try:
        cfg = RunConfig(
            name=f"paper:{target}/{source}_bit{arch.split('_')[1]}/{shot_label(shots)}/seed_{seed}",
            kind="transfer",
            target=target,
            shots=shots,
            seed=seed,
            arch=arch,
            init="paper",
            init_label=source,
        )
    except ConfigError as err:
        problems.append(f"{where}: {err} ({_lines(group)})")
        return None
    metrics: dict[str, float | None] = {}
    per_class: dict[str, dict[str, float | None]] = {}
    names = [xrstudy_metric(m) for m in group["metric"]]
    renamed = group.assign(name=[n for n, _ in names], cls=[c or "" for _, c in names])  # cls "": headline
    for (name, cls), rows in renamed.groupby(["name", "cls"], sort=True):
        values = {None if v is None or v != v else float(v) for v in rows["metric_value"]}  # NaN: no value
        if len(values) > 1:
            problems.append(f"{where} {name}{f'[{cls}]' if cls else ''} has {len(values)} values ({_lines(rows)})")
        value = next(iter(values))
        if not cls:
            metrics[name] = value
        else:
            per_class.setdefault(name, {})[cls] = value
    steps = sorted({int(s) for s in group["last_step"].dropna()})
    files: dict[str, list[int]] = {}
    for file, line in zip(group["file"], group["line"]):
        files.setdefault(file, []).append(int(line))
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "run_id": "paper-" + cfg.run_id.split("-", 1)[1],
        "status": "ok",
        "config": cfg.to_dict(),
        "metrics": metrics,
        "origin": "paper",
        "last_step": steps[-1] if steps else None,
        "legacy": {
            "dataset": _spelling(group["dataset"]),
            "pretrained_model": model,
            "shot": _spelling(group["shot"]),
            "metrics": sorted(set(group["metric"])),
            "paths": sorted(set(group["path"])),
            "rows": files,
            **({"last_steps": steps} if len(steps) > 1 else {}),
        },
    }
    if per_class:
        result["per_class"] = per_class
    return result


def legacy_results(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Typed legacy rows -> one result dict per cell (`run_key`: target, model, shots, seed), `origin: "paper"`.

    Every row ends up in exactly one result (`legacy.rows`) and every result follows the store's schema;
    otherwise a ResultError names the lines (a (run, metric) with two different values, a cell RunConfig
    refuses, two cells with one run id), and nothing is returned to write."""
    problems: list[str] = []
    keys = [run_key(row) for row in rows.to_dict("records")]
    grouped = rows.assign(_key=keys).groupby("_key", sort=True)
    results = [r for key, group in grouped if (r := _run(key, group, problems)) is not None]
    by_id: dict[str, dict[str, Any]] = {}
    for result in results:
        if (other := by_id.setdefault(result["run_id"], result)) is not result:
            problems.append(
                f"two cells have run id {result['run_id']} ({other['config']['name']}, {result['config']['name']})"
            )
        try:
            validate(result)
        except ResultError as err:
            lines = ", ".join(f"{f}:{n}" for f, found in result["legacy"]["rows"].items() for n in found)
            problems.append(f"{err} ({shorten(lines, 200)})")
    if problems:
        raise ResultError(
            f"{len(problems)} problem(s) in the legacy CSVs (nothing was written): "
            + "; ".join(problems[:10])
            + (" ..." if len(problems) > 10 else "")
        )
    stored = {(f, n) for r in results for f, lines in r["legacy"]["rows"].items() for n in lines}
    read = set(zip(rows["file"], rows["line"]))
    if stored != read or sum(len(v) for r in results for v in r["legacy"]["rows"].values()) != len(rows):
        lost = sorted(read - stored)
        raise ResultError(
            f"{len(rows)} legacy rows read but {len(stored)} stored; not stored: "
            + ", ".join(f"{f}:{n}" for f, n in lost[:10])
        )
    return results


@dataclass(frozen=True)
class LegacyImport:
    """What an import read and wrote: every row read is in one of `written`'s results; `unread` lists the
    files that look like results but were not read (their names do not follow the pattern)."""

    files: int
    rows: int
    distinct_rows: int
    written: list[Path]
    merged_rows: int = 0  # distinct rows with the value of another row of their cell and metric (other spelling, ...)
    null_values: int = 0  # NaN metric values, stored as null (no value)
    unread: tuple[str, ...] = ()


def import_legacy_store(legacy_dir: str | Path, results_dir: str | Path) -> LegacyImport:
    """Read, check and store the paper's CSVs: everything is validated before the first result is written."""
    rows = read_legacy(legacy_dir)
    results = legacy_results(rows)  # checks every value, run id and the count before anything is written
    written = [save(result, results_dir) for result in results]
    distinct = rows.drop_duplicates(subset=list(LEGACY_COLUMNS))
    cells = {
        (
            run_key(row),
            xrstudy_metric(row["metric"]),
            row["metric_value"] if row["metric_value"] == row["metric_value"] else None,
        )
        for row in distinct.to_dict("records")
    }
    return LegacyImport(
        files=rows["file"].nunique(),
        rows=len(rows),
        distinct_rows=len(distinct),
        written=written,
        merged_rows=len(distinct) - len(cells),
        null_values=int(rows["metric_value"].isna().sum()),
        unread=tuple(legacy_files(legacy_dir)[1]),
    )


def import_legacy(legacy_dir: str | Path, results_dir: str | Path) -> list[Path]:
    """Store the paper's published CSVs as result JSONs in `results_dir`; returns the files written."""
    return import_legacy_store(legacy_dir, results_dir).written


__all__ = [
    "DATASET_NAMES",
    "METRIC_NAMES",
    "PER_CLASS_METRICS",
    "LEGACY_COLUMNS",
    "parse_shot",
    "parse_pretrained_model",
    "xrstudy_metric",
    "read_legacy",
    "legacy_results",
    "legacy_files",
    "run_key",
    "UNIT_INTERVAL_METRICS",
    "import_legacy",
    "import_legacy_store",
    "LegacyImport",
]
