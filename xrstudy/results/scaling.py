"""Scaling-law fits: E(C) = a·C^(−α) + E∞, least squares from several starts, bootstrap CIs over seeds.

Pure functions: arrays / DataFrames in, numbers / DataFrames out; randomness only through the
`seed` argument (numpy Generator), never global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares


def power_law(c: np.ndarray | float, a: float, alpha: float, e_inf: float) -> np.ndarray:
    return a * np.power(np.asarray(c, dtype=float), -alpha) + e_inf


@dataclass(frozen=True)
class PowerLawFit:
    a: float
    alpha: float
    e_inf: float
    rss: float  # residual sum of squares
    n: int  # points fitted

    def predict(self, c: np.ndarray | float) -> np.ndarray:
        return power_law(c, self.a, self.alpha, self.e_inf)


def fit_power_law(
    c: Sequence[float], e: Sequence[float], *, n_starts: int = 12, seed: int = 0, start: PowerLawFit | None = None
) -> PowerLawFit:
    """Least-squares fit of E(C) = a·C^(−α) + E∞ with a > 0, 0 < α ≤ 5, 0 ≤ E∞ ≤ min(E).

    C is rescaled by its geometric mean for conditioning; the best of several starts (a grid over α and
    E∞ plus random ones) is kept, since the problem has flat valleys where a single start stalls.
    `start` (e.g. the fit on all seeds) replaces the grid: one warm start, for bootstrap resamples.
    """
    c = np.asarray(c, dtype=float)
    e = np.asarray(e, dtype=float)
    keep = np.isfinite(c) & np.isfinite(e) & (c > 0)
    c, e = c[keep], e[keep]
    if len(np.unique(c)) < 3:
        raise ValueError(f"a power-law fit needs at least 3 distinct C values, got {len(np.unique(c))}")
    scale = float(np.exp(np.mean(np.log(c))))
    x = c / scale
    e_min = float(e.min())

    def residuals(p: np.ndarray) -> np.ndarray:
        return p[0] * np.power(x, -p[1]) + p[2] - e

    rng = np.random.default_rng(seed)
    grid = [(alpha, frac) for alpha in (0.1, 0.5, 1.0) for frac in (0.0, 0.5, 0.9)]
    grid += [(rng.uniform(0.01, 3.0), rng.uniform(0.0, 0.99)) for _ in range(max(0, n_starts - len(grid)))]
    if start is not None:
        grid = [(min(max(start.alpha, 1e-3), 5.0), min(start.e_inf / e_min, 0.999) if e_min > 0 else 0.0)]
    best = None
    for alpha0, frac in grid:
        e0 = frac * e_min
        a0 = max(float(np.mean((e - e0) * np.power(x, alpha0))), 1e-9)  # a given α and E∞
        fit = least_squares(
            residuals,
            x0=[a0, alpha0, e0],
            bounds=([1e-12, 1e-6, 0.0], [np.inf, 5.0, max(e_min, 1e-12)]),
            method="trf",
        )
        if best is None or fit.cost < best.cost:
            best = fit
    a_scaled, alpha, e_inf = (float(v) for v in best.x)
    return PowerLawFit(a=a_scaled * scale**alpha, alpha=alpha, e_inf=e_inf, rss=2.0 * float(best.cost), n=len(c))


def bootstrap_fit(
    frame: pd.DataFrame,
    *,
    x: str,
    y: str,
    group: str = "seed",
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    grid: np.ndarray | None = None,
) -> dict[str, object]:
    """Fit on the mean over `group` (seeds) per x; CIs by resampling the seeds with replacement.

    Returns {"fit": PowerLawFit, "ci": {param: (lo, hi)}, "band": DataFrame(x, fit, lo, hi)}.
    """
    data = frame[[x, y, group]].dropna()
    wide = data.pivot_table(index=x, columns=group, values=y, aggfunc="mean").sort_index()
    xs = wide.index.to_numpy(dtype=float)
    fit = fit_power_law(xs, wide.mean(axis=1).to_numpy(), seed=seed)
    grid = np.geomspace(xs.min(), xs.max(), 50) if grid is None else np.asarray(grid, dtype=float)
    rng = np.random.default_rng(seed)
    columns = wide.columns.to_numpy()
    params, curves = [], []
    for _ in range(n_boot):
        chosen = rng.choice(columns, size=len(columns), replace=True)
        means = wide[chosen].mean(axis=1).to_numpy()
        ok = np.isfinite(means)
        if ok.sum() < 3:
            continue
        try:
            boot = fit_power_law(xs[ok], means[ok], start=fit)
        except ValueError:
            continue
        params.append((boot.a, boot.alpha, boot.e_inf))
        curves.append(boot.predict(grid))
    tail = (1.0 - level) / 2.0
    if params:
        lo, hi = np.quantile(np.asarray(params), [tail, 1.0 - tail], axis=0)
        band_lo, band_hi = np.quantile(np.asarray(curves), [tail, 1.0 - tail], axis=0)
    else:  # one seed only: no spread to resample
        lo = hi = np.array([fit.a, fit.alpha, fit.e_inf])
        band_lo = band_hi = fit.predict(grid)
    ci = {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(("a", "alpha", "e_inf"))}
    band = pd.DataFrame({x: grid, "fit": fit.predict(grid), "lo": band_lo, "hi": band_hi})
    return {"fit": fit, "ci": ci, "band": band, "n_boot": len(params)}


def fit_table(
    frame: pd.DataFrame,
    *,
    x: str,
    y: str,
    by: Sequence[str],
    group: str = "seed",
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per `by` group with ≥ 3 distinct x: a, α, E∞, their CIs, RSS, points and resamples."""
    rows = []
    for key, part in frame.groupby(list(by), sort=True):
        if part[x].nunique() < 3:
            continue
        out = bootstrap_fit(part, x=x, y=y, group=group, n_boot=n_boot, seed=seed)
        fit, ci = out["fit"], out["ci"]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(asdict(fit))
        for name, (lo, hi) in ci.items():
            row[f"{name}_lo"], row[f"{name}_hi"] = lo, hi
        row["n_boot"] = out["n_boot"]
        rows.append(row)
    columns = [
        *by,
        "a",
        "alpha",
        "e_inf",
        "rss",
        "n",
        "a_lo",
        "a_hi",
        "alpha_lo",
        "alpha_hi",
        "e_inf_lo",
        "e_inf_hi",
        "n_boot",
    ]
    return pd.DataFrame(rows, columns=columns)


__all__ = ["power_law", "PowerLawFit", "fit_power_law", "bootstrap_fit", "fit_table"]
