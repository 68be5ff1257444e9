"""Scaling fits with honest uncertainty: error against model size or pre-training data, two laws.

    power       err = a·N^(−α)          (α may be negative: error that grows with N is reported, not hidden)
    saturating  err = a·N^(−α) + E∞     (a ≥ 0, 0 < α ≤ 5, E∞ ≥ 0)

err = 1 − metric (metrics are fractions: accuracy, mean AUC, mean AP). N = backbone parameters in
millions (`scale="model"`) or the fraction of the pre-training images (`scale="data"`; α does not
depend on the unit of N, `a` does). The issue's b and c are `alpha` and `e_inf` here, the names of
today's scaling_fits.csv.

How (NOTES.md has the reasoning):
- Least squares on every seed's error (equivalently: on the per-size means weighted by seeds). For a
  fixed α both laws are linear in (a, E∞), solved in closed form with the sign constraints; α is found
  on a grid and refined by golden section. Deterministic, no starting values, and vectorised: a
  bootstrap of 1000 refits takes ~15-30 ms.
- Bootstrap over seeds: seeds are resampled with replacement *within each size* (sizes are the design,
  seeds the noise), deviations from the size's mean scaled by sqrt(n/(n-1)) so a resampled mean has the
  unbiased variance s²/n. Percentile intervals for every parameter, stretched about the estimate by
  t(df)/z, df = runs − sizes (`stretched_quantiles`): with 3-5 seeds per size the plain percentile
  intervals cover ~89-92 %, these ~93-96 % (tests; n_boot 1000: 200 resamples lose ~2 points). A size
  with one seed adds no spread (the `note` says so). Randomness only from a numpy Generator passed in
  (tables: one stream per group, derived from `seed` and the group's key).
- Choice of law: AICc on the seed-level Gaussian likelihood (k = law parameters + 1 for σ); AICc, not
  AIC, because n (runs) is 6-30 and AIC's penalty is too small there. Undefined when n ≤ k + 1; then
  no law is chosen and the note says why.
- Leave-one-size-out: refit each law without one size, predict its mean error, report the absolute
  errors (mean, max, and the largest size's: the extrapolation that matters). A law needs at least as
  many remaining sizes as it has parameters.
- Fewer than three distinct sizes: refused (ValueError from the fitting functions; a row with `reason`
  in the tables). Groups with a single size are not a series and are left out of the tables.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

LAWS = {"saturating": 3, "power": 2}  # law -> parameters of the mean curve (tables list saturating first)
ALPHA_BOUNDS = {"saturating": (1e-3, 5.0), "power": (-5.0, 5.0)}
MIN_SIZES = 3
GRID_STEP = 0.05  # α grid before golden-section refinement (the profile RSS(α) is smooth at this scale)
GOLDEN_STEPS = 45  # point fits: the 2-grid-step bracket shrinks by 0.618^45, |Δα| < 1e-10
BOOT_STEPS = 24  # bootstrap refits: |Δα| < 1e-6, far inside any interval
SIGMA2_FLOOR = 1e-12  # σ̂² floor for the likelihood (σ = 1e-6 on a 0-1 error scale): noise-free fits stay finite
SCALE_COLUMNS = {"model": "params_m", "data": "data_fraction"}
# BiT backbones, millions of parameters (benchmarks/arch_params.csv rounded): the model-scale sizes of the
# fits and of the figures (xrstudy.plots.figures.ARCH_PARAMS_M), keyed by BiT short name.
BIT_PARAMS_M = {"50x1": 23.5, "50x3": 211.0, "101x1": 42.5, "101x3": 382.0, "152x2": 232.0, "152x4": 928.0}
_BIT = re.compile(r"resnetv2_(\d+x\d+)_bit")


# ---- the laws -----------------------------------------------------------------------------------
def power_law(c: np.ndarray | float, a: float, alpha: float, e_inf: float = 0.0) -> np.ndarray:
    """a·c^(−α) + E∞ (E∞ = 0: the pure power law)."""
    return a * np.power(np.asarray(c, dtype=float), -alpha) + e_inf


@dataclass(frozen=True)
class PowerLawFit:
    a: float
    alpha: float
    e_inf: float
    rss: float  # residual sum of squares of the per-size means (as before: points fitted = sizes)
    n: int  # distinct sizes fitted
    law: str = "saturating"

    def predict(self, c: np.ndarray | float) -> np.ndarray:
        return power_law(c, self.a, self.alpha, self.e_inf)


# ---- vectorised least squares -------------------------------------------------------------------
def _closed_form(sw, swx, swxx, swy, swyy, swxy, law: str):
    """Best (a, E∞) for fixed α from weighted sums (any matching shapes), and the weighted RSS.

    The saturating case is a 2-variable non-negative least squares: the unconstrained solution if it is
    feasible, else the better of the two faces (E∞ = 0; a = 0). Convex, so that is the optimum."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a0 = np.maximum(np.where(swxx > 0, swxy / swxx, 0.0), 0.0)  # face E∞ = 0 (and the power law)
        rss0 = swyy - 2 * a0 * swxy + a0 * a0 * swxx
        if law == "power":
            return a0, np.zeros_like(a0), np.maximum(rss0, 0.0)
        xm, ym = swx / sw, swy / sw
        sxx, sxy, syy = swxx - sw * xm * xm, swxy - sw * xm * ym, swyy - sw * ym * ym
        au = np.where(sxx > 0, sxy / sxx, 0.0)
        cu = ym - au * xm
        rssu = syy - au * sxy
    c1 = np.maximum(ym, 0.0)  # face a = 0: a constant
    rss1 = syy + sw * (ym - c1) ** 2
    feasible = (au >= 0) & (cu >= 0) & (sxx > 0)
    use0 = ~feasible & (rss0 <= rss1)
    a = np.where(feasible, au, np.where(use0, a0, 0.0))
    c = np.where(feasible, cu, np.where(use0, 0.0, c1))
    rss = np.where(feasible, rssu, np.where(use0, rss0, rss1))
    return a, c, np.maximum(rss, 0.0)


