"""Power-law fits recover known parameters; bootstrap CIs cover them; pure and seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xrstudy.results import scaling


def test_the_old_power_law_fit_recovers_known_parameters_without_noise():
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


BIT_SIZES = np.array([23.5, 42.5, 211.0, 382.0, 928.0])  # BiT backbones, millions of parameters


FRACTIONS = np.array([0.01, 0.03, 0.1, 0.3, 1.0])


def draw(sizes, seeds, a, alpha, e_inf, noise, rng) -> tuple[np.ndarray, np.ndarray]:
    x = np.repeat(sizes, seeds)
    return x, scaling.power_law(x, a, alpha, e_inf) + rng.normal(0, noise, len(x))


@pytest.mark.parametrize("law, truth", [("saturating", (5.0, 0.3, 0.12)), ("power", (5.0, 0.3, 0.0))])
def test_recovers_known_parameters_without_noise(law, truth):
    c = np.geomspace(1e3, 1e7, 9)
    fit = scaling.fit_law(c, scaling.power_law(c, *truth), law)
    assert (fit.a, fit.alpha, fit.e_inf) == (
        pytest.approx(truth[0], rel=1e-5),
        pytest.approx(truth[1], rel=1e-5),
        pytest.approx(truth[2], abs=1e-7),
    )
    assert fit.law == law and fit.n == 9 and fit.rss < 1e-20


def test_power_law_may_grow_with_size():
    fit = scaling.fit_law(BIT_SIZES, scaling.power_law(BIT_SIZES, 0.1, -0.2), "power")  # error rises with N
    assert fit.alpha == pytest.approx(-0.2, abs=1e-6)


@pytest.mark.parametrize("law, truth", [("saturating", (0.8, 0.5, 0.1)), ("power", (0.8, 0.3, 0.0))])
def test_leave_one_size_out_is_exact_on_noise_free_data(law, truth):
    loo = scaling.leave_one_size_out(BIT_SIZES, scaling.power_law(BIT_SIZES, *truth), law)
    assert loo["mae"] < 1e-7 and loo["largest"] < 1e-7 and loo["reason"] == ""
    assert list(loo["sizes"]) == list(BIT_SIZES)


def test_leave_one_size_out_reports_the_held_out_error():
    rng = np.random.default_rng(5)
    x, e = draw(BIT_SIZES, 1, 0.8, 0.5, 0.1, 0.0, rng)
    e[-1] += 0.05  # the largest size off the curve: predicting it from the rest misses by about that much
    loo = scaling.leave_one_size_out(x, e, "power")
    assert loo["largest"] == pytest.approx(0.05, abs=0.02) and loo["largest"] == loo["max"]
    short = scaling.leave_one_size_out(BIT_SIZES[:3], np.array([0.3, 0.2, 0.15]), "saturating")
    assert np.isnan(short["mae"]) and "needs 4 sizes" in short["reason"]


def test_fewer_than_three_sizes_refused_with_the_reason():
    x, e = np.array([23.5, 23.5, 928.0, 928.0]), np.array([0.3, 0.31, 0.2, 0.21])
    for call in (
        lambda: scaling.fit_law(x, e),
        lambda: scaling.bootstrap_law(x, e, n_boot=10),
        lambda: scaling.leave_one_size_out(x, e),
        lambda: scaling.fit_power_law([1, 2], [0.5, 0.4]),
    ):
        with pytest.raises(ValueError, match="at least 3 distinct sizes, got 2"):
            call()
    rows = scaling.fit_group(x, e, n_boot=10)
    assert [r["law"] for r in rows] == ["saturating", "power"]
    assert all(
        r["reason"].startswith("refused: 2 distinct sizes") and np.isnan(r["alpha"]) and not r["chosen"] for r in rows
    )


def coverage(law, truth, sizes, seeds, noise, replicates=200, n_boot=1000):
    """Share of replicate data sets whose interval holds the true value, per parameter."""
    rng = np.random.default_rng(20221)
    hits = np.zeros(3)
    for _ in range(replicates):
        x, e = draw(sizes, seeds, *truth, noise, rng)
        ci = scaling.bootstrap_law(x, e, law, n_boot=n_boot, rng=rng)["ci"]
        hits += [ci[p][0] <= t <= ci[p][1] for p, t in zip(("a", "alpha", "e_inf"), truth)]
    return hits / replicates


def test_saturating_intervals_cover_the_true_parameters_at_their_nominal_rate():
    # 200 replicates: the binomial SD of a 95 % coverage is 0.015; the tolerance is ±0.05 (3 SD).
    # (With 3 seeds per size coverage drops to ~0.92: percentile intervals have no t correction.)
    rates = coverage("saturating", (0.8, 0.5, 0.1), BIT_SIZES, seeds=5, noise=0.005)
    assert np.all(np.abs(rates - 0.95) <= 0.05), rates


def test_power_law_intervals_cover_on_the_data_scale():
    rates = coverage("power", (0.05, 0.3, 0.0), FRACTIONS, seeds=5, noise=0.005)[:2]
    assert np.all(np.abs(rates - 0.95) <= 0.05), rates


def test_bootstrap_is_seeded_and_leaves_global_state_alone():
    x, e = draw(BIT_SIZES, 4, 0.8, 0.5, 0.1, 0.005, np.random.default_rng(1))
    state = np.random.get_state()[1].copy()
    one = scaling.bootstrap_law(x, e, n_boot=50, rng=np.random.default_rng(3))
    two = scaling.bootstrap_law(x, e, n_boot=50, rng=np.random.default_rng(3))
    assert one["ci"] == two["ci"] and np.array_equal(one["samples"], two["samples"])
    assert one["ci"] != scaling.bootstrap_law(x, e, n_boot=50, rng=np.random.default_rng(4))["ci"]
    assert np.array_equal(np.random.get_state()[1], state)


def test_aicc_prefers_the_law_the_data_came_from():
    rng = np.random.default_rng(11)
    sat = scaling.fit_group(*draw(BIT_SIZES, 4, 2.0, 0.8, 0.15, 0.004, rng), n_boot=50, rng=rng)
    power = scaling.fit_group(*draw(BIT_SIZES, 4, 0.5, 0.25, 0.0, 0.004, rng), n_boot=50, rng=rng)
    chosen = lambda rows: [r["law"] for r in rows if r["chosen"]]  # noqa: E731
    assert chosen(sat) == ["saturating"] and chosen(power) == ["power"]
    for rows in (sat, power):
        assert sorted(r["delta_aicc"] for r in rows)[0] == 0.0 and all(r["n_obs"] == 20 for r in rows)


def test_no_law_chosen_when_aicc_is_undefined():
    rows = scaling.fit_group(BIT_SIZES, scaling.power_law(BIT_SIZES, 0.8, 0.5, 0.1), n_boot=10)  # 5 runs
    assert not any(r["chosen"] for r in rows) and all("no law chosen" in r["note"] for r in rows)
    assert all("one seed" in r["note"] for r in rows)


ARCHS = {"resnetv2_50x1_bit": 23.5, "resnetv2_101x1_bit.goog_in21k": 42.5, "resnetv2_152x4_bit": 928.0}


def tidy(seeds=(0, 1, 2), fractions=(0.1, 0.3, 1.0)) -> pd.DataFrame:
    """error = 0.1 + 0.1·f^-0.5·(P/23.5)^-0.2 (+0.05 at 10 shots), as tests/stores.py's store."""
    rng = np.random.default_rng(0)
    rows = []
    for arch, params in ARCHS.items():
        for f in fractions:
            for shots in (10, 0):
                for seed in seeds:
                    error = 0.1 + 0.1 * f**-0.5 * (params / 23.5) ** -0.2 + (0.05 if shots else 0.0)
                    rows.append(
                        dict(
                            run_id=f"r{len(rows)}",
                            kind="transfer",
                            target="padchest-cl",
                            arch=arch,
                            init_label="chexpert",
                            pretrained_model="chexpert",
                            shots=shots,
                            shot="full_shot" if shots == 0 else f"{shots}_shot",
                            seed=seed,
                            metric="test/auc",
                            value=1 - error - rng.normal(0, 0.002),
                            origin="xrstudy",
                            data_fraction=f,
                        )
                    )
    rows.append({**rows[0], "kind": "pretrain", "run_id": "p"})  # never fitted
    return pd.DataFrame(rows)


