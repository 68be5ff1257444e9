"""Seed-to-seed variance of every cell, and new results against published ones.

    xrstudy results variance [--results DIR] [--json]
    xrstudy results compare --against DIR [--results DIR] [--json] [--fail-outside]

Pure functions over the tidy results table (`xrstudy.results.store.table`: one row per run and metric),
numpy, pandas and scipy; `published_rows` reads `--against` through the package's own readers.

Definitions:
- A *cell* is (target, pretrained_model, data_fraction, shots, shot, metric); `origin` (paper / xrstudy)
  is always kept apart, so an imported paper cell and a re-run of it never pool. data_fraction is in the
  key because the pretrained_model name does not carry it (data-scale runs share one name).
- The unit of replication is the seed. The tidy table holds each run once; two runs of one seed in one
  cell and origin (e.g. a re-run under a new run id) are averaged into one seed value, counted in n_runs.
  NaN values (metric stored as null) are left out.
- Metrics are fractions in [0, 1], so "±1 point" is a half-width of 0.01 (`half_width`).
- ci_low/ci_high: percentile bootstrap of the mean over seeds (seeded, one stream per cell), with two
  small-sample corrections: resampled values are the seeds' deviations from the mean scaled by
  sqrt(n/(n-1)) (so a resampled mean has the unbiased variance s²/n, not (n-1)/n of it), and the
  percentile interval is stretched about the mean by t(level, n-1)/z. Plain percentile intervals of
  2 / 3 / 5 normal seeds cover 49 / 75 / 84 % instead of 95 %; corrected, 94-95 % for 3 or more seeds
  (tests). Two seeds have only three bootstrap means (x1, the mean, x2), so the corrected percentile
  interval still covers only 93 %: for two seeds ci_low/ci_high is the t interval. For a mean the
  bootstrap interval is close to the t interval, t_low/t_high, given beside it.
- seeds_for_half_width: the smallest n ≥ 2 with t(level, n-1)·sd/√n ≤ half_width, i.e. the fixed
  point of n = (t·sd/h)² found by stepping up from the normal approximation (z·sd/h)².
- compare: `inside` uses the 95 % *prediction interval for the mean of the new seeds* built from the
  published seeds: mean_p ± t(level, n_p-1)·sd_p·sqrt(1/n_p + 1/n_new). If new and published seeds come
  from one distribution, a new mean lands inside with probability `level` exactly (normal seeds), for
  any n_new; the interval of the published *mean* alone (`interval="ci"`) is too narrow for that
  (~84-91 % for 1-3 new seeds against 3 published) and min-max of the seeds (`interval="range"`)
  has no fixed rate. Both are available; the columns say which was used.
- Many cells: each cell's interval lets about 1 − level of honest cells fall outside, so over ~100 cells a
  gate on "any cell outside" would fail almost always (1 − 0.95^100 = 99 %). `adjust="holm"` (Holm's
  step-down on the interval test's p-values) or `"bonferroni"` (every interval at 1 − α/m) make `level`
  family-wise: an honest reproduction shows any cell outside with probability ≤ 1 − level, whatever the
  dependence between cells. Holm flags at least what Bonferroni flags. The price is power: over 90 cells
  (3-5 new seeds each) an offset must exceed ~6-7 published SDs with the paper's 5 seeds, ~31-35 SDs with
  3 seeds (t with 2 df), so the per-cell reading (`inside_per_cell`) is reported beside it.
  `xrstudy results compare` defaults to holm (a gate that fails by chance is useless); this function to
  none (one cell read alone).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from xrstudy.results import legacy, store

CELL = ("target", "pretrained_model", "train_mode", "data_fraction", "shots", "shot", "metric")
INTERVALS = ("prediction", "ci", "range")
ADJUSTMENTS = ("none", "bonferroni", "holm")  # multiple-comparison control of `compare` (see top)
TOLERANCE = 1e-9  # float slack for "inside" (a published SD of 0 gives a point interval)


# ---- helpers ------------------------------------------------------------------------------------
def _rng(seed: int, key: tuple) -> np.random.Generator:
    """One stream per cell: a cell's interval does not change when other cells enter the table."""
    return np.random.default_rng([int(seed), zlib.crc32(repr(key).encode())])


