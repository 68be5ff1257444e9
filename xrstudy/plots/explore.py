"""Exploring sources (`notebooks/00_explore_sources`): counts and legible figures of a canonical table.

Built on `xrstudy.data.labels` (META_COLUMNS, finding_columns) and `xrstudy.data.merge` (which findings a merge
keeps). Real vocabularies are large (PadChest alone has ~170 terms), so the figures show at most the
`top` findings by positives plus the label set of the current merge (`labels`: the intersection of
these sources by default), the co-occurrence matrix at most MAX_MATRIX × MAX_MATRIX, and no PNG is
larger than `figures.MAX_PIXELS` on a side. The CSV saved beside each figure keeps the full counts.

Every drawing function returns a matplotlib Figure; `explore_sources` saves them (PNG + PDF + CSV).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from xrstudy.config import parse_root
from xrstudy.data import merge
from xrstudy.data.labels import finding_columns
from xrstudy.fileio import atomic_write_table
from xrstudy.plots import figures

TOP_FINDINGS = 25
MAX_MATRIX = 30


# ---- reading ----------------------------------------------------------------------------------
def read_sources(entries: Iterable[str], metadata_only: bool = False) -> pd.DataFrame:
    """`["chexpert=/data/CheXpert-v1.0-small", ...]` → one canonical table of all of them."""
    from xrstudy.data import sources

    tables = []
    for entry in entries:
        name, root = parse_root(entry, origin="sources")  # the one parser of name=DIR (a ConfigError: a ValueError)
        tables.append(sources.read_source(name, root, metadata_only=metadata_only))
    if not tables:
        raise ValueError("no sources given; expected a list of 'name=DIR' entries")
    return pd.concat(tables, ignore_index=True)


# ---- counts (full: every finding) -------------------------------------------------------------
def source_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images, patients and per-view counts per source."""
    counts = frame.groupby("source").agg(images=("image_id", "size"), patients=("patient_id", "nunique"))
    views = frame.groupby(["source", "view"]).size().unstack(fill_value=0)
    return counts.join(views)


