"""Results store: schema, atomic save, tamper detection, tidy table, the paper's legacy CSVs."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path

import pandas as pd
import pytest

from xrstudy.config import RunConfig
from xrstudy.results import legacy, store

LEGACY = Path(__file__).parent / "data" / "legacy"


def _cfg(**changes) -> RunConfig:
    base = dict(kind="transfer", target="cifar10", shots=10, seed=1, out_dir="unused")
    return RunConfig(**{**base, **changes})


def _result(
    cfg: RunConfig, status: str = "ok", per_class: dict | None = None, ci: dict | None = None, **metrics
) -> dict:
    extra = {k: v for k, v in (("per_class", per_class), ("ci", ci)) if v is not None}
    return store.new_result(cfg, metrics or {"test/acc": 0.9, "test/auc": 0.8}, status=status, **extra)


def test_save_load_round_trip(tmp_path):
    cfg = _cfg()
    path = store.save(_result(cfg), tmp_path)
    assert path == tmp_path / f"{cfg.run_id}.json"
    loaded = store.load(path)
    assert loaded["metrics"] == {"test/acc": 0.9, "test/auc": 0.8}
    assert loaded["schema"] == store.SCHEMA and loaded["digest"].startswith("sha256:")
    assert store.is_done(cfg, tmp_path)
    assert not store.is_done(_cfg(seed=2), tmp_path)
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_validate_lists_every_problem():
    with pytest.raises(store.ResultError) as err:
        store.validate({"schema": "other/9", "run_id": "a/b", "status": "maybe", "metrics": {"acc": "x"}})
    message = str(err.value)
    for piece in ("config", "other/9", "maybe", "safe file name", "'acc'"):
        assert piece in message


def test_nan_metric_is_stored_as_null(tmp_path):
    path = store.save(_result(_cfg(), **{"test/auc": float("nan"), "test/acc": 0.5}), tmp_path)
    assert json.loads(path.read_text())["metrics"]["test/auc"] is None
    frame = store.table(tmp_path)
    assert frame.set_index("metric").loc["test/auc", "value"] != frame.set_index("metric").loc["test/auc", "value"]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda text: text[: len(text) // 2], "truncated"),
        (lambda text: text.replace("0.9", "0.99"), "edited"),
        (lambda text: "", "truncated"),
    ],
)
def test_damaged_files_are_detected_and_left_out(tmp_path, damage, reason):
    cfg = _cfg()
    path = store.save(_result(cfg), tmp_path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(store.ResultError, match=reason):
        store.load(path)
    assert not store.is_done(cfg, tmp_path)
    with pytest.warns(UserWarning, match="left out"):
        assert store.table(tmp_path).empty


def test_failed_never_replaces_ok(tmp_path):
    cfg = _cfg()
    store.save(_result(cfg), tmp_path)
    store.save(_result(cfg, status="failed", **{"test/acc": 0.1}), tmp_path)
    assert store.load(tmp_path / f"{cfg.run_id}.json")["status"] == "ok"


def _writer(args):
    results_dir, seed, repeat = args
    cfg = _cfg(seed=seed)
    for i in range(repeat):
        store.save(_result(cfg, **{"test/acc": i / repeat}), results_dir)
    return cfg.run_id


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    # Two processes per run id, four run ids: every file complete, one file per run id.
    jobs = [(str(tmp_path), seed, 20) for seed in (0, 1, 2, 3) for _ in range(2)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        run_ids = set(pool.map(_writer, jobs))
    files = sorted(tmp_path.glob("*.json"))
    assert {f.stem for f in files} == run_ids and len(files) == 4
    for f in files:
        store.load(f)
    assert not list(tmp_path.glob(".*.tmp"))


def test_table_resolves_pretrain_inits(tmp_path):
    # Sources listed in any order still name the model as the paper does (chexpert_mimic).
    pre = RunConfig(kind="pretrain", sources=("mimic", "chexpert"), arch="resnetv2_152x4_bit", data_fraction=0.5)
    store.save(store.new_result(pre, {"valid/auc": 0.7}), tmp_path)
    transfer = _cfg(init=f"run:{pre.run_id}", arch="resnetv2_152x4_bit", target="padchest-cl", shots=0)
    store.save(store.new_result(transfer, {"test/auc": 0.83}, last_step=500), tmp_path)
    timm = _cfg(init="timm", arch="resnetv2_50x1_bit.goog_in21k")
    store.save(store.new_result(timm, {"test/acc": 0.9}), tmp_path)

    frame = store.table(tmp_path)
    assert list(frame.columns) == list(store.TABLE_COLUMNS)
    row = frame[frame.run_id == transfer.run_id].iloc[0]
    assert (row.init_label, row.pretrained_model, row.shot, row.shots) == (
        "chexpert_mimic",
        "chexpert_mimic_bit152x4",
        "full_shot",
        0,
    )
    assert row.data_fraction == 0.5 and row.last_step == 500 and row.origin == "xrstudy"
    # Google's BiT-M weights are not the authors' ImageNet-21k model: their own name unless labelled.
    assert frame[frame.run_id == timm.run_id].iloc[0].pretrained_model == "google_imagenet21k_bit50x1"


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


def test_cli_table_and_import(tmp_path, capsys):
    from xrstudy import cli

    store_dir = tmp_path / "results"
    assert cli.main(["results", "import-legacy", str(LEGACY), "--results", str(store_dir)]) == 0
    out = tmp_path / "t.csv"
    assert cli.main(["results", "table", "--results", str(store_dir), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 3 * 45  # three files, 5 models x 3 shots x 3 seeds each


def test_table_files_are_written_atomically_in_each_format(tmp_path):
    """One writer (xrstudy.fileio.atomic_write_table) for every table: CSV (compressed as its name says),
    Parquet; no temporary file left beside it; an unknown format is refused before anything is written."""
    frame = pd.DataFrame({"target": ["a", "b"], "value": [0.5, 0.25]})
    for name in ("t.csv", "t.csv.gz", "t.csv.zip", "t.parquet"):
        out = store.write_table(frame, tmp_path / name)
        back = pd.read_parquet(out) if name.endswith(".parquet") else pd.read_csv(out)
        pd.testing.assert_frame_equal(back, frame)
    assert (tmp_path / "t.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip, as pandas infers from the name
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(store.ResultError, match="unknown table format 'xlsx'"):
        store.write_table(frame, tmp_path / "t.xlsx", "xlsx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.csv.gz", "t.csv.zip", "t.parquet"]


# ---- the paper's CSVs in xrstudy's names -------------------------------------------------------------
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
        _cfg(
            target="padchest-cl",
            shots=10,
            seed=0,
            init="paper",
            init_label="chexpert_mimic_nih",
            arch="resnetv2_152x4_bit",
        ),
        _cfg(target="padchest-cl", shots=0, seed=0, init="paper", init_label="imagenet21k", arch="resnetv2_152x4_bit"),
        _cfg(target="padchest-cl", shots=0, seed=0, init=f"run:{pre.run_id}", arch="resnetv2_50x1_bit"),
        _cfg(target="covidx", shots=0, seed=0, init="paper", init_label="imagenet21k", arch="resnetv2_152x4_bit"),
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
    bitm = _cfg(target="padchest-cl", shots=0, init="timm", arch="resnetv2_152x4_bit.goog_in21k")  # not theirs
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


# ---- store faults (issue 13) ------------------------------------------------------------------------
def test_table_of_a_missing_store_or_a_file_is_an_error(tmp_path, capsys):
    """Issue 13 item 6: a missing store used to print a header and exit 0."""
    from xrstudy import cli

    cases = ((tmp_path / "nope", "no such results directory"), (tmp_path / "file.json", "not a directory"))
    for where, reason in cases:
        if where.suffix:
            where.write_text("{}")
        assert cli.main(["results", "table", "--results", str(where)]) == 2
        assert f"{where}: {reason}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["results", "table", "--results", str(tmp_path / "empty")]) == 0  # empty, but there


def test_special_files_in_the_store_are_reported_not_waited_on(tmp_path):
    """Issue 13 item 7: a FIFO named *.json used to block `results table` forever."""
    import os
    import subprocess
    import sys

    cfg = _cfg()
    store.save(_result(cfg), tmp_path)
    os.mkfifo(tmp_path / "transfer-fifo.json")
    (tmp_path / "folder.json").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "xrstudy.cli", "results", "table", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and cfg.run_id in done.stdout
    assert "transfer-fifo.json: a FIFO (named pipe), not a result file" in done.stderr
    assert "folder.json: a directory, not a result file" in done.stderr
    with pytest.raises(store.ResultError, match="a FIFO"):
        store.load(tmp_path / "transfer-fifo.json")
    assert not store.is_done(cfg.replace(seed=9), tmp_path)
    legacy_dir = tmp_path / "legacy"  # the same rule for the paper's CSVs (xrstudy.fileio.read_regular_file)
    legacy_dir.mkdir()
    os.mkfifo(legacy_dir / "finetuning_results_x_acc.csv")
    with pytest.raises(store.ResultError, match=r"finetuning_results_x_acc\.csv: a FIFO \(named pipe\), not a legacy"):
        legacy.read_legacy(legacy_dir)


@pytest.mark.parametrize(
    "field, value, reason",
    [
        # the config is checked by RunConfig's own rules (xrstudy.config), once
        (("config", "seed"), "abc", "config is not a RunConfig: config: RunConfig.seed = 'abc'; expected an integer"),
        (("config", "arch"), 5, "config is not a RunConfig: config: RunConfig.arch = 5; expected a non-empty string"),
        (("config", "shots"), True, "RunConfig.shots = True; expected an integer >= 0"),
        (("config", "views"), 5, "RunConfig.views = 5; expected a list whose entries are each one of"),
        (("per_class", "auc"), 0.5, "per_class['auc'] should map class names"),
        (("ci", "test/auc"), "wide", "ci['test/auc'] should be [low, high]"),
    ],
)
def test_result_with_matching_digest_but_wrong_types_is_left_out(tmp_path, field, value, reason):
    """Issue 13: a well-formed, digest-matching file with wrong types used to crash `results table`."""
    good = _cfg(seed=1)
    store.save(_result(good), tmp_path)
    bad = store.load(store.save(_result(_cfg(seed=2), per_class={"auc": {"a": 0.5}}, ci={}), tmp_path))
    section, key = field
    bad.setdefault(section, {})[key] = value
    bad["digest"] = store._digest(bad)  # a digest that matches: only the types are wrong
    (tmp_path / f"{bad['run_id']}.json").write_text(json.dumps(bad))
    with pytest.raises(store.ResultError, match=re.escape(reason)):
        store.load(tmp_path / f"{bad['run_id']}.json")
    with pytest.warns(UserWarning, match=re.escape(reason)):
        frame = store.table(tmp_path)
    assert set(frame.run_id) == {good.run_id}
