"""Results store: schema, atomic save, tamper detection, tidy table, the paper's legacy CSVs."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import warnings

import pandas as pd
import pytest
from helpers import LEGACY, concurrent_writer, new_ok_result, result_cfg

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.results import legacy, store


def test_save_load_round_trip(tmp_path):
    cfg = result_cfg()
    path = store.save(new_ok_result(cfg), tmp_path)
    assert path == tmp_path / f"{cfg.run_id}.json"
    loaded = store.load(path)
    assert loaded["metrics"] == {"test/acc": 0.9, "test/auc": 0.8}
    assert loaded["schema"] == store.SCHEMA and loaded["digest"].startswith("sha256:")
    assert store.is_done(cfg, tmp_path)
    assert not store.is_done(result_cfg(seed=2), tmp_path)
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_validate_lists_every_problem():
    with pytest.raises(store.ResultError) as err:
        store.validate({"schema": "other/9", "run_id": "a/b", "status": "maybe", "metrics": {"acc": "x"}})
    message = str(err.value)
    for piece in ("config", "other/9", "maybe", "safe file name", "'acc'"):
        assert piece in message


def test_nan_metric_is_stored_as_null(tmp_path):
    path = store.save(new_ok_result(result_cfg(), **{"test/auc": float("nan"), "test/acc": 0.5}), tmp_path)
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
    cfg = result_cfg()
    path = store.save(new_ok_result(cfg), tmp_path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(store.ResultError, match=reason):
        store.load(path)
    assert not store.is_done(cfg, tmp_path)
    with pytest.warns(UserWarning, match="left out"):
        assert store.table(tmp_path).empty


def test_failed_never_replaces_ok(tmp_path):
    cfg = result_cfg()
    store.save(new_ok_result(cfg), tmp_path)
    store.save(new_ok_result(cfg, status="failed", **{"test/acc": 0.1}), tmp_path)
    assert store.load(tmp_path / f"{cfg.run_id}.json")["status"] == "ok"


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    # Two processes per run id, four run ids: every file complete, one file per run id.
    jobs = [(str(tmp_path), seed, 20) for seed in (0, 1, 2, 3) for _ in range(2)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        run_ids = set(pool.map(concurrent_writer, jobs))
    files = sorted(tmp_path.glob("*.json"))
    assert {f.stem for f in files} == run_ids and len(files) == 4
    for f in files:
        store.load(f)
    assert not list(tmp_path.glob(".*.tmp"))


def test_table_resolves_pretrain_inits(tmp_path):
    # Sources listed in any order still name the model as the paper does (chexpert_mimic).
    pre = RunConfig(kind="pretrain", sources=("mimic", "chexpert"), arch="resnetv2_152x4_bit", data_fraction=0.5)
    store.save(store.new_result(pre, {"valid/auc": 0.7}), tmp_path)
    transfer = result_cfg(init=f"run:{pre.run_id}", arch="resnetv2_152x4_bit", target="padchest-cl", shots=0)
    store.save(store.new_result(transfer, {"test/auc": 0.83}, last_step=500), tmp_path)
    timm = result_cfg(init="timm", arch="resnetv2_50x1_bit.goog_in21k")
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


def test_a_transfer_without_its_pretraining_result_keeps_the_fraction_it_recorded(tmp_path):
    """Data-scale transfers whose pre-training results are not in the store: the fraction comes from the
    transfer's own `init_config` (train.run records it); without that it is unknown (NaN) and the table says
    so, rather than taking 1.0 and pooling every fraction into one cell."""
    recorded, bare = tmp_path / "recorded", tmp_path / "bare"
    for fraction in (0.1, 1.0):
        pre = RunConfig(kind="pretrain", sources=("chexpert",), arch="resnetv2_50x1_bit", data_fraction=fraction)
        cfg = result_cfg(init=f"run:{pre.run_id}", init_label="chexpert", target="padchest-cl", shots=0)
        store.save(store.new_result(cfg, {"test/auc": 0.7 + fraction / 10}, init_config=pre.to_dict()), recorded)
        store.save(store.new_result(cfg, {"test/auc": 0.7 + fraction / 10}), bare)
    frame = store.table(recorded)
    assert sorted(frame.data_fraction) == [0.1, 1.0] and set(frame.init_label) == {"chexpert"}
    with warnings.catch_warnings(record=True) as caught:  # also: the two now share a cell (the NaN one)
        warnings.simplefilter("always")
        frame = store.table(bare)
    said = [str(w.message) for w in caught]
    assert any(re.search(r"2 result\(s\) from 2 pre-training run\(s\) not in the store .* unknown", m) for m in said)
    assert frame.data_fraction.isna().all()


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


@pytest.mark.slow
def test_special_files_in_the_store_are_reported_not_waited_on(tmp_path):
    """Issue 13 item 7: a FIFO named *.json used to block `results table` forever."""

    cfg = result_cfg()
    store.save(new_ok_result(cfg), tmp_path)
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
    good = result_cfg(seed=1)
    store.save(new_ok_result(good), tmp_path)
    bad = store.load(store.save(new_ok_result(result_cfg(seed=2), per_class={"auc": {"a": 0.5}}, ci={}), tmp_path))
    section, key = field
    bad.setdefault(section, {})[key] = value
    bad["digest"] = store._digest(bad)  # a digest that matches: only the types are wrong
    (tmp_path / f"{bad['run_id']}.json").write_text(json.dumps(bad))
    with pytest.raises(store.ResultError, match=re.escape(reason)):
        store.load(tmp_path / f"{bad['run_id']}.json")
    with pytest.warns(UserWarning, match=re.escape(reason)):
        frame = store.table(tmp_path)
    assert set(frame.run_id) == {good.run_id}


def test_a_100000_deep_json_in_the_store_is_named_and_left_out(tmp_path, capsys):
    from xrstudy.results import store

    results = tmp_path / "results"
    cfg = RunConfig(kind="transfer", target="cifar10", shots=1, out_dir=str(tmp_path))
    store.save(store.new_result(cfg, {"test/acc": 0.5}), results)
    other = RunConfig(kind="transfer", target="cifar10", shots=5, out_dir=str(tmp_path))
    deep = results / f"{other.run_id}.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    reason = f"{deep}: nested too deeply to be a result file"
    found = store.scan(results)
    assert [r["run_id"] for r in found.results] == [cfg.run_id] and found.invalid == [(deep, reason)]
    assert not store.is_done(other, results) and store.is_done(cfg, results)  # sweep run: the cell is to do
    with pytest.warns(UserWarning, match=f"^left out of the table: {re.escape(reason)}$"):
        assert cli.main(["results", "table", "--results", str(results)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # header + the one valid row
    with pytest.warns(UserWarning, match=f"^left out of the table: {re.escape(reason)}$"):
        assert cli.main(["figures", "--results", str(results), "--out", str(tmp_path / "figures")]) == 0
    assert list((tmp_path / "figures").glob("*.png"))
    # Other files json reads but no result can be: a 5,000-digit number, a NaN the digest cannot encode.
    digits = results / "transfer-000000000001.json"
    digits.write_text("1" * 5000)
    nan = results / "transfer-000000000002.json"
    nan.write_text((results / f"{cfg.run_id}.json").read_text().replace('"test/acc": 0.5', '"test/acc": NaN'))
    invalid = dict(store.scan(results).invalid)
    assert invalid[digits].startswith(f"{digits}: not a readable result file (ValueError: Exceeds the limit")
    assert invalid[nan].startswith(f"{nan}: not a readable result file (ValueError: Out of range float values")
