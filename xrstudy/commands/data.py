"""`xrstudy data inspect | merge | split | shots | cache | audit`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import pandas as pd

from xrstudy.config import RunConfig
from xrstudy.data import audit, labels, sources, studydata
from xrstudy.fileio import atomic_write_table


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=None if len(json.dumps(summary)) < 200 else 1))
        return
    for key, value in summary.items():
        if isinstance(value, dict) and value and isinstance(next(iter(value.values())), dict):
            print(f"{key}:")
            print(pd.DataFrame(value).T.to_string())
        else:
            print(f"{key}: {value}")


def cmd_inspect(args: argparse.Namespace) -> int:
    summary = studydata.inspect_source(
        args.source,
        args.root,
        args.views,
        args.uncertain,
        args.metadata_only,
        label_mode=args.label_mode,
        split_mode=args.split_mode,
    )
    _print(summary, args.json)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    table = studydata.merge_entries(
        args.source,
        label_set=args.labels,
        views=args.views,
        uncertain=args.uncertain,
        metadata_only=args.metadata_only,
        label_mode=args.label_mode,
    )
    if args.out:
        atomic_write_table(table, args.out)  # Parquet for a .parquet name, else CSV
        print(f"wrote {len(table)} rows to {args.out}", file=sys.stderr)
    _print(studydata.merge_summary(table), args.json)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    written = studydata.write_split(
        args.source,
        args.root,
        args.out,
        mode=args.mode,
        views=args.views,
        label_mode=args.label_mode,
        metadata_only=args.metadata_only,
        seed=args.seed,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
    )
    print(
        f"{written.path}: {written.counts}, left out: {written.left_out}, patients in more than one split: "
        f"{written.patient_overlap}",
        file=sys.stderr,
    )
    print(written.sha256)
    return 0


def cmd_shots(args: argparse.Namespace) -> int:
    """Print the image ids of a k-shot training set, one per line, in the sampler's order."""
    paper = args.mode == "paper"
    cfg = RunConfig(
        kind="transfer",
        name=f"{args.target}-{args.shots}-shot",
        target=args.target,
        roots=(f"{args.target}={args.root}",),
        metadata_only=args.metadata_only,
        shots=args.shots,
        seed=args.seed,
        shots_mode=args.mode,
        split_mode=args.split_mode or ("paper" if paper else "official"),
        label_mode=args.label_mode or ("paper" if paper else "terms"),
    )
    ids, n_train = studydata.shot_ids(cfg)
    print("\n".join(ids))
    print(
        f"{len(ids)} of {n_train} training images ({cfg.shots_mode}, seed {cfg.seed}; "
        f"split_mode {cfg.split_mode}, label_mode {cfg.label_mode})",
        file=sys.stderr,
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from xrstudy.pixels import imagecache

    table = labels.filter_views(sources.read_source(args.source, args.root), args.views)
    mode = args.mode or ("L" if sources.source_of(args.source).modality == "xray" else "RGB")
    workers = args.workers or os.cpu_count() or 1
    cache = imagecache.build_cache(sorted(table["path"].astype(str)), args.size, args.cache_dir, mode, workers)
    print(cache.report())
    return 0


def _finding_line(finding: dict[str, Any]) -> str:
    where = f"{finding['file']} {finding['source']}"
    count = finding["count"]
    if finding["check"] == "test_in_pretraining":
        against = finding["against"]
        other = f"{against['file']} {against['source']}" if against["file"] else f"{against['source']} (every image)"
        if count is None:
            return f"{where}: test images in {other}'s pre-training rows: not checkable ({finding['reason']})"
        line = f"{where}: {count:,} test images in {other}'s pre-training rows (by {' and '.join(finding['by'])})"
        if "patients" in finding:
            line += f"; {finding['patients']:,} test patients there"
    elif finding["check"] == "patients":
        line = f"{where}: {count:,} patients on more than one side ({finding['images']:,} images)"
    elif finding["check"] == "image_ids":
        line = f"{where}: {count:,} image ids on more than one side"
    else:
        line = f"{where}: {count:,} images with equal content on more than one side ({finding['how']})"
    if finding["examples"]:
        line += f", e.g. {json.dumps(finding['examples'][:3])}"
    return line


def cmd_audit(args: argparse.Namespace) -> int:
    report = audit.audit(
        args.split_files,
        dict(args.root),
        content=args.content,
        metadata_only=args.metadata_only,
        workers=args.workers,
        cache_dir=args.cache_dir if args.content != "none" else None,
    )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for finding in report["findings"]:
            print(_finding_line(finding))
        for line in report["skipped"]:
            print(f"skipped: {line}")
        checked = [f for f in report["findings"] if f["count"] is not None]
        print(f"{len(checked)} checks, {report['leaks']} with a leak; {len(report['skipped'])} skipped (reasons above)")
    return 1 if args.fail_on_leak and report["leaks"] else 0
