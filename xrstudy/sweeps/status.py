"""`xrstudy sweep status`: where every cell of a sweep stands, read from files alone (no torch).

Per cell, one state:
    done      its result JSON verifies and says `ok`
    failed    its result says `failed` (e.g. a diverged loss), or its last attempt left a cause in
              `{run_dir}/attempt.json` (the runner and the workers write it)
    running   a live claim holds it (`{run_dir}/cell.lock`: its pids on this host, its heartbeat on
              others); step / total, last loss, images/s and ETA from the last row of `history.csv`
    blocked   a parent (the pre-training cell it loads) is not done
    pending   none of these; a run folder with history says where an interrupted run resumes
It reads the store, the run folders and the claims the runners keep on shared storage, never a
process table, so it answers the same for `sweep run` here and for SLURM jobs on other nodes.
Totals follow, per kind and target, and the hours spent (the results' timings) beside the plan's
estimate (`xrstudy.sweeps.plan.plan_cells`).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xrstudy.config import RunConfig
from xrstudy.results import store
from xrstudy.sweeps import sweepfile
from xrstudy.sweeps.celllock import CellLock
from xrstudy.training import history

STATES = ("done", "failed", "running", "blocked", "pending")
STALLED_AFTER_S = 600.0  # a running cell with no new history row for this long is flagged
_WORLD = re.compile(r" x(\d+)$")


def _attempt_cause(run_dir: Path) -> str:
    """The cause a failed attempt left in `attempt.json` (empty when none)."""
    try:
        return str(json.loads((run_dir / "attempt.json").read_text()).get("cause", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _load(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(result, "") or (None, why it is not a usable result: "" when there is no file)."""
    if not path.exists():
        return None, ""
    try:
        return store.load(path), ""
    except store.ResultError as err:
        return None, str(err)


def _hours(result: dict[str, Any]) -> tuple[str, float]:
    """(device kind, hours of all its devices) a result's timings account for."""
    timings = result.get("timings") or {}
    seconds = sum(float(v) for v in timings.values() if isinstance(v, (int, float)))
    device = str(result.get("device") or "")
    match = _WORLD.search(device)
    devices = int(match.group(1)) if match else 1
    return ("gpu" if device.startswith("cuda") else "cpu"), seconds * devices / 3600


def cell_status(
    cfg: RunConfig, results_dir: Path, done: set[str], parents_failed: dict[str, str], now: float
) -> dict[str, Any]:
    """The state of one cell. `done`: run ids with an ok result; `parents_failed`: run id -> its cause."""
    result, invalid = _load(store.result_path(cfg.run_id, results_dir))
    row: dict[str, Any] = {
        "run_id": cfg.run_id,
        "name": cfg.name,
        "kind": cfg.kind,
        "target": cfg.target if cfg.kind == "transfer" else "+".join(cfg.sources),
        "state": "pending",
        "step": None,
        "steps": None,
        "cause": "",
        "loss": None,
        "images_per_s": None,
        "eta_s": None,
        "torch_threads": None,
        "hours": None,
        "device_kind": None,
    }
    if result is not None:
        kind, hours = _hours(result)
        row.update(hours=round(hours, 4), device_kind=kind, step=result.get("last_step"))
        row["torch_threads"] = (result.get("reproducibility") or {}).get("torch_threads")
        curve = result.get("history") or {}
        row["steps"] = curve["total_steps"][-1] if curve.get("total_steps") else result.get("last_step")
        losses = [v for v in curve.get("train/loss", []) if v is not None]
        speeds = [v for v in curve.get("train/images_per_s", []) if v is not None]
        row["loss"], row["images_per_s"] = (losses[-1] if losses else None), (speeds[-1] if speeds else None)
        if result["status"] == "ok":
            row["state"] = "done"
            return row
    lock = CellLock(cfg.run_dir / "cell.lock")
    last = history.last_row(cfg.run_dir / history.HISTORY_FILE)
    if last is not None and lock.held():
        row.update(state="running", cause="")
        _progress(row, last, cfg.batch_size)
        row["heartbeat_age_s"] = _age(lock.path, now)
        row["last_row_age_s"] = _age(cfg.run_dir / history.HISTORY_FILE, now)
        if row["last_row_age_s"] is not None and row["last_row_age_s"] > STALLED_AFTER_S:
            row["cause"] = f"no new history row for {row['last_row_age_s'] / 60:.0f} min: stalled, or validating?"
        return row
    if lock.held():
        row.update(state="running", cause="starting (no history row yet)")
        return row
    if result is not None:  # a failed result, and nothing runs it now
        row.update(state="failed", cause=str(result.get("error") or "failed"))
        return row
    cause = _attempt_cause(cfg.run_dir)
    if cause:
        row.update(state="failed", cause=cause)
        if last is not None:
            _progress(row, last, cfg.batch_size)
        return row
    parent = sweepfile.parent_id(cfg)
    if parent is not None and parent not in done:
        failed = parents_failed.get(parent)
        row.update(state="blocked", cause=f"parent {parent} {'failed: ' + failed if failed else 'not done'}")
        return row
    if invalid:
        row["cause"] = f"its result is not valid and it runs again ({invalid})"
    elif last is not None:
        _progress(row, last, cfg.batch_size)
        row["cause"] = _interrupted(cfg, last)
    return row


