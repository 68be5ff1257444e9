"""`xrstudy.results.legacy`: the paper's published CSVs imported in xrstudy's names, every row accounted
for; values, spellings and file names that cannot be stored are refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import LEGACY, cli_error, one_error_line, result_cfg

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.results import legacy, store

HEADER = "metric_value,metric,path,seed,shot,pretrained_model,dataset,last_step\n"


def _legacy(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (folder / name).write_text(HEADER + rows)
    return folder


@pytest.mark.parametrize(
    "value, problem",
    [
        ("inf", "column 'metric_value': 'inf' is not a finite number"),
        ("-inf", "column 'metric_value': '-inf' is not a finite number"),
        ("1e999", "column 'metric_value': '1e999' is not a finite number"),
        ("1.5", "column 'metric_value': 1.5 is outside [0, 1] for test/acc"),
        ("-0.01", "column 'metric_value': -0.01 is outside [0, 1] for test/acc"),
    ],
)
def test_legacy_values_not_finite_or_outside_0_1_are_refused_naming_file_line_column(tmp_path, capsys, value, problem):
    source = _legacy(
        tmp_path / "csv",
        {
            "finetuning_results_cifar10_test_acc.csv": "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,cifar10,500\n"
            f"{value},test/acc,p,1,1_shot,chexpert_bit50x1,cifar10,500\n"
        },
    )
    line = cli_error(capsys, ["results", "import-legacy", str(source), "--results", str(tmp_path / "store")])
    assert line == (
        f"xrstudy: error: {source}: 1 row(s) cannot be imported (nothing was written): "
        f"finetuning_results_cifar10_test_acc.csv:3, {problem}"
    )
    assert not (tmp_path / "store").exists()


def test_other_fractions_are_bounded_and_other_metrics_only_finite(tmp_path):
    from xrstudy.results import legacy

    rows = (
        "1.2,test/mean_auc,p,0,1_shot,chexpert_bit50x1,padchest,500\n"
        "1.1,test/average_precision_class_3,p,0,1_shot,chexpert_bit50x1,padchest,500\n"
        "2.5,test/loss,p,0,1_shot,chexpert_bit50x1,padchest,500\n"
        "nan,test/mean_average_precision,p,0,1_shot,chexpert_bit50x1,padchest,500\n"
    )
    source = _legacy(tmp_path / "csv", {"finetuning_results_padchest_test_mean_auc.csv": rows})
    with pytest.raises(legacy.ResultError) as err:
        legacy.read_legacy(source)
    assert str(err.value) == (
        f"{source}: 2 row(s) cannot be imported (nothing was written): "
        "finetuning_results_padchest_test_mean_auc.csv:2, column 'metric_value': 1.2 is outside [0, 1] for "
        "test/mean_auc; finetuning_results_padchest_test_mean_auc.csv:3, column 'metric_value': 1.1 is outside "
        "[0, 1] for test/average_precision_class_3"
    )


@pytest.mark.parametrize(
    "first, second",
    [
        (("covidx_cxr2", "1_shot"), ("covidx", "1_shot")),
        (("covidx", "0_shot"), ("covidx", "full_shot")),
        (("covidx", "05_shot"), ("covidx", "5_shot")),
    ],
)
def test_two_spellings_of_one_cell_are_one_run_and_two_values_are_refused(tmp_path, capsys, first, second):
    from xrstudy.results import store

    def rows(value_a: float, value_b: float) -> dict[str, str]:
        (dataset_a, shot_a), (dataset_b, shot_b) = first, second
        return {
            "finetuning_results_covidx_cxr2_test_acc.csv": f"{value_a},test/acc,a,0,{shot_a},nih_bit50x1,{dataset_a},\n"
            f"0.5,test/acc,a,1,{shot_a},nih_bit50x1,{dataset_a},\n",
            "finetuning_results_covidx_test_acc.csv": f"{value_b},test/acc,b,0,{shot_b},nih_bit50x1,{dataset_b},\n",
        }

    agreeing = _legacy(tmp_path / "same", rows(0.75, 0.75))
    assert cli.main(["results", "import-legacy", str(agreeing), "--results", str(tmp_path / "s1")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"imported 2 paper runs into {tmp_path / 's1'}: 3 rows from 2 files (3 distinct, 0 exact")
    assert "1 more merged into a row of the same cell, metric and value" in printed and "all stored" in printed
    found = store.scan(tmp_path / "s1").results
    assert sorted(sum(len(lines) for lines in r["legacy"]["rows"].values()) for r in found) == [1, 2]
    merged = next(r for r in found if r["config"]["seed"] == 0)
    assert merged["metrics"] == {"test/acc": 0.75}
    assert merged["legacy"]["rows"] == {
        "finetuning_results_covidx_cxr2_test_acc.csv": [2],
        "finetuning_results_covidx_test_acc.csv": [2],
    }

    conflicting = _legacy(tmp_path / "differ", rows(0.75, 0.25))
    line = cli_error(capsys, ["results", "import-legacy", str(conflicting), "--results", str(tmp_path / "s2")])
    shot = "full_shot" if first[1] == "0_shot" else "5_shot" if first[1] == "05_shot" else "1_shot"
    assert line == (
        "xrstudy: error: 1 problem(s) in the legacy CSVs (nothing was written): "
        f"covidx/nih_bit50x1/{shot}/seed 0 test/acc has 2 values (finetuning_results_covidx_cxr2_test_acc.csv:2, "
        "finetuning_results_covidx_test_acc.csv:2)"
    )
    assert not (tmp_path / "s2").exists()


def test_a_metric_without_a_slash_is_refused_before_any_result_is_written(tmp_path, capsys):
    source = _legacy(
        tmp_path / "csv",
        {
            "finetuning_results_cifar10_test_acc.csv": "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,cifar10,500\n",
            "finetuning_results_pets_acc.csv": "0.4,acc,p,0,1_shot,chexpert_bit50x1,pets,500\n",
        },
    )
    line = cli_error(capsys, ["results", "import-legacy", str(source), "--results", str(tmp_path / "store")])
    assert line == (
        f"xrstudy: error: {source}: 1 row(s) cannot be imported (nothing was written): "
        "finetuning_results_pets_acc.csv:2, column 'metric': 'acc'; expected a name like 'test/acc'"
    )
    assert not (tmp_path / "store").exists()


def test_files_whose_names_do_not_match_are_listed(tmp_path, capsys):
    (tmp_path / "csv" / "more").mkdir(parents=True)
    source = _legacy(
        tmp_path / "csv",
        {
            "finetuning_results_cifar10_test_acc.csv": "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,cifar10,500\n",
            "finetuning_results_pets.csv": "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,pets,500\n",
            "more/finetuning_results_flowers_test_acc.csv.gz": "",
            "results_pets_acc.csv": "",
        },
    )
    (source / "README.md").write_text("not a result\n")
    assert cli.main(["results", "import-legacy", str(source), "--results", str(tmp_path / "store")]) == 0
    out, err = capsys.readouterr()
    assert "imported 1 paper runs" in out and "all stored" in out
    assert one_error_line(err) == (
        f"xrstudy: warning: 3 file(s) in {source} not read: their names are not "
        "finetuning_results_{dataset}_{metric}.csv: finetuning_results_pets.csv, "
        "more/finetuning_results_flowers_test_acc.csv.gz, results_pets_acc.csv"
    )


def test_import_legacy_drops_duplicates_and_keeps_values(tmp_path):
    raw = pd.concat([pd.read_csv(p) for p in LEGACY.glob("*.csv")])
    assert raw.duplicated().any(), "the fixture repeats rows like the published CSVs"
    written = legacy.import_legacy(LEGACY, tmp_path)
    # 2 targets x 5 models x 3 shots x 3 seeds runs; padchest has auc + ap in one result.
    assert len(written) == 90
    frame = store.table(tmp_path)
    assert len(frame) == len(raw.drop_duplicates())
    assert set(frame.origin) == {"paper"}
    full = frame[(frame.target == "cifar10") & (frame.shot == "full_shot") & (frame.metric == "test/acc")]
    means = full.groupby("pretrained_model").value.mean().round(4)
    assert means["imagenet21k_bit152x4"] == 0.88 and means["chexpert_bit50x1"] == 0.70
    assert set(frame.arch) == {"resnetv2_50x1_bit", "resnetv2_152x4_bit"}
    # Re-importing overwrites the same files: nothing duplicated.
    legacy.import_legacy(LEGACY, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 90


def test_legacy_bad_columns_are_named(tmp_path):
    (tmp_path / "finetuning_results_x_acc.csv").write_text("value,metric\n1,test/acc\n")
    with pytest.raises(store.ResultError, match="missing columns"):
        legacy.read_legacy(tmp_path)


PUBLISHED = Path(__file__).parent / "data" / "legacy-published"  # real rows of the authors' results/


def test_import_legacy_records_the_papers_cell_in_xrstudy_names(tmp_path):
    legacy.import_legacy(LEGACY, tmp_path)
    found = store.scan(tmp_path).results
    padchest = [r for r in found if r["legacy"]["dataset"] == "padchest"]
    assert padchest and all(r["config"]["target"] == "padchest-cl" for r in padchest)
    one = next(
        r
        for r in padchest
        if r["legacy"]["pretrained_model"] == "chexpert_bit50x1"
        and r["legacy"]["shot"] == "10_shot"
        and r["config"]["seed"] == 1
    )
    config = one["config"]
    assert (config["kind"], config["init"], config["init_label"], config["arch"], config["shots"]) == (
        "transfer",
        "paper",
        "chexpert",
        "resnetv2_50x1_bit",
        10,
    )
    assert one["last_step"] == 500 and one["origin"] == "paper" and set(one["metrics"]) == {"test/auc", "test/ap"}
    # Paper runs never take a new run's id: the same cell run by xrstudy is still to do.
    assert one["run_id"].startswith("paper-") and not store.is_done(RunConfig.from_dict(config), tmp_path)


def test_published_csvs_import_with_every_row_accounted_for(tmp_path, capsys):
    from xrstudy import cli

    assert cli.main(["results", "import-legacy", str(PUBLISHED), "--results", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    raw = pd.concat([pd.read_csv(p) for p in PUBLISHED.glob("*.csv")])
    assert f"{len(raw)} rows from 13 files ({len(raw.drop_duplicates())} distinct" in printed
    assert "all stored" in printed
    found = store.scan(tmp_path).results
    stored_lines = sum(len(lines) for r in found for lines in r["legacy"]["rows"].values())
    assert stored_lines == len(raw)

    frame = store.table(tmp_path)
    assert set(frame.target) == {"padchest-cl", "covidx", "tuberculosis", "flowers102", "cifar10"}
    assert set(frame.metric) == {"test/acc", "test/auc", "test/ap"}  # per-class files are not headline metrics
    # The paper's PadChest-Cl numbers (mean AUC x 100 over 5 seeds): full shot and 10-shot.
    auc = frame[(frame.target == "padchest-cl") & (frame.metric == "test/auc")]
    means = (auc.groupby(["shot", "pretrained_model"]).value.mean() * 100).round(1)
    assert means["full_shot"][
        ["imagenet21k_bit152x4", "chexpert_mimic_bit152x4", "chexpert_bit152x4", "chexpert_bit50x1"]
    ].tolist() == [84.0, 83.1, 81.8, 73.0]
    assert (means["10_shot", "chexpert_mimic_nih_bit152x4"], means["10_shot", "imagenet21k_bit152x4"]) == (69.1, 63.6)
    cifar = frame[(frame.target == "cifar10") & (frame.pretrained_model == "imagenet21k_bit152x4")]
    assert round(cifar.value.mean() * 100, 1) == 97.8 and set(cifar.last_step) == {10_000}
    nih = frame[(frame.pretrained_model == "nih_bit152x4") & (frame.shot == "1_shot")]
    assert dict(zip(nih.seed, nih.last_step)) == {0: 400, 1: 400, 2: 500, 3: 400, 4: 400}  # as published

    per_class = [r for r in found if r.get("per_class")]
    assert {r["config"]["target"] for r in per_class} == {"padchest-cl"} and len(per_class) == 5
    assert all(set(r["per_class"]) == {"ap", "f1", "recall"} and set(r["per_class"]["ap"]) == {"0"} for r in per_class)


def test_paper_rows_and_new_runs_line_up_in_one_table(tmp_path):
    """New runs of the paper's cells share target, metric, pretrained_model and shot with the paper's rows."""
    legacy.import_legacy(PUBLISHED, tmp_path)
    pre = RunConfig(kind="pretrain", sources=("chexpert",), arch="resnetv2_50x1_bit")
    new = [
        result_cfg(
            target="padchest-cl",
            shots=10,
            seed=0,
            init="paper",
            init_label="chexpert_mimic_nih",
            arch="resnetv2_152x4_bit",
        ),
        result_cfg(
            target="padchest-cl", shots=0, seed=0, init="paper", init_label="imagenet21k", arch="resnetv2_152x4_bit"
        ),
        result_cfg(target="padchest-cl", shots=0, seed=0, init=f"run:{pre.run_id}", arch="resnetv2_50x1_bit"),
        result_cfg(target="covidx", shots=0, seed=0, init="paper", init_label="imagenet21k", arch="resnetv2_152x4_bit"),
    ]
    assert not any(store.is_done(cfg, tmp_path) for cfg in new)
    store.save(store.new_result(pre, {"valid/auc": 0.7}), tmp_path)
    for cfg in new:  # the sample holds COVIDx acc and AUC only
        metrics = {"test/auc": 0.8, "test/acc": 0.7, **({"test/ap": 0.6} if cfg.target == "padchest-cl" else {})}
        store.save(store.new_result(cfg, metrics), tmp_path)
    frame = store.table(tmp_path)
    key = ["target", "metric", "pretrained_model", "shot"]
    ours = frame[(frame.origin == "xrstudy") & (frame.kind == "transfer")]
    paper = frame[frame.origin == "paper"]
    joined = ours.merge(paper, on=key, suffixes=("", "_paper"))
    assert set(map(tuple, joined[key].values)) == set(map(tuple, ours[key].values))  # every new row has paper rows
    assert set(ours.pretrained_model) == {"chexpert_mimic_nih_bit152x4", "imagenet21k_bit152x4", "chexpert_bit50x1"}
    bitm = result_cfg(target="padchest-cl", shots=0, init="timm", arch="resnetv2_152x4_bit.goog_in21k")  # not theirs
    store.save(store.new_result(bitm, {"test/auc": 0.8}), tmp_path)
    assert set(store.table(tmp_path).query("run_id == @bitm.run_id").pretrained_model) == {
        "google_imagenet21k_bit152x4"
    }


@pytest.mark.parametrize(
    "line, problem",
    [
        ("0.5,test/acc,p,,1_shot,chexpert_bit50x1,cifar10,500", "blank 'seed'"),
        ("0.5,test/acc,p,1,1_shot,,cifar10,500", "blank 'pretrained_model'"),
        ("0.5,test/acc,p,one,1_shot,chexpert_bit50x1,cifar10,500", "could not convert string to float: 'one'"),
        ("0.5,test/acc,p,1,one_shot,chexpert_bit50x1,cifar10,500", "shot 'one_shot'"),
        ("0.5,test/acc,p,1,1_shot,chexpert_bit50x1,cifar10,500,9", "more fields than the header"),
    ],
)
def test_legacy_row_that_cannot_be_stored_is_an_error_naming_file_and_line(tmp_path, line, problem):
    """Issue 13 item 5: a blank seed or key used to vanish in a groupby while the import said success."""
    source = tmp_path / "csv"
    source.mkdir()
    header = "metric_value,metric,path,seed,shot,pretrained_model,dataset,last_step\n"
    good = "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,cifar10,500\n"
    (source / "finetuning_results_cifar10_test_acc.csv").write_text(header + good + good + line + "\n")
    with pytest.raises(store.ResultError) as err:
        legacy.import_legacy(source, tmp_path / "store")
    assert "finetuning_results_cifar10_test_acc.csv:4" in str(err.value) and problem in str(err.value)
    assert not (tmp_path / "store").exists(), "nothing written"


def test_legacy_run_metric_with_two_values_names_both_lines(tmp_path):
    header = "metric_value,metric,path,seed,shot,pretrained_model,dataset,last_step\n"
    (tmp_path / "finetuning_results_padchest_test_mean_auc.csv").write_text(
        header + "0.7,test/mean_auc,p,0,full_shot,chexpert_bit50x1,padchest,500\n"
        "0.8,test/mean_auc,p,0,full_shot,chexpert_bit50x1,padchest,500\n"
    )
    with pytest.raises(
        store.ResultError,
        match=r"test/auc has 2 values \(finetuning_results_padchest_test_mean_auc"
        r"\.csv:2, finetuning_results_padchest_test_mean_auc\.csv:3\)",
    ):
        legacy.legacy_results(legacy.read_legacy(tmp_path))
