"""`xrstudy results table | import-legacy | variance | compare | scaling`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from xrstudy.results import legacy, scaling, stats, store


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


# ---- seed statistics, new against published, scaling fits ----------------------------------------
def _store_table(results: str) -> pd.DataFrame:
    frame = store.table(results)
    if frame.empty:
        raise store.ResultError(f"{results}: no valid results")
    return frame


def _points(value: Any) -> str:
    """A metric (a fraction) in points (×100); '-' where there is none."""
    return "-" if pd.isna(value) else f"{100 * value:.1f}"


def _interval(low: Any, high: Any) -> str:
    """An interval of a fraction in points, shown within [0, 100]: with two or three seeds a t or prediction
    interval can reach far past what a metric can be ([-2341.6, 2498.4]); --json keeps the values as computed."""
    if pd.isna(low):
        return "-"
    return f"[{_points(min(max(low, 0.0), 1.0))}, {_points(min(max(high, 0.0), 1.0))}]"


def _probe(row: Any) -> str:
    """' probe' for a linear-probe cell, so that its line is not read as a second fine-tune of the model."""
    return " probe" if getattr(row, "train_mode", "finetune") == "probe" else ""


def _model(row: Any) -> str:
    """The pre-trained model, with its data fraction when that is not the whole data, and ' probe' for probes."""
    return str(row.pretrained_model) + ("" if row.data_fraction == 1 else f" @{row.data_fraction:g}") + _probe(row)


def _few_shots_first(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in reading order: per target, metric, model and origin, k = 1, 5, 10, ... then full shot (shots 0)."""
    last = frame.shots.where(frame.shots > 0, frame.shots.max() + 1).rename("_order")
    keys = ["target", "metric", "pretrained_model", "data_fraction", "origin", "_order"]
    return frame.join(last).sort_values(keys, kind="stable").drop(columns="_order")


def _json(value: Any) -> None:
    print(json.dumps(value, indent=1, allow_nan=False))


def cmd_variance(args: argparse.Namespace) -> int:
    frame = _store_table(args.results)
    var = stats.variance_table(
        frame, metric=args.metric, n_boot=args.n_boot, seed=args.seed, level=args.level, half_width=args.half_width
    )
    written = variance_figures(frame, args.metric, args.out) if args.out else []
    if args.json:
        _json({"cells": stats.json_records(var), "figures": [str(p) for p in written]})
        return 0
    half = f"±{100 * args.half_width:g}"
    print(
        f"{'target':14s} {'metric':9s} {'pretrained model':34s} {'shot':10s} {'origin':7s} {'seeds':>5s} "
        f"{'mean':>6s} {'SD':>5s} {f'{args.level:.0%} CI of the mean':>19s} {f'seeds for {half}':>14s}"
    )
    for row in _few_shots_first(var).itertuples():
        interval = _interval(row.ci_low, row.ci_high)
        needed = "-" if pd.isna(row.seeds_for_half_width) else f"{row.seeds_for_half_width:.0f}"
        print(
            f"{row.target:14s} {row.metric:9s} {_model(row):34s} {row.shot:10s} {row.origin:7s} {row.n_seeds:5d} "
            f"{_points(row.mean):>6s} {_points(row.sd):>5s} {interval:>19s} {needed:>14s}"
        )
    short = int((var.seeds_for_half_width > var.n_seeds).sum())
    print(
        f"{len(var)} cells, in points (×100); CI: bootstrap over seeds ({args.n_boot} resamples, seed {args.seed}, "
        f"t-corrected); median SD {_points(var.sd.median())}; {short} cells have fewer seeds than a {half}-point "
        f"interval needs" + (f"; {len(written) // 3} figures of SD against shots in {args.out}" if written else "")
    )
    return 0


def variance_figures(frame: pd.DataFrame, metric: str | None, out: str | Path) -> list[Path]:
    """The SD-against-shots figure of every (target, metric) with two shot counts, saved under `out`."""
    from xrstudy.plots import figures  # matplotlib only when figures are asked for

    written: list[Path] = []
    for (target, name), rows in frame[frame.kind == "transfer"].groupby(["target", "metric"], sort=True):
        if name != metric if metric else not name.startswith("test/"):
            continue
        fig = figures.draw_sd_by_shots(rows, target, name) if rows.shots.nunique() >= 2 else None
        if fig is not None:
            written += figures.save_figure(fig, rows, out, figures.figure_name("variance", target, name))
    return written


COMPARE_LISTED = 40  # cells listed in text mode, outside first (--all: every one; --json: every column)