SIZES = {"50x1": 23.5, "101x1": 42.5, "resnetv2_152x4_bit": 928.0}  # short and full names both work


def test_fit_table_on_the_tidy_table_both_scales():
    table = tidy()
    before = table.copy()
    fits = scaling.scaling_fits(table, sizes=SIZES, n_boot=40, seed=0)
    pd.testing.assert_frame_equal(table, before)
    assert list(fits.columns) == scaling.SCALING_FITS_COLUMNS
    # 2 shots x 3 fractions (model) + 2 shots x 3 archs (data), two laws each
    assert len(fits) == 24 and (fits.reason == "").all() and set(fits.law) == {"saturating", "power"}
    data = fits[(fits.scale == "data") & (fits.shot == "full_shot") & (fits.arch == "resnetv2_50x1_bit")]
    sat = data[data.law == "saturating"].iloc[0]
    assert data.iloc[0].law == "saturating"  # saturating first, as figures' tests read iloc[0]
    assert sat.alpha == pytest.approx(0.5, abs=0.15) and sat.alpha_lo <= sat.alpha <= sat.alpha_hi
    assert sat.e_inf_lo <= sat.e_inf <= sat.e_inf_hi and sat.a_lo <= sat.a <= sat.a_hi
    model = fits[(fits.scale == "model") & (fits.shot == "full_shot") & (fits.data_fraction == 1.0)].iloc[0]
    assert model.n == 3 and model.rss < 1e-3 and model.x == "params_m" and np.isnan(model.arch)
    assert fits.groupby(["scale", "shot", "arch", "data_fraction"], dropna=False).chosen.sum().max() <= 1
    again = scaling.scaling_fits(table, sizes=SIZES, n_boot=40, seed=0)
    pd.testing.assert_frame_equal(fits, again)


