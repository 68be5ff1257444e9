"""Figures: the paper's per-target plots from its CSV format, scale curves with fits, fixed colours,
damaged results never drawn; figures are objects (returned, restyled, saved again) and the package
never chooses a matplotlib backend; the paper's own style (`--style paper`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import EXAMPLE, PAPER_FORMAT, cli_error, files_under
from stores import FRACTIONS, synthetic_store

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.plots import figures, render
from xrstudy.results import legacy, stats, store

LEGACY = Path(__file__).parent / "data" / "legacy"


def _cli(argv: list[str]) -> int:
    return cli.main(argv)


@pytest.fixture(scope="module")
def legacy_store(tmp_path_factory) -> Path:
    """The paper-format CSV fixture imported once for the module's figure tests; a test that changes a store
    works on its own copy (`copy_of`)."""
    folder = tmp_path_factory.mktemp("legacy") / "results"
    legacy.import_legacy(LEGACY, folder)
    return folder


def copy_of(store_dir: Path, folder: Path) -> Path:
    return Path(shutil.copytree(store_dir, folder / "results"))


def test_import_legacy_then_figures_reproduce_the_per_target_plots(tmp_path, capsys):
    store_dir, out = tmp_path / "results", tmp_path / "figs"
    assert _cli(["results", "import-legacy", str(LEGACY), "--results", str(store_dir)]) == 0
    assert _cli(["figures", "--results", str(store_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for target, metric in [("cifar10", "acc"), ("padchest-cl", "auc"), ("padchest-cl", "ap")]:
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
    rendered = render.render_all(synthetic_store(tmp_path / "results"), tmp_path / "figs", n_boot=20)
    names = {p.name for p in rendered.files}
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
    small, large = (figures.model_colour("imagenet21k", a) for a in ("resnetv2_50x1_bit", "resnetv2_152x4_bit"))
    assert large == figures.SOURCE_COLOURS["imagenet21k"] and small != large
    frame = pd.DataFrame(
        {"pretrained_model": ["chexpert_bit50x1"], "init_label": ["chexpert"], "arch": ["resnetv2_50x1_bit"]}
    )
    assert figures.model_palette(frame)["chexpert_bit50x1"] == figures.model_colour("chexpert", "resnetv2_50x1_bit")


def test_damaged_results_are_never_drawn(legacy_store, tmp_path):
    store_dir = copy_of(legacy_store, tmp_path)
    victim = sorted(store_dir.glob("*.json"))[0]
    run_id = victim.stem
    victim.write_text(victim.read_text().replace('"status": "ok"', '"status": "ok" ')[:-30])
    with pytest.warns(UserWarning, match="left out"):
        render.render_all(store_dir, tmp_path / "figs")
    table = pd.read_csv(tmp_path / "figs" / "results_table.csv")
    assert run_id not in set(table.run_id) and table.run_id.nunique() == 89


def test_empty_store_is_an_error(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(store.ResultError, match="no valid results"):
        render.render_all(tmp_path / "results", tmp_path / "figs")


# ---- figures are objects ----------------------------------------------------------------------
def test_render_all_maps_kind_target_metric_to_the_figure_and_its_files(legacy_store, tmp_path):
    from matplotlib.figure import Figure

    rendered = render.render_all(legacy_store, tmp_path / "figs")
    assert ("bars", "cifar10", "test/acc") in rendered and ("fewshot", "padchest-cl", "test/auc") in rendered
    for (kind, target, metric), (fig, files) in rendered.items():
        assert isinstance(fig, Figure)
        assert [p.suffix for p in files] == [".png", ".pdf", ".csv"] and all(p.is_file() for p in files)
        assert files[0].name == f"{kind}_{target}_{metric.removeprefix('test/')}.png"
    assert set(rendered.tables) == {"results_table.csv", "full_shot_means.csv", "scaling_fits.csv"}


def test_a_figure_can_be_restyled_and_saved_again(legacy_store, tmp_path):
    from matplotlib.figure import Figure

    table = store.table(legacy_store)
    fig = figures.shots_bar(table, "cifar10", "test/acc")
    assert isinstance(fig, Figure)
    first = figures.save_figure(fig, figures.transfer_rows(table, "cifar10", "test/acc"), tmp_path, "bars")
    fig.axes[0].set_title("restyled")
    fig.set_size_inches(40, 30)  # too large for a PNG at 120 dpi: the DPI gives way
    again = figures.save_figure(fig, figures.transfer_rows(table, "cifar10", "test/acc"), tmp_path, "bars_restyled")
    assert first[0].read_bytes() != again[0].read_bytes()
    from PIL import Image

    with Image.open(again[0]) as png:
        assert max(png.size) <= figures.MAX_PIXELS
    assert pd.read_csv(again[2]).equals(pd.read_csv(first[2]))


@pytest.mark.slow
def test_the_package_never_chooses_a_matplotlib_backend(tmp_path):
    """Importing and drawing keeps whatever backend the user (a notebook: inline) has; nothing is left
    open in pyplot. Checked in a fresh interpreter whose backend is 'svg'."""
    script = f"""
