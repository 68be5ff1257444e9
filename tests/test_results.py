"""Results store: schema, atomic save, tamper detection, tidy table, the paper's legacy CSVs."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pandas as pd
import pytest

from xrstudy import results
from xrstudy.config import RunConfig

LEGACY = Path(__file__).parent / "data" / "legacy"


def _cfg(**changes) -> RunConfig:
    base = dict(kind="transfer", target="cifar10", shots=10, seed=1, out_dir="unused")
    return RunConfig(**{**base, **changes})


def _result(cfg: RunConfig, status: str = "ok", **metrics) -> dict:
    return results.new_result(cfg, metrics or {"test/acc": 0.9, "test/auc": 0.8}, status=status)


def test_save_load_round_trip(tmp_path):
    cfg = _cfg()
    path = results.save(_result(cfg), tmp_path)
    assert path == tmp_path / f"{cfg.run_id}.json"
    loaded = results.load(path)
    assert loaded["metrics"] == {"test/acc": 0.9, "test/auc": 0.8}
    assert loaded["schema"] == results.SCHEMA and loaded["digest"].startswith("sha256:")
    assert results.is_done(cfg, tmp_path)
    assert not results.is_done(_cfg(seed=2), tmp_path)
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_validate_lists_every_problem():
    with pytest.raises(results.ResultError) as err:
        results.validate({"schema": "other/9", "run_id": "a/b", "status": "maybe", "metrics": {"acc": "x"}})
    message = str(err.value)
    for piece in ("config", "other/9", "maybe", "safe file name", "'acc'"):
        assert piece in message


def test_nan_metric_is_stored_as_null(tmp_path):
    path = results.save(_result(_cfg(), **{"test/auc": float("nan"), "test/acc": 0.5}), tmp_path)
    assert json.loads(path.read_text())["metrics"]["test/auc"] is None
    frame = results.table(tmp_path)
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
    path = results.save(_result(cfg), tmp_path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(results.ResultError, match=reason):
        results.load(path)
    assert not results.is_done(cfg, tmp_path)
    with pytest.warns(UserWarning, match="left out"):
        assert results.table(tmp_path).empty


def test_failed_never_replaces_ok(tmp_path):
    cfg = _cfg()
    results.save(_result(cfg), tmp_path)
    results.save(_result(cfg, status="failed", **{"test/acc": 0.1}), tmp_path)
    assert results.load(tmp_path / f"{cfg.run_id}.json")["status"] == "ok"


def _writer(args):
    results_dir, seed, repeat = args
    cfg = _cfg(seed=seed)
    for i in range(repeat):
        results.save(_result(cfg, **{"test/acc": i / repeat}), results_dir)
    return cfg.run_id


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    # Two processes per run id, four run ids: every file complete, one file per run id.
    jobs = [(str(tmp_path), seed, 20) for seed in (0, 1, 2, 3) for _ in range(2)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        run_ids = set(pool.map(_writer, jobs))
    files = sorted(tmp_path.glob("*.json"))
    assert {f.stem for f in files} == run_ids and len(files) == 4
    for f in files:
        results.load(f)
    assert not list(tmp_path.glob(".*.tmp"))


def test_table_resolves_pretrain_inits(tmp_path):
    pre = RunConfig(kind="pretrain", sources=("chexpert", "mimic"), arch="resnetv2_152x4_bit", data_fraction=0.5)
    results.save(results.new_result(pre, {"valid/auc": 0.7}), tmp_path)
    transfer = _cfg(init=f"run:{pre.run_id}", arch="resnetv2_152x4_bit", target="padchest-cl", shots=0)
    results.save(results.new_result(transfer, {"test/auc": 0.83}, last_step=500), tmp_path)
    timm = _cfg(init="timm", arch="resnetv2_50x1_bit.goog_in21k")
    results.save(results.new_result(timm, {"test/acc": 0.9}), tmp_path)

    frame = results.table(tmp_path)
    assert list(frame.columns) == list(results.TABLE_COLUMNS)
    row = frame[frame.run_id == transfer.run_id].iloc[0]
    assert (row.init_label, row.pretrained_model, row.shot, row.shots) == (
        "chexpert_mimic", "chexpert_mimic_bit152x4", "full_shot", 0,
    )  # fmt: skip
    assert row.data_fraction == 0.5 and row.last_step == 500 and row.origin == "xrstudy"
    assert frame[frame.run_id == timm.run_id].iloc[0].pretrained_model == "imagenet21k_bit50x1"


def test_import_legacy_drops_duplicates_and_keeps_values(tmp_path):
    raw = pd.concat([pd.read_csv(p) for p in LEGACY.glob("*.csv")])
    assert raw.duplicated().any(), "the fixture repeats rows like the published CSVs"
    written = results.import_legacy(LEGACY, tmp_path)
    # 2 targets x 5 models x 3 shots x 3 seeds runs; padchest has auc + ap in one result.
    assert len(written) == 90
    frame = results.table(tmp_path)
    assert len(frame) == len(raw.drop_duplicates())
    assert set(frame.origin) == {"paper"}
    full = frame[(frame.target == "cifar10") & (frame.shot == "full_shot") & (frame.metric == "test/acc")]
    means = full.groupby("pretrained_model").value.mean().round(4)
    assert means["imagenet21k_bit152x4"] == 0.88 and means["chexpert_bit50x1"] == 0.70
    assert set(frame.arch) == {"resnetv2_50x1_bit", "resnetv2_152x4_bit"}
    # Re-importing overwrites the same files: nothing duplicated.
    results.import_legacy(LEGACY, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 90


def test_legacy_bad_columns_are_named(tmp_path):
    (tmp_path / "finetuning_results_x_acc.csv").write_text("value,metric\n1,test/acc\n")
    with pytest.raises(results.ResultError, match="missing columns"):
        results.read_legacy(tmp_path)


def test_cli_table_and_import(tmp_path, capsys):
    from xrstudy import cli

    store = tmp_path / "results"
    assert cli.main(["results", "import-legacy", str(LEGACY), "--results", str(store)]) == 0
    out = tmp_path / "t.csv"
    assert cli.main(["results", "table", "--results", str(store), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 3 * 45  # three files, 5 models x 3 shots x 3 seeds each
