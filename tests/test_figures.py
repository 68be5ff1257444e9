"""Figures: the paper's per-target plots from its CSV format, scale curves with fits, fixed colours,
damaged results never drawn, redraw time."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrstudy import cli, figures, results
from xrstudy.config import RunConfig

LEGACY = Path(__file__).parent / "data" / "legacy"
ARCHS = {"resnetv2_50x1_bit": 23.5, "resnetv2_101x1_bit": 42.5, "resnetv2_152x4_bit": 928.0}
FRACTIONS = (0.1, 0.3, 1.0)


def synthetic_store(results_dir: Path, seeds=(0, 1, 2)) -> Path:
    """A tiny store with a known scaling law: error = 0.1 + 0.1 · f^-0.5 · (P / 23.5)^-0.2 + noise,
    pre-training data fractions f × three BiT sizes P, PadChest-Cl mean AUC at 10 shots and full."""
    rng = np.random.default_rng(0)
    for arch, params in ARCHS.items():
        for fraction in FRACTIONS:
            pre = RunConfig(kind="pretrain", name="chexpert", sources=("chexpert",), arch=arch, data_fraction=fraction)
            results.save(results.new_result(pre, {"valid/auc": 0.7}), results_dir)
            for shots in (10, 0):
                for seed in seeds:
                    cell = RunConfig(kind="transfer", target="padchest-cl", init=f"run:{pre.run_id}", arch=arch,
                                     shots=shots, seed=seed, init_label="chexpert")  # fmt: skip
                    error = 0.1 + 0.1 * fraction**-0.5 * (params / 23.5) ** -0.2 + (0.05 if shots else 0.0)
                    error += rng.normal(0, 0.002)
                    results.save(results.new_result(cell, {"test/auc": 1.0 - error}), results_dir)
    return results_dir


def _cli(argv: list[str]) -> int:
    return cli.main(argv)


def test_import_legacy_then_figures_reproduce_the_per_target_plots(tmp_path, capsys):
    store, out = tmp_path / "results", tmp_path / "figs"
    assert _cli(["results", "import-legacy", str(LEGACY), "--results", str(store)]) == 0
    start = time.perf_counter()
    assert _cli(["figures", "--results", str(store), "--out", str(out)]) == 0
    assert time.perf_counter() - start < 60
    printed = capsys.readouterr().out
    for target, metric in [("cifar10", "acc"), ("padchest", "auc"), ("padchest", "ap")]:
        for kind in ("bars", "fewshot", "model_size"):
            for suffix in ("png", "pdf", "csv"):
                assert (out / f"{kind}_{target}_{metric}.{suffix}").stat().st_size > 0
    bars = pd.read_csv(out / "bars_cifar10_acc.csv")
    assert set(bars.shot) == {"1_shot", "10_shot", "full_shot"} and bars.pretrained_model.nunique() == 5
    # The table's mean full-shot values, as the CLI lists them.
    means = pd.read_csv(out / "full_shot_means.csv").set_index(["target", "metric", "pretrained_model"])
    assert means.loc[("cifar10", "test/acc", "imagenet21k_bit152x4"), "mean"] == pytest.approx(0.88)
    assert means.loc[("cifar10", "test/acc", "chexpert_bit50x1"), "mean"] == pytest.approx(0.70)
    assert (means.seeds == 3).all() and len(means) == 15
    assert "imagenet21k_bit152x4" in printed and "0.8800" in printed
    assert not list(Path.cwd().glob("*.png")), "nothing written to the current directory"


def test_scale_curves_and_power_law_fits(tmp_path):
    written = figures.render_all(synthetic_store(tmp_path / "results"), tmp_path / "figs", n_boot=20)
    names = {p.name for p in written}
    assert {"data_scale_padchest-cl_auc.png", "model_scale_padchest-cl_auc.pdf", "scaling_fits.csv"} <= names
    fits = pd.read_csv(tmp_path / "figs" / "scaling_fits.csv")
    data = fits[(fits.scale == "data") & (fits.shot == "full_shot") & (fits.arch == "resnetv2_50x1_bit")].iloc[0]
    assert data.alpha == pytest.approx(0.5, abs=0.15) and data.alpha_lo <= data.alpha <= data.alpha_hi
    model = fits[(fits.scale == "model") & (fits.shot == "full_shot") & (fits.data_fraction == 1.0)].iloc[0]
    assert model.n == 3 and model.rss < 1e-3  # three sizes, three parameters: the fit passes through them
    drawn = pd.read_csv(tmp_path / "figs" / "data_scale_padchest-cl_auc.csv")
    assert set(drawn.data_fraction) == set(FRACTIONS)


def test_colours_are_fixed_per_source():
    assert figures.source_colour("chexpert") == figures.SOURCE_COLOURS["chexpert"]
    assert figures.source_colour("my_new_source") == figures.source_colour("my_new_source")
    small, large = (figures.model_colour("imagenet21k", a) for a in ("resnetv2_50x1_bit", "resnetv2_152x4_bit"))
    assert large == figures.SOURCE_COLOURS["imagenet21k"] and small != large
    frame = pd.DataFrame({"pretrained_model": ["chexpert_bit50x1"], "init_label": ["chexpert"], "arch": ["resnetv2_50x1_bit"]})
    assert figures.model_palette(frame)["chexpert_bit50x1"] == figures.model_colour("chexpert", "resnetv2_50x1_bit")


def test_damaged_results_are_never_drawn(tmp_path):
    store = tmp_path / "results"
    results.import_legacy(LEGACY, store)
    victim = sorted(store.glob("*.json"))[0]
    run_id = victim.stem
    victim.write_text(victim.read_text().replace('"status": "ok"', '"status": "ok" ')[:-30])
    with pytest.warns(UserWarning, match="left out"):
        figures.render_all(store, tmp_path / "figs")
    table = pd.read_csv(tmp_path / "figs" / "results_table.csv")
    assert run_id not in set(table.run_id) and table.run_id.nunique() == 89


def test_empty_store_is_an_error(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(results.ResultError, match="no valid results"):
        figures.render_all(tmp_path / "results", tmp_path / "figs")