def _on_grid(grid: np.ndarray, logx: np.ndarray, y: np.ndarray, w: np.ndarray, law: str):
    """(a, E∞, RSS) for every row of y (r, s) at every α of grid (g,): arrays (r, g), via matrix products."""
    x = np.exp(-grid[:, None] * logx[None, :])  # (g, s)
    wy = w * y
    sums = (w.sum(1)[:, None], w @ x.T, w @ (x * x).T, wy.sum(1)[:, None], (wy * y).sum(1)[:, None], wy @ x.T)
    return _closed_form(*sums, law)


def _per_row(alpha: np.ndarray, logx: np.ndarray, y: np.ndarray, w: np.ndarray, law: str):
    """(a, E∞, RSS) for row i of y (r, s) at alpha[i]: arrays (r,). Centred sums and RSS from residuals:
    the golden-section steps need the precision that the grid's raw sums lose to cancellation."""
    x = np.exp(-alpha[:, None] * logx[None, :])  # (r, s)
    sw = w.sum(1)
    xm, ym = (w * x).sum(1) / sw, (w * y).sum(1) / sw
    dx, dy = x - xm[:, None], y - ym[:, None]
    sxx, sxy = (w * dx * dx).sum(1), (w * dx * dy).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a0 = np.maximum(np.where((w * x * x).sum(1) > 0, (w * x * y).sum(1) / (w * x * x).sum(1), 0.0), 0.0)
        au = np.where(sxx > 0, sxy / sxx, 0.0)
    rss0 = (w * (y - a0[:, None] * x) ** 2).sum(1)
    if law == "power":
        return a0, np.zeros_like(a0), rss0
    cu = ym - au * xm
    rssu = (w * (dy - au[:, None] * dx) ** 2).sum(1)
    c1 = np.maximum(ym, 0.0)
    rss1 = (w * (y - c1[:, None]) ** 2).sum(1)
    feasible = (au >= 0) & (cu >= 0) & (sxx > 0)
    use0 = ~feasible & (rss0 <= rss1)
    a = np.where(feasible, au, np.where(use0, a0, 0.0))
    c = np.where(feasible, cu, np.where(use0, 0.0, c1))
    return a, c, np.where(feasible, rssu, np.where(use0, rss0, rss1))