def _interrupted(cfg: RunConfig, last: dict[str, Any]) -> str:
    """Why a cell with a history and no result is pending, and where its next attempt starts."""
    if cfg.train_mode == "probe":  # no training state: the features come back from their cache
        return f"interrupted after fit {last['step']}; it starts again (its features are cached)"
    if last.get("total_steps") is not None and last["step"] >= last["total_steps"]:
        return f"trained to step {last['step']}, no result: interrupted while evaluating; it runs again"
    if (cfg.run_dir / history.TRAIN_STATE_FILE).is_file():
        return f"interrupted at step {last['step']}; it resumes from its training state"
    return f"interrupted at step {last['step']} before its first training state was saved; it starts again"


def _age(path: Path, now: float) -> float | None:
    try:
        return round(now - path.stat().st_mtime, 1)
    except OSError:
        return None


def _progress(row: dict[str, Any], last: dict[str, Any], batch: int) -> None:
    row["step"], row["steps"] = last.get("step"), last.get("total_steps")
    row["loss"], row["images_per_s"] = last.get("train/loss"), last.get("train/images_per_s")
    if row["images_per_s"] and row["steps"] is not None and row["step"] is not None:
        row["eta_s"] = round((row["steps"] - row["step"]) * batch / row["images_per_s"], 1)


