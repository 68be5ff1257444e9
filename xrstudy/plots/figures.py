"""The study's figures from the tidy results table (`xrstudy.results.store.table`).

Figures are objects: every drawing function takes the tidy table (never modified) and returns a
matplotlib `Figure`; `save_figure` writes it as `{name}.png`, `{name}.pdf` and `{name}.csv` (the tidy
rows it was drawn from), and can be called again after a restyle. Figures are made with
`matplotlib.figure.Figure`, not pyplot: nothing here chooses a backend or keeps figures open in
pyplot, so a notebook shows each one inline exactly once (`display(fig)`), and a script can draw
hundreds. `render_all` draws a whole store and returns a mapping (kind, target, metric) → (figure,
files). Colours are fixed per pre-training source (`source_colour`) and shaded by model size, so a
source looks the same in every figure. The paper's own style lives in `xrstudy.plots.paper_figures`,
exploration figures in `xrstudy.plots.explore`. (About 460 lines: colours, the five figure kinds, saving
and the render mapping share their helpers and read best together.)
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from xrstudy.fileio import atomic_path, atomic_write_table
from xrstudy.results import scaling, stats, store

# ---- colours ----------------------------------------------------------------------------------
SOURCE_COLOURS = {
    "imagenet1k": "#9ecae1",
    "imagenet1k_distilled": "#6baed6",
    "imagenet21k": "#08519c",
    "imagenet21k_ft_imagenet1k": "#3182bd",
    "chexpert": "#e6550d",
    "mimic": "#31a354",
    "nih": "#756bb1",
    "padchest": "#d6616b",
    "chexpert_mimic": "#fd8d3c",
    "chexpert_mimic_nih": "#bd9e39",
    "chexpert_mimic_nih_padchest": "#843c39",
    # the demo's generic inits: natural images in the ImageNet blues, X-ray in the X-ray reds
    "natural": "#2b8cbe",
    "xray": "#cb181d",
    "scratch": "#7f7f7f",
}
# Model sizes in backbone parameters (millions), for ordering and model-scale curves (the fits' sizes too).
ARCH_PARAMS_M = scaling.BIT_PARAMS_M
SHOT_ORDER = ("1_shot", "5_shot", "10_shot", "100_shot", "500_shot", "full_shot")
METRIC_NAMES = {"test/acc": "accuracy", "test/auc": "mean AUC", "test/ap": "mean AP"}
MAX_PIXELS = 2400  # no saved PNG is wider or taller than this (the DPI gives way)
PAPER_SUFFIX = " (paper)"  # a series drawn from the paper's rows beside new runs of the same model


def source_colour(source: str) -> str:
    """Fixed colour for known sources; any other name gets a stable colour from its hash."""
    if source in SOURCE_COLOURS:
        return SOURCE_COLOURS[source]
    hue = int(hashlib.sha256(source.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return to_hex(colorsys.hls_to_rgb(hue, 0.45, 0.55))


def model_colour(source: str, arch: str) -> str:
    """The source's colour, lighter for smaller models (R50x1 light, R152x4 full)."""
    params = ARCH_PARAMS_M.get(store.arch_short(arch))
    if params is None:
        return source_colour(source)
    weight = 0.45 + 0.55 * (np.log(params) - np.log(23.5)) / (np.log(928.0) - np.log(23.5))
    rgb = np.asarray(to_rgb(source_colour(source)))
    return to_hex(weight * rgb + (1 - weight) * np.ones(3))


def _model_order(frame: pd.DataFrame) -> list[str]:
    """Models grouped by source (fixed order), then by size."""
    sources = list(SOURCE_COLOURS)
    models = frame[["pretrained_model", "init_label", "arch"]].drop_duplicates("pretrained_model")

    def key(row: Any) -> tuple:
        rank = sources.index(row.init_label) if row.init_label in sources else len(sources)
        return (rank, row.init_label, ARCH_PARAMS_M.get(store.arch_short(row.arch), 1e9))

    return [row.pretrained_model for row in sorted(models.itertuples(), key=key)]


