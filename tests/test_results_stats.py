"""Seed variance per cell and new-vs-published comparison: hand-computed numbers, planted offsets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import EXAMPLE, PAPER_FORMAT, TESTS
from scipy import stats as sps

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.results import legacy, scaling, stats, store
from xrstudy.results import store as results

LEGACY = Path(__file__).parent / "data" / "legacy"


def row(
    target="cifar10",
    model="imagenet21k_bit152x4",
    shots=0,
    seed=0,
    value=0.5,
    metric="test/acc",
    origin="xrstudy",
    kind="transfer",
    run_id=None,
    data_fraction=1.0,
) -> dict:
    return dict(
        run_id=run_id or f"{origin}-{target}-{model}-{shots}-{seed}-{metric}-{value}",
        kind=kind,
        target=target,
        arch="resnetv2_152x4_bit",
        init="paper",
        init_label=model.rsplit("_bit", 1)[0],
        pretrained_model=model,
        shots=shots,
        shot="full_shot" if shots == 0 else f"{shots}_shot",
        seed=seed,
        metric=metric,
        value=value,
        origin=origin,
        last_step=1,
        sources="",
        data_fraction=data_fraction,
    )


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


# ---- variance -----------------------------------------------------------------------------------
def test_seeds_needed_hand_computed():
    # smallest n with t(0.975, n-1)·sd/√n ≤ 0.01: sd 0.01 -> 7 (n=6: 2.571/2.449 > 1; n=7: 2.447/2.646 ≤ 1)
    assert stats.seeds_needed(0.01) == 7
    assert stats.seeds_needed(0.02) == 18  # n=17: 2·2.120/4.123 > 1; n=18: 2·2.110/4.243 ≤ 1
    assert stats.seeds_needed(0.0) == 2 and np.isnan(stats.seeds_needed(float("nan")))
    for sd in (0.003, 0.01, 0.05):  # the definition itself: n satisfies it, n - 1 does not
        n = int(stats.seeds_needed(sd))
        assert sps.t.ppf(0.975, n - 1) * sd / np.sqrt(n) <= 0.01
        assert n == 2 or sps.t.ppf(0.975, n - 2) * sd / np.sqrt(n - 1) > 0.01


def test_variance_hand_computed_duplicates_origins_and_single_seeds():
    rows = [row(seed=s, value=v) for s, v in zip((0, 1, 2), (0.70, 0.71, 0.72))]
    rows.append(row(seed=0, value=0.70, run_id="rerun-of-seed-0"))  # a second run of seed 0: one seed value
    rows += [row(seed=s, value=v, origin="paper") for s, v in zip((0, 1), (0.60, 0.62))]  # same cell, other origin
    rows.append(row(model="chexpert_bit50x1", seed=0, value=0.4))  # one seed
    rows.append(row(model="chexpert_bit50x1", seed=1, value=float("nan")))  # a null metric: left out
    rows.append(row(seed=0, value=0.3, metric="valid/acc"))  # not a test metric
    rows.append(row(seed=0, value=0.3, kind="pretrain", target="chexpert"))  # not a transfer run
    table = frame(rows)
    before = table.copy()
    var = stats.variance_table(table, n_boot=4000, seed=1)
    pd.testing.assert_frame_equal(table, before)
    assert list(var.columns) == stats.VARIANCE_COLUMNS and len(var) == 3
    new = var[(var.origin == "xrstudy") & (var.pretrained_model == "imagenet21k_bit152x4")].iloc[0]
    assert (new.n_seeds, new.n_runs) == (3, 4)
    assert new["mean"] == pytest.approx(0.71) and new.sd == pytest.approx(0.01)
    half = 4.302653 * 0.01 / np.sqrt(3)  # t(0.975, 2)
    assert (new.t_low, new.t_high) == (pytest.approx(0.71 - half), pytest.approx(0.71 + half))
    # bootstrap (t-stretched): around the mean, close to the t interval
    assert new.ci_low < 0.71 < new.ci_high
    assert (new.ci_high - new.ci_low) / (new.t_high - new.t_low) == pytest.approx(1.0, abs=0.25)
    assert new.seeds_for_half_width == 7
    paper = var[var.origin == "paper"].iloc[0]
    assert (paper.n_seeds, paper["mean"], paper.sd) == (2, pytest.approx(0.61), pytest.approx(0.02 / np.sqrt(2)))
    assert paper.seeds_for_half_width == 11  # sd 0.01414: n=10: 2.262/3.162·1.414 > 1; n=11: 2.228/3.317·1.414 ≤ 1
    single = var[var.pretrained_model == "chexpert_bit50x1"].iloc[0]
    assert single.n_seeds == 1 and single["mean"] == 0.4
    assert np.isnan([single.sd, single.ci_low, single.ci_high, single.seeds_for_half_width]).all()


def test_variance_is_seeded_per_cell():
    rows = [row(seed=s, value=v) for s, v in enumerate((0.70, 0.715, 0.69, 0.74, 0.705, 0.73))]
    other = [row(target="flowers102", seed=s, value=0.9 - 0.02 * s) for s in range(4)]
    alone = stats.variance_table(frame(rows), seed=3)
    both = stats.variance_table(frame(rows + other), seed=3)
    again = stats.variance_table(frame(rows + other), seed=3)
    pd.testing.assert_frame_equal(both, again)
    # a cell's interval does not move when other cells enter the table (one stream per cell)
    assert both[both.target == "cifar10"].ci_low.iloc[0] == alone.ci_low.iloc[0]
    other_seed = stats.variance_table(frame(rows), seed=4).iloc[0]
    assert (other_seed.ci_low, other_seed.ci_high) != (alone.ci_low.iloc[0], alone.ci_high.iloc[0])


@pytest.mark.parametrize("seeds", [2, 3])  # two: the t interval (a 2-value bootstrap covers 93 %)
def test_variance_interval_covers_the_true_mean_at_its_nominal_rate(seeds):
    # 1000 cells, N(0.5, 0.01): the binomial SD of a 95 % coverage is 0.007
    rng = np.random.default_rng(3)
    rows = [
        row(model=f"m{i}_bit50x1", seed=s, value=0.5 + rng.normal(0, 0.01)) for i in range(1000) for s in range(seeds)
    ]
    var = stats.variance_table(frame(rows), n_boot=1000)
    assert ((var.ci_low <= 0.5) & (0.5 <= var.ci_high)).mean() == pytest.approx(0.95, abs=0.02)
    assert ((var.t_low <= 0.5) & (0.5 <= var.t_high)).mean() == pytest.approx(0.95, abs=0.02)


def test_bootstrap_means_have_the_unbiased_variance():
    values = np.array([0.1, 0.2, 0.6])
    boot = stats.bootstrap_means(values, 200_000, np.random.default_rng(0))
    assert boot.var() == pytest.approx(values.var(ddof=1) / 3, rel=0.02)  # s²/n, not (n-1)/n of it


def test_sd_by_shots_places_full_shot_right_of_the_largest_k():
    rows = [row(shots=k, seed=s, value=0.5 + 0.01 * s * (k + 1)) for k in (1, 10, 0) for s in range(3)]
    data = stats.sd_by_shots(stats.variance_table(frame(rows)))
    assert list(data.shot) == ["1_shot", "10_shot", "full_shot"] and list(data.x) == [1, 10, 100]


# ---- compare ------------------------------------------------------------------------------------
TARGETS, MODELS, SHOTS = (
    ("cifar10", "padchest-cl"),
    ("imagenet21k_bit152x4", "chexpert_bit50x1", "nih_bit50x1"),
    (10, 0),
)
PLANTED = {
    ("cifar10", "chexpert_bit50x1", 10): +0.06,
    ("padchest-cl", "imagenet21k_bit152x4", 0): -0.05,
    ("padchest-cl", "nih_bit50x1", 10): +0.08,
}


def published_and_new(planted=PLANTED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """5 published seeds per cell (SD 0.01); new = the same seeds + 0.002, planted cells + their offset."""
    rng = np.random.default_rng(7)
    pub, new = [], []
    for t in TARGETS:
        for m in MODELS:
            for k in SHOTS:
                base = 0.6 + 0.1 * rng.random()
                values = base + rng.normal(0, 0.01, 5)
                pub += [row(t, m, k, s, v, origin="paper") for s, v in enumerate(values)]
                new += [row(t, m, k, s, v + 0.002 + planted.get((t, m, k), 0.0)) for s, v in enumerate(values)]
    return frame(pub), frame(new)


def test_compare_flags_exactly_the_planted_cells():
    pub, new = published_and_new()
    before = (pub.copy(), new.copy())
    out = stats.compare_tables(new, pub)
    pd.testing.assert_frame_equal(pub, before[0])
    pd.testing.assert_frame_equal(new, before[1])
    assert list(out.columns) == stats.COMPARE_COLUMNS
    flagged = {(r.target, r.pretrained_model, r.shots) for r in out[out.status == "outside"].itertuples()}
    assert flagged == set(PLANTED)
    assert (out.status != "inside").sum() == len(PLANTED) and out.inside.sum() == len(out) - len(PLANTED)
    for r in out[out.status == "outside"].itertuples():
        assert r.difference == pytest.approx(0.002 + PLANTED[(r.target, r.pretrained_model, r.shots)])
        assert r.p_value < 0.001 and r.origin_new == "xrstudy" and r.origin_published == "paper"
    summary = stats.compare_summary(out)
    assert {k: summary[k] for k in ("compared", "inside", "outside", "only_new", "only_published")} == {
        "compared": 12,
        "inside": 9,
        "outside": 3,
        "only_new": 0,
        "only_published": 0,
    }
    assert stats.fails(summary) and "3 outside" in summary["line"] and "\n" not in summary["line"]
    calm = stats.compare_summary(stats.compare_tables(published_and_new(planted={})[1], pub))
    assert calm["outside"] == 0 and not stats.fails(calm)


def test_compare_interval_welch_and_one_sided_cells():
    pub, new = published_and_new(planted={})
    cell = (pub.target == "cifar10") & (pub.pretrained_model == "nih_bit50x1") & (pub.shots == 0)
    pub_v, new_v = pub[cell].value.to_numpy(), new[cell].value.to_numpy()
    # one seed on the new side of one cell; one seed on the published side of another
    one_new = (new.target == "padchest-cl") & (new.pretrained_model == "nih_bit50x1") & (new.shots == 0)
    one_pub = (pub.target == "padchest-cl") & (pub.pretrained_model == "chexpert_bit50x1") & (pub.shots == 0)
    new = new[~one_new | (new.seed == 0)]
    pub = pub[~one_pub | (pub.seed == 0)]
    extra = frame([row("flowers102", "nih_bit50x1", 0, s, 0.9) for s in range(3)])  # only new
    gone = (
        (new.target == "cifar10") & (new.pretrained_model == "chexpert_bit50x1") & (new.shots == 10)
    )  # only published
    out = stats.compare_tables(pd.concat([new[~gone], extra]), pub).set_index(["target", "pretrained_model", "shots"])

    r = out.loc[("cifar10", "nih_bit50x1", 0)]
    welch = sps.ttest_ind(new_v, pub_v, equal_var=False)
    assert (r.welch_t, r.p_value) == (pytest.approx(welch.statistic), pytest.approx(welch.pvalue))
    half = sps.t.ppf(0.975, 4) * pub_v.std(ddof=1) * np.sqrt(1 / 5 + 1 / 5)  # prediction interval, 5 new seeds
    assert (r.interval_low, r.interval_high) == (pytest.approx(pub_v.mean() - half), pytest.approx(pub_v.mean() + half))
    assert r.status == "inside" and r.interval == "prediction"

    r = out.loc[("padchest-cl", "nih_bit50x1", 0)]
    assert r.n_new == 1 and np.isnan(r.welch_t) and "new side has 1 seed" in r.reason
    assert r.status in ("inside", "outside") and np.isfinite(r.interval_low)  # the interval still applies
    r = out.loc[("padchest-cl", "chexpert_bit50x1", 0)]
    assert r.status == "undetermined" and pd.isna(r.inside) and "published side has 1 seed" in r.reason
    assert out.loc[("flowers102", "nih_bit50x1", 0)].status == "only_new"
    assert out.loc[("cifar10", "chexpert_bit50x1", 10)].status == "only_published"
    summary = stats.compare_summary(out.reset_index())
    assert (summary["only_new"], summary["only_published"], summary["undetermined"]) == (1, 1, 1)
    assert summary["compared"] == summary["inside"] + summary["outside"] + summary["undetermined"] == 11


def test_compare_interval_kinds():
    pub = frame([row(seed=s, value=v, origin="paper") for s, v in enumerate((0.70, 0.72, 0.74))])
    new = frame([row(seed=s, value=0.745) for s in range(3)])
    by = {kind: stats.compare_tables(new, pub, interval=kind).iloc[0] for kind in stats.INTERVALS}
    assert (by["range"].interval_low, by["range"].interval_high) == (0.70, 0.74) and by["range"].status == "outside"
    ci = 4.302653 * 0.02 / np.sqrt(3)
    assert by["ci"].interval_high == pytest.approx(0.72 + ci)
    assert by["prediction"].interval_high == pytest.approx(0.72 + ci * np.sqrt(2))
    with pytest.raises(ValueError, match="interval"):
        stats.compare_tables(new, pub, interval="minmax")


def test_origins_stay_apart_in_compare():
    pub, new = published_and_new()
    both = pd.concat([new, pub])  # a store holding new runs and the imported paper rows
    out = stats.compare_tables(both, pub)
    assert set(out.origin_new) == {"xrstudy", "paper"} and len(out) == 24
    assert (out[out.origin_new == "paper"].status == "inside").all()  # the paper against itself
    assert (out[out.origin_new == "paper"].difference == 0).all()
    summary = stats.compare_summary(out)
    assert summary["outside"] == 3 and summary["new_origins"] == {"paper": 12, "xrstudy": 12}


def test_json_records_are_json():
    pub, new = published_and_new()
    one_seed = new.iloc[:-4]  # the last cell keeps one new seed: NaN Welch statistics
    records = stats.json_records(stats.compare_tables(one_seed, pub.iloc[:-4]))  # ... and one published: NA inside
    json.dumps(records, allow_nan=False)  # raises on NaN
    assert any(r["inside"] is None and r["welch_t"] is None for r in records)
    assert isinstance(records[0]["n_new"], int) and isinstance(records[0]["mean_new"], float)
    json.dumps(stats.json_records(stats.variance_table(new)), allow_nan=False)


def test_missing_columns_are_an_error():
    with pytest.raises(ValueError, match="missing columns"):
        stats.variance_table(pd.DataFrame({"value": [1.0]}))


# ---- the readers of `--against`: the package's own ----------------------------------------------
def test_published_rows_from_csv_folder_or_store_and_planted_store(tmp_path):
    csv_dir = LEGACY
    readers = dict(
        csv_table=lambda d: results.table_from_results(legacy.legacy_results(legacy.read_legacy(d))),
        store_table=results.table,
    )
    paper = stats.published_rows(csv_dir, **readers)
    assert len(paper) == 135 and set(paper.origin) == {"paper"}  # 225 CSV rows, repeats merged

    # A store with the imported paper rows and new runs of every paper cell: +0.002, planted cells off.
    store = tmp_path / "store"
    legacy.import_legacy(csv_dir, store)
    planted = {
        ("cifar10", "imagenet21k_bit50x1", 10, "test/acc"): 0.06,
        ("padchest-cl", "chexpert_bit50x1", 0, "test/auc"): -0.05,
        ("padchest-cl", "imagenet1k_bit50x1", 1, "test/ap"): 0.07,
    }
    for (target, model, shots, seed, arch, label), part in paper.groupby(
        ["target", "pretrained_model", "shots", "seed", "arch", "init_label"]
    ):
        metrics = {m: v + 0.002 + planted.get((target, model, shots, m), 0.0) for m, v in zip(part.metric, part.value)}
        cfg = RunConfig(
            kind="transfer",
            target=target,
            shots=int(shots),
            seed=int(seed),
            arch=arch,
            init="paper",
            init_label=label,
            out_dir="unused",
        )
        results.save(results.new_result(cfg, metrics), store)
    new = results.table(store)
    assert set(new.origin) == {"paper", "xrstudy"}
    assert len(stats.published_rows(store, **readers)) == 270

    out = stats.compare_tables(new, stats.published_rows(csv_dir, **readers))
    flagged = {(r.target, r.pretrained_model, r.shots, r.metric) for r in out[out.status == "outside"].itertuples()}
    assert flagged == set(planted)
    assert (out[out.origin_new == "paper"].status == "inside").all()
    summary = stats.compare_summary(out)
    assert (summary["compared"], summary["outside"], summary["only_new"], summary["only_published"]) == (90, 3, 0, 0)

    with pytest.raises(ValueError, match="not a directory"):
        stats.published_rows(tmp_path / "nowhere", **readers)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finetuning_results"):
        stats.published_rows(tmp_path / "empty", **readers)
    (store / "finetuning_results_x_acc.csv").write_text((csv_dir / "finetuning_results_cifar10_acc.csv").read_text())
    with pytest.raises(ValueError, match="both"):
        stats.published_rows(store, **readers)


@pytest.mark.slow
def test_importing_the_modules_imports_no_torch_and_no_matplotlib():
    code = (
        "from xrstudy.results import stats, scaling; import sys; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- many cells: multiple-comparison control ------------------------------------------------------
def test_holm_and_bonferroni_keep_the_family_wise_false_alarm_rate():
    # 200 honest reproductions of 20 cells (published and new seeds from one distribution, 3 each). Per
    # cell, ~1 - 0.95^20 = 64 % of them show a cell outside; adjusted, at most 5 % (binomial SD 0.015).
    rng = np.random.default_rng(21)
    reps, cells = 200, 20
    pub, new = [], []
    for i in range(reps * cells):
        mean = 0.5 + 0.3 * rng.random()
        pub += [row(model=f"m{i}_bit50x1", seed=s, value=mean + rng.normal(0, 0.01), origin="paper") for s in range(3)]
        new += [row(model=f"m{i}_bit50x1", seed=s, value=mean + rng.normal(0, 0.01)) for s in range(3)]
    out = stats.compare_tables(frame(new), frame(pub))
    p = out.set_index("pretrained_model").interval_p.reindex([f"m{i}_bit50x1" for i in range(reps * cells)])
    assert (out.status == "outside").mean() == pytest.approx(0.05, abs=0.01)  # each cell at its nominal rate
    alarms = dict.fromkeys(stats.ADJUSTMENTS, 0)
    for one in p.to_numpy().reshape(reps, cells):
        for adjust in stats.ADJUSTMENTS:
            levels, adjusted = stats.adjusted_levels(one, 0.95, adjust)
            alarms[adjust] += bool((one < 1 - levels).any())
            assert ((adjusted <= 0.05) == (one < 1 - levels)).all()  # adjusted p-values tell the same
    rates = {k: v / reps for k, v in alarms.items()}
    assert rates["none"] == pytest.approx(1 - 0.95**cells, abs=0.1)
    assert rates["bonferroni"] <= rates["holm"] <= 0.05 + 0.035, rates


def test_holm_steps_down_as_written():
    # Four cells, 3 published seeds (SD 0.01) each, and new means at chosen distances: Holm by hand.
    pub = frame(
        [
            row(model=f"m{i}_bit50x1", seed=s, value=v, origin="paper")
            for i in range(4)
            for s, v in enumerate((0.49, 0.50, 0.51))
        ]
    )
    offsets = (0.40, 0.065, 0.05, 0.0)  # p: ~0, 0.0154, 0.0256, 1
    new = frame([row(model=f"m{i}_bit50x1", seed=s, value=0.5 + d) for i, d in enumerate(offsets) for s in range(3)])
    out = {a: stats.compare_tables(new, pub, adjust=a).set_index("pretrained_model") for a in stats.ADJUSTMENTS}
    scale = 0.01 * np.sqrt(2 / 3)
    p = {f"m{i}_bit50x1": 2 * sps.t.sf(d / scale, 2) for i, d in enumerate(offsets)}
    assert out["none"].interval_p.to_dict() == pytest.approx(p)
    holm = out["holm"]
    # steps: p(m0) <= .05/4 and p(m1) <= .05/3: outside; p(m2) > .05/2 stops: m2, m3 inside at level 1 - .05/2
    assert p["m0_bit50x1"] <= 0.05 / 4 and p["m1_bit50x1"] <= 0.05 / 3 and p["m2_bit50x1"] > 0.05 / 2
    assert holm.status.to_dict() == {
        "m0_bit50x1": "outside",
        "m1_bit50x1": "outside",
        "m2_bit50x1": "inside",
        "m3_bit50x1": "inside",
    }
    assert holm.test_level.to_dict() == pytest.approx(
        {"m0_bit50x1": 1 - 0.05 / 4, "m1_bit50x1": 1 - 0.05 / 3, "m2_bit50x1": 1 - 0.05 / 2, "m3_bit50x1": 1 - 0.05 / 2}
    )
    assert holm.p_adjusted["m1_bit50x1"] == pytest.approx(max(4 * p["m0_bit50x1"], 3 * p["m1_bit50x1"]))
    # per cell, m2 is outside too; Bonferroni (every cell at 1 - .05/4) flags m0 only, Holm m0 and m1
    assert holm.inside_per_cell.to_dict() == {
        "m0_bit50x1": False,
        "m1_bit50x1": False,
        "m2_bit50x1": False,
        "m3_bit50x1": True,
    }
    assert list(out["none"].status).count("outside") == 3
    assert set(out["bonferroni"][out["bonferroni"].status == "outside"].index) == {"m0_bit50x1"}
    summary = stats.compare_summary(holm.reset_index())
    assert (summary["outside"], summary["outside_per_cell"], summary["adjust"]) == (2, 3, "holm")
    assert "Holm: family-wise over 4 cells" in summary["line"]
    with pytest.raises(ValueError, match="range"):
        stats.compare_tables(new, pub, interval="range", adjust="holm")
    with pytest.raises(ValueError, match="adjust"):
        stats.compare_tables(new, pub, adjust="fdr")


LEGACY = TESTS / "data" / "legacy"


# Planted offsets (fractions) on cells whose 3 published seeds have SD 0.01: two far enough to be found over
# all 90 cells at a family-wise 95 % (Holm: t(2) beyond ~42 published SDs), one only per cell.
FAR = {
    ("cifar10", "chexpert_bit50x1", 1, "test/acc"): 0.40,
    ("padchest-cl", "imagenet21k_bit152x4", 0, "test/auc"): -0.45,
}


NEAR = {("padchest-cl", "chexpert_bit50x1", 10, "test/ap"): 0.06}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A store of the imported paper rows plus a new run of every paper cell: +0.002, planted cells off."""
    folder = tmp_path_factory.mktemp("planted") / "store"
    legacy.import_legacy(LEGACY, folder)
    paper = store.table(folder)
    offsets = FAR | NEAR
    for (target, model, shots, seed, arch, label), part in paper.groupby(
        ["target", "pretrained_model", "shots", "seed", "arch", "init_label"]
    ):
        metrics = {m: v + 0.002 + offsets.get((target, model, shots, m), 0.0) for m, v in zip(part.metric, part.value)}
        cfg = RunConfig(
            kind="transfer", target=target, shots=int(shots), seed=int(seed), arch=arch, init="paper", init_label=label
        )
        store.save(store.new_result(cfg, metrics), folder)
    return folder


