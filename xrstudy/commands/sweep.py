"""`xrstudy sweep plan | run | status | submit`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from xrstudy.sweeps import sweepfile


def _report(label: str, items: list[tuple[dict[str, Any], str]]) -> None:
    """One stderr line per distinct message, with how many cells it concerns and the first of them."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for row, message in items:
        seen.setdefault(message, []).append(row)
    for message, rows in seen.items():
        first = rows[0]
        print(
            f"xrstudy: {label} ({len(rows)} cell(s), e.g. {first['name']} [{first['run_id']}]): {message}",
            file=sys.stderr,
        )


def cmd_plan(args: argparse.Namespace) -> int:
    from xrstudy.sweeps import plan

    cells = sweepfile.select(sweepfile.load_sweep(args.sweep, max_grid_cells=args.max_grid_cells), args.only)
    rows = plan.plan_cells(cells, roots=dict(args.root or []), metadata_only=args.metadata_only, device=args.device)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(plan.format_table(rows))
    _report("warning", [(row, w) for row in rows for w in row["warnings"]])
    unresolved = [r for r in rows if r["errors"] or r["steps"] is None]
    _report(
        "unresolved",
        [(r, "; ".join(r["errors"]) or r["train_size_from"].removeprefix("unresolved: ")) for r in unresolved],
    )
    return 1 if unresolved else 0


def cmd_run(args: argparse.Namespace) -> int:
    from xrstudy.sweeps import runner

    cells = sweepfile.load_sweep(args.sweep, max_grid_cells=args.max_grid_cells)
    workers = args.workers if args.workers is not None else max(1, len(args.gpus or []))
    summary = runner.run_sweep(
        cells,
        workers=workers,
        gpus=args.gpus,
        only=args.only,
        retries=args.retries,
        dry_run=args.dry_run,
        progress=args.progress,
        isolate=args.isolate,
        allow_cpu=args.allow_cpu,
    )
    if args.dry_run:
        by_id = {c.run_id: c for c in cells}
        for rid in summary.planned:
            print(f"would run  {by_id[rid].kind:8s} {rid}  {by_id[rid].name}")
    for warning in summary.warnings:
        print(f"xrstudy: warning: {warning}", file=sys.stderr)
    print(summary.report())
    return 0 if summary.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from xrstudy.results import store
    from xrstudy.sweeps import plan, status

    cells = sweepfile.select(sweepfile.load_sweep(args.sweep), args.only)
    plan_rows = plan.plan_cells(cells, use_roots=False)  # the estimate from published facts: no label file read
    rows = status.sweep_status(cells, args.results, plan_rows)
    info = status.summary(rows, plan_rows)
    if args.json:  # a diverging cell's last loss may be inf or NaN: JSON has neither, null says "no number"
        json.dump(store.json_safe({"cells": rows, "summary": info}), sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(status.format_status(rows, info))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from xrstudy.sweeps import slurm

    cells = sweepfile.load_sweep(args.sweep, max_grid_cells=args.max_grid_cells)
    folder = args.folder or str(Path(cells[0].out_dir if cells else "xrstudy-out") / "slurm")
    limit = args.time_limit if args.time_limit is not None else args.timeout_min
    info = slurm.submit(
        cells,
        backend=args.backend,
        folder=folder,
        dry_run=args.dry_run,
        only=args.only,
        partition=args.partition,
        time_limit=limit,
        gpus_per_node=args.gpus_per_node,
        max_nodes=args.max_nodes,
        pretrain_nodes=args.pretrain_nodes,
        device=args.device,
    )
    print(json.dumps(info, indent=1))
    if args.dry_run:
        print(
            f"review {info['specs']} and the .sbatch scripts beside it: without --dry-run, submit hands these "
            f"jobs to submitit, which sends these scripts",
            file=sys.stderr,
        )
    return 0