def model_palette(frame: pd.DataFrame) -> dict[str, str]:
    models = frame[["pretrained_model", "init_label", "arch"]].drop_duplicates("pretrained_model")
    return {r.pretrained_model: model_colour(r.init_label, r.arch) for r in models.itertuples()}


STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 8.5}


def style() -> dict[str, Any]:
    """The rc parameters every figure here is drawn with (seaborn whitegrid + font sizes)."""
    return dict(sns.axes_style("whitegrid")) | STYLE


def new_figure(width: float, height: float, **rc: Any) -> Figure:
    """A constrained-layout Figure that pyplot does not manage (no backend, nothing left open)."""
    with mpl.rc_context(style() | rc):
        return Figure(figsize=(width, height), layout="constrained")


def _metric_label(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _with_origin(frame: pd.DataFrame) -> pd.DataFrame:
    """When paper and xrstudy rows share a plot, keep them apart: paper models get PAPER_SUFFIX."""
    if frame["origin"].nunique() < 2:
        return frame
    model, paper = frame["pretrained_model"], frame["origin"] == "paper"
    return frame.assign(pretrained_model=model.where(~paper, model + PAPER_SUFFIX))


def hatch_paper_bars(ax: Axes, hue_order: Iterable[str]) -> None:
    """Hatch the bars of the paper's series (names ending PAPER_SUFFIX; seaborn's containers follow hue_order)."""
    for container, label in zip(ax.containers, hue_order):
        if label.endswith(PAPER_SUFFIX):
            for bar in container:
                bar.set_hatch("///")


def transfer_rows(table: pd.DataFrame, target: str, metric: str) -> pd.DataFrame:
    """The tidy rows of one (target, metric): what a per-target figure draws and saves as CSV."""
    return table[(table.kind == "transfer") & (table.target == target) & (table.metric == metric)]


def _unique(axes: Iterable[Axes]) -> tuple[list, list]:
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


# ---- the figures: draw(rows, target, metric) -> Figure -----------------------------------------
def draw_shots_bar(data: pd.DataFrame, target: str, metric: str) -> Figure:
    """Metric vs shots (x), one bar per pre-trained model (hue), SD error bars over seeds."""
    data = _with_origin(data)
    order = [s for s in SHOT_ORDER if s in set(data.shot)] + sorted(set(data.shot) - set(SHOT_ORDER))
    hue_order = _model_order(data)
    width = max(6.5, 1.0 + 0.18 * len(order) * len(hue_order))
    fig = new_figure(min(width, 16), 4.2)
    with mpl.rc_context(style()):
        ax = fig.subplots()
        sns.barplot(
            data=data,
            x="shot",
            y="value",
            hue="pretrained_model",
            order=order,
            hue_order=hue_order,
            palette=model_palette(data),
            errorbar="sd",
            capsize=0.1,
            err_kws={"linewidth": 1},
            ax=ax,
        )
        hatch_paper_bars(ax, hue_order)
        ax.set(xlabel="shots per class", ylabel=_metric_label(metric), title=f"{target}: {_metric_label(metric)}")
        ax.set_xticks(range(len(order)), [s.replace("_shot", "") for s in order])
        ax.legend(title="pre-trained model", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def _with_params(data: pd.DataFrame) -> pd.DataFrame:
    return data.assign(params_m=data.arch.map(lambda a: ARCH_PARAMS_M.get(store.arch_short(a), np.nan)))


def draw_model_size(data: pd.DataFrame, target: str, metric: str) -> Figure:
    """R50x1 → R152x4 per source: mean ± SD over seeds vs model size, one panel per shot count."""
    data = _with_params(data).dropna(subset=["params_m"])
    shots = [s for s in SHOT_ORDER if s in set(data.shot)]
    panels = max(1, len(shots))
    fig = new_figure(2.6 * panels + 1.8, 3.6)
    with mpl.rc_context(style()):
        axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
        for ax, shot in zip(axes, shots):
            part = data[data.shot == shot]
            for source, group in part.groupby("init_label", sort=True):
                stats = group.groupby("params_m").value.agg(["mean", "std"]).reset_index()
                ax.errorbar(
                    stats.params_m,
                    stats["mean"],
                    yerr=stats["std"].fillna(0),
                    marker="o",
                    capsize=3,
                    color=source_colour(source),
                    label=source,
                )
            ax.set_xscale("log")
            sizes = sorted(set(part.params_m))
            ax.set_xticks(sizes, [k for s in sizes for k, v in ARCH_PARAMS_M.items() if v == s][: len(sizes)])
            ax.minorticks_off()
            ax.set(title=shot.replace("_", " "), xlabel="model (BiT R-)")
        axes[0].set_ylabel(_metric_label(metric))
        fig.legend(*_unique(axes), loc="outside right upper", frameon=False, title="pre-training")
        fig.suptitle(f"{target}: model size")
    return fig


def draw_fewshot_curves(data: pd.DataFrame, target: str, metric: str) -> Figure:
    """Metric vs k (log x) per source and size; full-shot results in a separate panel on the right."""
    palette = model_palette(data)
    order = _model_order(data)
    fig = new_figure(8.5, 4.0)
    with mpl.rc_context(style()):
        ax, ax_full = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [5, 1]})
        stats = data.groupby(["pretrained_model", "shots"]).value.agg(["mean", "std"]).reset_index()
        arch_of = dict(zip(data.pretrained_model, data.arch))
        for i, model in enumerate(order):
            part = stats[stats.pretrained_model == model]
            few, full = part[part.shots > 0], part[part.shots == 0]
            line = "--" if store.arch_short(arch_of[model]) == "50x1" else "-"  # small models dashed
            if len(few):
                ax.plot(few.shots, few["mean"], line, marker="o", color=palette[model], label=model)
                ax.fill_between(
                    few.shots,
                    few["mean"] - few["std"].fillna(0),
                    few["mean"] + few["std"].fillna(0),
                    color=palette[model],
                    alpha=0.12,
                    linewidth=0,
                )
            if len(full):
                ax_full.errorbar(
                    [i],
                    full["mean"],
                    yerr=full["std"].fillna(0),
                    marker="o",
                    capsize=3,
                    color=palette[model],
                    label=None if len(few) else model,
                )
        ax.set_xscale("log")
        ks = sorted(set(data.shots) - {0})
        if ks:
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.minorticks_off()
        ax.set(xlabel="shots per class (k)", ylabel=_metric_label(metric), title=f"{target}: few-shot")
        ax_full.set(title="full", xticks=[], xlim=(-0.7, max(len(order), 1) - 0.3))
        fig.legend(*_unique([ax, ax_full]), loc="outside right upper", frameon=False, title="pre-trained model")
    return fig


