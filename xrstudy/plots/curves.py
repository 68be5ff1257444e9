"""Learning curves from training histories, and the one-glance summary of a cell.

    run_summary(result)                  a cell in one column: run id, kind, target, init, shots, seed,
                                         status, main metric, steps, time, threads (notebooks 10 / 20)
    learning_curve(result or run_dir)    loss and LR against step, validation points overlaid (a Figure)
    render_curves(results, out_dir)      `xrstudy figures`: per target and shot count one figure, one
                                         panel per init, seeds overlaid (PNG + PDF + CSV)

A history comes from a run folder's `history.csv` (every row) or from a result's `history` (at most
200 points), so the results store alone can draw every curve (`xrstudy.training.history`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.lines
import pandas as pd
from matplotlib.figure import Figure

from xrstudy.config import shot_label
from xrstudy.plots import figures
from xrstudy.plots.paper_figures import HEADLINE_METRIC
from xrstudy.results import store
from xrstudy.training import history

CURVE_PREFIX = "curves"
VALID_MARKER = {"marker": "o", "markersize": 5, "linestyle": "none"}


# ---- one run --------------------------------------------------------------------------------------
def history_frame(source: dict[str, Any] | str | Path) -> pd.DataFrame:
    """A history as a DataFrame (one row per logged step): from a result dict, a run folder or a history.csv."""
    if isinstance(source, dict):
        rows = history.rows_of_result(source.get("history") or {})
    else:
        path = Path(source)
        rows = history.read_rows(path / history.HISTORY_FILE if path.is_dir() else path)
    frame = pd.DataFrame(rows, columns=list(history.FIELDS) if not rows else None)
    return frame.astype(float).astype({"step": "int64"}) if len(frame) else frame


def main_metric(result: dict[str, Any]) -> str | None:
    """The metric a cell is judged by: the target's headline test metric (PadChest-Cl mean AUC, else
    accuracy); pre-training: the validation mean AUC."""
    config, metrics = result.get("config", {}), result.get("metrics", {})
    if config.get("kind") == "pretrain":
        wanted = ["valid/auc", "test/auc"]
    else:
        wanted = [HEADLINE_METRIC.get(config.get("target", ""), "test/acc"), "test/acc", "test/auc"]
    return next((name for name in wanted if metrics.get(name) is not None), None)


def run_summary(result: dict[str, Any]) -> pd.DataFrame:
    """One column, the facts a reader of an executed cell notebook looks for first."""
    config = result.get("config", {})
    kind = config.get("kind", "transfer")
    metric = main_metric(result)
    value = f"{metric} = {result['metrics'][metric]:.4f}" if metric else "-"
    if metric and (result.get("ci") or {}).get(metric):
        low, high = result["ci"][metric]
        value += f" (95% CI {low:.4f}-{high:.4f})" if low is not None and high is not None else ""
    repro = result.get("reproducibility") or {}
    steps = (result.get("history") or {}).get("total_steps")
    facts = {
        "run id": result.get("run_id"),
        "kind": kind,
        "target" if kind == "transfer" else "sources": config.get("target")
        if kind == "transfer"
        else "+".join(config.get("sources", [])),
        "init": config.get("init_label") or config.get("init"),
        "arch": config.get("arch"),
        "shots": shot_label(int(config.get("shots", 0))) if kind == "transfer" else "-",
        "seed": config.get("seed"),
        "status": result.get("status") + (f": {result['error']}" if result.get("error") else ""),
        "main metric": value,
        "steps": f"{result.get('last_step')}" + (f" of {steps[-1]}" if steps else ""),
        "train time": f"{(result.get('timings') or {}).get('train_s', float('nan')):.1f} s",
        "device": result.get("device"),
        "torch threads": repro.get("torch_threads", "-"),
        "deterministic": repro.get("deterministic_algorithms", "-"),
    }
    return pd.Series({k: "-" if v is None else str(v) for k, v in facts.items()}, name="value").to_frame()


def _log_scale_if_wide(ax: Any, values: pd.Series) -> None:
    positive = values[values > 0]
    if len(positive) and positive.max() / positive.min() > 20:
        ax.set_yscale("log")


def learning_curve(source: dict[str, Any] | str | Path, *, title: str = "") -> Figure:
    """Training loss (and validation loss where it was measured) above the learning rate, against step.
    `source`: a result (its `history`), a run folder or its history.csv."""
    frame = history_frame(source)
    if not title and isinstance(source, dict):
        config = source.get("config", {})
        what = config.get("target") or "+".join(config.get("sources", []))
        title = f"{source.get('run_id', '')}: {config.get('kind', '')} {what}".strip()
    fig = figures.new_figure(7.0, 5.0)
    with mpl.rc_context(figures.style()):
        loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
        if len(frame) and "train/loss" in frame:
            loss_ax.plot(frame["step"], frame["train/loss"], color="#3182bd", label="train (mean since the last point)")
        if len(frame) and "valid/loss" in frame and frame["valid/loss"].notna().any():
            valid = frame.dropna(subset=["valid/loss"])
            loss_ax.plot(valid["step"], valid["valid/loss"], color="#e6550d", label="validation", **VALID_MARKER)
        loss_ax.set(ylabel="loss", title=title or "learning curve")
        if not len(frame):
            loss_ax.text(0.5, 0.5, "no training history", ha="center", va="center", transform=loss_ax.transAxes)
        else:
            loss_ax.legend(frameon=False, loc="upper right")
        if len(frame) and "train/lr" in frame:
            lr_ax.plot(frame["step"], frame["train/lr"], color="#636363")
            _log_scale_if_wide(lr_ax, frame["train/lr"].dropna())
        lr_ax.set(xlabel="optimiser step", ylabel="learning rate")
    return fig


# ---- a store: per target and shot count, one panel per init, seeds overlaid ------------------------
CURVE_COLUMNS = ("step", "train/loss", "train/lr", "valid/loss", "valid/auc", "valid/acc", "epoch", "elapsed_s")


def curve_rows(results: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Tidy rows of every stored history of a trained cell: the cell's identity (as in the results table) + the
    history's columns. Linear probes take no optimiser step (their rows are regression fits): not drawn here."""
    results = [r for r in results if r.get("history") and r.get("config", {}).get("train_mode") != "probe"]
    if not results:
        return pd.DataFrame(columns=["run_id", "kind", "target", "init_label", "pretrained_model", "shot", "seed"])
    identity = store.table_from_results(results, status="ok").drop_duplicates("run_id").set_index("run_id")
    frames = []
    for result in results:
        if result["run_id"] not in identity.index:
            continue
        cell = identity.loc[result["run_id"]]
        frame = history_frame(result)
        frame = frame[[c for c in CURVE_COLUMNS if c in frame]]
        for name in ("seed", "shot", "pretrained_model", "init_label", "target", "kind"):  # inserted first: reversed
            frame.insert(0, name, cell[name])
        frame.insert(0, "run_id", result["run_id"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else curve_rows([])


def draw_curves(rows: pd.DataFrame, title: str, *, sharey: bool = True) -> Figure:
    """One panel per pre-trained model; each seed one line of the model's colour, validation points on top.
    `sharey=False` where the panels' losses are not comparable (pre-training on different label sets)."""
    models = sorted(rows["pretrained_model"].unique())
    columns = min(len(models), 4)
    lines = math.ceil(len(models) / columns)
    fig = figures.new_figure(3.4 * columns + 0.6, 2.8 * lines + 0.6)
    with mpl.rc_context(figures.style()):
        axes = fig.subplots(lines, columns, sharex=True, sharey=sharey, squeeze=False).ravel()
        for ax, model in zip(axes, models):
            part = rows[rows["pretrained_model"] == model]
            colour = figures.source_colour(str(part["init_label"].iloc[0]))
            for seed, run in part.groupby("seed"):
                ax.plot(run["step"], run["train/loss"], color=colour, alpha=0.75, linewidth=1.2, label=f"seed {seed}")
                if "valid/loss" in run and run["valid/loss"].notna().any():
                    valid = run.dropna(subset=["valid/loss"])
                    ax.plot(valid["step"], valid["valid/loss"], color=colour, markeredgecolor="black", **VALID_MARKER)
            ax.set(title=model, xlabel="optimiser step")
        for ax in axes[len(models) :]:
            ax.set_visible(False)
        for ax in axes[::columns] if sharey else axes[: len(models)]:
            ax.set_ylabel("training loss")
        if "valid/loss" in rows and rows["valid/loss"].notna().any():
            marker = mpl.lines.Line2D([], [], color="white", markeredgecolor="black", **VALID_MARKER)
            line = mpl.lines.Line2D([], [], color="grey")
            fig.legend([line, marker], ["train, one line per seed", "validation"], loc="outside lower center", ncols=2)
        fig.suptitle(title)
    return fig


def curve_groups(rows: pd.DataFrame) -> list[tuple[tuple[str, str, str], str, pd.DataFrame, bool]]:
    """((kind, target, shot) key, title, rows, shared y) per figure: transfers per target and shot count
    (one loss scale), pre-training in one figure (each model its own scale: label sets differ)."""
    groups = []
    for (kind, target, shot), part in rows.groupby(["kind", "target", "shot"], sort=True):
        if kind == "transfer":
            title = f"{target}, {shot.replace('_', ' ')}: learning curves"
            groups.append(((CURVE_PREFIX, target, shot), title, part, True))
    pretrain = rows[rows["kind"] == "pretrain"]
    if len(pretrain):
        groups.append(((CURVE_PREFIX, "pretrain", ""), "pre-training: learning curves", pretrain, False))
    return groups


def render_curves(results: Iterable[dict[str, Any]], out_dir: str | Path) -> dict[tuple[str, str, str], Any]:
    """Every learning-curve figure of a store's results: {(curves, target, shot): (Figure, files)}."""
    rows = curve_rows(results)
    drawn = {}
    for key, title, part, sharey in curve_groups(rows):
        name = "_".join(figures._slug(p) for p in key if p)
        fig = draw_curves(part, title, sharey=sharey)
        drawn[key] = (fig, figures.save_figure(fig, part.reset_index(drop=True), out_dir, name))
    return drawn


__all__ = [
    "history_frame",
    "main_metric",
    "run_summary",
    "learning_curve",
    "curve_rows",
    "draw_curves",
    "render_curves",
]
