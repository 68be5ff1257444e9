"""The paper's figures as the authors' `notebooks/plots.ipynb` draws them (`xrstudy figures --style paper`).

Three figures per target, each from its headline metric (PadChest-Cl mean AUC, accuracy elsewhere),
in percent, with SD error bars over seeds:
- bars: metric vs shots as categories ("1 Shot" ... "Full Shot"), one bar per pre-trained model of
  that target's subset in the paper's grid (issue 10 section 2), X-ray models first, ImageNet last;
- model size: full-shot metric from R50x1 to R152x4, one line per pre-training dataset of the
  notebook's line plot;
- few-shot curves: metric vs shots (categories ending with "Full Shot"), medical and natural
  pre-training in separate panels, with the notebook's model choice per panel.
Rows imported from the paper (`origin: "paper"`) sit beside new runs of the same model: hatched bars,
dashed lines. Targets outside the paper (the demo's digits) show every model they have. The facts
(subsets, orders, colours, captions) are the authors'; the code is ours.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from xrstudy.fileio import atomic_write_table
from xrstudy.plots import figures
from xrstudy.results import legacy, store

# The paper's dataset and metric names (its CSV files) → xrstudy's: the import's tables (xrstudy.results.legacy),
# for a store whose paper rows kept the published names.
TARGET_ALIASES = {**legacy.DATASET_NAMES, "flowers": "flowers102"}
METRIC_ALIASES = legacy.METRIC_NAMES
HEADLINE_METRIC = {"padchest-cl": "test/auc"}  # every other target: test/acc
TARGET_CAPTIONS = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "pets": "Pets",
    "flowers102": "Flowers-102",
    "covidx": "COVIDx",
    "tuberculosis": "Tuberculosis",
    "padchest-cl": "PadChest-Cl",
}
SOURCE_CAPTIONS = {
    "imagenet1k": "ImageNet-1k",
    "imagenet21k": "ImageNet-21k",
    "chexpert": "CheXpert",
    "mimic": "MIMIC",
    "nih": "NIH",
    "padchest": "PadChest",
    "chexpert_mimic": "CheXpert-MIMIC",
    "chexpert_mimic_nih": "CheXpert-MIMIC-NIH",
    "chexpert_mimic_nih_padchest": "CheXpert-MIMIC-NIH-PadChest",
}
METRIC_CAPTIONS = {"test/acc": "Test Accuracy", "test/auc": "Test Mean AUC", "test/ap": "Test Mean AP"}
NATURAL_SOURCES = ("imagenet1k", "imagenet21k")

# ---- the paper's grid: which models each target's figures show (issue 10 section 2) ----------
IMAGENET = ("imagenet1k_bit50x1", "imagenet21k_bit50x1", "imagenet1k_bit152x4", "imagenet21k_bit152x4")
XRAY_COMBOS = ("chexpert", "chexpert_mimic", "chexpert_mimic_nih", "chexpert_mimic_nih_padchest")


def _both_sizes(sources: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{s}_bit50x1" for s in sources) + tuple(f"{s}_bit152x4" for s in sources)


_COVIDX = (*_both_sizes(XRAY_COMBOS), "mimic_bit152x4", "padchest_bit152x4", *IMAGENET)
PAPER_MODELS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("cifar10", "cifar100", "pets", "flowers102"), IMAGENET),
    "covidx": _COVIDX,
    "tuberculosis": (*_COVIDX[:-4], "nih_bit152x4", *IMAGENET),
    # no PadChest-containing model: their pre-training saw PadChest-Cl's images
    "padchest-cl": (*_both_sizes(XRAY_COMBOS[:3]), *IMAGENET),
}
# The notebook's model-size line plot: one line per pre-training dataset.
SIZE_SOURCES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("cifar10", "cifar100", "pets", "flowers102"), NATURAL_SOURCES),
    "covidx": (*NATURAL_SOURCES, "chexpert", "chexpert_mimic_nih_padchest"),
    "tuberculosis": (*NATURAL_SOURCES, "chexpert", "chexpert_mimic_nih_padchest"),
    "padchest-cl": (*NATURAL_SOURCES, "chexpert", "chexpert_mimic_nih"),
}
# The notebook's few-shot plots: medical and natural pre-training apart.
FEWSHOT_MODELS: dict[str, dict[str, tuple[str, ...]]] = {
    "padchest-cl": {"medical": _both_sizes(("chexpert", "chexpert_mimic_nih")), "natural": IMAGENET},
    "default": {"medical": _both_sizes(("chexpert", "chexpert_mimic_nih_padchest")), "natural": IMAGENET},
}
# The notebook's colours (`get_color`; the line plot's palette goes by position).
MODEL_COLOURS = {
    "imagenet1k_bit50x1": "skyblue",
    "imagenet21k_bit50x1": "steelblue",
    "imagenet1k_bit152x4": "navajowhite",
    "imagenet21k_bit152x4": "darkorange",
    "chexpert_bit50x1": "lightgreen",
    "chexpert_mimic_bit50x1": "mediumseagreen",
    "chexpert_mimic_nih_bit50x1": "forestgreen",
    "chexpert_mimic_nih_padchest_bit50x1": "darkgreen",
    "chexpert_bit152x4": "pink",
    "chexpert_mimic_bit152x4": "lightcoral",
    "chexpert_mimic_nih_bit152x4": "red",
    "chexpert_mimic_nih_padchest_bit152x4": "darkred",
    # in the grid but not in the notebook's palette
    "mimic_bit152x4": "plum",
    "padchest_bit152x4": "orchid",
    "nih_bit152x4": "mediumpurple",
}
LINE_PALETTE = ("mediumseagreen", "darkgreen", "lightcoral", "darkred")
SHOT_ORDER = figures.SHOT_ORDER
FULL_SHOT_TABLE = "paper_full_shot.csv"
RC = {
    "font.size": 13,
    "axes.titlesize": 14,
    "axes.labelsize": 15,
    "xtick.labelsize": 13,
    "ytick.labelsize": 13,
    "legend.fontsize": 11,
}


def shot_caption(shot: str) -> str:
    """`10_shot` → `10 Shot`, `full_shot` → `Full Shot` (the notebook's tick labels)."""
    return shot.split("_")[0].capitalize() + " Shot"


def model_caption(model: str) -> str:
    """`chexpert_mimic_bit152x4` → `R152x4 on CheXpert-MIMIC`; other names stay as they are."""
    source, sep, size = model.rpartition("_bit")
    if not sep or not re.fullmatch(r"\d+x\d+", size):  # not a BiT model (the demo's tiny one): its own name
        return model
    return f"R{size} on {SOURCE_CAPTIONS.get(source, source)}"


def paper_table(table: pd.DataFrame) -> pd.DataFrame:
    """Transfer rows under xrstudy's target / metric names, in percent, with a `series` per model and
    origin (paper rows carry ' (paper)' where a target has both origins). The paper fine-tuned every model:
    linear probes (train_mode probe) are not drawn in its style."""
    rows = table[table.kind == "transfer"]
    if "train_mode" in rows:
        rows = rows[rows.train_mode != "probe"]
    rows = rows.assign(target=rows.target.replace(TARGET_ALIASES), metric=rows.metric.replace(METRIC_ALIASES))
    rows = rows[rows.metric == rows.target.map(HEADLINE_METRIC).fillna("test/acc")]
    mixed = rows.groupby("target").origin.transform("nunique") > 1
    caption = rows.pretrained_model.map(model_caption)
    series = caption.where(~(mixed & (rows.origin == "paper")), caption + figures.PAPER_SUFFIX)
    return rows.assign(
        percent=100 * rows.value,
        series=series,
        pretraining=rows.init_label,
        size=rows.arch.map(lambda a: f"R{store.arch_short(a)}"),
    )


def _models_of(rows: pd.DataFrame, target: str) -> list[str]:
    """The target's models in the paper's order; a target (or store) outside the paper's grid, such as
    the demo's, shows every model it has."""
    present = set(rows.pretrained_model)
    if present & set(PAPER_MODELS.get(target, ())):
        return [m for m in PAPER_MODELS[target] if m in present]
    return [m for m in figures._model_order(rows) if m in present]  # outside the paper's grid: all of them


def _colour(model: str, rows: pd.DataFrame) -> str:
    return MODEL_COLOURS.get(model) or figures.model_palette(rows)[model]


def _series_order(rows: pd.DataFrame, models: list[str]) -> tuple[list[str], dict[str, str]]:
    """Series (model, then its paper twin) in model order, and each one's colour."""
    order, palette = [], {}
    for model in models:
        names = set(rows.loc[rows.pretrained_model == model, "series"])
        for name in sorted(names, key=lambda s: s.endswith(figures.PAPER_SUFFIX)):
            order.append(name)
            palette[name] = _colour(model, rows)
    return order, palette


def _shots(rows: pd.DataFrame) -> list[str]:
    return [s for s in SHOT_ORDER if s in set(rows.shot)]


def style() -> dict[str, Any]:
    """The rc parameters of the paper-style figures (seaborn white, the notebook's larger fonts)."""
    return dict(sns.axes_style("white")) | RC


def _new_figure(width: float, height: float) -> Figure:
    with mpl.rc_context(style()):
        return Figure(figsize=(width, height), layout="constrained")


def bar_rows(rows: pd.DataFrame, target: str) -> pd.DataFrame:
    return rows[rows.pretrained_model.isin(_models_of(rows, target))]


def size_rows(rows: pd.DataFrame, target: str) -> pd.DataFrame:
    full = rows[rows.shot == "full_shot"]
    return full[full.pretraining.isin(SIZE_SOURCES.get(target) or set(full.pretraining))]


def _panels(rows: pd.DataFrame, target: str) -> list[tuple[str, list[str]]]:
    """(domain, models) of the few-shot panels: the notebook's choice for the paper's targets, else the
    target's models split by their pre-training (natural images or not; scratch in both)."""
    present = set(rows.pretrained_model)
    in_paper = bool(present & set(PAPER_MODELS.get(target, ())))
    natural = rows.pretraining.isin(NATURAL_SOURCES) | (rows.pretraining == "natural")
    panels = []
    for domain in ("medical", "natural"):
        if in_paper:
            models = [m for m in FEWSHOT_MODELS.get(target, FEWSHOT_MODELS["default"])[domain] if m in present]
        else:  # scratch is no pre-training: the baseline of both panels
            scratch = rows.pretraining == "scratch"
            part = rows[(natural if domain == "natural" else ~natural & ~scratch) | scratch]
            models = _models_of(part, target) if len(part) else []
        if models:
            panels.append((domain, models))
    return panels


def fewshot_rows(rows: pd.DataFrame, target: str) -> pd.DataFrame:
    models = {m for _, panel in _panels(rows, target) for m in panel}
    return rows[rows.pretrained_model.isin(models)]


def bars(rows: pd.DataFrame, target: str, metric: str) -> Figure | None:
    """Metric (%) vs shots, one bar per model of the target's subset; paper rows hatched."""
    rows = bar_rows(rows, target)
    if rows.empty:
        return None
    order, palette = _series_order(rows, _models_of(rows, target))
    shots = _shots(rows)
    fig = _new_figure(12, 7.5)
    with mpl.rc_context(style()):
        ax = fig.subplots()
        sns.barplot(
            data=rows,
            x="shot",
            y="percent",
            hue="series",
            order=shots,
            hue_order=order,
            palette=palette,
            errorbar="sd",
            capsize=0.01,
            edgecolor="w",
            ax=ax,
        )
        figures.hatch_paper_bars(ax, order)
        ax.set_xticks(range(len(shots)), [shot_caption(s) for s in shots])
        ax.set(
            xlabel="Shots during transfer",
            ylabel=METRIC_CAPTIONS.get(metric, metric),
            title=TARGET_CAPTIONS.get(target, target),
        )
        if target != "cifar100" and rows.percent.min() >= 30:  # the notebook starts the axis at 30 %
            ax.set_ylim(bottom=30)
        ax.legend(title="", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def model_size(rows: pd.DataFrame, target: str, metric: str) -> Figure | None:
    """Full-shot metric (%) from R50x1 to R152x4, one line per pre-training dataset; paper rows dashed."""
    full = size_rows(rows, target)
    sources = SIZE_SOURCES.get(target) or sorted(set(full.pretraining))
    sizes = [
        f"R{s}"
        for s in sorted({store.arch_short(a) for a in full.arch}, key=lambda s: figures.ARCH_PARAMS_M.get(s, 1e9))
    ]
    if full.empty or len(sizes) < 2:
        return None
    present = [s for s in sources if s in set(full.pretraining)]
    palette = {
        s: LINE_PALETTE[i] if target in SIZE_SOURCES and i < len(LINE_PALETTE) else figures.source_colour(s)
        for i, s in enumerate(sources)
    }
    full = full.assign(
        size=pd.Categorical(full["size"], categories=sizes, ordered=True),
        dataset=full.pretraining.map(lambda s: SOURCE_CAPTIONS.get(s, s)),
    )
    fig = _new_figure(10, 6.5)
    with mpl.rc_context(style()):
        ax = fig.subplots()
        sns.lineplot(
            data=full.sort_values("size"),
            x="size",
            y="percent",
            hue="dataset",
            sort=False,
            marker="o",
            errorbar="sd",
            err_style="bars",
            linewidth=2,
            ax=ax,
            hue_order=[SOURCE_CAPTIONS.get(s, s) for s in present],
            palette={SOURCE_CAPTIONS.get(s, s): palette[s] for s in present},
            style="origin" if full.origin.nunique() > 1 else None,
            style_order=["xrstudy", "paper"] if full.origin.nunique() > 1 else None,
        )
        ax.set(
            xlabel="Pre-training Model architecture",
            ylabel=METRIC_CAPTIONS.get(metric, metric),
            title=f"{TARGET_CAPTIONS.get(target, target)}: full shot",
        )
        ax.legend(title="Pre-training dataset", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def fewshot(rows: pd.DataFrame, target: str, metric: str) -> Figure | None:
    """Metric (%) vs shots ending with "Full Shot": medical and natural pre-training in two panels."""
    shots = _shots(rows)
    panels = _panels(rows, target)
    if len(shots) < 2 or not panels:
        return None
    fig = _new_figure(7.5 * len(panels) + 1.5, 6.5)
    with mpl.rc_context(style()):
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (domain, models) in zip(axes, panels):
            part = rows[rows.pretrained_model.isin(models)]
            order, palette = _series_order(part, models)
            part = part.assign(shot=pd.Categorical(part.shot, categories=shots, ordered=True)).sort_values("shot")
            sns.lineplot(
                data=part,
                x="shot",
                y="percent",
                hue="series",
                hue_order=order,
                palette=palette,
                sort=False,
                marker="o",
                errorbar="sd",
                err_style="bars",
                linewidth=2,
                ax=ax,
                style="origin" if part.origin.nunique() > 1 else None,
                style_order=["xrstudy", "paper"] if part.origin.nunique() > 1 else None,
            )
            ax.set_xticks(range(len(shots)), [shot_caption(s) for s in shots])
            ax.set(
                xlabel="Shots during transfer",
                ylabel=METRIC_CAPTIONS.get(metric, metric),
                title=f"{TARGET_CAPTIONS.get(target, target)}: {domain} pre-training",
            )
            ax.legend(title="Model", loc="lower right", frameon=False)
    return fig


PAPER_KINDS = (
    figures.FigureKind("paper_bars", bars, select=bar_rows),
    figures.FigureKind("paper_model_size", model_size, select=size_rows),
    figures.FigureKind("paper_fewshot", fewshot, select=fewshot_rows),
)


def full_shot_table(rows: pd.DataFrame) -> pd.DataFrame:
    """What the paper-style figures draw at full shot: mean ± SD (%) over seeds per target / model / origin,
    restricted to each target's subset, in the paper's model order."""
    full = rows[rows.shot == "full_shot"]
    parts = []
    for target, part in full.groupby("target", sort=True):
        models = _models_of(part, target)
        stats = part[part.pretrained_model.isin(models)].groupby(["metric", "pretrained_model", "origin"])
        stats = stats.percent.agg(mean="mean", sd="std", seeds="count").reset_index()
        stats = stats.assign(target=target, rank=stats.pretrained_model.map(models.index)).sort_values(
            ["rank", "origin"]
        )
        parts.append(stats.drop(columns="rank"))
    columns = ["target", "metric", "pretrained_model", "origin", "mean", "sd", "seeds"]
    if not parts:
        return pd.DataFrame(columns=columns)
    out = pd.concat(parts, ignore_index=True)[columns]
    return out.assign(sd=out.sd.fillna(0.0))


def format_full_shot(means: pd.DataFrame) -> str:
    """The full-shot table as the CLI prints it (percent)."""
    lines = ["full-shot mean ± SD over seeds (%), paper style:"]
    for row in means.itertuples():
        lines.append(
            f"  {row.target:13s} {row.metric:9s} {model_caption(row.pretrained_model):38s} {row.origin:8s} "
            f"{row.mean:6.2f} ± {row.sd:5.2f} (n={row.seeds})"
        )
    return "\n".join(lines)


def render(table: pd.DataFrame, out_dir: str | Path) -> figures.Rendered:
    """Draw the paper-style figures of every target, save them, and write the full-shot table."""
    out_dir = Path(out_dir)
    rows = paper_table(table)
    # render_table groups by (target, metric); hand it the percent rows under the original columns.
    rendered = figures.render_table(rows, out_dir, figure_kinds=PAPER_KINDS)
    atomic_write_table(full_shot_table(rows), out_dir / FULL_SHOT_TABLE)  # creates out_dir if no figure did
    rendered.tables[FULL_SHOT_TABLE] = out_dir / FULL_SHOT_TABLE
    return rendered


__all__ = [
    "render",
    "bars",
    "model_size",
    "fewshot",
    "paper_table",
    "full_shot_table",
    "format_full_shot",
    "PAPER_MODELS",
    "SIZE_SOURCES",
    "FEWSHOT_MODELS",
    "TARGET_ALIASES",
    "PAPER_KINDS",
]