def _compare_line(row: Any) -> str:
    # '*': outside this cell's own interval, inside once adjusted for the number of comparisons
    flag = row.status + ("*" if row.status == "inside" and row.inside_per_cell is False else "")
    interval = _interval(row.interval_low, row.interval_high)
    welch = "-" if pd.isna(row.p_value) else f"{row.p_value:.2g}"
    return (
        f"{flag:13s} {row.target:14s} {row.metric:9s} {_model(row):34s} {row.shot:10s} {row.origin_new:7s} "
        f"{_points(row.mean_new):>6s} {row.n_new:>2d} {_points(row.mean_published):>6s} {row.n_published:>2d} "
        f"{_points(row.difference):>6s} {interval:>14s} {welch:>8s}"
    )


def cmd_compare(args: argparse.Namespace) -> int:
    new = _store_table(args.results)
    published = stats.published_rows(args.against)
    adjust = args.adjust or ("none" if args.interval == "range" else "holm")  # min-max has no p-value to adjust
    out = stats.compare_tables(
        new, published, metric=args.metric, level=args.level, interval=args.interval, adjust=adjust
    )
    summary = stats.compare_summary(out)
    failed = args.fail_outside and stats.fails(summary)
    if args.json:
        _json({"summary": summary, "cells": stats.json_records(out)})
    else:
        both = out[out.status.isin(["outside", "undetermined", "inside"])].astype({"inside_per_cell": object})
        listed = both if args.all else both.head(COMPARE_LISTED)
        print(
            f"{'status':13s} {'target':14s} {'metric':9s} {'pretrained model':34s} {'shot':10s} {'origin':7s} "
            f"{'new':>6s} {'n':>2s} {'publ.':>6s} {'n':>2s} {'diff':>6s} {'interval':>14s} {'Welch p':>8s}"
        )
        for row in listed.itertuples():
            print(_compare_line(row))
        if len(both) > len(listed):
            print(f"... {len(both) - len(listed)} more cells (--all lists them, --json gives every column)")
        if (both.status.eq("inside") & both.inside_per_cell.eq(False)).any():
            print(f"* outside its own {args.level:.0%} interval, inside once adjusted ({adjust})")
        print(f"values in points (×100); {summary['line']}")
    if failed:
        why = f"{summary['outside']} cells outside" if summary["compared"] else "no cell compared (none on both sides)"
        print(f"xrstudy: {why}: failing (--fail-outside)", file=sys.stderr)
    return 1 if failed else 0


def _fit_line(row: Any) -> str:
    series = str(row.arch) if row.scale == "data" else f"data {row.data_fraction:g}"
    head = (
        f"{row.scale:5s} {row.target:14s} {row.metric:9s} {row.init_label + _probe(row):28s} {row.origin:7s} "
        f"{row.shot:10s} "
        f"{series:20s} {row.law:10s}"
    )
    if row.reason:
        return f"{head} {row.reason}"
    text = f"{head} {'chosen' if row.chosen else '      '} α {row.alpha:.3f} [{row.alpha_lo:.3f}, {row.alpha_hi:.3f}]"
    if row.law == "saturating":
        text += f", E∞ {row.e_inf:.3f} [{row.e_inf_lo:.3f}, {row.e_inf_hi:.3f}]"
    if not pd.isna(row.delta_aicc):
        text += f"; ΔAICc {row.delta_aicc:.1f}"
    if not pd.isna(row.loo_mae):
        text += f"; leave-one-size-out error {row.loo_mae:.3f} (largest size {row.loo_largest:.3f})"
    return text + (f"; {row.note}" if row.note else "")


def cmd_scaling(args: argparse.Namespace) -> int:
    fits = scaling.scaling_fits(_store_table(args.results), n_boot=args.n_boot, seed=args.seed, level=args.level)
    if args.out:
        print(f"wrote {len(fits)} rows to {store.write_table(fits, args.out)}", file=sys.stderr)
    if args.json:
        _json(stats.json_records(fits))
        return 0
    for row in fits.fillna({"reason": "", "note": ""}).itertuples():
        print(_fit_line(row))
    refused = fits.reason.fillna("") != ""
    print(
        f"{int((~refused).sum())} fits ({args.level:.0%} bootstrap intervals over seeds, {args.n_boot} resamples; "
        f"error = 1 − metric), {int(refused.sum())} refused (fewer than {scaling.MIN_SIZES} sizes)"
        if len(fits)
        else "nothing to fit: no series has two or more model sizes or data fractions"
    )
    return 0
