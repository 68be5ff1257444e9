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
  and counted). A blank or malformed field, or one (run, metric) with two values, stops the import with
  the file and line numbers; nothing is dropped.
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

from xrstudy.config import RunConfig
from xrstudy.fileio import NotRegularFileError, read_regular_file
from xrstudy.results.store import SCHEMA, ResultError, save

LEGACY_COLUMNS = ("metric_value", "metric", "path", "seed", "shot", "pretrained_model", "dataset", "last_step")
RUN_KEY = ("dataset", "pretrained_model", "shot", "seed")
REQUIRED = ("metric_value", "metric", "seed", "shot", "pretrained_model", "dataset")  # path, last_step may be blank
_LEGACY_FILE = re.compile(r"finetuning_results_(?P<target>.+)_(?P<metric>[^_]+)\.csv")

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
    return None if math.isnan(value) else value


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
    try:
        row["seed"] = _number(row["seed"], int)
        row["metric_value"] = _number(row["metric_value"], float)
        row["last_step"] = _number(row["last_step"], int) if row["last_step"] else None
        parse_shot(row["shot"])
        parse_pretrained_model(row["pretrained_model"])
    except (ValueError, ResultError) as err:
        return None, [f"{where}: {err}"]
    return row, []


def _read_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows, problems = [], []
    try:
        reader = csv.DictReader(StringIO(read_regular_file(path).decode("utf-8"), newline=""))
        missing = set(LEGACY_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ResultError(f"{path}: missing columns {sorted(missing)}; expected {list(LEGACY_COLUMNS)}")
        for record in reader:  # csv skips empty lines; a line of empty fields is reported as blank
            row, found = _parse(record, f"{path.name}:{reader.line_num}")
            problems += found
            if row is not None:
                rows.append({**row, "file": path.name, "line": reader.line_num})
    except NotRegularFileError as err:  # a FIFO named *.csv is refused, not waited on (as results.load)
        raise ResultError(f"{path}: a {err.kind}, not a legacy results file; only regular files are read") from None
    except UnicodeDecodeError as err:
        raise ResultError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except csv.Error as err:
        raise ResultError(f"{path}: not a CSV file ({err})") from None
    return rows, problems


def read_legacy(legacy_dir: str | Path) -> pd.DataFrame:
    """Every row of every `finetuning_results_*.csv` under `legacy_dir`, typed, with its `file` and `line`.

    Repeated rows are kept (`legacy_results` merges them); any malformed row is a ResultError that lists
    the file:line of each (up to 10) and the count."""
    legacy_dir = Path(legacy_dir)
    if not legacy_dir.is_dir():
        raise ResultError(f"{legacy_dir}: no such directory of finetuning_results_*.csv files")
    paths = sorted(p for p in legacy_dir.rglob("finetuning_results_*.csv") if _LEGACY_FILE.fullmatch(p.name))
    if not paths:
        raise ResultError(f"{legacy_dir}: no finetuning_results_{{target}}_{{metric}}.csv files")
    rows, problems = [], []
    for path in paths:
        found_rows, found_problems = _read_file(path)
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


def _run(key: tuple[Any, ...], group: pd.DataFrame, conflicts: list[str]) -> dict[str, Any]:
    dataset, model, shot, seed = key
    source, arch = parse_pretrained_model(model)
    target = DATASET_NAMES.get(dataset, dataset)
    cfg = RunConfig(
        name=f"paper:{target}/{model}/{shot}/seed_{seed}",
        kind="transfer",
        target=target,
        shots=parse_shot(shot),
        seed=int(seed),
        arch=arch,
        init="paper",
        init_label=source,
    )
    metrics: dict[str, float | None] = {}
    per_class: dict[str, dict[str, float | None]] = {}
    names = [xrstudy_metric(m) for m in group["metric"]]
    renamed = group.assign(name=[n for n, _ in names], cls=[c or "" for _, c in names])  # cls "": headline
    for (name, cls), rows in renamed.groupby(["name", "cls"], sort=True):
        values = {None if v is None or v != v else float(v) for v in rows["metric_value"]}  # NaN: no value
        if len(values) > 1:
            conflicts.append(
                f"{dataset}/{model}/{shot}/seed {seed} {name}{f'[{cls}]' if cls else ''} "
                f"has {len(values)} values ({_lines(rows)})"
            )
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
            "dataset": dataset,
            "pretrained_model": model,
            "shot": shot,
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
    """Typed legacy rows -> one result dict per (dataset, pretrained_model, shot, seed), `origin: "paper"`.

    Every row ends up in exactly one result (`legacy.rows`); a (run, metric) with two different values
    is a ResultError naming the lines."""
    conflicts: list[str] = []
    results = [_run(key, group, conflicts) for key, group in rows.groupby(list(RUN_KEY), sort=True, dropna=False)]
    if conflicts:
        raise ResultError(
            f"{len(conflicts)} (run, metric) pair(s) with different values in the legacy CSVs "
            f"(nothing was written): " + "; ".join(conflicts[:10])
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
    """What an import read and wrote: every row read is in one of `written`'s results."""

    files: int
    rows: int
    distinct_rows: int
    written: list[Path]


def import_legacy_store(legacy_dir: str | Path, results_dir: str | Path) -> LegacyImport:
    rows = read_legacy(legacy_dir)
    results = legacy_results(rows)  # checks the count before anything is written
    written = [save(result, results_dir) for result in results]
    distinct = len(rows.drop_duplicates(subset=list(LEGACY_COLUMNS)))
    return LegacyImport(files=rows["file"].nunique(), rows=len(rows), distinct_rows=distinct, written=written)


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
    "import_legacy",
    "import_legacy_store",
    "LegacyImport",
]