def _select(table: pd.DataFrame, metric: str | Sequence[str] | None, kinds: Sequence[str] | None) -> pd.DataFrame:
    if "train_mode" not in table.columns:  # a table written before linear probes: every run a fine-tune
        table = table.assign(train_mode="finetune")
    missing = {*CELL, "seed", "value", "origin"} - set(table.columns)
    if missing:
        raise ValueError(f"not a tidy results table: missing columns {sorted(missing)}")
    data = table
    if kinds is not None and "kind" in data.columns:
        data = data[data["kind"].isin(list(kinds))]
    if metric is None:  # what the figures draw: test metrics only
        data = data[data["metric"].astype(str).str.startswith("test/")]
    else:
        data = data[data["metric"].isin([metric] if isinstance(metric, str) else list(metric))]
    return data[np.isfinite(data["value"].astype(float))]


def seed_values(
    table: pd.DataFrame, *, metric: str | Sequence[str] | None = None, kinds: Sequence[str] | None = ("transfer",)
) -> pd.DataFrame:
    """One row per (cell, origin, seed): the seed's value (mean of its runs) and n_runs."""
    data = _select(table, metric, kinds)
    keys = [*CELL, "origin", "seed"]
    out = data.groupby(keys, sort=True, dropna=False)["value"].agg(value="mean", n_runs="size").reset_index()
    return out


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` means of seeds resampled with replacement (deviations scaled by sqrt(n/(n-1)), see top)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = values.mean()
    dev = (values - mean) * np.sqrt(n / (n - 1)) if n > 1 else np.zeros(1)
    idx = rng.integers(0, n, size=(n_boot, n))
    return mean + dev[idx].mean(axis=1)


def seeds_needed(sd: float, half_width: float = 0.01, level: float = 0.95) -> float:
    """Smallest n ≥ 2 whose t interval mean ± t(level, n-1)·sd/√n is no wider than ±half_width.

    NaN when sd is unknown (one seed); 2 when sd is 0 (two seeds are the least that show a spread)."""
    if not np.isfinite(sd) or half_width <= 0:
        return float("nan")
    if sd == 0:
        return 2.0
    q = 0.5 + level / 2
    n = max(2, int(np.ceil((sps.norm.ppf(q) * sd / half_width) ** 2)))  # t > z: a lower bound
    while sps.t.ppf(q, n - 1) * sd / np.sqrt(n) > half_width:
        n += 1
    return float(n)


def sd_for_half_width(n_seeds: int, half_width: float = 0.01, level: float = 0.95) -> float:
    """The largest SD at which `n_seeds` seeds give a t interval of the mean no wider than ±half_width."""
    if n_seeds < 2:
        return float("nan")
    return float(half_width * np.sqrt(n_seeds) / sps.t.ppf(0.5 + level / 2, n_seeds - 1))


# ---- variance -----------------------------------------------------------------------------------
VARIANCE_COLUMNS = [
    *CELL,
    "origin",
    "n_seeds",
    "n_runs",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "t_low",
    "t_high",
    "seeds_for_half_width",
]


def variance_table(
    table: pd.DataFrame,
    *,
    metric: str | Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    half_width: float = 0.01,
    kinds: Sequence[str] | None = ("transfer",),
) -> pd.DataFrame:
    """Per (cell, origin): seeds, mean, SD, bootstrap and t intervals of the mean, seeds for ±half_width.

    `metric`: a name or names; None = every `test/` metric. `kinds`: run kinds kept (None: all).
    One seed: sd and intervals NaN (no spread to measure)."""
    per_seed = seed_values(table, metric=metric, kinds=kinds)
    tail = (1 - level) / 2
    rows = []
    for key, part in per_seed.groupby([*CELL, "origin"], sort=True, dropna=False):
        values = part["value"].to_numpy(dtype=float)
        n = len(values)
        mean = float(values.mean())
        sd = float(values.std(ddof=1)) if n > 1 else float("nan")
        if n > 1:
            t_half = sps.t.ppf(1 - tail, n - 1) * sd / np.sqrt(n)
            if n == 2:  # a bootstrap of two values has three possible means: the t interval (see top)
                lo, hi = mean - t_half, mean + t_half
            else:
                boot = bootstrap_means(values, n_boot, _rng(seed, key))
                lo, hi = (float(v) for v in np.quantile(boot, [tail, 1 - tail]))
                stretch = sps.t.ppf(1 - tail, n - 1) / sps.norm.ppf(1 - tail)  # the t correction, see top
                lo, hi = mean + (lo - mean) * stretch, mean + (hi - mean) * stretch
        else:
            lo = hi = t_half = float("nan")
        rows.append(
            (
                *key,
                n,
                int(part["n_runs"].sum()),
                mean,
                sd,
                lo,
                hi,
                mean - t_half,
                mean + t_half,
                seeds_needed(sd, half_width, level),
            )
        )
    out = pd.DataFrame(rows, columns=VARIANCE_COLUMNS)
    out.attrs.update(level=level, half_width=half_width, n_boot=n_boot, seed=seed)
    return out


def sd_by_shots(variance: pd.DataFrame) -> pd.DataFrame:
    """The data of the 'SD against shots' figure: per target, metric, model, origin, one point per shot
    count (x = shots with full shot placed right of the largest k; `full` marks it)."""
    data = variance.dropna(subset=["sd"]).copy()
    largest = int(data["shots"].max()) if len(data) else 0
    data["full"] = data["shots"] == 0
    data["x"] = np.where(data["full"], max(largest, 1) * 10, data["shots"])  # one decade right, on a log axis
    return data.sort_values(["target", "metric", "pretrained_model", "train_mode", "origin", "x"], ignore_index=True)[
        [
            "target",
            "metric",
            "pretrained_model",
            "train_mode",
            "data_fraction",
            "origin",
            "shot",
            "shots",
            "x",
            "full",
            "n_seeds",
            "sd",
        ]
    ]


# ---- compare ------------------------------------------------------------------------------------
COMPARE_COLUMNS = [
    *CELL,
    "origin_new",
    "origin_published",
    "status",
    "n_new",
    "mean_new",
    "sd_new",
    "n_published",
    "mean_published",
    "sd_published",
    "difference",
    "welch_t",
    "welch_df",
    "p_value",
    "interval",
    "interval_low",
    "interval_high",
    "published_min",
    "published_max",
    "inside",
    "interval_p",
    "p_adjusted",
    "adjust",
    "test_level",
    "inside_per_cell",
    "reason",
]


def _side(table: pd.DataFrame, metric: Any, kinds: Any) -> pd.DataFrame:
    per_seed = seed_values(table, metric=metric, kinds=kinds)
    return (
        per_seed.groupby([*CELL, "origin"], sort=True, dropna=False)["value"].agg(list).rename("values").reset_index()
    )


def _describe(values: np.ndarray, side: str) -> dict[str, float]:
    n = len(values)
    return {
        f"n_{side}": n,
        f"mean_{side}": values.mean() if n else np.nan,
        f"sd_{side}": values.std(ddof=1) if n > 1 else np.nan,
    }


def _interval(pub: np.ndarray, n_new: int, level: float, kind: str) -> tuple[float, float]:
    n, mean, sd = len(pub), float(np.mean(pub)), float(np.std(pub, ddof=1))
    t = sps.t.ppf(0.5 + level / 2, n - 1)
    if kind == "prediction":
        half = t * sd * np.sqrt(1 / n + 1 / n_new)
    elif kind == "ci":
        half = t * sd / np.sqrt(n)
    else:  # range
        return float(np.min(pub)), float(np.max(pub))
    return mean - half, mean + half


def _interval_p(pub: np.ndarray, mean_new: float, n_new: int, kind: str) -> float:
    """Two-sided p-value of the test whose acceptance region is `_interval` (inside at level L <=> p >= 1 − L):
    t = (mean_new − mean_p) / (sd_p·sqrt(1/n_p + 1/n_new)) [prediction] or / (sd_p/√n_p) [ci], t(n_p − 1).
    NaN for `range` (no distribution behind it)."""
    if kind == "range":
        return float("nan")
    n, sd = len(pub), float(np.std(pub, ddof=1))
    diff = abs(mean_new - float(np.mean(pub)))
    scale = sd * np.sqrt(1 / n + 1 / n_new) if kind == "prediction" else sd / np.sqrt(n)
    if scale == 0:  # no published spread: a point interval
        return 1.0 if diff <= TOLERANCE else 0.0
    return float(2 * sps.t.sf(diff / scale, n - 1))


def adjusted_levels(p: np.ndarray, level: float, adjust: str) -> tuple[np.ndarray, np.ndarray]:
    """(the level each cell's interval is drawn at, adjusted p-values) for the m determinable cells.

    bonferroni: every cell at 1 − α/m. holm (step-down): cells by ascending p; the i-th (0-based) is
    tested at 1 − α/(m − i) while every earlier one fell outside; the first inside stops the procedure
    and every later cell is drawn at that same level (it is inside it: its p is no smaller). Both
    control the chance of any false "outside" over all m cells at α = 1 − level, whatever the
    dependence between cells (metrics of one run are strongly correlated)."""
    m, alpha = len(p), 1 - level
    if adjust == "none" or m == 0:
        return np.full(m, level), p.copy()
    if adjust == "bonferroni":
        return np.full(m, 1 - alpha / m), np.minimum(1.0, p * m)
    order = np.lexsort((np.arange(m), p))  # ascending p, ties in table order
    levels, adjusted = np.empty(m), np.empty(m)
    stop = None
    running = 0.0
    for i, cell in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[cell]))
        adjusted[cell] = running
        if stop is None and p[cell] > alpha / (m - i):
            stop = alpha / (m - i)
        levels[cell] = 1 - (stop if stop is not None else alpha / (m - i))
    return levels, adjusted


def _welch(new: np.ndarray, pub: np.ndarray) -> tuple[float, float, float, str]:
    if len(new) < 2 or len(pub) < 2:
        side = "new" if len(new) < 2 else "published"
        return np.nan, np.nan, np.nan, f"no Welch test: {side} side has {min(len(new), len(pub))} seed (needs 2)"
    v_new, v_pub = np.var(new, ddof=1) / len(new), np.var(pub, ddof=1) / len(pub)
    if v_new + v_pub == 0:
        return np.nan, np.nan, np.nan, "no Welch test: no spread on either side"
    with warnings.catch_warnings():  # one side without spread: scipy warns of lost precision; the test stands
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_ind(new, pub, equal_var=False)
    df = (v_new + v_pub) ** 2 / (v_new**2 / (len(new) - 1) + v_pub**2 / (len(pub) - 1))
    return float(result.statistic), float(df), float(result.pvalue), ""


def compare_tables(
    new: pd.DataFrame,
    published: pd.DataFrame,
    *,
    metric: str | Sequence[str] | None = None,
    level: float = 0.95,
    interval: str = "prediction",
    adjust: str = "none",
    kinds: Sequence[str] | None = ("transfer",),
) -> pd.DataFrame:
    """Per cell in either table: both sides' seeds and means, new − published, Welch t test, the published
    seeds' interval (`interval`, see top) and whether the new mean is inside it.

    `adjust` controls the multiple comparisons of many cells (see top): "none" reads each cell at `level`
    (about 1 − level of honest cells fall outside); "bonferroni" / "holm" make `level` family-wise over the
    determinable cells, so any "outside" at all is a false alarm with probability ≤ 1 − level. The interval
    columns are drawn at each cell's `test_level`; `inside_per_cell` is the unadjusted reading at `level`.
    Origins stay apart on both sides (a cell with paper and xrstudy rows gives one row per origin pair).
    `status`: inside / outside / undetermined (published side < 2 seeds: no interval) / only_new /
    only_published; rows by status (outside first), then by `interval_p`. Tables are not modified."""
    if interval not in INTERVALS:
        raise ValueError(f"interval={interval!r}; expected one of {INTERVALS}")
    if adjust not in ADJUSTMENTS:
        raise ValueError(f"adjust={adjust!r}; expected one of {ADJUSTMENTS}")
    if adjust != "none" and interval == "range":
        raise ValueError("interval 'range' has no p-value to adjust; use adjust 'none' or another interval")
    if not 0 < level < 1:
        raise ValueError(f"level={level}; expected a number between 0 and 1, e.g. 0.95")
    left, right = _side(new, metric, kinds), _side(published, metric, kinds)
    merged = left.merge(right, on=list(CELL), how="outer", suffixes=("_new", "_published"), indicator=True)
    rows, tested = [], []  # tested: (row, published seeds) of the cells with an interval
    for rec in merged.to_dict("records"):
        new_v, pub_v = (
            np.asarray(v if isinstance(v, list) else [], dtype=float)  # NaN: cell absent on that side
            for v in (rec["values_new"], rec["values_published"])
        )
        row = {c: rec[c] for c in CELL}
        row.update(
            origin_new=rec["origin_new"],
            origin_published=rec["origin_published"],
            interval=interval,
            **_describe(new_v, "new"),
            **_describe(pub_v, "published"),
            published_min=pub_v.min() if len(pub_v) else np.nan,
            published_max=pub_v.max() if len(pub_v) else np.nan,
            welch_t=np.nan,
            welch_df=np.nan,
            p_value=np.nan,
            interval_low=np.nan,
            interval_high=np.nan,
            inside=pd.NA,
            interval_p=np.nan,
            p_adjusted=np.nan,
            adjust=adjust,
            test_level=np.nan,
            inside_per_cell=pd.NA,
            reason="",
        )
        row["difference"] = row["mean_new"] - row["mean_published"]
        rows.append(row)
        if rec["_merge"] != "both":
            row["status"] = "only_new" if rec["_merge"] == "left_only" else "only_published"
            row["reason"] = "cell only in the new results" if len(new_v) else "cell only in the published results"
            continue
        row["welch_t"], row["welch_df"], row["p_value"], reason = _welch(new_v, pub_v)
        if len(pub_v) < 2:
            row["status"] = "undetermined"
            row["reason"] = "; ".join(r for r in (f"published side has {len(pub_v)} seed: no interval", reason) if r)
            continue
        lo, hi = _interval(pub_v, len(new_v), level, interval)
        row["inside_per_cell"] = bool(lo - TOLERANCE <= row["mean_new"] <= hi + TOLERANCE)
        row["interval_p"] = _interval_p(pub_v, row["mean_new"], len(new_v), interval)
        row["reason"] = reason
        tested.append((row, pub_v))
    p = np.array([row["interval_p"] for row, _ in tested], dtype=float)
    levels, adjusted = adjusted_levels(p, level, adjust)
    for (row, pub_v), cell_level, p_adj in zip(tested, levels, adjusted):
        lo, hi = _interval(pub_v, row["n_new"], float(cell_level), interval)
        row.update(interval_low=lo, interval_high=hi, test_level=float(cell_level), p_adjusted=float(p_adj))
        row["inside"] = bool(lo - TOLERANCE <= row["mean_new"] <= hi + TOLERANCE)
        row["status"] = "inside" if row["inside"] else "outside"
    out = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    out["inside"] = out["inside"].astype("boolean")
    out["inside_per_cell"] = out["inside_per_cell"].astype("boolean")
    order = {"outside": 0, "undetermined": 1, "inside": 2, "only_new": 3, "only_published": 4}
    out = out.sort_values(  # outside first, then the nearest misses (smallest interval p) first
        by=["status", "interval_p", *CELL], key=lambda s: s.map(order) if s.name == "status" else s, ignore_index=True
    )
    out.attrs.update(level=level, interval=interval, adjust=adjust, tested=len(tested))
    return out


def compare_summary(comparison: pd.DataFrame) -> dict[str, Any]:
    """Counts (compared = inside + outside + undetermined) and a one-line text under "line"."""
    counts = comparison["status"].value_counts()
    get = lambda name: int(counts.get(name, 0))  # noqa: E731
    summary = {
        "compared": get("inside") + get("outside") + get("undetermined"),
        "inside": get("inside"),
        "outside": get("outside"),
        "undetermined": get("undetermined"),
        "only_new": get("only_new"),
        "only_published": get("only_published"),
    }
    both = comparison[comparison["status"].isin(["inside", "outside", "undetermined"])]
    summary["new_origins"] = {str(k): int(v) for k, v in both["origin_new"].value_counts().sort_index().items()}
    summary["outside_per_cell"] = int((comparison["inside_per_cell"] == False).sum())  # noqa: E712 (NA-aware)
    interval = comparison.attrs.get("interval", "prediction")
    level = comparison.attrs.get("level", 0.95)
    adjust = comparison.attrs.get("adjust", "none")
    summary.update(adjust=adjust, level=level, interval=interval)
    how = f"the published seeds' {level:.0%} {interval} interval"
    if adjust != "none":
        tested = summary["inside"] + summary["outside"]
        how += (
            f" ({adjust.capitalize()}: family-wise over {tested} cells; each cell at its own {level:.0%}: "
            f"{summary['outside_per_cell']} outside)"
        )
    summary["line"] = (
        f"{summary['compared']} cells compared: {summary['inside']} inside, {summary['outside']} outside {how}"
        + (f", {summary['undetermined']} undetermined (published < 2 seeds)" if summary["undetermined"] else "")
        + f"; only in new {summary['only_new']}, only in published {summary['only_published']}"
        + (
            f" (new origins: {', '.join(f'{k} {v}' for k, v in summary['new_origins'].items())})"
            if len(summary["new_origins"]) > 1
            else ""
        )
    )
    return summary


def fails(summary: dict[str, Any]) -> bool:
    """For --fail-outside: True when any compared cell lies outside, or when no cell was compared (new and
    published share no cell: other names, another metric; a gate that checked nothing must not pass)."""
    return summary["outside"] > 0 or summary["compared"] == 0


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts for --json: NaN / NA -> None, numpy scalars -> Python."""
    plain = frame.astype(object).where(frame.notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in plain.to_dict("records")]


# ---- I/O (thin) ---------------------------------------------------------------------------------
def _paper_csv_table(path: Path) -> pd.DataFrame:
    """The paper's CSVs as the tidy table `import-legacy` followed by `table` would give (nothing written)."""
    return store.table_from_results(legacy.legacy_results(legacy.read_legacy(path)))


def published_rows(
    path: str | Path,
    *,
    csv_table: Callable[[Path], pd.DataFrame] = _paper_csv_table,
    store_table: Callable[[Path], pd.DataFrame] = store.table,
) -> pd.DataFrame:
    """The tidy table of `--against`: a folder of the paper's `finetuning_results_*.csv` or a results store.

    Parsing is the package's: `csv_table` turns a CSV folder into a tidy table (the legacy importer's rules:
    repeats merged, names mapped, a conflicting repeat an error naming its lines), `store_table` reads a
    store. A folder holding both kinds, or neither, is refused."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory; --against takes a folder of finetuning_results_*.csv or a store")
    has_csv = next(path.rglob("finetuning_results_*.csv"), None) is not None
    has_json = next(path.glob("*.json"), None) is not None
    if has_csv and has_json:
        raise ValueError(f"{path}: holds both finetuning_results_*.csv and result JSONs; point at one of them")
    if has_csv:
        return csv_table(path)
    if has_json:
        return store_table(path)
    raise ValueError(f"{path}: no finetuning_results_*.csv files and no result JSONs")


__all__ = [
    "CELL",
    "INTERVALS",
    "ADJUSTMENTS",
    "adjusted_levels",
    "seed_values",
    "bootstrap_means",
    "seeds_needed",
    "sd_for_half_width",
    "variance_table",
    "sd_by_shots",
    "compare_tables",
    "compare_summary",
    "fails",
    "json_records",
    "published_rows",
]
