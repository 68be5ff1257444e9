"""`xrstudy results table | import-legacy`."""

from __future__ import annotations

import argparse
import sys

from xrstudy.results import legacy, store


def cmd_table(args: argparse.Namespace) -> int:
    frame = store.table(args.results)
    if args.out:
        print(store.write_table(frame, args.out, args.format))
    elif args.format == "parquet":
        raise store.ResultError("--format parquet needs --out FILE")
    else:
        print(frame.to_csv(index=False), end="")
    return 0


def cmd_import_legacy(args: argparse.Namespace) -> int:
    done = legacy.import_legacy_store(args.dir, args.results)
    merged = (
        f", {done.merged_rows} more merged into a row of the same cell, metric and value (another spelling, path "
        f"or last step)"
        if done.merged_rows
        else ""
    )
    nulls = f"; {done.null_values} NaN value(s) stored as null (no value)" if done.null_values else ""
    print(
        f"imported {len(done.written)} paper runs into {args.results}: {done.rows} rows from {done.files} files "
        f"({done.distinct_rows} distinct, {done.rows - done.distinct_rows} exact repeats merged{merged}), "
        f"all stored{nulls}"
    )
    if done.unread:
        print(
            f"xrstudy: warning: {len(done.unread)} file(s) in {args.dir} not read: their names are not "
            f"finetuning_results_{{dataset}}_{{metric}}.csv: {', '.join(done.unread[:10])}"
            + (" ..." if len(done.unread) > 10 else ""),
            file=sys.stderr,
        )
    return 0
