"""The results store: one JSON per run, validated, written atomically, read back as one tidy table.

A result file is `{results_dir}/{run_id}.json` (schema in docs/design.md). `save` adds a `digest`
(SHA-256 of the canonical JSON of everything else) so that `load` can tell a complete, untouched
file from a truncated or hand-edited one; such files raise `ResultError` and `table` leaves them out
with a warning instead of plotting them.

`load` opens only regular files (a FIFO or directory named `*.json` is reported, never waited on);
`scan` / `table` refuse a store that is missing or not a directory. `validate` checks the types of every key and
the config through RunConfig's own checks (each field is checked once, in `xrstudy.config`), so a result with a
matching digest but wrong types is reported and left out too. The table warns when results would be averaged
as one seed: two or more runs with the same kind, target, pretrained model, shots, seed, origin, data fraction
and train mode (`duplicate_cells`).

The paper's published CSVs are imported into the same schema (`origin: "paper"`, xrstudy.results.legacy), so
the paper's numbers and new runs sit in one table and one figure. (About 460 lines: the schema, the
file rules and the tidy table are one contract; the legacy import lives in xrstudy.results.legacy.)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from xrstudy.config import ConfigError, RunConfig, base_arch, parent_run_id, shot_label
from xrstudy.fileio import TABLE_FORMATS, NotRegularFileError, atomic_write_json, atomic_write_table, read_regular_file

SCHEMA = "xrstudy.result/2"  # 2: `history` (the training curve) and `reproducibility` (threads, determinism)
READABLE_SCHEMAS = ("xrstudy.result/1", SCHEMA)  # results written before still read (they have no history)
HISTORY_POINTS = 200  # most points of a result's `history` (xrstudy.training.history.for_result)
STATUSES = ("ok", "failed")
ORIGINS = ("xrstudy", "paper")
TABLE_COLUMNS = (
    "run_id",
    "kind",
    "target",
    "arch",
    "init",
    "init_label",
    "pretrained_model",
    "shots",
    "shot",
    "seed",
    "metric",
    "value",
    "origin",
    "last_step",
    "sources",
    "data_fraction",
    "train_mode",
)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


class ResultError(ValueError):
    """A result dict or file does not follow the result schema (or was truncated / edited)."""


# ---- schema -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """One top-level key of a result: the JSON types it may hold and whether it must be there."""

    types: tuple[type, ...]
    required: bool = False


_NUMBER = (int, float)
FIELDS: dict[str, Field] = {
    "schema": Field((str,), required=True),
    "run_id": Field((str,), required=True),
    "status": Field((str,), required=True),
    "config": Field((dict,), required=True),
    "metrics": Field((dict,), required=True),
    "per_class": Field((dict,)),
    "ci": Field((dict,)),
    "split_sha256": Field((str, type(None))),
    "checkpoint": Field((dict, type(None))),
    "counts": Field((dict,)),
    "versions": Field((dict,)),
    "git_commit": Field((str, type(None))),
    "device": Field((str, type(None))),
    "timings": Field((dict,)),
    "created": Field((str,)),
    "last_step": Field((int, type(None))),
    "origin": Field((str,)),
    "error": Field((str, type(None))),
    "legacy": Field((dict,)),
    "resolved": Field((dict,)),  # the resolved cell it ran (xrstudy.training.resolve.ResolvedCell.row())
    # init run:<id>: that pre-training cell's config (from its checkpoint's sidecar), so the table knows the
    # init's sources and data fraction when the pre-training result itself is not in the store
    "init_config": Field((dict,)),
    "probe": Field((dict,)),  # train_mode probe: the chosen C, the feature cache, the backbone's digest
    "history": Field((dict,)),  # schema 2: {column: [value per point]}; imported paper rows have none
    "reproducibility": Field((dict,)),  # schema 2: torch threads, determinism settings, thread environment
    "digest": Field((str,)),
}


def validate(result: Any) -> dict[str, Any]:
    """Return `result` unchanged when it follows the schema; else raise ResultError listing every problem."""
    if not isinstance(result, dict):
        raise ResultError(f"a result is a JSON object (dict), got {type(result).__name__}")
    problems: list[str] = []
    for key, spec in FIELDS.items():
        if key not in result:
            if spec.required:
                problems.append(f"missing required key {key!r}")
            continue
        value = result[key]
        # bool is an int in Python; no schema field is a bool.
        if isinstance(value, bool) or not isinstance(value, spec.types):
            wanted = " or ".join(t.__name__ for t in spec.types)
            problems.append(f"{key!r} should be {wanted}, got {type(value).__name__}")
    if "schema" in result and result["schema"] not in READABLE_SCHEMAS:
        problems.append(f"schema is {result['schema']!r}; this version reads {' and '.join(READABLE_SCHEMAS)}")
    if "status" in result and result["status"] not in STATUSES:
        problems.append(f"status is {result['status']!r}; expected one of {STATUSES}")
    if "origin" in result and result["origin"] not in ORIGINS:
        problems.append(f"origin is {result['origin']!r}; expected one of {ORIGINS}")
    run_id = result.get("run_id")
    if isinstance(run_id, str) and not _RUN_ID.match(run_id):
        problems.append(f"run_id {run_id!r} is not a safe file name")
    metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
    for name, value in metrics.items():
        if not isinstance(name, str) or "/" not in name:
            problems.append(f"metric name {name!r} should look like 'test/acc'")
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMBER)):
            problems.append(f"metric {name!r} should be a number or null, got {type(value).__name__}")
    config = result.get("config")
    if isinstance(config, dict):  # each field checked once, by RunConfig's own rules (xrstudy.config)
        try:
            RunConfig.from_dict(config, origin="config")
        except (ConfigError, TypeError, ValueError) as err:
            problems.append(f"config is not a RunConfig: {err}")
    problems += _nested_type_problems(result)
    if (
        result.get("status") == "ok"
        and isinstance(result.get("metrics"), dict)
        and not result["metrics"]
        and not result.get("per_class")
    ):
        problems.append("status 'ok' with no metrics")
    if problems:
        label = run_id if isinstance(run_id, str) else "<no run_id>"
        raise ResultError(f"result {label}: " + "; ".join(problems))
    return result


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _nested_type_problems(result: dict[str, Any]) -> list[str]:
    """per_class: {measure: {class: number|null}}; ci: {metric: [lo, hi]}; history: {column: [number|null]}."""
    problems = []
    per_class = result.get("per_class")
    if isinstance(per_class, dict):
        for measure, values in per_class.items():
            if not isinstance(values, dict) or not all(v is None or _is(v, _NUMBER) for v in values.values()):
                problems.append(f"per_class[{measure!r}] should map class names to numbers or null")
    ci = result.get("ci")
    if isinstance(ci, dict):
        for metric, bounds in ci.items():
            if bounds is not None and not (
                isinstance(bounds, list) and len(bounds) == 2 and all(b is None or _is(b, _NUMBER) for b in bounds)
            ):
                problems.append(f"ci[{metric!r}] should be [low, high]")
    history = result.get("history")
    if isinstance(history, dict) and history:
        lengths = {len(v) if isinstance(v, list) else -1 for v in history.values()}
        if "step" not in history:
            problems.append("history has no 'step' column")
        if len(lengths) != 1 or -1 in lengths:
            problems.append("history should map column names to lists of one length")
        elif lengths.pop() > HISTORY_POINTS:
            problems.append(f"history holds more than {HISTORY_POINTS} points")
        elif not all(v is None or _is(v, _NUMBER) for values in history.values() for v in values):
            problems.append("history values should be numbers or null")
    return problems


def _digest(result: dict[str, Any]) -> str:
    body = {k: v for k, v in result.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def json_safe(value: Any) -> Any:
    """JSON-safe copy: tuples → lists, NaN/inf → None (JSON has no NaN), numpy scalars → Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def new_result(cfg: RunConfig, metrics: dict[str, float], *, status: str = "ok", **extra: Any) -> dict[str, Any]:
    """A minimal schema-valid result for `cfg` (train.run fills in the rest)."""
    result = {
        "schema": SCHEMA,
        "run_id": cfg.run_id,
        "status": status,
        "config": cfg.to_dict(),
        "metrics": dict(metrics),
        "origin": "xrstudy",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result.update(extra)
    return result


# ---- files ------------------------------------------------------------------------------------
def result_path(run_id: str, results_dir: str | Path) -> Path:
    return Path(results_dir) / f"{run_id}.json"


def save(result: dict[str, Any], results_dir: str | Path) -> Path:
    """Validate and write `{results_dir}/{run_id}.json` atomically (xrstudy.fileio: unique temp + fsync + replace).

    Concurrent writers of different runs never interfere; writers of the same run each leave a
    complete file (last rename wins), except that an `ok` result is never replaced by a `failed` one.
    """
    result = json_safe(dict(result))
    result.setdefault("schema", SCHEMA)
    result.setdefault("origin", "xrstudy")
    result.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    result.pop("digest", None)
    validate(result)
    result["digest"] = _digest(result)

    final = result_path(result["run_id"], results_dir)
    if result["status"] == "failed" and is_ok(final):
        return final
    return atomic_write_json(final, result, sort_keys=False, allow_nan=False)


def load(path: str | Path) -> dict[str, Any]:
    """Read and check one result file; ResultError when it is unreadable, truncated, edited or off-schema."""
    path = Path(path)
    try:
        text = _read_regular_file(path).decode("utf-8")
    except FileNotFoundError:
        raise ResultError(f"{path}: no such result file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ResultError(f"{path}: unreadable ({err})") from None
    try:
        result = json.loads(text)
        validate(result)
        if "digest" not in result:
            raise ResultError(f"{path}: no 'digest'; result files are written by xrstudy.results.store.save")
        if result["digest"] != _digest(result):
            raise ResultError(f"{path}: content does not match its digest (edited after it was written)")
    except json.JSONDecodeError as err:
        raise ResultError(f"{path}: not valid JSON, probably truncated ({err})") from None
    except RecursionError:  # e.g. 100,000 nested lists: no result nests more than 4 levels
        raise ResultError(f"{path}: nested too deeply to be a result file") from None
    except ResultError as err:
        message = str(err)
        raise ResultError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None
    except (ValueError, TypeError) as err:  # an int of 5,000 digits, a NaN the digest cannot encode, ...
        raise ResultError(f"{path}: not a readable result file ({type(err).__name__}: {str(err)[:200]})") from None
    if path.stem != result["run_id"]:
        raise ResultError(f"{path}: file name does not match run_id {result['run_id']!r}")
    return result


def _read_regular_file(path: Path) -> bytes:
    """The bytes of `path` if it is a regular file: a FIFO named *.json is refused instead of waited on."""
    try:
        return read_regular_file(path)
    except NotRegularFileError as err:
        raise ResultError(f"{path}: a {err.kind}, not a result file; only regular files are read") from None


def is_ok(path: str | Path) -> bool:
    """True when `path` is a valid result file with `status: ok` (unreadable, edited, failed: False)."""
    try:
        return load(path)["status"] == "ok"
    except ResultError:
        return False


def is_done(cfg: RunConfig, results_dir: str | Path | None = None) -> bool:
    """True when a valid `status: ok` result exists for `cfg.run_id` (default store: cfg.results_dir)."""
    return is_ok(result_path(cfg.run_id, results_dir if results_dir is not None else cfg.results_dir))


@dataclass(frozen=True)
class Scan:
    """What a results directory holds: valid results, and files that are not (with the reason)."""

    results: list[dict[str, Any]]
    invalid: list[tuple[Path, str]]


def scan(results_dir: str | Path) -> Scan:
    """Every `*.json` of the store, loaded or with the reason it was not; a missing store is an error."""
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise ResultError(f"{results_dir}: no such results directory")
    if not results_dir.is_dir():
        raise ResultError(f"{results_dir}: not a directory; --results takes the folder of result JSONs")
    results, invalid = [], []
    for path in sorted(results_dir.glob("*.json")):
        try:
            results.append(load(path))
        except ResultError as err:
            invalid.append((path, str(err)))
    return Scan(results, invalid)


# ---- tidy table -------------------------------------------------------------------------------
# timm pretrained tags → default init labels. Google's BiT-M weights are not the authors' ImageNet
# models (those are `init: paper`, label imagenet1k / imagenet21k): the "google_" prefix keeps their
# bars apart from the paper's unless a sweep sets `init_label` on purpose.
TIMM_TAG_LABELS = {
    "goog_in21k": "google_imagenet21k",
    "goog_in21k_ft_in1k": "google_imagenet21k_ft_imagenet1k",
    "goog_distilled_in1k": "google_imagenet1k_distilled",
    "goog_teacher_in21k_ft_in1k": "google_imagenet21k_ft_imagenet1k",
}
_BIT_ARCH = re.compile(r"resnetv2_(\d+x\d+)_bit")


def arch_short(arch: str) -> str:
    """`resnetv2_152x4_bit.goog_in21k` → `152x4`; other timm names stay as they are (minus the tag)."""
    base = base_arch(arch)
    match = _BIT_ARCH.fullmatch(base)
    return match.group(1) if match else base


PAPER_SOURCE_ORDER = ("chexpert", "mimic", "nih", "padchest")  # as the authors name their models


def source_label(sources: Iterable[str]) -> str:
    """Pre-training sources -> the paper's label: ("nih", "chexpert") -> `chexpert_nih` (their order, then
    any other source alphabetically), so a model lines up with the paper's whatever order a sweep lists."""
    rank = {name: i for i, name in enumerate(PAPER_SOURCE_ORDER)}
    return "_".join(sorted(sources, key=lambda name: (rank.get(name, len(rank)), name)))


def _parent_id(init: str) -> str | None:
    """The pre-training run a stored config's `init: run:<id>` names (None if it names none or is malformed)."""
    try:
        return parent_run_id(init)
    except ConfigError:
        return None


def default_init_label(config: dict[str, Any], pretrain_configs: dict[str, dict[str, Any]]) -> str:
    """How figures name an init when the config leaves `init_label` empty."""
    init = config.get("init", "scratch")
    if init == "timm":
        tag = config.get("arch", "").partition(".")[2]
        return TIMM_TAG_LABELS.get(tag, tag or "timm")
    if parent_id := _parent_id(init):
        parent = pretrain_configs.get(parent_id)
        if parent is not None:
            return parent.get("init_label") or source_label(parent.get("sources", [])) or parent.get("name", init)
        return init
    if init == "paper":  # the authors' released checkpoint needs init_label; say so when it is missing
        return "paper"
    if init.startswith("paper:"):
        return init[len("paper:") :]
    if init == "scratch":
        return "scratch"
    return Path(init).stem


def pretrained_model_name(init_label: str, arch: str) -> str:
    """Paper style: `{source}_bit{50x1|152x4}`; non-BiT archs: `{source}_{arch}`."""
    short = arch_short(arch)
    return f"{init_label}_bit{short}" if _BIT_ARCH.fullmatch(f"resnetv2_{short}_bit") else f"{init_label}_{short}"


def _rows(result: dict[str, Any], pretrain_configs: dict[str, dict[str, Any]]) -> Iterable[dict[str, Any]]:
    config = RunConfig.from_dict(result["config"]).to_dict()  # as RunConfig reads it ("PA,AP" is a list)
    init = config.get("init", "scratch")
    parent = pretrain_configs.get(_parent_id(init) or "", {})
    init_label = config.get("init_label") or default_init_label(config, pretrain_configs)
    kind = config.get("kind", "transfer")
    sources = config.get("sources") or parent.get("sources") or []
    shots = int(config.get("shots", 0))
    for metric, value in result["metrics"].items():
        yield {
            "run_id": result["run_id"],
            "kind": kind,
            "target": config.get("target", "") if kind == "transfer" else "+".join(sources),
            "arch": config.get("arch", ""),
            "init": init,
            "init_label": init_label if kind == "transfer" else (config.get("init_label") or source_label(sources)),
            "pretrained_model": pretrained_model_name(
                init_label if kind == "transfer" else source_label(sources), config.get("arch", "")
            ),
            "shots": shots,
            "shot": shot_label(shots),
            "seed": int(config.get("seed", 0)),
            "metric": metric,
            "value": float("nan") if value is None else float(value),
            "origin": result.get("origin", "xrstudy"),
            "last_step": result.get("last_step"),
            "sources": "+".join(sources),
            # Data-scale curves: the fraction of the pre-training data behind this model; unknown (NaN) for
            # a run:<id> init whose pre-training config is neither in the store nor in the result.
            "data_fraction": float(
                "nan"
                if _parent_id(init) and not parent
                else parent.get("data_fraction", config.get("data_fraction", 1.0))
            ),
            # finetune | probe (pre-training cells and the paper's rows: finetune, what they did)
            "train_mode": config.get("train_mode", "finetune"),
        }


def table(results_dir: str | Path, *, status: str = "ok") -> pd.DataFrame:
    """One tidy row per (run, metric) for every valid result with `status` (invalid files: warned, left out)."""
    found = scan(results_dir)
    for _path, reason in found.invalid:
        warnings.warn(f"left out of the table: {reason}", stacklevel=2)
    return table_from_results(found.results, status=status)


def table_from_results(results: Iterable[dict[str, Any]], *, status: str = "ok") -> pd.DataFrame:
    results = list(results)
    pretrain_configs = {r["run_id"]: r["config"] for r in results if r["config"].get("kind") == "pretrain"}
    unknown: dict[str, int] = {}  # run:<id> inits whose pre-training config nothing here holds -> results
    for result in results:
        parent = _parent_id(result["config"].get("init", ""))
        if parent and parent not in pretrain_configs:
            if isinstance(result.get("init_config"), dict):  # recorded by the transfer itself (train.run)
                pretrain_configs[parent] = result["init_config"]
            elif result["status"] == status:
                unknown[parent] = unknown.get(parent, 0) + 1
    if unknown:
        warnings.warn(
            f"{sum(unknown.values())} result(s) from {len(unknown)} pre-training run(s) not in the store and not "
            f"recorded in the results (e.g. run:{next(iter(unknown))}): their pre-training data fraction is "
            f"unknown (NaN in the table), so results of different fractions may share a cell; copy the "
            f"pretrain-*.json results into the store",
            stacklevel=3,
        )
    rows = []
    for result in (r for r in results if r["status"] == status):
        try:  # validate() has checked the types; this is the last guard for one odd result
            rows += list(_rows(result, pretrain_configs))
        except (TypeError, ValueError, AttributeError, KeyError) as err:
            warnings.warn(
                f"left out of the table: result {result.get('run_id')!r}: {type(err).__name__}: {err}", stacklevel=2
            )
    frame = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    frame = frame.astype({"shots": "int64", "seed": "int64", "value": "float64", "data_fraction": "float64"})
    frame["last_step"] = frame["last_step"].astype("Int64")
    frame = frame.sort_values(["kind", "target", "pretrained_model", "shots", "seed", "metric"], ignore_index=True)
    train_modes = {r["run_id"]: r["config"].get("train_mode", "finetune") for r in results}
    duplicates = duplicate_cells(frame, train_modes)
    if duplicates:
        shown = "; ".join(f"{'/'.join(map(str, key))}: {', '.join(ids)}" for key, ids in list(duplicates.items())[:5])
        more = f" (and {len(duplicates) - 5} more)" if len(duplicates) > 5 else ""
        warnings.warn(
            f"{len(duplicates)} cell(s) of the table hold more than one result, which figures average as one "
            f"seed ({'/'.join(CELL_KEY)}): {shown}{more}; keep one run per cell (a cell spelled out differently, "
            f"or one differing in a field the table does not show)",
            stacklevel=3,
        )
    return frame


# What one seed of one figure's bar is: two results that agree on all of these are averaged as one seed.
CELL_KEY = ("kind", "target", "pretrained_model", "shots", "seed", "origin", "data_fraction", "train_mode")


def duplicate_cells(frame: pd.DataFrame, train_modes: dict[str, str] | None = None) -> dict[tuple, list[str]]:
    """CELL_KEY -> the run ids of the tidy table that share it, for every key held by more than one run."""
    runs = frame.drop_duplicates("run_id")
    modes = train_modes or {}
    runs = runs.assign(train_mode=[modes.get(run_id, "finetune") for run_id in runs["run_id"]])
    return {
        tuple(key): sorted(group["run_id"])
        for key, group in runs.groupby(list(CELL_KEY), sort=True, dropna=False)
        if len(group) > 1
    }


def write_table(frame: pd.DataFrame, out: str | Path, fmt: str | None = None) -> Path:
    """Write the tidy table as CSV or Parquet, atomically (Parquet needs pyarrow or fastparquet)."""
    if fmt is not None and fmt not in TABLE_FORMATS:
        raise ResultError(f"unknown table format {fmt!r}; expected csv or parquet")
    try:
        return atomic_write_table(frame, out, fmt)
    except ImportError as err:
        raise ResultError(f"--format parquet needs pyarrow or fastparquet installed ({err})") from None


# ---- CLI --------------------------------------------------------------------------------------
__all__ = [
    "SCHEMA",
    "json_safe",
    "READABLE_SCHEMAS",
    "HISTORY_POINTS",
    "ResultError",
    "validate",
    "new_result",
    "save",
    "load",
    "is_ok",
    "is_done",
    "scan",
    "table",
    "table_from_results",
    "duplicate_cells",
    "CELL_KEY",
    "write_table",
]