def _solve(
    logx: np.ndarray, y: np.ndarray, w: np.ndarray, law: str, steps: int = GOLDEN_STEPS
) -> tuple[np.ndarray, ...]:
    """Fit every row of y (r, s) with weights w (r, s): (a, α, E∞, weighted RSS), each (r,).

    a is for x = N / N_ref (the caller rescales). Grid over α, then golden section in the bracket
    around the best grid point (the profile RSS(α) is smooth; the grid guards against a second valley)."""
    w = np.ascontiguousarray(np.broadcast_to(w, y.shape), dtype=float)  # a broadcast view makes matmul slow
    lo, hi = ALPHA_BOUNDS[law]
    grid = np.linspace(lo, hi, int(round((hi - lo) / GRID_STEP)) + 1)
    rss = _on_grid(grid, logx, y, w, law)[2]
    k = np.argmin(rss, axis=1)
    left, right = grid[np.maximum(k - 1, 0)], grid[np.minimum(k + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2

    def profile(alpha: np.ndarray) -> np.ndarray:
        return _per_row(alpha, logx, y, w, law)[2]

    p, q = right - ratio * (right - left), left + ratio * (right - left)
    fp, fq = profile(p), profile(q)
    for _ in range(steps):
        move = fp > fq  # the minimum is in [p, right]: drop [left, p]; else drop [q, right]
        left, right = np.where(move, p, left), np.where(move, right, q)
        p, q = np.where(move, q, right - ratio * (right - left)), np.where(move, left + ratio * (right - left), p)
        fp, fq = np.where(move, fq, np.nan), np.where(move, np.nan, fp)
        f_new = profile(np.where(move, q, p))  # one new point per row
        fp, fq = np.where(move, fp, f_new), np.where(move, f_new, fq)
    alpha = (left + right) / 2
    a, c, rss_ref = _per_row(alpha, logx, y, w, law)
    at_grid = rss[np.arange(len(k)), k] < rss_ref  # refinement did not beat the grid (a minimum at a bound)
    if at_grid.any():
        ga, gc, grss = _per_row(grid[k], logx, y, w, law)
        alpha, a, c, rss_ref = (
            np.where(at_grid, g, v) for g, v in ((grid[k], alpha), (ga, a), (gc, c), (grss, rss_ref))
        )
    return a, alpha, c, rss_ref


def _prepare(x: Sequence[float], groups: Sequence[np.ndarray]) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Sizes → log(N/N_ref) with N_ref their geometric mean (conditioning), means and seed counts."""
    x = np.asarray(x, dtype=float)
    ref = float(np.exp(np.mean(np.log(x))))
    means = np.array([np.mean(g) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=float)
    return np.log(x / ref), ref, means, counts


def _check_sizes(x: np.ndarray, minimum: int = MIN_SIZES) -> None:
    distinct = len(np.unique(x))
    if distinct < minimum:
        raise ValueError(f"a scaling fit needs at least {minimum} distinct sizes, got {distinct}")


def _split(x: Sequence[float], e: Sequence[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Points (size, error) → distinct sizes and the errors at each; non-finite or N ≤ 0 dropped."""
    x, e = np.asarray(x, dtype=float), np.asarray(e, dtype=float)
    keep = np.isfinite(x) & np.isfinite(e) & (x > 0)
    x, e = x[keep], e[keep]
    sizes = np.unique(x)
    return sizes, [e[x == s] for s in sizes]


# ---- one curve ----------------------------------------------------------------------------------
def fit_law(x: Sequence[float], e: Sequence[float], law: str = "saturating") -> PowerLawFit:
    """Least-squares fit of one law to points (size, error); several points per size = seeds.

    ValueError with fewer than three distinct sizes."""
    if law not in LAWS:
        raise ValueError(f"law={law!r}; expected one of {tuple(LAWS)}")
    sizes, groups = _split(x, e)
    _check_sizes(sizes)
    logx, ref, means, counts = _prepare(sizes, groups)
    a, alpha, c, _ = _solve(logx, means[None, :], counts[None, :], law)
    a_n, alpha, e_inf = float(a[0] * ref ** alpha[0]), float(alpha[0]), float(c[0])
    rss = float(np.sum((means - power_law(sizes, a_n, alpha, e_inf)) ** 2))
    return PowerLawFit(a=a_n, alpha=alpha, e_inf=e_inf, rss=rss, n=len(sizes), law=law)


def fit_power_law(
    c: Sequence[float],
    e: Sequence[float],
    *,
    n_starts: int = 12,
    seed: int = 0,
    start: PowerLawFit | None = None,
    law: str = "saturating",
) -> PowerLawFit:
    """Compatibility: today's `fit_power_law` (the saturating law). `n_starts`, `seed` and `start` are
    accepted and unused: the α grid replaces the random starts."""
    return fit_law(c, e, law)


def _resample(groups: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, sizes) means of seeds resampled within each size (deviations scaled, see top)."""
    out = np.empty((n_boot, len(groups)))
    for j, g in enumerate(groups):
        n, mean = len(g), float(np.mean(g))
        if n == 1:
            out[:, j] = mean
            continue
        dev = (np.asarray(g, dtype=float) - mean) * np.sqrt(n / (n - 1))
        out[:, j] = mean + dev[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    return out


def stretched_quantiles(
    samples: np.ndarray, estimate: np.ndarray, level: float, df: int
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap samples (axis 0), stretched about the estimate by t(df)/z.

    The percentile bootstrap knows the seed noise only through its estimate from few seeds and so acts
    like a z interval; the stretch is the t correction (df = runs − sizes, the df of the pooled seed SD).
    Without it, 95 % intervals of 3-5 seeds per size cover ~90 % (tests: test_*_cover_*)."""
    tail = (1 - level) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail], axis=0)
    k = sps.t.ppf(1 - tail, df) / sps.norm.ppf(1 - tail) if df >= 1 else 1.0
    return estimate + (lo - estimate) * k, estimate + (hi - estimate) * k


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def bootstrap_law(
    x: Sequence[float],
    e: Sequence[float],
    law: str = "saturating",
    *,
    n_boot: int = 1000,
    rng: np.random.Generator | int | None = 0,
    level: float = 0.95,
    grid: np.ndarray | None = None,
) -> dict[str, Any]:
    """Point fit, bootstrap samples of (a, α, E∞), percentile intervals and a band on `grid`.

    Returns {"fit": PowerLawFit, "samples": (n_boot, 3) array, "ci": {param: (lo, hi)},
             "band": (grid, lo, hi) or None}. ValueError with fewer than three sizes."""
    fit = fit_law(x, e, law)
    sizes, groups = _split(x, e)
    logx, ref, means, counts = _prepare(sizes, groups)
    boot = _resample(groups, n_boot, _as_rng(rng))
    a, alpha, c, _ = _solve(logx, boot, np.broadcast_to(counts, boot.shape), law, BOOT_STEPS)
    samples = np.column_stack([a * ref**alpha, alpha, c])
    df = int(counts.sum()) - len(sizes)
    lo, hi = stretched_quantiles(samples, np.array([fit.a, fit.alpha, fit.e_inf]), level, df)
    # the t stretch may reach past a constraint of the law (a ≥ 0, E∞ ≥ 0, α in its bounds): no value
    # there is possible, so the interval ends at the bound (coverage can only gain)
    bounds_lo, bounds_hi = np.array([0.0, ALPHA_BOUNDS[law][0], 0.0]), np.array([np.inf, ALPHA_BOUNDS[law][1], np.inf])
    lo, hi = np.clip(lo, bounds_lo, bounds_hi), np.clip(hi, bounds_lo, bounds_hi)
    ci = {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(("a", "alpha", "e_inf"))}
    if law == "power":
        ci["e_inf"] = (float("nan"), float("nan"))  # not a parameter of the pure power law
    band = None
    if grid is not None:
        grid = np.asarray(grid, dtype=float)
        curves = samples[:, :1] * np.power(grid[None, :], -samples[:, 1:2]) + samples[:, 2:3]
        band_lo, band_hi = stretched_quantiles(curves, fit.predict(grid), level, df)
        band = (grid, band_lo, band_hi)
    return {"fit": fit, "samples": samples, "ci": ci, "band": band}


