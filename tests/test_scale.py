"""The model-scale axis (sweeps/scale.yaml): six BiT sizes planned without an unresolved cell, probes beside
fine-tuning; metric vs parameters with fits, and probe vs fine-tune, drawn from one store."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrstudy import cli
from xrstudy.config import RunConfig, base_arch
from xrstudy.plots import figures, paper_figures, render
from xrstudy.results import store
from xrstudy.sweeps import plan, sweepfile
from xrstudy.training import cost

SCALE = Path(__file__).parent.parent / "sweeps" / "scale.yaml"
SIZES = ("50x1", "50x3", "101x1", "101x3", "152x2", "152x4")
XRAY_SIZES = ("50x1", "101x1", "152x2", "152x4")
# target -> the paper's shot counts (0 = full), as in sweeps/paper.yaml
PAPER_SHOTS = {
    "cifar10": {1, 5, 10, 100, 500, 0},
    "cifar100": {1, 5, 10, 100, 500, 0},
    "pets": {1, 5, 10, 0},
    "flowers102": {1, 5, 10, 0},
    "covidx": {1, 5, 10, 100, 500, 0},
    "tuberculosis": {1, 5, 10, 100, 0},
    "padchest-cl": {1, 5, 10, 100, 0},
}


@pytest.fixture(scope="module")
def cells():
    return sweepfile.load_sweep(SCALE)


@pytest.fixture(scope="module")
def rows(cells):
    return plan.plan_cells(cells)


# ---- the sweep --------------------------------------------------------------------------------------
def test_scale_sweep_holds_six_imagenet21k_sizes_and_the_xray_init_at_four(cells):
    grid = collections.defaultdict(set)
    for cell in cells:
        if cell.kind == "transfer":
            init = cell.init.partition(":")[0]  # timm, or run:<the pre-training of that size>
            grid[(init, cell.init_label, cell.target, cell.train_mode)].add((base_arch(cell.arch), cell.shots))
            assert cell.seed in range(5) and cell.shots_mode == "paper"
    for target, shots in PAPER_SHOTS.items():
        for mode in ("finetune", "probe"):
            sizes = grid[("timm", "imagenet21k_bitm", target, mode)]
            assert sizes == {(f"resnetv2_{s}_bit", k) for s in SIZES for k in shots}, (target, mode)
    xray = {k: v for k, v in grid.items() if k[1] == "chexpert_mimic_nih_padchest"}
    assert {k[2] for k in xray} == {"covidx", "tuberculosis"}, "never PadChest-Cl from a PadChest-trained init"
    for (_, _, target, _), sizes in xray.items():
        assert sizes == {(f"resnetv2_{s}_bit", k) for s in XRAY_SIZES for k in PAPER_SHOTS[target]}
    pretrain = [c for c in cells if c.kind == "pretrain"]
    assert sorted(store.arch_short(c.arch) for c in pretrain) == sorted(XRAY_SIZES)
    assert all(c.sources == ("chexpert", "mimic", "nih", "padchest") and c.batch_size == 1024 for c in pretrain)
    full = [c for c in cells if c.shots == 0 and c.target in ("covidx", "flowers102") and c.init == "timm"]
    assert {(c.train_mode, c.sampler) for c in full} == {("finetune", "oversample"), ("probe", "shuffle")}
    assert len(cells) == 4 + 2 * (6 * 180 + 4 * 55)


def test_shared_cells_keep_the_run_ids_of_the_paper_and_extended_sweeps(cells):
    ids = {c.run_id for c in cells}
    paper = sweepfile.load_sweep(SCALE.parent / "paper.yaml")
    four_source = {c.run_id for c in paper if c.kind == "pretrain" and c.name == "chexpert_mimic_nih_padchest"}
    assert len(four_source) == 2 and four_source <= ids
    extended = sweepfile.load_sweep(SCALE.parent / "extended.yaml")
    bitm = {c.run_id for c in extended if c.init_label == "imagenet21k_bitm" and c.target == "cifar10"}
    assert len(bitm) == 20 and bitm <= ids


def test_scale_sweep_plans_every_cell_with_gpu_hours(rows, capsys):
    info = plan.summary(rows)
    assert info["unresolved"] == 0 and info["no_estimate"] == 0 and info["probe"] == 1300
    for row in rows:
        assert row["gpu_hours"] is not None and row["images_per_gpu"] and not row["errors"], row["name"]
    # unmeasured archs say how their throughput and memory were scaled
    for arch in ("resnetv2_50x3_bit", "resnetv2_101x1_bit", "resnetv2_101x3_bit"):
        row = next(r for r in rows if base_arch(r["arch"]) == arch and r.get("train_mode") == "finetune")
        assert "scaled by parameter count" in row["throughput_from"], row["throughput_from"]
    assert cli.main(["sweep", "plan", str(SCALE)]) == 0
    assert "(1300 of them linear probes)" in capsys.readouterr().out.splitlines()[-1]


def test_probe_cells_take_no_step_and_only_the_first_of_a_feature_group_extracts(rows):
    probes = [r for r in rows if r.get("train_mode") == "probe"]
    assert all(r["steps"] == 0 and r["lr"] is None and r["augment"] == "evaluation view" for r in probes)
    groups = collections.defaultdict(list)
    for row in probes:
        groups[(row["pretrained_model"], row["target"])].append(row)
    assert len(groups) == 6 * 7 + 4 * 2
    for members in groups.values():
        extracting = [r for r in members if r["features_from"] == "extracted here"]
        assert len(extracting) == 1 and extracting[0]["image_steps"] == extracting[0]["feature_images"] > 0
        assert all(r["image_steps"] == 0 and r["gpu_hours"] == 0 for r in members if r not in extracting)
    big = next(r for r in probes if r["pretrained_model"] == "imagenet21k_bitm_bit152x4" and r["target"] == "pets")
    assert big["feature_batch"] == 2 * big["micro_batch"] == 32 and "forward only" in big["throughput_from"]


def test_every_scale_arch_has_a_throughput_and_a_memory_estimate():
    for size in SIZES:
        arch = f"resnetv2_{size}_bit"
        for side in (128, 224, 480):
            assert cost.throughput(arch, side) is not None and cost.images_per_gpu(arch, side) is not None
        assert cost.arch_params()[arch] > 0


# ---- figures ----------------------------------------------------------------------------------------
def scale_store(results_dir: Path) -> Path:
    """covidx at 10 shots and full: ImageNet-21k at six sizes, X-ray at four; fine-tuned and probed; known
    laws (error falls with parameters; fine-tuning 5 points above the probe), three seeds."""
    rng = np.random.default_rng(0)
    params = cost.arch_params()
    for size in SIZES:
        arch = f"resnetv2_{size}_bit"
        inits = [("timm", f"{arch}.goog_in21k", "imagenet21k_bitm")]
        if size in XRAY_SIZES:
            pre = RunConfig(kind="pretrain", name="cmnp", sources=("chexpert", "mimic", "nih", "padchest"), arch=arch)
            store.save(store.new_result(pre, {"valid/auc": 0.8}), results_dir)
            inits.append((f"run:{pre.run_id}", arch, "chexpert_mimic_nih_padchest"))
        for init, name, label in inits:
            for mode in ("finetune", "probe"):
                for shots in (10, 0):
                    for seed in range(3):
                        cell = RunConfig(
                            target="covidx", init=init, arch=name, init_label=label, shots=shots, seed=seed,
                            train_mode=mode,
                        )  # fmt: skip
                        error = 0.05 + 0.3 * (params[arch] / 23.5) ** -0.3 + (0.05 if mode == "probe" else 0.0)
                        error += (0.1 if shots else 0.0) + rng.normal(0, 0.003)
                        store.save(store.new_result(cell, {"test/acc": 1.0 - error}), results_dir)
    return results_dir


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale-figures")
    return render.render_all(scale_store(folder / "results"), folder / "figs", n_boot=10), folder / "figs"


def test_metric_against_parameters_draws_each_init_and_mode_with_its_fit(drawn):
    rendered, out = drawn
    fig, files = rendered[("model_size", "covidx", "test/acc")]
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["10 shot", "full shot"] and axes[0].get_xscale() == "log"
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert labels == {"imagenet21k_bitm", "imagenet21k_bitm (probe)", "chexpert_mimic_nih_padchest",
                      "chexpert_mimic_nih_padchest (probe)"}  # fmt: skip
    ticks = [t.get_text().strip() for t in axes[0].get_xticklabels()]  # named by the BiT sizes, by parameters
    assert ticks == ["50x1", "101x1", "50x3/152x2", "101x3", "152x4"]  # 211M and 232M share a tick
    rows = pd.read_csv(files[2])
    assert set(rows.train_mode) == {"finetune", "probe"} and rows.params_m.nunique() == 6
    fits = figures.model_size_fits(figures.transfer_rows(store.table(out.parent / "results"), "covidx", "test/acc"))
    assert (
        set(fits.train_mode) == {"finetune", "probe"}
        and fits.groupby(["init_label", "train_mode", "shot"]).ngroups == 8
    )
    finetune = fits[
        (fits.init_label == "imagenet21k_bitm") & (fits.train_mode == "finetune") & (fits.shot == "full_shot")
    ]
    assert finetune.value.is_monotonic_increasing, "the fitted metric grows with the parameters"


def test_probe_against_finetune_pairs_each_model_by_seed(drawn):
    rendered, out = drawn
    fig, files = rendered[("probe", "covidx", "test/acc")]
    rows = pd.read_csv(files[2])
    assert set(rows.train_mode) == {"finetune", "probe"} and rows.pretrained_model.nunique() == 10
    gain_axis = fig.axes[1]
    gains = np.concatenate([np.asarray(bars.lines[0].get_ydata(), float) for bars in gain_axis.containers])
    assert len(gains) == 10 * 2, "ten models, two shot counts"
    assert np.allclose(gains, 0.05, atol=0.02), "fine-tuning adds the 5 points of the store"


def test_probes_never_pool_with_fine_tuned_runs(drawn):
    rendered, out = drawn
    fits = pd.read_csv(out / "scaling_fits.csv")
    model = fits[fits.scale == "model"]
    # 4 series (2 inits x 2 modes) x 2 metrics x 2 laws (power, saturating), never a probe pooled with a fine-tune
    assert set(model.train_mode) == {"finetune", "probe"} and len(model) == 16
    assert (model.groupby(["init_label", "train_mode", "metric"]).law.nunique() == 2).all()
    means = pd.read_csv(out / "full_shot_means.csv")
    assert (means.seeds == 3).all() and set(means.train_mode) == {"finetune", "probe"}
    bars = pd.read_csv(out / "bars_covidx_acc.csv")
    assert len(bars) == len(store.table(out.parent / "results").query("kind == 'transfer'"))
    labels = [t.get_text() for t in rendered[("bars", "covidx", "test/acc")][0].axes[0].get_legend().get_texts()]
    assert "imagenet21k_bitm_bit50x1 (probe)" in labels and "imagenet21k_bitm_bit50x1" in labels
    paper_rows = paper_figures.paper_table(store.table(out.parent / "results"))
    assert set(paper_rows.train_mode) == {"finetune"}, "the paper's style draws fine-tuned runs only"
