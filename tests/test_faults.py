"""Faults across the pipeline: bad images never kill a cell, and what was dropped is in the result."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from PIL import Image

from xrstudy import cli, layouts, phantoms, sources, train
from xrstudy.config import RunConfig

SMALL = phantoms.PhantomStyle(height=24, width=20)


@pytest.fixture()
def broken_chexpert(tmp_path):
    """A miniature CheXpert whose train images include every kind of unreadable file."""
    root = layouts.write_layout("chexpert", tmp_path / "CheXpert-v1.0-small",
                                phantoms.xray_records(12, seed=0, style=SMALL, lateral_share=0.0))
    table = sources.read_source("chexpert", root)
    train_paths = table.loc[table["split"] == "train", "path"].tolist()
    truncated, empty, missing, sixteen = train_paths[:4]
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 3])  # truncated JPEG
    open(empty, "wb").close()  # zero-byte file
    __import__("os").remove(missing)  # listed in train.csv, absent on disk
    # A 16-bit PNG where an 8-bit JPEG is expected: decoded at full depth, not dropped.
    Image.fromarray((np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 100)).save(sixteen, format="PNG")
    return root, {"truncated": truncated, "empty": empty, "missing": missing, "sixteen": sixteen}


@pytest.mark.slow
def test_unreadable_images_are_quarantined_and_counted_in_the_result(broken_chexpert, tmp_path):
    root, broken = broken_chexpert
    cfg = RunConfig(name="faults", kind="pretrain", sources=("chexpert",), roots=(f"chexpert={root}",),
                    arch="resnetv2_tiny_bit", image_size=16, batch_size=8, epochs=1, out_dir=str(tmp_path / "out"))
    result = train.run(cfg)
    assert result["status"] == "ok"
    dropped = result["counts"]["dropped"]
    assert dropped["quarantine"] == 3, dropped  # truncated, empty, missing; the 16-bit PNG is readable
    saved = json.loads((cfg.results_dir / f"{cfg.run_id}.json").read_text())
    assert saved["counts"]["dropped"]["quarantine"] == 3
    reports = list((tmp_path / "out" / "cache").rglob("quarantine.json"))
    quarantined = {path for report in reports for path in json.loads(report.read_text())}
    assert {broken["truncated"], broken["empty"], broken["missing"]} <= quarantined
    assert broken["sixteen"] not in quarantined


def test_cli_reports_bad_input_clearly_and_exits_2(tmp_path, capsys):
    (tmp_path / "nih").mkdir()
    (tmp_path / "nih" / "Data_Entry_2017_v2020.csv").write_text("Image Index,Patient ID\n1.png,1\n")
    code = cli.main(["data", "inspect", "nih", "--root", str(tmp_path / "nih"), "--metadata-only", "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Data_Entry_2017_v2020.csv: missing column(s) ['Finding Labels', 'View Position']" in err
    assert "Traceback" not in err


def test_network_is_blocked_in_tests():
    with pytest.raises(OSError, match="network access blocked"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_label_csv_reader_reads_what_pandas_reads(tmp_path):
    """read_table's Arrow reader matches pd.read_csv: NA-like cells, text ids, dates kept as text,
    booleans, and a quoted value over two lines."""
    import pandas as pd

    path = tmp_path / "labels.csv"
    path.write_text('id,date,flag,score,note\n007,2015-01-02,True,1.0,"two\nlines"\n008,2016-03-04,False,NA,\n'
                    "009,2017-05-06,True,-1.0,None\n")  # fmt: skip
    ours = sources.read_table(path, ["id", "date", "flag", "score", "note"], dtype={"id": str})
    theirs = pd.read_csv(path, dtype={"id": str})
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    assert list(ours["id"]) == ["007", "008", "009"] and ours["date"].iloc[0] == "2015-01-02"


def test_malformed_label_csv_names_the_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Path,Sex\na.jpg,M\nb.jpg,F,extra\n")
    with pytest.raises(sources.SourceError, match=r"train\.csv: cannot read as CSV .*Expected 2 columns, got 3"):
        sources.read_table(path, ["Path", "Sex"])