def information(x: Sequence[float], e: Sequence[float], fit: PowerLawFit) -> dict[str, float]:
    """Seed-level Gaussian likelihood of a fit: n_obs, rss_obs, AIC and AICc (k = law parameters + σ)."""
    x, e = np.asarray(x, dtype=float), np.asarray(e, dtype=float)
    keep = np.isfinite(x) & np.isfinite(e) & (x > 0)
    resid = e[keep] - fit.predict(x[keep])
    n, k = int(keep.sum()), LAWS[fit.law] + 1
    rss = float(np.sum(resid**2))
    aic = n * np.log(max(rss / n, SIGMA2_FLOOR)) + 2 * k
    aicc = aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else float("nan")
    return {"n_obs": n, "rss_obs": rss, "aic": float(aic), "aicc": float(aicc)}


def leave_one_size_out(x: Sequence[float], e: Sequence[float], law: str = "saturating") -> dict[str, Any]:
    """Refit without each size in turn and predict its mean error.

    Returns {"sizes", "abs_errors" (per size; NaN where too few sizes remain), "mae", "max", "largest",
    "reason"}. A law needs at least as many remaining sizes as parameters."""
    sizes, groups = _split(x, e)
    _check_sizes(sizes)
    logx, ref, means, counts = _prepare(sizes, groups)
    s = len(sizes)
    if s - 1 < LAWS[law]:
        nan = np.full(s, np.nan)
        return {
            "sizes": sizes,
            "abs_errors": nan,
            "mae": np.nan,
            "max": np.nan,
            "largest": np.nan,
            "reason": f"leave-one-out needs {LAWS[law] + 1} sizes for the {law} law, got {s}",
        }
    w = np.tile(counts, (s, 1))
    np.fill_diagonal(w, 0.0)  # row j leaves size j out
    a, alpha, c, _ = _solve(logx, np.tile(means, (s, 1)), w, law)
    pred = a * np.exp(-alpha * logx) + c
    err = np.abs(pred - means)
    return {
        "sizes": sizes,
        "abs_errors": err,
        "mae": float(err.mean()),
        "max": float(err.max()),
        "largest": float(err[-1]),
        "reason": "",
    }