def _per_source(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """Each source's rows with only the findings it annotates (a concatenated table holds NaN columns
    for the findings of the other sources)."""
    return [part.dropna(axis=1, how="all") for _, part in frame.groupby("source", sort=True)]


def finding_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per source and finding it annotates: positives, negatives, uncertain (-1), unknown (NaN), uncertain share."""
    rows = []
    for part in _per_source(frame):
        source = str(part["source"].iloc[0])
        values = part[finding_columns(part)].to_numpy(np.float32, na_value=np.nan)
        for i, finding in enumerate(finding_columns(part)):
            column = values[:, i]
            rows.append(
                {
                    "source": source,
                    "finding": finding,
                    "positive": int((column == 1).sum()),
                    "negative": int((column == 0).sum()),
                    "uncertain": int((column == -1).sum()),
                    "unknown": int(np.isnan(column).sum()),
                }
            )
    out = pd.DataFrame(rows, columns=["source", "finding", "positive", "negative", "uncertain", "unknown"])
    labelled = out.positive + out.negative + out.uncertain
    return out.assign(uncertain_share=(out.uncertain / labelled.where(labelled > 0)).fillna(0.0))


def merge_findings(frame: pd.DataFrame, labels: str = "intersection") -> list[str]:
    """The findings a merge of the table's sources keeps (`xrstudy.data.merge.merged_findings`)."""
    return merge.merged_findings(_per_source(frame), labels)


def shown_findings(
    frame: pd.DataFrame, *, labels: str = "intersection", top: int = TOP_FINDINGS, limit: int | None = None
) -> list[str]:
    """The findings a figure shows, most positives first: the merge's label set (`labels`; with
    'union' every finding is in it, so only the ranking decides) plus the `top` findings by positives,
    at most `limit` in all (the merge's findings are kept first)."""
    positives = (frame[finding_columns(frame)] == 1).sum().sort_values(ascending=False, kind="stable")
    ranked = list(positives.index)
    kept = set(ranked[:top])
    if labels != "union":
        kept |= set(merge_findings(frame, labels))
    shown = [f for f in ranked if f in kept]
    if limit is not None and len(shown) > limit:
        merged = set(merge_findings(frame, labels)) if labels != "union" else set()
        keep = [f for f in shown if f in merged][:limit]
        keep += [f for f in shown if f not in merged][: limit - len(keep)]
        shown = [f for f in shown if f in set(keep)]
    return shown


def cooccurrence_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Every pair of findings positive together: `finding`, `given`, both positive, `given` positive,
    P(finding | given). Full counts (what the matrix figure shows a corner of)."""
    findings = finding_columns(frame)
    positives = (frame[findings].to_numpy(np.float32, na_value=np.nan) == 1).astype(np.float32)
    joint = positives.T @ positives
    given_idx, finding_idx = np.nonzero(joint)
    per = np.diag(joint)
    return pd.DataFrame(
        {
            "given": np.asarray(findings)[given_idx],
            "finding": np.asarray(findings)[finding_idx],
            "both_positive": joint[given_idx, finding_idx].astype(int),
            "given_positive": per[given_idx].astype(int),
            "p_finding_given": joint[given_idx, finding_idx] / per[given_idx],
        }
    )


# ---- figures ----------------------------------------------------------------------------------
def _height(rows: int, per_row: float, base: float) -> float:
    return min(per_row * rows + base, figures.MAX_PIXELS / 120)


def plot_finding_counts(frame: pd.DataFrame, *, labels: str = "intersection", top: int = TOP_FINDINGS) -> Figure:
    """Positives per finding and source (log x) for the shown findings."""
    shown = shown_findings(frame, labels=labels, top=top)
    counts = finding_counts(frame)
    counts = counts[counts.finding.isin(shown)]
    fig = figures.new_figure(9, _height(len(shown), 0.28, 2))
    with mpl.rc_context(figures.style()):
        ax = fig.subplots()
        palette = {s: figures.source_colour(s) for s in counts.source.unique()}
        sns.barplot(data=counts, y="finding", x="positive", hue="source", order=shown, palette=palette, ax=ax)
        more = len(finding_columns(frame)) - len(shown)
        title = "positives per finding and source" + (f" ({len(shown)} shown, {more} more in the CSV)" if more else "")
        ax.set(xscale="log", xlabel="positive images (log)", ylabel="", title=title)
    return fig


def plot_cooccurrence(frame: pd.DataFrame, *, labels: str = "intersection", top: int = TOP_FINDINGS) -> Figure:
    """P(column finding positive | row finding positive) over all sources, at most MAX_MATRIX findings."""
    shown = shown_findings(frame, labels=labels, top=top, limit=MAX_MATRIX)
    positives = (frame[shown] == 1).astype(float)
    shown = [f for f in shown if positives[f].sum() > 0]
    joint = positives[shown].T @ positives[shown]
    conditional = joint.div(np.diag(joint), axis=0)
    side = min(0.4 * len(conditional) + 3, figures.MAX_PIXELS / 120 - 1)
    fig = figures.new_figure(side + 1, side)
    with mpl.rc_context(figures.style()):
        ax = fig.subplots()
        sns.heatmap(
            conditional,
            vmin=0,
            vmax=1,
            cmap="viridis",
            square=True,
            ax=ax,
            annot=len(conditional) <= 14,
            fmt=".2f",
            annot_kws={"fontsize": 7},
        )
        ax.set_title("label co-occurrence P(column | row)")
    return fig


def plot_uncertain_shares(frame: pd.DataFrame, *, labels: str = "intersection", top: int = TOP_FINDINGS) -> Figure:
    """Share of labelled images marked uncertain (-1), finding × source, for the shown findings."""
    shown = shown_findings(frame, labels=labels, top=top)
    counts = finding_counts(frame)
    wide = counts.pivot(index="finding", columns="source", values="uncertain_share").reindex(shown).fillna(0.0)
    fig = figures.new_figure(1.2 * wide.shape[1] + 4, _height(len(wide), 0.3, 2))
    with mpl.rc_context(figures.style()):
        ax = fig.subplots()
        sns.heatmap(
            wide,
            vmin=0,
            vmax=max(0.01, float(wide.to_numpy().max(initial=0.0))),
            cmap="rocket_r",
            annot=len(wide) <= MAX_MATRIX,
            fmt=".2f",
            ax=ax,
        )
        ax.set_title("share of labelled images marked uncertain (-1)")
    return fig


def plot_sample_grid(frame: pd.DataFrame, per_source: int = 4, seed: int = 0) -> Figure:
    """A few images per source; in metadata-only mode (files absent) the tiles say so."""
    from xrstudy.pixels.decoding import ImageError, load_image

    sources = sorted(frame.source.unique())
    fig = figures.new_figure(2.0 * per_source, 2.1 * len(sources), **{"axes.grid": False})
    with mpl.rc_context(figures.style() | {"axes.grid": False}):
        axes = fig.subplots(len(sources), per_source, squeeze=False)
        for row, source in zip(axes, sources):
            part = frame[frame.source == source]
            chosen = part.sample(n=min(per_source, len(part)), random_state=seed)
            for ax, (_, item) in zip(row, chosen.iterrows()):
                try:
                    pixels = load_image(str(item.get("path", "")))
                    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0.0, vmax=1.0)
                except (ImageError, OSError):
                    ax.text(0.5, 0.5, "metadata only\n(no image file)", ha="center", va="center", fontsize=8)
                ax.set_title(f"{source} {item.get('view', '')}", fontsize=8)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
    return fig


# ---- one call for the notebook ----------------------------------------------------------------
@dataclass
class Exploration:
    """What `explore_sources` drew: tables, figures (name → Figure) and the files written."""

    counts: pd.DataFrame
    findings: pd.DataFrame
    figures: dict[str, Figure] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def explore_sources(
    frame: pd.DataFrame,
    out_dir: str | Path,
    *,
    labels: str = "intersection",
    top: int = TOP_FINDINGS,
    per_source: int = 4,
) -> Exploration:
    """Counts per source / view / finding and the exploration figures, saved (PNG + PDF + full CSV) under out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = Exploration(counts=source_counts(frame), findings=finding_counts(frame))
    atomic_write_table(found.counts.reset_index(), out_dir / "source_counts.csv")  # the index is `source`
    found.files.append(out_dir / "source_counts.csv")
    drawn: dict[str, tuple[Figure, pd.DataFrame]] = {}
    if len(found.findings):
        drawn["finding_counts"] = (plot_finding_counts(frame, labels=labels, top=top), found.findings)
        drawn["label_cooccurrence"] = (plot_cooccurrence(frame, labels=labels, top=top), cooccurrence_counts(frame))
        drawn["uncertain_shares"] = (plot_uncertain_shares(frame, labels=labels, top=top), found.findings)
    drawn["sample_grid"] = (plot_sample_grid(frame, per_source=per_source), frame[["source", "view", "path"]].head(0))
    for name, (fig, rows) in drawn.items():
        found.figures[name] = fig
        found.files += figures.save_figure(fig, rows, out_dir, name)
    return found


__all__ = [
    "read_sources",
    "source_counts",
    "finding_counts",
    "merge_findings",
    "shown_findings",
    "cooccurrence_counts",
    "plot_finding_counts",
    "plot_cooccurrence",
    "plot_uncertain_shares",
    "plot_sample_grid",
    "explore_sources",
    "Exploration",
    "TOP_FINDINGS",
    "MAX_MATRIX",
]