def draw_sd_by_shots(data: pd.DataFrame, target: str, metric: str) -> Figure | None:
    """Seed-to-seed SD (points) against shots per class, one line per pre-trained model (and origin, and
    data fraction where several), full shot one decade right of the largest k, with the SD at which the
    usual number of seeds gives a ±1-point 95 % interval of the mean (`stats.variance_table`,
    `stats.sd_by_shots`). None when no cell has two seeds."""
    points = stats.sd_by_shots(stats.variance_table(data, metric=metric, n_boot=1))  # the SD needs no resamples
    if points.empty:
        return None
    meta = data.drop_duplicates("pretrained_model").set_index("pretrained_model")[["init_label", "arch"]]
    points = points.join(meta, on="pretrained_model")
    series = points.pretrained_model.where(points.origin != "paper", points.pretrained_model + PAPER_SUFFIX)
    if points.origin.nunique() < 2:
        series = points.pretrained_model
    if points.data_fraction.nunique() > 1:
        series = series + points.data_fraction.map(lambda f: f" ({f:g} of the data)")
    points = points.assign(series=series)
    fig = new_figure(7.5, 4.0)
    with mpl.rc_context(style()):
        ax = fig.subplots()
        for model in _model_order(points):
            for name, part in points[points.pretrained_model == model].groupby("series", sort=True):
                first = part.iloc[0]
                line = "--" if first.origin == "paper" and points.origin.nunique() > 1 else "-"
                colour = model_colour(first.init_label, first.arch)
                ax.plot(part.x, 100 * part.sd, line, marker="o", color=colour, label=name)
        seeds = int(points.n_seeds.mode().iloc[0])
        threshold = 100 * stats.sd_for_half_width(seeds)
        ax.axhline(threshold, color="0.4", linewidth=0.8, linestyle=":", label=f"±1 point with {seeds} seeds")
        ax.set_xscale("log")
        ticks = points.drop_duplicates("x").sort_values("x")
        ax.set_xticks(ticks.x, ["full" if full else str(int(k)) for k, full in zip(ticks.x, ticks.full)])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set(
            xlabel="shots per class",
            ylabel="SD over seeds (points)",
            title=f"{target}: {_metric_label(metric)}, seed SD",
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="pre-trained model")
    return fig


