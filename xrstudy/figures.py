"""The paper's figures from the tidy results table (`xrstudy.results.table`).

Every plotting function takes the tidy table (never modified) and returns a matplotlib Figure;
`save_figure` writes `{name}.png`, `{name}.pdf` and `{name}.csv` (the rows the figure was drawn from).
Colours are fixed per pre-training source (`source_colour`) and shaded by model size, so a source
looks the same in every figure.
"""

from __future__ import annotations

import colorsys
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import matplotlib

matplotlib.use("Agg")  # figures are files; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import to_hex, to_rgb  # noqa: E402

from xrstudy import results, scaling  # noqa: E402

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
# Model sizes in backbone parameters (millions), for ordering and model-scale curves.
ARCH_PARAMS_M = {"50x1": 23.5, "50x3": 211.0, "101x1": 42.5, "101x3": 382.0, "152x2": 232.0, "152x4": 928.0}
SHOT_ORDER = ("1_shot", "5_shot", "10_shot", "100_shot", "500_shot", "full_shot")
METRIC_NAMES = {"test/acc": "accuracy", "test/auc": "mean AUC", "test/ap": "mean AP"}


def source_colour(source: str) -> str:
    """Fixed colour for known sources; any other name gets a stable colour from its hash."""
    if source in SOURCE_COLOURS:
        return SOURCE_COLOURS[source]
    hue = int(hashlib.sha256(source.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return to_hex(colorsys.hls_to_rgb(hue, 0.45, 0.55))


def model_colour(source: str, arch: str) -> str:
    """The source's colour, lighter for smaller models (R50x1 light, R152x4 full)."""
    params = ARCH_PARAMS_M.get(results.arch_short(arch))
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
        return (rank, row.init_label, ARCH_PARAMS_M.get(results.arch_short(row.arch), 1e9))

    return [row.pretrained_model for row in sorted(models.itertuples(), key=key)]


def model_palette(frame: pd.DataFrame) -> dict[str, str]:
    models = frame[["pretrained_model", "init_label", "arch"]].drop_duplicates("pretrained_model")
    return {r.pretrained_model: model_colour(r.init_label, r.arch) for r in models.itertuples()}


STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 8.5}


def _style() -> Any:
    return sns.axes_style("whitegrid") | STYLE


def _metric_label(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _with_origin(frame: pd.DataFrame) -> pd.DataFrame:
    """When paper and xrstudy rows share a plot, keep them apart: paper models get a ' (paper)' suffix."""
    if frame["origin"].nunique() < 2:
        return frame
    paper = frame["origin"] == "paper"
    return frame.assign(pretrained_model=frame["pretrained_model"].where(~paper, frame["pretrained_model"] + " (paper)"))


# ---- the figures ------------------------------------------------------------------------------
def shots_bar(table: pd.DataFrame, target: str, metric: str) -> tuple[plt.Figure, pd.DataFrame]:
    """Metric vs shots (x), one bar per pre-trained model (hue), SD error bars over seeds."""
    data = _with_origin(table[(table.kind == "transfer") & (table.target == target) & (table.metric == metric)])
    order = [s for s in SHOT_ORDER if s in set(data.shot)] + sorted(set(data.shot) - set(SHOT_ORDER))
    hue_order = _model_order(data)
    palette = model_palette(data)
    with plt.rc_context(_style()):
        width = max(6.5, 1.0 + 0.18 * len(order) * len(hue_order))
        fig, ax = plt.subplots(figsize=(min(width, 16), 4.2), layout="constrained")
        sns.barplot(data=data, x="shot", y="value", hue="pretrained_model", order=order, hue_order=hue_order,
                    palette=palette, errorbar="sd", capsize=0.1, err_kws={"linewidth": 1}, ax=ax)  # fmt: skip
        for container, label in zip(ax.containers, hue_order):
            if label.endswith(" (paper)"):
                for bar in container:
                    bar.set_hatch("///")
        ax.set(xlabel="shots per class", ylabel=_metric_label(metric), title=f"{target}: {_metric_label(metric)}")
        ax.set_xticks(range(len(order)), [s.replace("_shot", "") for s in order])
        ax.legend(title="pre-trained model", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig, data


def model_size(table: pd.DataFrame, target: str, metric: str) -> tuple[plt.Figure, pd.DataFrame]:
    """R50x1 → R152x4 per source: mean ± SD over seeds vs model size, one panel per shot count."""
    data = table[(table.kind == "transfer") & (table.target == target) & (table.metric == metric)]
    data = data.assign(params_m=data.arch.map(lambda a: ARCH_PARAMS_M.get(results.arch_short(a), np.nan)))
    data = data.dropna(subset=["params_m"])
    shots = [s for s in SHOT_ORDER if s in set(data.shot)]
    with plt.rc_context(_style()):
        fig, axes = plt.subplots(1, max(1, len(shots)), figsize=(2.6 * max(1, len(shots)) + 1.8, 3.6),
                                 sharey=True, squeeze=False, layout="constrained")  # fmt: skip
        for ax, shot in zip(axes[0], shots):
            part = data[data.shot == shot]
            for source, group in part.groupby("init_label", sort=True):
                stats = group.groupby("params_m").value.agg(["mean", "std"]).reset_index()
                ax.errorbar(stats.params_m, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                            color=source_colour(source), label=source)  # fmt: skip
            ax.set_xscale("log")
            sizes = sorted(set(part.params_m))
            ax.set_xticks(sizes, [k for s in sizes for k, v in ARCH_PARAMS_M.items() if v == s][: len(sizes)])
            ax.minorticks_off()
            ax.set(title=shot.replace("_", " "), xlabel="model (BiT R-)")
        axes[0][0].set_ylabel(_metric_label(metric))
        fig.legend(*_unique(axes[0]), loc="outside right upper", frameon=False, title="pre-training")
        fig.suptitle(f"{target}: model size")
    return fig, data


def _unique(axes: Iterable[plt.Axes]) -> tuple[list, list]:
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


def fewshot_curves(table: pd.DataFrame, target: str, metric: str) -> tuple[plt.Figure, pd.DataFrame]:
    """Metric vs k (log x) per source and size; full-shot results in a separate panel on the right."""
    data = table[(table.kind == "transfer") & (table.target == target) & (table.metric == metric)]
    palette = model_palette(data)
    order = _model_order(data)
    with plt.rc_context(_style()):
        fig, (ax, ax_full) = plt.subplots(1, 2, figsize=(8.5, 4.0), sharey=True, layout="constrained",
                                          gridspec_kw={"width_ratios": [5, 1]})  # fmt: skip
        stats = data.groupby(["pretrained_model", "shots"]).value.agg(["mean", "std"]).reset_index()
        arch_of = dict(zip(data.pretrained_model, data.arch))
        for i, model in enumerate(order):
            part = stats[stats.pretrained_model == model]
            few, full = part[part.shots > 0], part[part.shots == 0]
            style = "--" if results.arch_short(arch_of[model]) == "50x1" else "-"  # small models dashed
            if len(few):
                ax.plot(few.shots, few["mean"], style, marker="o", color=palette[model], label=model)
                ax.fill_between(few.shots, few["mean"] - few["std"].fillna(0), few["mean"] + few["std"].fillna(0),
                                color=palette[model], alpha=0.12, linewidth=0)  # fmt: skip
            if len(full):
                ax_full.errorbar([i], full["mean"], yerr=full["std"].fillna(0), marker="o", capsize=3,
                                 color=palette[model], label=None if len(few) else model)  # fmt: skip
        ax.set_xscale("log")
        ks = sorted(set(data.shots) - {0})
        if ks:
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.minorticks_off()
        ax.set(xlabel="shots per class (k)", ylabel=_metric_label(metric), title=f"{target}: few-shot")
        ax_full.set(title="full", xticks=[], xlim=(-0.7, max(len(order), 1) - 0.3))
        fig.legend(*_unique([ax, ax_full]), loc="outside right upper", frameon=False, title="pre-trained model")
    return fig, data


def scale_curve(table: pd.DataFrame, target: str, metric: str, *, scale: str, n_boot: int = 100
                ) -> tuple[plt.Figure, pd.DataFrame] | None:  # fmt: skip
    """Error (1 − metric) vs pre-training data fraction (`scale="data"`) or model size (`"model"`), per
    source, with the power-law fit and its bootstrap band where a source has ≥ 3 scale points."""
    data = table[(table.kind == "transfer") & (table.target == target) & (table.metric == metric)]
    x = {"data": "data_fraction", "model": "params_m"}[scale]
    data = data.assign(params_m=data.arch.map(lambda a: ARCH_PARAMS_M.get(results.arch_short(a), np.nan)),
                       error=1.0 - data.value).dropna(subset=["params_m", "error"])  # fmt: skip
    group_by = ["init_label", "shot"] + (["arch"] if scale == "data" else ["data_fraction"])
    groups = [(key, part) for key, part in data.groupby(group_by, sort=True) if part[x].nunique() >= 2]
    if not groups:
        return None
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
        drawn = []
        for key, part in groups:
            source, shot = key[0], key[1]
            colour = source_colour(source)
            label = " ".join(str(k) for k in key).replace("_shot", "-shot")
            stats = part.groupby(x).error.agg(["mean", "std"]).reset_index()
            ax.errorbar(stats[x], stats["mean"], yerr=stats["std"].fillna(0), marker="o", linestyle="none",
                        color=colour, capsize=3, label=label)  # fmt: skip
            if part[x].nunique() >= 3:
                fit = scaling.bootstrap_fit(part, x=x, y="error", n_boot=n_boot, seed=0)
                band = fit["band"]
                ax.plot(band[x], band.fit, color=colour, linewidth=1.2)
                ax.fill_between(band[x], band.lo, band.hi, color=colour, alpha=0.15, linewidth=0)
            drawn.append(part)
        ax.set_xscale("log")
        ax.set(xlabel={"data": "fraction of pre-training data", "model": "backbone parameters (M)"}[scale],
               ylabel=f"error (1 − {_metric_label(metric)})", title=f"{target}: {scale} scale")  # fmt: skip
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return fig, pd.concat(drawn, ignore_index=True)


# ---- saving -----------------------------------------------------------------------------------
def save_figure(fig: plt.Figure, table: pd.DataFrame, out_dir: str | Path, name: str, *, dpi: int = 120) -> list[Path]:
    """Write `{name}.png`, `{name}.pdf` and `{name}.csv` (the tidy rows drawn) under out_dir; closes fig."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf", out_dir / f"{name}.csv"]
    try:
        fig.savefig(paths[0], dpi=dpi)
        fig.set_layout_engine("none")  # keep the layout just computed: the PDF need not redo it
        fig.savefig(paths[1])
    finally:
        plt.close(fig)
    table.to_csv(paths[2], index=False)
    return paths


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text).strip("-")


@dataclass(frozen=True)
class FigureKind:
    """One kind of per-(target, metric) figure: its file-name prefix and how to draw it."""

    prefix: str
    draw: Callable[[pd.DataFrame, str, str], tuple[plt.Figure, pd.DataFrame] | None]


FIGURE_KINDS = (
    FigureKind("bars", shots_bar),
    FigureKind("model_size", model_size),
    FigureKind("fewshot", fewshot_curves),
    FigureKind("data_scale", lambda t, target, m: scale_curve(t, target, m, scale="data")),
    FigureKind("model_scale", lambda t, target, m: scale_curve(t, target, m, scale="model")),
)


def needs(kind: FigureKind, part: pd.DataFrame) -> bool:
    """Skip figures with nothing to show (one shot count for few-shot curves, one size, one data fraction)."""
    if kind.prefix == "model_size":
        return part.arch.map(results.arch_short).nunique() >= 2
    if kind.prefix == "fewshot":
        return (part.shots > 0).any() and part.shots.nunique() >= 2
    if kind.prefix == "data_scale":
        return part.data_fraction.nunique() >= 2
    if kind.prefix == "model_scale":
        return part.arch.map(results.arch_short).nunique() >= 3
    return True


def render_table(table: pd.DataFrame, out_dir: str | Path, kinds: Iterable[str] | None = None) -> list[Path]:
    """Every figure kind (or those named in `kinds`, e.g. data_scale) per (target, test metric)."""
    written: list[Path] = []
    transfer = table[table.kind == "transfer"]
    chosen = [k for k in FIGURE_KINDS if kinds is None or k.prefix in set(kinds)]
    for (target, metric), part in transfer.groupby(["target", "metric"], sort=True):
        if not metric.startswith("test/"):
            continue
        for kind in chosen:
            if not needs(kind, part):
                continue
            drawn = kind.draw(table, target, metric)
            if drawn is None:
                continue
            fig, rows = drawn
            name = f"{kind.prefix}_{_slug(target)}_{_slug(metric.replace('test/', ''))}"
            written += save_figure(fig, rows, out_dir, name)
    return written


# ---- tables beside the figures ----------------------------------------------------------------
def full_shot_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SD over seeds of every full-shot transfer result: target, metric, pretrained model, origin."""
    data = table[(table.kind == "transfer") & (table.shot == "full_shot") & table.metric.str.startswith("test/")]
    keys = ["target", "metric", "pretrained_model", "init_label", "arch", "origin"]
    stats = data.groupby(keys, sort=True).value.agg(mean="mean", sd="std", seeds="count").reset_index()
    return stats.assign(sd=stats.sd.fillna(0.0))


SCALES = {"data": "data_fraction", "model": "params_m"}


def scaling_fits(table: pd.DataFrame, *, n_boot: int = 100, seed: int = 0) -> pd.DataFrame:
    """Power-law fits of the error (1 − metric) against pre-training data fraction and model size, per
    target / metric / source / shot (and arch, for data scale), for every group with ≥ 3 scale points."""
    data = table[(table.kind == "transfer") & table.metric.str.startswith("test/")]
    data = data.assign(params_m=data.arch.map(lambda a: ARCH_PARAMS_M.get(results.arch_short(a), np.nan)),
                       error=1.0 - data.value).dropna(subset=["params_m", "error"])  # fmt: skip
    frames = []
    for scale, x in SCALES.items():
        by = ["target", "metric", "init_label", "shot"] + (["arch"] if scale == "data" else ["data_fraction"])
        fits = scaling.fit_table(data, x=x, y="error", by=by, n_boot=n_boot, seed=seed)
        if len(fits):
            frames.append(fits.assign(scale=scale, x=x))
    columns = ["scale", "x", "target", "metric", "init_label", "shot", "arch", "data_fraction", "a", "alpha", "e_inf", "rss", "n",
               "a_lo", "a_hi", "alpha_lo", "alpha_hi", "e_inf_lo", "e_inf_hi", "n_boot"]  # fmt: skip
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


def render_all(results_dir: str | Path, out_dir: str | Path | None = None, *, n_boot: int = 100) -> list[Path]:
    """Every figure for every (target, test metric) in the store, plus `results_table.csv`,
    `full_shot_means.csv` and `scaling_fits.csv`; default out: `<results parent>/figures`.

    Invalid result files (truncated, edited, off-schema) are left out with a warning, never drawn."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir.resolve().parent / "figures"
    table = results.table(results_dir)
    if table.empty:
        raise results.ResultError(f"{results_dir}: no valid results to draw")
    written = render_table(table, out_dir)
    tables = {"results_table.csv": table, "full_shot_means.csv": full_shot_means(table),
              "scaling_fits.csv": scaling_fits(table, n_boot=n_boot)}  # fmt: skip
    for name, frame in tables.items():
        frame.to_csv(Path(out_dir) / name, index=False)
        written.append(Path(out_dir) / name)
    return written


# ---- exploring sources (notebooks/00_explore_sources) ----------------------------------------
# The canonical table's non-finding columns (docs/design.md, `labels.META_COLUMNS`).
META_COLUMNS = ("image_id", "path", "source", "patient_id", "study_id", "view", "sex", "age", "split", "raw_labels", "label")


def finding_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in META_COLUMNS]


def source_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images, patients and per-view counts per source."""
    counts = frame.groupby("source").agg(images=("image_id", "size"), patients=("patient_id", "nunique"))
    views = frame.groupby(["source", "view"]).size().unstack(fill_value=0)
    return counts.join(views)


def finding_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per source and finding: positives, negatives, uncertain (-1), unknown (NaN) and the uncertain share."""
    rows = []
    for source, part in frame.groupby("source", sort=True):
        for finding in finding_columns(part):
            values = part[finding]
            rows.append({"source": source, "finding": finding, "positive": int((values == 1).sum()),
                         "negative": int((values == 0).sum()), "uncertain": int((values == -1).sum()),
                         "unknown": int(values.isna().sum())})  # fmt: skip
    out = pd.DataFrame(rows, columns=["source", "finding", "positive", "negative", "uncertain", "unknown"])
    labelled = out.positive + out.negative + out.uncertain
    return out.assign(uncertain_share=(out.uncertain / labelled.where(labelled > 0)).fillna(0.0))


def plot_finding_counts(frame: pd.DataFrame) -> plt.Figure:
    counts = finding_counts(frame)
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(9, 0.25 * counts.finding.nunique() + 2), layout="constrained")
        palette = {s: source_colour(s) for s in counts.source.unique()}
        sns.barplot(data=counts, y="finding", x="positive", hue="source", palette=palette, ax=ax)
        ax.set(xscale="log", xlabel="positive images (log)", title="positives per finding and source")
    return fig


def plot_cooccurrence(frame: pd.DataFrame) -> plt.Figure:
    """P(column finding positive | row finding positive) over all sources."""
    positives = (frame[finding_columns(frame)] == 1).astype(float)
    positives = positives.loc[:, positives.sum() > 0]
    joint = positives.T @ positives
    conditional = joint.div(np.diag(joint), axis=0)
    with plt.rc_context(_style()):
        size = 0.4 * len(conditional) + 3
        fig, ax = plt.subplots(figsize=(size + 1, size), layout="constrained")
        sns.heatmap(conditional, vmin=0, vmax=1, cmap="viridis", square=True, ax=ax,
                    annot=len(conditional) <= 14, fmt=".2f", annot_kws={"fontsize": 7})  # fmt: skip
        ax.set_title("label co-occurrence P(column | row)")
    return fig


def plot_uncertain_shares(frame: pd.DataFrame) -> plt.Figure:
    counts = finding_counts(frame)
    wide = counts.pivot(index="finding", columns="source", values="uncertain_share").fillna(0.0)
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(1.2 * wide.shape[1] + 4, 0.3 * len(wide) + 2), layout="constrained")
        sns.heatmap(wide, vmin=0, vmax=max(0.01, float(wide.to_numpy().max())), cmap="rocket_r", annot=True, fmt=".2f", ax=ax)
        ax.set_title("share of labelled images marked uncertain (-1)")
    return fig


def plot_sample_grid(frame: pd.DataFrame, per_source: int = 4, seed: int = 0) -> plt.Figure:
    """A few images per source; in metadata-only mode (files absent) the tiles say so."""
    from PIL import Image

    sources = sorted(frame.source.unique())
    with plt.rc_context(_style() | {"axes.grid": False}):
        fig, axes = plt.subplots(len(sources), per_source, figsize=(2.0 * per_source, 2.1 * len(sources)),
                                 squeeze=False, layout="constrained")  # fmt: skip
        for row, source in zip(axes, sources):
            part = frame[frame.source == source]
            chosen = part.sample(n=min(per_source, len(part)), random_state=seed)
            for ax, (_, item) in zip(row, chosen.iterrows()):
                path = Path(str(item.get("path", "")))
                if path.is_file():
                    with Image.open(path) as img:
                        ax.imshow(np.asarray(img.convert("L")), cmap="gray")
                else:
                    ax.text(0.5, 0.5, "metadata only\n(no image file)", ha="center", va="center", fontsize=8)
                ax.set_title(f"{source} {item.get('view', '')}", fontsize=8)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
    return fig


def read_sources(entries: Iterable[str], metadata_only: bool = False) -> pd.DataFrame:
    """`["chexpert=/data/CheXpert-v1.0-small", ...]` → one canonical table of all of them."""
    from xrstudy import sources

    tables = []
    for entry in entries:
        name, sep, root = str(entry).partition("=")
        if not sep:
            raise ValueError(f"source entry {entry!r}; expected 'name=DIR'")
        tables.append(sources.read_source(name.strip(), root.strip(), metadata_only=metadata_only))
    if not tables:
        raise ValueError("no sources given; expected a list of 'name=DIR' entries")
    return pd.concat(tables, ignore_index=True)


def explore_sources(frame: pd.DataFrame, out_dir: str | Path, *, per_source: int = 4) -> dict[str, Any]:
    """Counts per source / view / finding and the exploration figures (PNG + PDF + CSV) under out_dir."""
    out_dir = Path(out_dir)
    counts, findings = source_counts(frame), finding_counts(frame)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts.to_csv(out_dir / "source_counts.csv")
    written: list[Path] = [out_dir / "source_counts.csv"]
    drawn = {"sample_grid": (plot_sample_grid, frame[["source", "view", "path"]].head(0))}
    if len(findings):
        drawn = {"finding_counts": (plot_finding_counts, findings),
                 "label_cooccurrence": (plot_cooccurrence, findings),
                 "uncertain_shares": (plot_uncertain_shares, findings), **drawn}  # fmt: skip
    for name, (plot, rows) in drawn.items():
        fig = plot_sample_grid(frame, per_source=per_source) if plot is plot_sample_grid else plot(frame)
        written += save_figure(fig, rows, out_dir, name)
    return {"counts": counts, "findings": findings, "files": written,
            "figures": [p for p in written if p.suffix == ".png"]}  # fmt: skip


# ---- CLI --------------------------------------------------------------------------------------
def cmd_figures(args: Any) -> int:
    start = time.perf_counter()
    written = render_all(args.results, args.out)
    pngs = [p for p in written if p.suffix == ".png"]
    print(f"{len(pngs)} figures (PNG + PDF + CSV each) in {written[0].parent} ({time.perf_counter() - start:.1f} s)")
    means = pd.read_csv(written[0].parent / "full_shot_means.csv")
    if len(means):
        print("\nfull-shot mean ± SD over seeds:")
        for row in means.itertuples():
            print(f"  {row.target:14s} {row.metric:9s} {row.pretrained_model:34s} {row.mean:.4f} ± {row.sd:.4f} (n={row.seeds})")
    return 0


__all__ = [
    "SOURCE_COLOURS", "source_colour", "model_colour", "shots_bar", "model_size", "fewshot_curves", "scale_curve",
    "save_figure", "render_table", "render_all", "full_shot_means", "scaling_fits", "source_counts", "finding_counts", "plot_finding_counts",
    "plot_cooccurrence", "plot_uncertain_shares", "plot_sample_grid", "read_sources", "explore_sources", "cmd_figures",
]  # fmt: skip