# ---- compatibility: today's bootstrap_fit ----------------------------------------------------------
def bootstrap_fit(
    frame: pd.DataFrame,
    *,
    x: str,
    y: str,
    group: str = "seed",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
    grid: np.ndarray | None = None,
    law: str = "saturating",
) -> dict[str, object]:
    """Fit y against x (points = rows; `group` is the seed column, kept for the old signature) with
    bootstrap intervals over seeds within each size. `law="auto"` takes the law AICc prefers.

    Returns {"fit": PowerLawFit, "ci": {param: (lo, hi)}, "band": DataFrame(x, fit, lo, hi), "n_boot"}."""
    data = frame[[x, y]].dropna()
    xs, es = data[x].to_numpy(dtype=float), data[y].to_numpy(dtype=float)
    if law == "auto":
        law = _choose({name: information(xs, es, fit_law(xs, es, name)) for name in LAWS}) or "saturating"
    sizes, _ = _split(xs, es)
    _check_sizes(sizes)
    grid = np.geomspace(sizes.min(), sizes.max(), 50) if grid is None else np.asarray(grid, dtype=float)
    out = bootstrap_law(xs, es, law, n_boot=n_boot, rng=seed, level=level, grid=grid)
    fit = out["fit"]
    band = pd.DataFrame({x: grid, "fit": fit.predict(grid), "lo": out["band"][1], "hi": out["band"][2]})
    return {"fit": fit, "ci": out["ci"], "band": band, "n_boot": n_boot}