def test_fit_table_refuses_two_sizes_and_skips_one():
    table = tidy()
    two = table[table.arch != "resnetv2_152x4_bit"]
    fits = scaling.fit_table(two, scale="model", sizes=SIZES, n_boot=10)
    assert len(fits) == 12 and fits.reason.str.startswith("refused: 2 distinct sizes").all()
    one = table[table.arch == "resnetv2_50x1_bit"]
    assert scaling.fit_table(one, scale="model", sizes=SIZES, n_boot=10).empty
    with pytest.raises(ValueError, match="sizes="):
        scaling.fit_table(table, scale="model")
    with pytest.raises(ValueError, match="scale="):
        scaling.fit_table(table, scale="compute", sizes=SIZES)


def test_origins_are_separate_series():
    table = tidy()
    paper = table.assign(origin="paper", value=table.value - 0.02)
    fits = scaling.fit_table(pd.concat([table, paper]), scale="data", n_boot=10)
    assert set(fits.origin) == {"paper", "xrstudy"} and len(fits) == 24


def test_old_api_still_works():
    rng = np.random.default_rng(1)
    rows = [
        (x, s, scaling.power_law(x, 2.0, 0.5, 0.1) + rng.normal(0, 0.003))
        for s in range(5)
        for x in np.geomspace(1e2, 1e6, 8)
    ]
    frame = pd.DataFrame(rows, columns=["images", "seed", "error"])
    out = scaling.bootstrap_fit(frame, x="images", y="error", n_boot=60, seed=3)
    assert isinstance(out["fit"], scaling.PowerLawFit) and out["ci"]["alpha"][0] <= 0.5 <= out["ci"]["alpha"][1]
    band = out["band"]
    assert list(band.columns) == ["images", "fit", "lo", "hi"] and len(band) == 50
    assert (band.lo <= band.fit + 1e-9).all() and (band.fit <= band.hi + 1e-9).all()
    assert scaling.bootstrap_fit(frame, x="images", y="error", n_boot=60, seed=3)["ci"] == out["ci"]
    auto = scaling.bootstrap_fit(frame, x="images", y="error", n_boot=20, law="auto")
    assert auto["fit"].law == "saturating"
    fit = scaling.fit_power_law(frame.images, frame.error)
    assert fit.predict(1e4) == pytest.approx(scaling.power_law(1e4, fit.a, fit.alpha, fit.e_inf))
    # fit_table(x=, y=, by=): one saturating row per group with >= 3 sizes, as before, once refusals are dropped
    few = pd.DataFrame({"images": [1.0, 2.0], "seed": [0, 0], "error": [0.5, 0.4], "source": "c"})
    table = scaling.fit_table(
        pd.concat([frame.assign(source="a"), few]),
        x="images",
        y="error",
        by=["source"],
        n_boot=20,
        laws=("saturating",),
    )
    assert list(table.source) == ["a", "c"] and list(table[table.reason == ""].source) == ["a"]
    assert table.chosen.iloc[0]