def flagged(cells: list[dict], key: str = "status", outside=("outside",)) -> set[tuple]:
    return {(c["target"], c["pretrained_model"], c["shots"], c["metric"]) for c in cells if c[key] in outside}


def test_variance_of_the_paper_format_fixtures(capsys, tmp_path):
    code, out, _ = run(
        ["results", "variance", "--results", str(PAPER_FORMAT), "--json", "--out", str(tmp_path)], capsys
    )
    report = json.loads(out)
    cells = report["cells"]
    assert code == 0 and len(cells) == 45 and {c["origin"] for c in cells} == {"paper"}
    # every fixture cell: 3 seeds 1 point apart (SD 0.01): ±1 point needs 7 seeds (t(0.975, 6)·0.01/√7 ≤ 0.01)
    assert all(c["n_seeds"] == 3 and c["sd"] == pytest.approx(0.01) and c["seeds_for_half_width"] == 7 for c in cells)
    assert all(c["ci_low"] < c["mean"] < c["ci_high"] for c in cells)
    # one SD-against-shots figure per (target, metric): PNG, PDF and the rows drawn
    names = sorted(Path(p).name for p in report["figures"])
    assert names == sorted(
        f"variance_{t}_{m}.{ext}"
        for t, m in (("cifar10", "acc"), ("padchest-cl", "ap"), ("padchest-cl", "auc"))
        for ext in ("png", "pdf", "csv")
    )
    code, out, _ = run(["results", "variance", "--results", str(PAPER_FORMAT)], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1 + 45 + 1 and lines[-1].startswith("45 cells, in points")
    first = lines[1].split()  # k-shot rows before full shot, in points
    assert first[:5] == ["cifar10", "test/acc", "chexpert_bit50x1", "1_shot", "paper"] and first[6:8] == ["40.0", "1.0"]


def test_variance_of_the_demo_store_is_seeded(capsys):
    code, out, _ = run(["results", "variance", "--results", str(EXAMPLE), "--json", "--seed", "3"], capsys)
    again = run(["results", "variance", "--results", str(EXAMPLE), "--json", "--seed", "3"], capsys)[1]
    cells = json.loads(out)["cells"]
    # the demo: 3 inits x 2 targets x 4 shot counts x 3 metrics, fine-tuned and linearly probed
    assert code == 0 and out == again and len(cells) == 144
    # fine-tuned: 4 seeds per few-shot cell, 2 per full-shot cell; probes: 2 seeds
    seeds = {(c["train_mode"], c["shots"] > 0, c["n_seeds"]) for c in cells}
    assert seeds == {("finetune", True, 4), ("finetune", False, 2), ("probe", True, 2), ("probe", False, 2)}
    # in text, a probe's line says so: otherwise it reads as a second fine-tune of the same model and shots
    lines = run(["results", "variance", "--results", str(EXAMPLE)], capsys)[1].splitlines()[1:-1]
    models = [line[25:60].strip() for line in lines if line.startswith("digits         test/acc")]
    assert len(models) == 3 * 4 * 2 and len(set(models)) == 3 * 2
    assert sum(m.endswith(" probe") for m in models) == 3 * 4
    # intervals in text stay within what a fraction can be (two seeds: a t interval reaches far past it);
    # --json keeps them as computed
    shown = [float(v) for line in lines for v in re.findall(r"\[(-?[\d.]+), (-?[\d.]+)\]", line)[0]]
    assert min(shown) >= 0.0 and max(shown) <= 100.0
    assert min(c["ci_low"] for c in cells) < 0.0


def test_results_compare_flags_exactly_the_planted_cells(planted, capsys):
    code, out, err = run(["results", "compare", "--against", str(LEGACY), "--results", str(planted), "--json"], capsys)
    report = json.loads(out)
    summary, cells = report["summary"], report["cells"]
    assert code == 0 and not err  # no --fail-outside: the exit status says nothing about the cells
    # 45 new cells and the store's 45 imported paper cells, each against the paper's CSV rows
    assert (summary["compared"], summary["only_new"], summary["only_published"]) == (90, 0, 0)
    assert summary["new_origins"] == {"paper": 45, "xrstudy": 45} and summary["adjust"] == "holm"
    assert flagged(cells) == set(FAR)  # family-wise: only the far offsets
    assert flagged(cells, "inside_per_cell", (False,)) == set(FAR) | set(NEAR)  # per cell: all three
    assert summary["outside"] == 2 and summary["outside_per_cell"] == 3
    for cell in cells:
        key = (cell["target"], cell["pretrained_model"], cell["shots"], cell["metric"])
        if cell["origin_new"] == "xrstudy":
            assert cell["difference"] == pytest.approx(0.002 + (FAR | NEAR).get(key, 0.0))
        else:  # the paper's own rows against the paper's CSVs
            assert cell["difference"] == 0 and cell["status"] == "inside"

    code, out, _ = run(
        ["results", "compare", "--against", str(LEGACY), "--results", str(planted), "--adjust", "none", "--json"],
        capsys,
    )
    assert code == 0 and flagged(json.loads(out)["cells"]) == set(FAR) | set(NEAR)


def test_fail_outside_sets_the_exit_status(planted, capsys):
    argv = ["results", "compare", "--against", str(LEGACY), "--results", str(planted), "--fail-outside"]
    code, out, err = run(argv, capsys)
    assert code == 1 and "2 cells outside" in err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["outside", "outside", "inside*"]  # outside first
    assert "* outside its own 95% interval, inside once adjusted (holm)" in out
    assert lines[-1].startswith("values in points (×100); 90 cells compared: 88 inside, 2 outside")
    # the same store against the paper's rows alone: nothing planted there, nothing outside
    paper_only = run(
        [
            "results",
            "compare",
            "--against",
            str(LEGACY),
            "--results",
            str(PAPER_FORMAT),
            "--fail-outside",
            "--adjust",
            "none",
        ],
        capsys,
    )
    assert paper_only[0] == 0 and "45 cells compared: 45 inside, 0 outside" in paper_only[1]
    # a gate that compared nothing fails: the demo store shares no cell with the paper's rows
    nothing = run(["results", "compare", "--against", str(LEGACY), "--results", str(EXAMPLE), "--fail-outside"], capsys)
    assert nothing[0] == 1 and "0 cells compared" in nothing[1]
    assert "no cell compared (none on both sides): failing (--fail-outside)" in nothing[2]
    assert run(["results", "compare", "--against", str(LEGACY), "--results", str(EXAMPLE)], capsys)[0] == 0


def test_interval_range_reads_each_cell_alone_by_default(planted, capsys):
    """min-max of the published seeds has no p-value, so no Holm adjustment: --interval range alone works."""
    code, out, err = run(
        ["results", "compare", "--against", str(LEGACY), "--results", str(planted), "--interval", "range", "--json"],
        capsys,
    )
    summary = json.loads(out)["summary"]
    assert code == 0 and not err and (summary["interval"], summary["adjust"]) == ("range", "none")
    # an explicit --adjust holm with it stays an error (test_compare_against_a_store_and_one_line_errors)


def test_compare_against_a_store_and_one_line_errors(planted, capsys, tmp_path):
    code, out, _ = run(["results", "compare", "--against", str(EXAMPLE), "--results", str(EXAMPLE), "--json"], capsys)
    summary = json.loads(out)["summary"]
    assert code == 0 and summary["compared"] == 144 and summary["inside"] == 144  # the demo against itself
    code, _, err = run(
        ["results", "compare", "--against", str(tmp_path / "nowhere"), "--results", str(planted)], capsys
    )
    assert code == 2 and err.startswith("xrstudy: error: ") and "not a directory" in err and len(err.splitlines()) == 1
    both = tmp_path / "both"
    legacy.import_legacy(LEGACY, both)
    (both / "finetuning_results_cifar10_acc.csv").write_text(
        (LEGACY / "finetuning_results_cifar10_acc.csv").read_text()
    )
    code, _, err = run(["results", "compare", "--against", str(both), "--results", str(planted)], capsys)
    assert code == 2 and "holds both" in err
    code, _, err = run(
        [
            "results",
            "compare",
            "--against",
            str(LEGACY),
            "--results",
            str(planted),
            "--interval",
            "range",
            "--adjust",
            "holm",
        ],
        capsys,
    )
    assert code == 2 and "range" in err
    with pytest.raises(SystemExit):
        cli.main(["results", "compare", "--against", str(LEGACY), "--level", "95"])
    assert "expected a level between 0 and 1" in capsys.readouterr().err


def test_compare_summary_json_is_strict_json(planted, capsys):
    out = run(["results", "compare", "--against", str(LEGACY), "--results", str(planted), "--json"], capsys)[1]
    json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))


def test_scaling_refuses_two_sizes_and_fits_three(capsys, tmp_path):
    code, out, _ = run(["results", "scaling", "--results", str(PAPER_FORMAT), "--json"], capsys)
    rows = json.loads(out)
    # the paper's grid: R50x1 and R152x4 only, so every model-scale series is refused, with the reason
    assert code == 0 and len(rows) == 18 and all(r["reason"].startswith("refused: 2 distinct sizes") for r in rows)
    from stores import synthetic_store

    synthetic = synthetic_store(tmp_path / "synthetic")
    code, out, err = run(
        ["results", "scaling", "--results", str(synthetic), "--n-boot", "200", "--out", str(tmp_path / "fits.csv")],
        capsys,
    )
    fits = pd.read_csv(tmp_path / "fits.csv")
    assert code == 0 and "wrote 24 rows" in err and len(fits) == 24 and (fits.reason.isna()).all()
    assert list(fits.columns) == scaling.SCALING_FITS_COLUMNS
    data = fits[(fits.scale == "data") & (fits.law == "power")]
    assert ((data.alpha_lo <= data.alpha) & (data.alpha <= data.alpha_hi)).all()
    assert out.splitlines()[-1].startswith("24 fits (95% bootstrap intervals over seeds, 200 resamples")
