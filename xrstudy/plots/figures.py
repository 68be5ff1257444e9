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

from xrstudy.config import base_arch
from xrstudy.fileio import atomic_path, atomic_write_table
from xrstudy.results import scaling, stats, store
from xrstudy.training import cost

# ---- colours ----------------------------------------------------------------------------------
SOURCE_COLOURS = {
    "imagenet1k": "#9ecae1",
    "imagenet1k_distilled": "#6baed6",
    "imagenet21k": "#08519c",
    "imagenet21k_ft_imagenet1k": "#3182bd",
    "imagenet21k_bitm": "#4292c6",  # Google's BiT-M weights (timm's goog_in21k tags), beside the authors' own
    "google_imagenet21k": "#4292c6",
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
PROBE_SUFFIX = " (probe)"  # a linear probe's series beside the fine-tuned runs of the same model


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
        probe = row.pretrained_model.endswith(PROBE_SUFFIX)
        return (rank, row.init_label, ARCH_PARAMS_M.get(store.arch_short(row.arch), 1e9), probe)

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


def _with_mode(frame: pd.DataFrame) -> pd.DataFrame:
    """Linear probes beside fine-tuned runs: a probe's model gets PROBE_SUFFIX (same colour, its own series)."""
    if "train_mode" not in frame or not (frame["train_mode"] == "probe").any():
        return frame
    probe = (frame["train_mode"] == "probe").to_numpy()
    return frame.assign(
        pretrained_model=frame["pretrained_model"].where(~probe, frame["pretrained_model"] + PROBE_SUFFIX)
    )


def series_label(init_label: str, train_mode: str = "finetune") -> str:
    """A source's series in the model-size figures: the init, marked when it is a linear probe."""
    return init_label + (PROBE_SUFFIX if train_mode == "probe" else "")


HATCHES = {PAPER_SUFFIX: "///", PROBE_SUFFIX: "..."}


def hatch_paper_bars(ax: Axes, hue_order: Iterable[str]) -> None:
    """Hatch the bars of the paper's series (names ending PAPER_SUFFIX, "///") and of linear probes
    (PROBE_SUFFIX, "..."); seaborn's containers follow hue_order."""
    for container, label in zip(ax.containers, hue_order):
        hatch = next((h for suffix, h in HATCHES.items() if label.endswith(suffix)), None)
        if hatch:
            for bar in container:
                bar.set_hatch(hatch)


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
    """Metric vs shots (x), one bar per pre-trained model (hue), SD error bars over seeds; the paper's rows
    and linear probes hatched beside the fine-tuned runs of the same model."""
    data = _with_mode(_with_origin(data))
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


def params_m(arch: str) -> float:
    """Backbone parameters (millions) of an arch: the cost tables' count (`xrstudy.training.cost.arch_params`),
    else the rounded BiT sizes of ARCH_PARAMS_M, else NaN."""
    counted = cost.arch_params().get(base_arch(arch))
    return counted if counted is not None else ARCH_PARAMS_M.get(store.arch_short(arch), np.nan)


def _with_params(data: pd.DataFrame) -> pd.DataFrame:
    return data.assign(params_m=data.arch.map(params_m))


def draw_model_size(data: pd.DataFrame, target: str, metric: str, fits: pd.DataFrame | None = None) -> Figure:
    """Metric vs backbone parameters (log x, ticks named by the BiT sizes), one panel per shot count: one
    series per init (fine-tuned solid; linear probes dashed, "(probe)"), mean ± SD over seeds with every
    seed's value as a dot. `fits` (`model_size_fits`: init_label, train_mode, shot, params_m, value[, lo,
    hi]) draws each series' fitted curve and its band on top."""
    data = _with_params(data).dropna(subset=["params_m"])
    if "train_mode" not in data:
        data = data.assign(train_mode="finetune")
    shots = [s for s in SHOT_ORDER if s in set(data.shot)] + sorted(set(data.shot) - set(SHOT_ORDER))
    panels = max(1, len(shots))
    fig = new_figure(3.0 * panels + 2.4, 4.0)
    names = dict(zip(data.params_m, data.arch.map(store.arch_short)))
    with mpl.rc_context(style()):
        axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
        for ax, shot in zip(axes, shots):
            part = data[data.shot == shot]
            for (source, mode), group in part.groupby(["init_label", "train_mode"], sort=True):
                colour, line = source_colour(source), "--" if mode == "probe" else "-"
                stats = group.groupby("params_m").value.agg(["mean", "std"]).reset_index()
                ax.plot(group.params_m, group.value, ".", color=colour, alpha=0.35, markersize=4)
                ax.errorbar(
                    stats.params_m,
                    stats["mean"],
                    yerr=stats["std"].fillna(0),
                    marker="o",
                    linestyle=line,
                    capsize=3,
                    color=colour,
                    label=series_label(source, mode),
                )
                curve = _curve(fits, source, mode, shot)
                if len(curve):
                    ax.plot(curve.params_m, curve.value, ":", color=colour, linewidth=1.4)
                    if {"lo", "hi"} <= set(curve.columns):
                        ax.fill_between(curve.params_m, curve.lo, curve.hi, color=colour, alpha=0.12, linewidth=0)
            ax.set_xscale("log")
            ticks, labels = size_ticks(sorted(set(part.params_m)), names)
            ax.set_xticks(ticks, labels, rotation=50, ha="right", rotation_mode="anchor")
            ax.minorticks_off()
            ax.set(title=shot.replace("_", " "))
        axes[0].set_ylabel(_metric_label(metric))
        fig.supxlabel("backbone parameters, log scale (BiT R-)", fontsize=STYLE["axes.labelsize"])
        fig.legend(*_unique(axes), loc="outside right upper", frameon=False, title="pre-training")
        fig.suptitle(f"{target}: model size" + (" (dotted: fits)" if fits is not None and len(fits) else ""))
    return fig


def size_ticks(sizes: list[float], names: dict[float, str], close: float = 1.25) -> tuple[list[float], list[str]]:
    """Ticks of a log parameter axis: sizes within a factor `close` of each other share one tick, named by
    both (R50x3, 211M, and R152x2, 232M: "50x3/152x2"), at their geometric mean."""
    clusters: list[list[float]] = []
    for size in sizes:
        if clusters and size / clusters[-1][-1] < close:
            clusters[-1].append(size)
        else:
            clusters.append([size])
    ticks = [float(np.exp(np.mean(np.log(group)))) for group in clusters]
    return ticks, ["/".join(names[s] for s in group) for group in clusters]


def _curve(fits: pd.DataFrame | None, source: str, mode: str, shot: str) -> pd.DataFrame:
    if fits is None or not len(fits):
        return pd.DataFrame(columns=["params_m", "value"])
    modes = fits.train_mode if "train_mode" in fits else pd.Series("finetune", index=fits.index)
    chosen = fits[(fits.init_label == source) & (modes == mode) & (fits.shot == shot)]
    return chosen.sort_values("params_m")


def model_size_fits(data: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Fitted curves of the metric against backbone parameters, per (init, train mode, shot) with three or
    more sizes: the law AICc picks for the error (power or saturating, `series_fit` /
    `xrstudy.results.scaling.fit_curve`) with its bootstrap band over seeds, as the metric. The one place the
    model-size figure takes its fits from. Columns: init_label, train_mode, shot, law, params_m, value, lo, hi."""
    data = _with_params(data).dropna(subset=["params_m", "value"])
    if "train_mode" not in data:
        data = data.assign(train_mode="finetune")
    frames = []
    for (source, mode, shot), part in data.groupby(["init_label", "train_mode", "shot"], sort=True):
        curve = series_fit(part.assign(error=1.0 - part.value), "params_m", n_boot=n_boot, seed=seed)
        if curve is None:
            continue
        band = curve.band.rename(columns={"x": "params_m"})
        frames.append(
            pd.DataFrame(
                {
                    "init_label": source,
                    "train_mode": mode,
                    "shot": shot,
                    "law": curve.law,
                    "params_m": band.params_m,
                    "value": 1.0 - band.fit,
                    "lo": 1.0 - band.hi,
                    "hi": 1.0 - band.lo,
                }
            )
        )
    columns = ["init_label", "train_mode", "shot", "law", "params_m", "value", "lo", "hi"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def draw_fewshot_curves(data: pd.DataFrame, target: str, metric: str) -> Figure:
    """Metric vs k (log x) per source and size; full-shot results in a separate panel on the right."""
    data = _with_mode(data)
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
            line = ":" if model.endswith(PROBE_SUFFIX) else line  # linear probes dotted
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
    """Seed-to-seed SD (points) against shots per class, one line per pre-trained model (and origin, train mode,
    and data fraction where several), full shot one decade right of the largest k, with the SD at which the
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
    probe = points.train_mode == "probe"  # its own series beside the fine-tuned runs of the model, dotted
    series = series.where(~probe, series + PROBE_SUFFIX)
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
                line = ":" if first.train_mode == "probe" else line
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
    if "train_mode" not in data:
        data = data.assign(train_mode="finetune")
    group_by = ["init_label", "train_mode", "shot"] + (["arch"] if scale == "data" else ["data_fraction"]) + ["origin"]
    return [(key, part) for key, part in data.groupby(group_by, sort=True, dropna=False) if part[x].nunique() >= 2]


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
            mode, origin = key[1], key[-1]
            shown = (key[0], *key[2:-1]) if mode == "finetune" else key[:-1]
            label = " ".join(str(k) for k in shown).replace("_shot", "-shot")
            label += PAPER_SUFFIX if origin == "paper" else ""
            curve = series_fit(part, x, n_boot=n_boot)
            if curve is not None:
                draw_fit(ax, curve, colour, linestyle="--" if mode == "probe" else "-")
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


def probe_pairs(data: pd.DataFrame) -> pd.DataFrame:
    """The rows of models (pretrained_model) with both fine-tuned and linear-probe results."""
    if "train_mode" not in data:
        return data.head(0)
    both = data.groupby("pretrained_model").train_mode.nunique()
    return data[data.pretrained_model.isin(both[both >= 2].index)]


def draw_probe_vs_finetune(data: pd.DataFrame, target: str, metric: str) -> Figure:
    """What fine-tuning adds over a linear probe, per model and shot count: left, both (fine-tuned solid,
    probe dotted, mean ± SD over seeds); right, fine-tune minus probe, paired by seed (mean ± SD)."""
    data = probe_pairs(data)
    order = [s for s in SHOT_ORDER if s in set(data.shot)] + sorted(set(data.shot) - set(SHOT_ORDER))
    where = {shot: i for i, shot in enumerate(order)}
    palette = model_palette(data)
    fig = new_figure(11.0, 4.2)
    with mpl.rc_context(style()):
        ax, ax_gain = fig.subplots(1, 2)
        for model in _model_order(data):
            part = data[data.pretrained_model == model]
            for mode, line in (("finetune", "-"), ("probe", ":")):
                stats = part[part.train_mode == mode].groupby("shot").value.agg(["mean", "std"]).reset_index()
                stats = stats.assign(x=stats.shot.map(where)).sort_values("x")
                label = model if mode == "finetune" else None  # one legend entry per model: the line style says
                ax.errorbar(
                    stats.x,
                    stats["mean"],
                    yerr=stats["std"].fillna(0),
                    marker="o",
                    linestyle=line,
                    capsize=3,
                    color=palette[model],
                    label=label,
                )
            wide = part.pivot_table(index=["shot", "seed"], columns="train_mode", values="value", aggfunc="mean")
            gain = (wide["finetune"] - wide["probe"]).dropna().groupby(level="shot").agg(["mean", "std"]).reset_index()
            gain = gain.assign(x=gain.shot.map(where)).sort_values("x")
            ax_gain.errorbar(
                gain.x,
                gain["mean"],
                yerr=gain["std"].fillna(0),
                marker="o",
                capsize=3,
                color=palette[model],
                label=model,
            )
        for axis in (ax, ax_gain):
            axis.set_xticks(range(len(order)), [s.replace("_shot", "") for s in order])
            axis.set_xlabel("shots per class")
        ax_gain.axhline(0.0, color="0.4", linewidth=0.8)
        ax.set(ylabel=_metric_label(metric), title=f"{target}: fine-tuned (solid) vs linear probe (dotted)")
        ax_gain.set(ylabel=f"fine-tune − probe ({_metric_label(metric)})", title="what fine-tuning adds")
        fig.legend(*_unique([ax]), loc="outside right upper", frameon=False, title="pre-trained model")
    return fig


# Public one-call versions: the tidy table in, a Figure out.
def shots_bar(table: pd.DataFrame, target: str, metric: str) -> Figure:
    return draw_shots_bar(transfer_rows(table, target, metric), target, metric)


def model_size(table: pd.DataFrame, target: str, metric: str, *, fits: bool = True) -> Figure:
    rows = transfer_rows(table, target, metric)
    return draw_model_size(rows, target, metric, fits=model_size_fits(rows) if fits else None)


def fewshot_curves(table: pd.DataFrame, target: str, metric: str) -> Figure:
    return draw_fewshot_curves(transfer_rows(table, target, metric), target, metric)


def sd_by_shots(table: pd.DataFrame, target: str, metric: str) -> Figure | None:
    return draw_sd_by_shots(transfer_rows(table, target, metric), target, metric)


def probe_vs_finetune(table: pd.DataFrame, target: str, metric: str) -> Figure:
    return draw_probe_vs_finetune(transfer_rows(table, target, metric), target, metric)


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
        lambda rows, target, metric: draw_model_size(rows, target, metric, fits=model_size_fits(rows)),
        lambda rows: rows.arch.map(store.arch_short).nunique() >= 2,
        lambda rows, target: _with_params(rows).dropna(subset=["params_m"]),
    ),
    FigureKind("fewshot", draw_fewshot_curves, lambda rows: (rows.shots > 0).any() and rows.shots.nunique() >= 2),
    _scale_kind("data", 2),
    _scale_kind("model", 3),
    FigureKind("variance", draw_sd_by_shots, lambda rows: rows.shots.nunique() >= 2 and rows.seed.nunique() >= 2),
    FigureKind(
        "probe", draw_probe_vs_finetune, lambda rows: len(probe_pairs(rows)) > 0, lambda rows, t: probe_pairs(rows)
    ),
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
    keys = ["target", "metric", "pretrained_model", "init_label", "arch", "origin", "train_mode"]
    if "train_mode" not in data:
        data = data.assign(train_mode="finetune")
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
    "draw_probe_vs_finetune",
    "probe_vs_finetune",
    "probe_pairs",
    "model_size_fits",
    "params_m",
    "series_label",
    "PROBE_SUFFIX",
    "save_figure",
    "FigureKind",
    "FIGURE_KINDS",
    "Rendered",
    "render_table",
    "full_shot_means",
    "scaling_fits",
    "MAX_PIXELS",
]
