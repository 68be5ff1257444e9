"""`xrstudy results variance | compare | scaling` on the paper-format fixtures, a store with planted offsets,
the demo's store and a synthetic scaling store: exact counts, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.results import legacy, scaling, stats, store

TESTS = Path(__file__).parent
LEGACY = TESTS / "data" / "legacy"
EXAMPLE = TESTS.parent / "notebooks" / "example-results"
PAPER_FORMAT = TESTS.parent / "notebooks" / "paper-format-results"

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


# ---- variance -------------------------------------------------------------------------------------
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


# ---- compare -------------------------------------------------------------------------------------
def test_compare_flags_exactly_the_planted_cells(planted, capsys):
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


# ---- scaling -------------------------------------------------------------------------------------
def test_scaling_refuses_two_sizes_and_fits_three(capsys, tmp_path):
    code, out, _ = run(["results", "scaling", "--results", str(PAPER_FORMAT), "--json"], capsys)
    rows = json.loads(out)
    # the paper's grid: R50x1 and R152x4 only, so every model-scale series is refused, with the reason
    assert code == 0 and len(rows) == 18 and all(r["reason"].startswith("refused: 2 distinct sizes") for r in rows)
    from test_figures import synthetic_store

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


# ---- figures ----------------------------------------------------------------------------------------
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
    from test_figures import synthetic_store

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