SCALE_AXES = {"data": "data_fraction", "model": "params_m"}


def scale_rows(data: pd.DataFrame, scale: str) -> list[tuple[tuple, pd.DataFrame]]:
    """Groups (source, shot, arch | data fraction, origin) with ≥ 2 points along the scale axis, error = 1 − metric.

    Origins stay apart (the paper's rows and a re-run are two series), as in `scaling.fit_table`."""
    x = SCALE_AXES[scale]
    data = _with_params(data).assign(error=1.0 - data.value).dropna(subset=["params_m", "error"])
    group_by = ["init_label", "shot"] + (["arch"] if scale == "data" else ["data_fraction"]) + ["origin"]
    return [(key, part) for key, part in data.groupby(group_by, sort=True) if part[x].nunique() >= 2]


def series_fit(part: pd.DataFrame, x: str, *, n_boot: int = 1000, seed: int = 0) -> scaling.FitCurve | None:
    """The fitted curve of one series of tidy rows (error column, one point per seed and size: re-runs of
    a seed averaged, as in `scaling.fit_table`); None with fewer than three sizes (no fit is made then)."""
    points = part.groupby([x, "seed"], sort=True).error.mean().reset_index()
    if points[x].nunique() < scaling.MIN_SIZES:
        return None
    return scaling.fit_curve(points[x].to_numpy(float), points.error.to_numpy(float), n_boot=n_boot, seed=seed)


def draw_fit(ax: Axes, curve: scaling.FitCurve, colour: str, *, as_metric: bool = False, **line: Any) -> None:
    """Draw a fitted curve and its bootstrap band on `ax`: in error units, or as the metric (1 − error)
    when the axis shows the metric (e.g. a metric-vs-parameters figure)."""
    band = curve.band
    fit, lo, hi = (band.fit, band.lo, band.hi) if not as_metric else (1 - band.fit, 1 - band.hi, 1 - band.lo)
    ax.plot(band.x, fit, color=colour, linewidth=1.2, **line)
    ax.fill_between(band.x, lo, hi, color=colour, alpha=0.15, linewidth=0)