def _choose(info: Mapping[str, Mapping[str, float]]) -> str | None:
    values = {law: i["aicc"] for law, i in info.items()}
    if any(not np.isfinite(v) for v in values.values()):
        return None
    return min(values, key=lambda law: (values[law], LAWS[law]))  # a tie goes to the simpler law


# ---- one series, ready to draw ------------------------------------------------------------------
@dataclass(frozen=True)
class FitCurve:
    """A fitted series as a figure draws it: the law (`chosen_by` says how it was picked), the point fit,
    the interval of every parameter and the band of the curve (DataFrame x, fit, lo, hi; error units)."""

    law: str
    chosen_by: str  # "aicc" | "fallback: ..." | "asked"
    fit: PowerLawFit
    ci: dict[str, tuple[float, float]]
    band: pd.DataFrame
    n_boot: int
    level: float
    note: str = ""

    def label(self) -> str:
        """e.g. 'saturating, α = 0.41 [0.30, 0.55]': the law and the exponent with its interval."""
        lo, hi = self.ci["alpha"]
        return f"{self.law}, α = {self.fit.alpha:.2f} [{lo:.2f}, {hi:.2f}]"


def fit_curve(
    x: Sequence[float],
    e: Sequence[float],
    *,
    law: str = "auto",
    n_boot: int = 1000,
    seed: int | np.random.Generator = 0,
    level: float = 0.95,
    grid: np.ndarray | None = None,
) -> FitCurve:
    """Fit one series (points: size, error; several per size = seeds) for a figure: the curve and its band.

    `law="auto"` takes the law AICc prefers; where AICc is undefined (too few runs) it draws the power
    law, the one with fewer parameters (with three sizes the saturating law passes through every mean,
    which says nothing). ValueError with fewer than three sizes, as every fit here."""
    sizes, groups = _split(x, e)
    _check_sizes(sizes)
    note = ""
    if law == "auto":
        info = {name: information(x, e, fit_law(x, e, name)) for name in LAWS}
        law = _choose(info) or "power"
        chosen_by = "aicc" if _choose(info) else f"fallback: AICc undefined with {info[law]['n_obs']} runs"
    elif law in LAWS:
        chosen_by = "asked"
    else:
        raise ValueError(f"law={law!r}; expected 'auto' or one of {tuple(LAWS)}")
    if min(len(g) for g in groups) < 2:
        note = "a size with one seed: the band understates the spread"
    grid = np.geomspace(sizes.min(), sizes.max(), 50) if grid is None else np.asarray(grid, dtype=float)
    out = bootstrap_law(x, e, law, n_boot=n_boot, rng=seed, level=level, grid=grid)
    fit = out["fit"]
    band = pd.DataFrame({"x": grid, "fit": fit.predict(grid), "lo": out["band"][1], "hi": out["band"][2]})
    return FitCurve(law, chosen_by, fit, out["ci"], band, n_boot, level, note)


# ---- tables -------------------------------------------------------------------------------------
FIT_COLUMNS = [
    "law",
    "chosen",
    "n",
    "n_obs",
    "min_seeds",
    "x_min",
    "x_max",
    "a",
    "a_lo",
    "a_hi",
    "alpha",
    "alpha_lo",
    "alpha_hi",
    "e_inf",
    "e_inf_lo",
    "e_inf_hi",
    "rss",
    "rss_obs",
    "aic",
    "aicc",
    "delta_aicc",
    "loo_mae",
    "loo_max",
    "loo_largest",
    "loo_errors",
    "n_boot",
    "level",
    "reason",
    "note",
]


def _group_rng(seed: int | np.random.Generator, key: tuple) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng([int(seed), zlib.crc32(repr(key).encode())])