import matplotlib
from xrstudy.plots import explore, figures, paper_figures, render
from xrstudy.results import legacy
legacy.import_legacy({str(LEGACY)!r}, {str(tmp_path / "store")!r})
rendered = render.render_all({str(tmp_path / "store")!r}, {str(tmp_path / "figs")!r})
paper = render.render_all({str(tmp_path / "store")!r}, {str(tmp_path / "paper")!r}, style="paper")
import matplotlib.pyplot as plt
print(matplotlib.get_backend(), len(rendered), len(paper), plt.get_fignums())
"""
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    backend, drawn, paper, open_figures = done.stdout.split(maxsplit=3)
    assert backend == "svg" and int(drawn) > 0 and int(paper) > 0 and open_figures.strip() == "[]"
    package = Path(figures.__file__).parent
    for path in package.glob("*.py"):
        if path.name != "cli.py":
            assert "matplotlib.use(" not in path.read_text(), f"{path.name} chooses a backend"


# ---- the paper's style ------------------------------------------------------------------------
def test_paper_style_draws_the_papers_figures_and_prints_the_full_shot_table(legacy_store, tmp_path, capsys):
    from xrstudy.plots import paper_figures

    out = tmp_path / "paper"
    assert _cli(["figures", "--results", str(legacy_store), "--out", str(out), "--style", "paper"]) == 0
    printed = capsys.readouterr().out
    for kind in ("paper_bars", "paper_model_size", "paper_fewshot"):
        for target, metric in [("cifar10", "acc"), ("padchest-cl", "auc")]:  # the paper's names mapped
            assert (out / f"{kind}_{target}_{metric}.png").is_file()
    assert not list(out.glob("*_ap.png")), "one headline metric per target: PadChest-Cl AUC, accuracy elsewhere"
    bars = pd.read_csv(out / "paper_bars_cifar10_acc.csv")
    # CIFAR-10's subset is the four ImageNet models: the X-ray models of the fixture are left out
    assert set(bars.pretrained_model) == {"imagenet1k_bit50x1", "imagenet21k_bit50x1", "imagenet21k_bit152x4"}
    assert bars.percent.max() > 1 and set(bars.shot) == {"1_shot", "10_shot", "full_shot"}
    full = pd.read_csv(out / paper_figures.FULL_SHOT_TABLE).set_index(["target", "pretrained_model"])
    assert full.loc[("cifar10", "imagenet21k_bit152x4"), "mean"] == pytest.approx(88.0)
    assert full.loc[("padchest-cl", "chexpert_mimic_bit152x4"), "mean"] == pytest.approx(78.0)
    assert "R152x4 on ImageNet-21k" in printed and "88.00" in printed and "Full" not in printed.split("\n")[0]
    assert paper_figures.model_caption("chexpert_mimic_bit152x4") == "R152x4 on CheXpert-MIMIC"
    assert paper_figures.model_caption("xray_resnetv2_tiny_bit") == "xray_resnetv2_tiny_bit"
    assert paper_figures.shot_caption("full_shot") == "Full Shot" and paper_figures.shot_caption("10_shot") == "10 Shot"
    assert len(paper_figures.PAPER_MODELS["covidx"]) == 14 and len(paper_figures.PAPER_MODELS["tuberculosis"]) == 15
    assert not any("padchest" in m for m in paper_figures.PAPER_MODELS["padchest-cl"])


def test_paper_rows_are_hatched_beside_new_runs_of_the_same_model(legacy_store, tmp_path):
    from xrstudy.plots import paper_figures

    store_dir = copy_of(legacy_store, tmp_path)
    for seed in (0, 1):  # a new run of a paper model on the same target
        cell = RunConfig(
            kind="transfer",
            target="cifar10",
            init="timm",
            arch="resnetv2_50x1_bit.goog_in21k",
            shots=0,
            seed=seed,
            init_label="imagenet21k",
        )
        store.save(store.new_result(cell, {"test/acc": 0.85}), store_dir)
    table = store.table(store_dir)
    rows = paper_figures.paper_table(table)
    cifar = rows[rows.target == "cifar10"]
    fig = paper_figures.bars(cifar, "cifar10", "test/acc")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "R50x1 on ImageNet-21k" in labels and "R50x1 on ImageNet-21k (paper)" in labels
    hatched = {name for container, name in zip(ax.containers, labels) if any(bar.get_hatch() for bar in container)}
    assert hatched == {label for label in labels if label.endswith("(paper)")}


def test_sd_against_shots_is_a_figure_of_every_store_with_two_shot_counts(tmp_path):
    from matplotlib.figure import Figure

    from xrstudy.plots import figures, render

    table = store.table(EXAMPLE)
    fig = figures.sd_by_shots(table, "padchest-cl", "test/auc")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "5", "10", "full"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"xray_resnetv2_tiny_bit", "natural_resnetv2_tiny_bit", "scratch_resnetv2_tiny_bit"} < set(lines)
    var = stats.variance_table(table, metric="test/auc")
    xray = var[
        (var.target == "padchest-cl")
        & (var.pretrained_model == "xray_resnetv2_tiny_bit")
        & (var.train_mode == "finetune")
    ]
    assert "xray_resnetv2_tiny_bit (probe)" in lines  # a probe is its own series
    assert list(lines["xray_resnetv2_tiny_bit"].get_ydata()) == pytest.approx(
        list(100 * xray.sort_values("shots").sd.iloc[[1, 2, 3, 0]])
    )
    # the ±1-point line of the usual seed count (the demo's cells most often have 2: its full-shot and probe
    # cells): SD 0.01·√2 / t(0.975, 1)
    assert lines["±1 point with 2 seeds"].get_ydata()[0] == pytest.approx(100 * 0.01 * 2**0.5 / 12.706205)
    rendered = render.render_all(PAPER_FORMAT, tmp_path)
    assert {k for k in rendered if k[0] == "variance"} == {
        ("variance", "cifar10", "test/acc"),
        ("variance", "padchest-cl", "test/ap"),
        ("variance", "padchest-cl", "test/auc"),
    }


def test_a_fitted_series_can_be_drawn_on_any_axis(tmp_path):
    from stores import synthetic_store

    from xrstudy.plots import figures

    table = store.table(synthetic_store(tmp_path / "synthetic"))
    rows = table[(table.shot == "full_shot") & (table.arch == "resnetv2_50x1_bit")].assign(error=1 - table.value)
    curve = figures.series_fit(rows, "data_fraction", n_boot=200)
    assert curve.law in ("power", "saturating") and curve.chosen_by == "aicc"
    assert curve.label().startswith(f"{curve.law}, α = ")
    assert (curve.band.lo <= curve.band.fit + 1e-12).all() and (curve.band.fit <= curve.band.hi + 1e-12).all()
    fig = figures.new_figure(4, 3)
    ax = fig.subplots()
    figures.draw_fit(ax, curve, "#e6550d", as_metric=True)  # a metric axis: 1 − error
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx(list(1 - curve.band.fit))
    assert figures.series_fit(rows[rows.data_fraction > 0.2], "data_fraction") is None  # two sizes: no fit


@pytest.fixture()
def one_result_store(tmp_path) -> Path:
    from xrstudy.results import store

    results = tmp_path / "results"
    for shots in (1, 0):
        cfg = RunConfig(kind="transfer", target="cifar10", shots=shots, out_dir=str(tmp_path))
        store.save(store.new_result(cfg, {"test/acc": 0.5 + shots / 10}), results)
    return results


def test_figures_on_a_full_disk_name_the_file_and_leave_no_empty_png(one_result_store, tmp_path, capsys, monkeypatch):
    import errno

    from matplotlib.figure import Figure

    out = tmp_path / "figures"

    def savefig_on_a_full_disk(self, fname, **kwargs):
        fname.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig_on_a_full_disk)
    line = cli_error(capsys, ["figures", "--results", str(one_result_store), "--out", str(out)])
    assert re.fullmatch(
        rf"xrstudy: error: no space left on device writing {re.escape(str(out))}/\w+\.png \(.* free there\); "
        r"free some space and run the same command again",
        line,
    ), line
    assert files_under(out) == []  # no 0-byte or partial PNG, no temporary file


@pytest.mark.slow  # mounts a tmpfs (needs root; skipped elsewhere)
def test_figures_on_a_real_full_tmpfs(one_result_store, tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(out)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        line = cli_error(capsys, ["figures", "--results", str(one_result_store), "--out", str(out)])
        assert line.startswith(f"xrstudy: error: no space left on device writing {out}/") and ".png (" in line
        assert not [p for p in out.iterdir() if p.suffix in (".png", ".pdf", ".tmp") and p.stat().st_size == 0]
        assert not list(out.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)


@pytest.mark.filterwarnings("ignore:.*hold more than one result")  # the seeds of the unknown fractions share a cell
def test_model_scale_series_of_an_unknown_data_fraction_are_drawn(tmp_path):
    """Transfers whose pre-training results are not in the store have data_fraction NaN (the table warns):
    their model-scale series is still drawn, not dropped as a NaN group key."""
    folder = synthetic_store(tmp_path / "all")
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in folder.glob("transfer-*.json"):
        shutil.copy(path, bare)
    with pytest.warns(UserWarning, match="pre-training data fraction is unknown"):
        table = store.table(bare)
    rows = figures.scale_rows(table[table.kind == "transfer"], "model")
    assert rows and all(part.data_fraction.isna().all() for _, part in rows)