def draw_scale_curve(data: pd.DataFrame, target: str, metric: str, *, scale: str, n_boot: int = 1000) -> Figure | None:
    """Error (1 − metric) vs pre-training data fraction (`scale="data"`) or model size (`"model"`), per
    source, with the law AICc picks (power or saturating, `scaling.fit_curve`) and its bootstrap band
    where a series has ≥ 3 scale points; the legend gives the law and α with its interval."""
    groups = scale_rows(data, scale)
    if not groups:
        return None
    x = SCALE_AXES[scale]
    fig = new_figure(7.5, 4.2)
    with mpl.rc_context(style()):
        ax = fig.subplots()
        for key, part in groups:
            colour = source_colour(key[0])
            label = " ".join(str(k) for k in key[:-1]).replace("_shot", "-shot")
            label += PAPER_SUFFIX if key[-1] == "paper" else ""
            curve = series_fit(part, x, n_boot=n_boot)
            if curve is not None:
                draw_fit(ax, curve, colour)
                label += f"\n{curve.label()}"
            stats = part.groupby(x).error.agg(["mean", "std"]).reset_index()
            ax.errorbar(
                stats[x],
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                linestyle="none",
                color=colour,
                capsize=3,
                label=label,
            )
        ax.set_xscale("log")
        ax.set(
            xlabel={"data": "fraction of pre-training data", "model": "backbone parameters (M)"}[scale],
            ylabel=f"error (1 − {_metric_label(metric)})",
            title=f"{target}: {scale} scale",
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return fig


# Public one-call versions: the tidy table in, a Figure out.
def shots_bar(table: pd.DataFrame, target: str, metric: str) -> Figure:
    return draw_shots_bar(transfer_rows(table, target, metric), target, metric)


def model_size(table: pd.DataFrame, target: str, metric: str) -> Figure:
    return draw_model_size(transfer_rows(table, target, metric), target, metric)


def fewshot_curves(table: pd.DataFrame, target: str, metric: str) -> Figure:
    return draw_fewshot_curves(transfer_rows(table, target, metric), target, metric)


def sd_by_shots(table: pd.DataFrame, target: str, metric: str) -> Figure | None:
    return draw_sd_by_shots(transfer_rows(table, target, metric), target, metric)


def scale_curve(table: pd.DataFrame, target: str, metric: str, *, scale: str, n_boot: int = 1000) -> Figure | None:
    return draw_scale_curve(transfer_rows(table, target, metric), target, metric, scale=scale, n_boot=n_boot)


# ---- saving -----------------------------------------------------------------------------------
def save_figure(fig: Figure, rows: pd.DataFrame, out_dir: str | Path, name: str, *, dpi: int = 120) -> list[Path]:
    """Write `{name}.png`, `{name}.pdf` and `{name}.csv` (the tidy rows drawn) under out_dir.

    The figure stays usable: restyle it and save it again. The PNG's DPI is lowered where needed so
    that neither side exceeds MAX_PIXELS."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf", out_dir / f"{name}.csv"]
    dpi = min(dpi, MAX_PIXELS / max(fig.get_size_inches()))
    # Atomically, as every file of the study: a full disk is a DiskFullError naming the file, and leaves
    # the previous figure (or none), never a 0-byte or half-written PNG.
    with atomic_path(paths[0]) as temp, open(temp, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    engine = fig.get_layout_engine()
    fig.set_layout_engine("none")  # keep the layout just computed: the PDF need not redo it
    try:
        with atomic_path(paths[1]) as temp, open(temp, "wb") as handle:
            fig.savefig(handle, format="pdf")
    finally:
        fig.set_layout_engine(engine)
    atomic_write_table(rows, paths[2])
    return paths


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text).strip("-")


def figure_name(prefix: str, target: str, metric: str) -> str:
    return f"{prefix}_{_slug(target)}_{_slug(metric.replace('test/', ''))}"


@dataclass(frozen=True)
class FigureKind:
    """One kind of per-(target, metric) figure: its file-name prefix, how to draw its tidy rows, whether
    a target's rows have anything to show (e.g. few-shot curves need two shot counts), and which of
    them it draws (`select(rows, target)`: those go into the CSV beside the figure)."""

    prefix: str
    draw: Callable[[pd.DataFrame, str, str], Figure | None]
    needs: Callable[[pd.DataFrame], bool] = lambda rows: len(rows) > 0
    select: Callable[[pd.DataFrame, str], pd.DataFrame] = lambda rows, target: rows


def _scale_kind(scale: str, min_points: int) -> FigureKind:
    def draw(rows: pd.DataFrame, target: str, metric: str) -> Figure | None:
        return draw_scale_curve(rows, target, metric, scale=scale)

    def select(rows: pd.DataFrame, target: str) -> pd.DataFrame:  # only the groups a curve is drawn for
        groups = scale_rows(rows, scale)
        return pd.concat([part for _, part in groups], ignore_index=True) if groups else rows.head(0)

    column = {"data": lambda r: r.data_fraction, "model": lambda r: r.arch.map(store.arch_short)}[scale]
    return FigureKind(f"{scale}_scale", draw, lambda rows: column(rows).nunique() >= min_points, select)


FIGURE_KINDS = (
    FigureKind("bars", draw_shots_bar),
    FigureKind(
        "model_size",
        draw_model_size,
        lambda rows: rows.arch.map(store.arch_short).nunique() >= 2,
        lambda rows, target: _with_params(rows).dropna(subset=["params_m"]),
    ),
    FigureKind("fewshot", draw_fewshot_curves, lambda rows: (rows.shots > 0).any() and rows.shots.nunique() >= 2),
    _scale_kind("data", 2),
    _scale_kind("model", 3),
    FigureKind("variance", draw_sd_by_shots, lambda rows: rows.shots.nunique() >= 2 and rows.seed.nunique() >= 2),
)


FigureKey = tuple[str, str, str]  # (kind, target, metric)


@dataclass(frozen=True)
class Rendered(Mapping):
    """What `render_table` / `render_all` drew: a mapping (kind, target, metric) → (Figure, files), plus
    the tables written beside the figures (name → path)."""

    figures: dict[FigureKey, tuple[Figure, list[Path]]]
    out_dir: Path
    tables: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, key: FigureKey) -> tuple[Figure, list[Path]]:
        return self.figures[key]

    def __iter__(self) -> Iterator[FigureKey]:
        return iter(self.figures)

    def __len__(self) -> int:
        return len(self.figures)

    @property
    def files(self) -> list[Path]:
        """Every file written: PNG, PDF and CSV per figure, then the tables."""
        return [p for _, paths in self.figures.values() for p in paths] + list(self.tables.values())

    @property
    def pngs(self) -> list[Path]:
        return [p for p in self.files if p.suffix == ".png"]


def render_table(
    table: pd.DataFrame,
    out_dir: str | Path,
    kinds: Iterable[str] | None = None,
    figure_kinds: Iterable[FigureKind] = FIGURE_KINDS,
) -> Rendered:
    """Draw and save every figure kind (or those named in `kinds`, e.g. data_scale) per (target, test metric)."""
    drawn: dict[FigureKey, tuple[Figure, list[Path]]] = {}
    transfer = table[table.kind == "transfer"]
    chosen = [k for k in figure_kinds if kinds is None or k.prefix in set(kinds)]
    for (target, metric), rows in transfer.groupby(["target", "metric"], sort=True):
        if not metric.startswith("test/"):
            continue
        for kind in chosen:
            if not kind.needs(rows):
                continue
            drawn_rows = kind.select(rows, target)
            fig = kind.draw(drawn_rows, target, metric)
            if fig is None:
                continue
            files = save_figure(fig, drawn_rows, out_dir, figure_name(kind.prefix, target, metric))
            drawn[(kind.prefix, target, metric)] = (fig, files)
    return Rendered(drawn, Path(out_dir))


# ---- tables beside the figures ----------------------------------------------------------------
def full_shot_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SD over seeds of every full-shot transfer result: target, metric, pretrained model, origin."""
    data = table[(table.kind == "transfer") & (table.shot == "full_shot") & table.metric.str.startswith("test/")]
    keys = ["target", "metric", "pretrained_model", "init_label", "arch", "origin"]
    stats = data.groupby(keys, sort=True).value.agg(mean="mean", sd="std", seeds="count").reset_index()
    return stats.assign(sd=stats.sd.fillna(0.0))


def scaling_fits(
    table: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, sizes: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """`scaling_fits.csv`: the power and the saturating law fitted to the error (1 − metric) against model
    size (`sizes`: arch → backbone parameters in millions, default ARCH_PARAMS_M) and pre-training data
    fraction, per target / metric / source / origin / shot, with bootstrap intervals over seeds, AICc,
    the chosen law and a leave-one-size-out check; series with two sizes get a row saying why no fit
    was made (`xrstudy.results.scaling.scaling_fits`)."""
    return scaling.scaling_fits(table, sizes=ARCH_PARAMS_M if sizes is None else sizes, n_boot=n_boot, seed=seed)


__all__ = [
    "SOURCE_COLOURS",
    "source_colour",
    "model_colour",
    "model_palette",
    "style",
    "new_figure",
    "transfer_rows",
    "shots_bar",
    "model_size",
    "fewshot_curves",
    "scale_curve",
    "draw_shots_bar",
    "draw_model_size",
    "draw_fewshot_curves",
    "draw_scale_curve",
    "draw_fit",
    "series_fit",
    "sd_by_shots",
    "draw_sd_by_shots",
    "save_figure",
    "FigureKind",
    "FIGURE_KINDS",
    "Rendered",
    "render_table",
    "full_shot_means",
    "scaling_fits",
    "MAX_PIXELS",
]