def sweep_status(
    cells: Iterable[RunConfig],
    results_dir: str | Path | None = None,
    plan_rows: Iterable[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per cell (the sweep's order); `results_dir`: the store (default: each cell's own);
    `plan_rows` (xrstudy.sweeps.plan.plan_cells) give the steps of cells that have not logged any."""
    cells = list(cells)
    now = time.time()
    folder = (lambda cfg: Path(results_dir)) if results_dir is not None else (lambda cfg: cfg.results_dir)
    planned = {row["run_id"]: row.get("steps") for row in plan_rows or ()}
    ids = {c.run_id for c in cells}
    rows: dict[str, dict[str, Any]] = {}
    done: set[str] = set()
    failed: dict[str, str] = {}
    for cfg in cells:  # parents named by a cell but outside the selection: the store says whether they are done
        parent = sweepfile.parent_id(cfg)
        if parent is not None and parent not in ids and store.is_ok(store.result_path(parent, folder(cfg))):
            done.add(parent)
    for cfg in sorted(cells, key=lambda c: c.kind != "pretrain"):  # parents first: their state decides `blocked`
        row = cell_status(cfg, folder(cfg), done, failed, now)
        if row["steps"] is None:
            row["steps"] = planned.get(cfg.run_id)
        rows[cfg.run_id] = row
        if row["state"] == "done":
            done.add(cfg.run_id)
        elif row["state"] == "failed":
            failed[cfg.run_id] = row["cause"]
    return [rows[c.run_id] for c in cells]


def summary(rows: list[dict[str, Any]], plan_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Counts per state, per kind and per target; hours spent by device kind; the plan's estimate."""
    per_kind: dict[str, Counter] = {}
    per_target: dict[str, Counter] = {}
    for row in rows:
        per_kind.setdefault(row["kind"], Counter())[row["state"]] += 1
        per_target.setdefault(f"{row['kind']} {row['target']}", Counter())[row["state"]] += 1
    spent: Counter = Counter()
    for row in rows:
        if row["hours"] is not None:
            spent[row["device_kind"] or "cpu"] += row["hours"]
    info: dict[str, Any] = {
        "cells": len(rows),
        "states": {state: sum(r["state"] == state for r in rows) for state in STATES},
        "per_kind": {k: dict(v) for k, v in per_kind.items()},
        "per_target": {k: dict(v) for k, v in per_target.items()},
        "hours_spent": {k: round(v, 3) for k, v in spent.items()},
        "torch_threads": dict(Counter(str(r["torch_threads"]) for r in rows if r["torch_threads"] is not None)),
    }
    if plan_rows is not None:
        estimate = {r["run_id"]: r["gpu_hours"] for r in plan_rows}
        done = {r["run_id"] for r in rows if r["state"] == "done"}
        info["gpu_hours_planned"] = round(sum(v or 0 for v in estimate.values()), 1)
        info["gpu_hours_planned_done"] = round(sum(estimate.get(rid) or 0 for rid in done), 3)
        info["cells_without_estimate"] = sum(v is None for v in estimate.values())
    return info


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def format_status(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """A table, one line per cell, then the totals."""
    lines = [f"{'state':8s} {'kind':8s} {'name':28s} {'run id':21s} {'step':>13s} {'loss':>8s} {'img/s':>8s} ETA"]
    for row in rows:
        step = f"{row['step'] if row['step'] is not None else '-'}/{row['steps'] if row['steps'] is not None else '?'}"
        line = (
            f"{row['state']:8s} {row['kind']:8s} {row['name'][:28]:28s} {row['run_id']:21s} {step:>13s} "
            f"{_number(row['loss']):>8s} {_number(row['images_per_s']):>8s} {_duration(row['eta_s'])}"
        )
        lines.append(line.rstrip() + (f"  {row['cause']}" if row["cause"] else ""))
    states = ", ".join(f"{state} {n}" for state, n in info["states"].items() if n)
    lines.append(f"{info['cells']} cells: {states}")
    for kind, counts in info["per_kind"].items():
        lines.append(f"  {kind}: " + ", ".join(f"{s} {counts[s]}" for s in STATES if counts.get(s)))
    for target, counts in info["per_target"].items():
        lines.append(f"    {target}: " + ", ".join(f"{s} {counts[s]}" for s in STATES if counts.get(s)))
    spent = ", ".join(f"{kind.upper()} {hours:.2f}" for kind, hours in sorted(info["hours_spent"].items())) or "none"
    line = f"hours spent (results' timings x devices): {spent}"
    if "gpu_hours_planned" in info:
        line += (
            f"; plan estimate: {info['gpu_hours_planned']:,.1f} GPU-hours for the sweep, "
            f"{info['gpu_hours_planned_done']:,.2f} for the cells done"
            + (
                f" ({info['cells_without_estimate']} cell{'s' if info['cells_without_estimate'] > 1 else ''} without "
                "an estimate: data with no published size, which `sweep plan --root NAME=DIR` counts)"
                if info["cells_without_estimate"]
                else ""
            )
        )
    lines.append(line)
    if info["torch_threads"]:
        threads = ", ".join(f"{n} ({count} cells)" for n, count in sorted(info["torch_threads"].items()))
        lines.append(f"torch threads of the stored results: {threads} (CPU results differ with the thread count)")
    return "\n".join(lines)


__all__ = ["STATES", "cell_status", "sweep_status", "summary", "format_status"]