def fit_group(
    x: Sequence[float],
    e: Sequence[float],
    *,
    laws: Sequence[str] = tuple(LAWS),
    n_boot: int = 1000,
    rng: np.random.Generator | int | None = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """One row per law for one series: estimates, intervals, RSS, AIC/AICc, chosen flag, leave-one-out.

    Fewer than three sizes: rows with NaN estimates and `reason` (nothing raised)."""
    rng = _as_rng(rng)
    sizes, groups = _split(x, e)
    base = {
        "n": len(sizes),
        "n_obs": int(sum(len(g) for g in groups)),
        "min_seeds": min((len(g) for g in groups), default=0),
        "n_boot": n_boot,
        "level": level,
        "x_min": float(sizes.min()) if len(sizes) else np.nan,
        "x_max": float(sizes.max()) if len(sizes) else np.nan,
    }
    rows = []
    if len(sizes) < MIN_SIZES:
        reason = f"refused: {len(sizes)} distinct sizes; a scaling fit needs at least {MIN_SIZES}"
        return [
            {
                **dict.fromkeys(FIT_COLUMNS, np.nan),
                **base,
                "law": law,
                "chosen": False,
                "n_boot": 0,
                "loo_errors": "",
                "reason": reason,
                "note": "",
            }
            for law in laws
        ]
    info = {}
    for law in laws:
        out = bootstrap_law(x, e, law, n_boot=n_boot, rng=rng, level=level)
        fit = out["fit"]
        info[law] = information(x, e, fit)
        loo = leave_one_size_out(x, e, law)
        lo_b, hi_b = ALPHA_BOUNDS[law]
        notes = [loo["reason"]]
        if np.isclose(fit.alpha, lo_b) or np.isclose(fit.alpha, hi_b):
            notes.append(f"alpha at its bound {fit.alpha:g}")
        if base["min_seeds"] < 2:
            notes.append("a size with one seed: intervals understate the spread")
        row = {
            **base,
            "law": law,
            "a": fit.a,
            "alpha": fit.alpha,
            "e_inf": fit.e_inf if law == "saturating" else 0.0,
            "rss": fit.rss,
            **info[law],
            "loo_mae": loo["mae"],
            "loo_max": loo["max"],
            "loo_largest": loo["largest"],
            "loo_errors": ";".join(f"{s:g}:{v:.6g}" for s, v in zip(loo["sizes"], loo["abs_errors"]) if np.isfinite(v)),
            "reason": "",
        }
        for name, (lo, hi) in out["ci"].items():
            row[f"{name}_lo"], row[f"{name}_hi"] = lo, hi
        row["_notes"] = notes
        rows.append(row)
    chosen = _choose(info) if len(laws) > 1 else laws[0]  # one law asked for: it is the choice
    best = min((i["aicc"] for i in info.values()), default=np.nan)
    for row in rows:
        row["chosen"] = row["law"] == chosen
        row["delta_aicc"] = row["aicc"] - best if np.isfinite(best) else np.nan
        notes = row.pop("_notes")
        if len(laws) > 1 and chosen is None:
            notes.append(f"no law chosen: AICc needs more than {LAWS['saturating'] + 2} runs, got {row['n_obs']}")
        row["note"] = "; ".join(n for n in notes if n)
    return rows


def fit_table(
    frame: pd.DataFrame,
    *,
    x: str | None = None,
    y: str | None = None,
    by: Sequence[str] | None = None,
    group: str = "seed",
    scale: str | None = None,
    sizes: Mapping[str, float] | None = None,
    laws: Sequence[str] = tuple(LAWS),
    n_boot: int = 1000,
    seed: int | np.random.Generator = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per (group, law): see FIT_COLUMNS. Two ways to call it:

    - `fit_table(table, scale="model" | "data", sizes=..., n_boot=, seed=)`: the tidy results table in;
      error = 1 − value of transfer `test/` metrics against model size (`sizes`: arch → parameters in
      millions; or a `params_m` column) or data fraction, per target, metric, init_label (the series),
      origin, shots and the other axis (data_fraction for model scale, arch for data scale).
    - `fit_table(frame, x=, y=, by=)`: any frame (today's signature; y is fitted as it is).

    Groups with one size are left out; with two, refused rows say why. `group` (seed column) is unused:
    each row is one seed's point. Groups get their own random stream (seed + group key)."""
    if scale is not None:
        data, x, y, by = _scale_frame(frame, scale, sizes)
    elif x is None or y is None or by is None:
        raise ValueError("fit_table needs scale=... (tidy table) or x=, y= and by=")
    else:
        data = frame
    by = list(by)
    rows = []
    for key, part in data.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        part = part[np.isfinite(part[x].astype(float)) & np.isfinite(part[y].astype(float))]
        if part[x].nunique() < 2:
            continue
        for row in fit_group(
            part[x].to_numpy(float),
            part[y].to_numpy(float),
            laws=laws,
            n_boot=n_boot,
            rng=_group_rng(seed, key),
            level=level,
        ):
            rows.append({**dict(zip(by, key)), **row})
    out = pd.DataFrame(rows, columns=[*by, *FIT_COLUMNS])
    if scale is not None:
        out.insert(0, "scale", scale)
        out.insert(1, "x", x)
    return out


def _params(arch: str, sizes: Mapping[str, float]) -> float:
    """Parameters of `arch` from `sizes` keyed by full name, name without tag, or BiT short name (50x1)."""
    base = arch.split(".", 1)[0]
    match = _BIT.fullmatch(base)
    for name in (arch, base, match.group(1) if match else None):
        if name is not None and name in sizes:
            return float(sizes[name])
    return float("nan")


BY = {
    "model": ["target", "metric", "init_label", "train_mode", "origin", "shots", "shot", "data_fraction"],
    "data": ["target", "metric", "init_label", "train_mode", "origin", "shots", "shot", "arch"],
}


def _scale_frame(table: pd.DataFrame, scale: str, sizes: Mapping[str, float] | None):
    if scale not in SCALE_COLUMNS:
        raise ValueError(f"scale={scale!r}; expected one of {tuple(SCALE_COLUMNS)}")
    data = table
    if "kind" in data.columns:
        data = data[data["kind"] == "transfer"]
    data = data[data["metric"].astype(str).str.startswith("test/")]
    if "train_mode" not in data.columns:  # a table written before linear probes: every run a fine-tune
        data = data.assign(train_mode="finetune")
    x = SCALE_COLUMNS[scale]
    if scale == "model" and "params_m" not in data.columns:
        if sizes is None:
            raise ValueError('scale="model" needs sizes= (arch -> parameters in millions) or a params_m column')
        data = data.assign(params_m=data["arch"].map(lambda a: _params(str(a), sizes)))
    data = data.assign(error=1.0 - data["value"].astype(float))
    # one point per seed: two runs of one seed at one size (a re-run) are averaged, as in stats.seed_values
    data = data.groupby([*BY[scale], x, "seed"], sort=True, dropna=False)["error"].mean().reset_index()
    return data, x, "error", BY[scale]


SCALING_FITS_COLUMNS = [
    "scale",
    "x",
    "target",
    "metric",
    "init_label",
    "train_mode",
    "origin",
    "shots",
    "shot",
    "arch",
    "data_fraction",
    *FIT_COLUMNS,
]


def scaling_fits(
    table: pd.DataFrame,
    *,
    sizes: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """`scaling_fits.csv`: both scales, one row per (scale, series group, law); refusals included.
    `sizes`: arch → parameters in millions (default BIT_PARAMS_M)."""
    sizes = BIT_PARAMS_M if sizes is None else sizes
    frames = [fit_table(table, scale=s, sizes=sizes, n_boot=n_boot, seed=seed, level=level) for s in SCALE_COLUMNS]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=SCALING_FITS_COLUMNS)
    return pd.concat(frames, ignore_index=True).reindex(columns=SCALING_FITS_COLUMNS)


__all__ = [
    "LAWS",
    "power_law",
    "PowerLawFit",
    "fit_law",
    "fit_power_law",
    "bootstrap_law",
    "bootstrap_fit",
    "information",
    "leave_one_size_out",
    "fit_group",
    "fit_table",
    "scaling_fits",
    "FIT_COLUMNS",
    "SCALING_FITS_COLUMNS",
    "FitCurve",
    "fit_curve",
    "BIT_PARAMS_M",
    "MIN_SIZES",
]
