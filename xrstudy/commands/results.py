"""`xrstudy results table | import-legacy`."""

from __future__ import annotations

import argparse

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
    print(
        f"imported {len(done.written)} paper runs into {args.results}: {done.rows} rows from {done.files} files "
        f"({done.distinct_rows} distinct, {done.rows - done.distinct_rows} exact repeats merged), all stored"
    )
    return 0
