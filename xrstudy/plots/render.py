"""Every figure of a results store in one call: the default figures (`xrstudy.plots.figures`, and the
learning curves of `xrstudy.plots.curves` where results hold a history) or the paper's
(`xrstudy.plots.paper_figures`), with the tables drawn beside them. Above both, so neither imports the
other's caller."""

from __future__ import annotations

import warnings
from pathlib import Path

from xrstudy.fileio import atomic_write_table
from xrstudy.plots import curves, figures, paper_figures
from xrstudy.results import store

STYLES = ("default", "paper")


def render_all(
    results_dir: str | Path, out_dir: str | Path | None = None, *, n_boot: int = 1000, style: str = "default"
) -> figures.Rendered:
    """Every figure for every (target, test metric) in the store, plus `results_table.csv`,
    `full_shot_means.csv` and `scaling_fits.csv`; default out: `<results parent>/figures`.
    `style="paper"` draws the paper's figures instead (`xrstudy.plots.paper_figures`). Results with a
    training history add learning curves, keyed ("curves", target, shot) (pre-training: ("curves", "pretrain", "")).

    Invalid result files (truncated, edited, off-schema) are left out with a warning, never drawn."""
    if style not in STYLES:
        raise ValueError(f"style={style!r}; expected one of {STYLES}")
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir.resolve().parent / "figures"
    found = store.scan(results_dir)
    for _path, reason in found.invalid:
        warnings.warn(f"left out of the table: {reason}", stacklevel=2)
    table = store.table_from_results(found.results)
    if table.empty:
        raise store.ResultError(f"{results_dir}: no valid results to draw")
    if style == "paper":
        return paper_figures.render(table, out_dir)
    rendered = figures.render_table(table, out_dir)
    rendered.figures.update(curves.render_curves([r for r in found.results if r["status"] == "ok"], out_dir))
    tables = {
        "results_table.csv": table,
        "full_shot_means.csv": figures.full_shot_means(table),
        "scaling_fits.csv": figures.scaling_fits(table, n_boot=n_boot),
    }
    for name, frame in tables.items():
        atomic_write_table(frame, out_dir / name)
        rendered.tables[name] = out_dir / name
    return rendered


__all__ = ["STYLES", "render_all"]
