"""Power-law fits recover known parameters; bootstrap CIs cover them; pure and seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xrstudy.results import scaling


def test_recovers_known_parameters_without_noise():
    c = np.geomspace(1e3, 1e7, 9)
    fit = scaling.fit_power_law(c, scaling.power_law(c, 5.0, 0.3, 0.12))
    assert fit.a == pytest.approx(5.0, rel=1e-3)
    assert fit.alpha == pytest.approx(0.3, rel=1e-3)
    assert fit.e_inf == pytest.approx(0.12, abs=1e-4)


def _noisy(seeds=5, noise=0.003, a=2.0, alpha=0.5, e_inf=0.1) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    c = np.geomspace(1e2, 1e6, 8)
    rows = [(x, s, scaling.power_law(x, a, alpha, e_inf) + rng.normal(0, noise)) for s in range(seeds) for x in c]
    return pd.DataFrame(rows, columns=["images", "seed", "error"])


def test_bootstrap_ci_covers_truth_and_is_seeded():
    frame = _noisy()
    out = scaling.bootstrap_fit(frame, x="images", y="error", n_boot=60, seed=3)
    lo, hi = out["ci"]["alpha"]
    assert lo <= 0.5 <= hi and hi - lo < 0.3
    assert out["ci"]["e_inf"][0] <= 0.1 <= out["ci"]["e_inf"][1] + 0.01
    band = out["band"]
    assert (band.lo <= band.fit + 1e-9).all() and (band.fit <= band.hi + 1e-9).all()
    again = scaling.bootstrap_fit(frame, x="images", y="error", n_boot=60, seed=3)
    assert again["ci"] == out["ci"]


def test_fit_table_one_row_per_group_and_law_and_needs_three_points():
    frame = pd.concat([_noisy().assign(source="a"), _noisy(alpha=0.3).assign(source="b")])
    few = pd.DataFrame({"images": [1.0, 2.0], "seed": [0, 0], "error": [0.5, 0.4], "source": "c"})
    table = scaling.fit_table(
        pd.concat([frame, few]), x="images", y="error", by=["source"], n_boot=20, laws=("saturating",)
    )
    assert list(table.source) == ["a", "b", "c"]  # c: two sizes, a refused row that says why
    fitted = table[table.reason == ""]
    assert list(fitted.source) == ["a", "b"]
    assert fitted.set_index("source").alpha["b"] == pytest.approx(0.3, abs=0.08)
    assert table.set_index("source").reason["c"].startswith("refused: 2 distinct sizes")
    with pytest.raises(ValueError, match="3 distinct"):
        scaling.fit_power_law([1, 2], [0.5, 0.4])


def test_inputs_not_mutated():
    frame = _noisy(seeds=2)
    before = frame.copy()
    scaling.bootstrap_fit(frame, x="images", y="error", n_boot=5)
    pd.testing.assert_frame_equal(frame, before)
