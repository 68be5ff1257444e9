"""`xrstudy figures`."""

from __future__ import annotations

import argparse
import time

import pandas as pd

from xrstudy.plots import paper_figures, render


def cmd_figures(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    rendered = render.render_all(args.results, args.out, style=args.style)
    print(
        f"{len(rendered.pngs)} figures (PNG + PDF + CSV each) in {rendered.out_dir} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    if args.style == "paper":
        print("\n" + paper_figures.format_full_shot(pd.read_csv(rendered.tables[paper_figures.FULL_SHOT_TABLE])))
        return 0
    means = pd.read_csv(rendered.tables["full_shot_means.csv"])
    if len(means):
        print("\nfull-shot mean ± SD over seeds:")
        for row in means.itertuples():
            model = row.pretrained_model + (" (probe)" if getattr(row, "train_mode", "") == "probe" else "")
            print(f"  {row.target:14s} {row.metric:9s} {model:42s} {row.mean:.4f} ± {row.sd:.4f} (n={row.seeds})")
    return 0
