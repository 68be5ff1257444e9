"""Faults a user can cause end in a clear error or an honest count, never in silent loss (issue 13).

Bad images never kill a cell and what was dropped is in the result; a label file with bytes that are not
UTF-8, a special file where a label file belongs, a truncated official split list, a config value of the
wrong type or for the wrong kind of cell, a full disk and a Ctrl-C at start-up each end in one line naming
the file / line / field, or in a count the user sees.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xrstudy import cli, fileio
from xrstudy.config import ConfigError, RunConfig, parent_run_id, parse_root
from xrstudy.data import layouts, phantoms, sources, splits
from xrstudy.pixels import decoding, imagecache
from xrstudy.training import models, train

SMALL = phantoms.PhantomStyle(height=24, width=20)


def _records(n: int = 8, **options):
    return phantoms.xray_records(n, seed=0, style=SMALL, lateral_share=0.0, **options)


@pytest.fixture()
def chexpert(tmp_path):
    return layouts.write_layout(
        "chexpert", tmp_path / "CheXpert-v1.0-small", _records(splits=(("train", 0.8), ("valid", 0.2)))
    )


@pytest.fixture()
def nih(tmp_path):
    return layouts.write_layout("nih", tmp_path / "nih", _records(12, splits=(("train", 0.7), ("test", 0.3))))


def _replace_on_line(path: Path, line: int, old: bytes, new: bytes) -> None:
    """Replace `old` by `new` on physical line `line` (1 = header) of a label file."""
    lines = path.read_bytes().split(b"\n")
    assert old in lines[line - 1], (old, lines[line - 1])
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_bytes(b"\n".join(lines))


def _inspect(capsys, name: str, root: Path) -> tuple[int, dict | None, str]:
    code = cli.main(["data", "inspect", name, "--root", str(root), "--metadata-only", "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---- bad images: quarantined and counted ---------------------------------------------------------
@pytest.fixture()
def broken_chexpert(tmp_path):
    """A miniature CheXpert whose train images include every kind of unreadable file."""
    root = layouts.write_layout(
        "chexpert", tmp_path / "CheXpert-v1.0-small", phantoms.xray_records(12, seed=0, style=SMALL, lateral_share=0.0)
    )
    table = sources.read_source("chexpert", root)
    train_paths = table.loc[table["split"] == "train", "path"].tolist()
    truncated, empty, missing, sixteen = train_paths[:4]
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 3])  # truncated JPEG
    open(empty, "wb").close()  # zero-byte file
    os.remove(missing)  # listed in train.csv, absent on disk
    # A 16-bit PNG where an 8-bit JPEG is expected: decoded at full depth, not dropped.
    Image.fromarray(np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 100).save(sixteen, format="PNG")
    return root, {"truncated": truncated, "empty": empty, "missing": missing, "sixteen": sixteen}


@pytest.mark.slow
def test_unreadable_images_are_quarantined_and_counted_in_the_result(broken_chexpert, tmp_path):
    root, broken = broken_chexpert
    cfg = RunConfig(
        name="faults",
        kind="pretrain",
        sources=("chexpert",),
        roots=(f"chexpert={root}",),
        arch="resnetv2_tiny_bit",
        image_size=16,
        batch_size=8,
        epochs=1,
        out_dir=str(tmp_path / "out"),
    )
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


def test_special_file_in_place_of_an_image_is_quarantined_with_its_kind(tmp_path):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    with pytest.raises(decoding.ImageError, match=r"image\.png: not a regular file"):
        decoding.prepare_image(fifo, 8, "L")  # stat only: it would block if it opened the FIFO


def test_cli_reports_bad_input_clearly_and_exits_2(tmp_path, capsys):
    (tmp_path / "nih").mkdir()
    (tmp_path / "nih" / "Data_Entry_2017_v2020.csv").write_text("Image Index,Patient ID\n1.png,1\n")
    code = cli.main(["data", "inspect", "nih", "--root", str(tmp_path / "nih"), "--metadata-only", "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Data_Entry_2017_v2020.csv: missing column(s) ['Finding Labels', 'View Position']" in err
    assert "Traceback" not in err


# ---- the shared CSV reader --------------------------------------------------------------------
def test_label_csv_reader_reads_what_pandas_reads(tmp_path):
    """read_table's Arrow reader matches pd.read_csv: NA-like cells, text ids, dates kept as text,
    booleans, and a quoted value over two lines."""

    path = tmp_path / "labels.csv"
    path.write_text(
        'id,date,flag,score,note\n007,2015-01-02,True,1.0,"two\nlines"\n008,2016-03-04,False,NA,\n'
        "009,2017-05-06,True,-1.0,None\n"
    )
    ours = sources.read_table(path, ["id", "date", "flag", "score", "note"], dtype={"id": str})
    theirs = pd.read_csv(path, dtype={"id": str})
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    assert list(ours["id"]) == ["007", "008", "009"] and ours["date"].iloc[0] == "2015-01-02"


def test_malformed_label_csv_names_the_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Path,Sex\na.jpg,M\nb.jpg,F,extra\n")
    with pytest.raises(sources.SourceError, match=r"train\.csv: cannot read as CSV .*Expected 2 columns, got 3"):
        sources.read_table(path, ["Path", "Sex"])


# ---- 1. encodings: a byte that is not UTF-8 stops the read at its physical line -----------------
@pytest.mark.parametrize(
    "column, old, new",
    [
        ("Frontal/Lateral", b"Frontal", b"Front\xe1l"),  # was: 0 images, rc 0
        ("Sex", b"Male", b"M\xe1le"),  # was: every row's sex ""
        ("Path", b"patient", b"pati\xe9nt"),  # was: a raw TypeError
    ],
)
def test_non_utf8_byte_in_a_chexpert_column_names_file_line_and_column(chexpert, capsys, column, old, new):
    path = chexpert / "train.csv"
    line = (
        3 if old != b"Male" else next(i for i, text in enumerate(path.read_bytes().split(b"\n"), 1) if b"Male" in text)
    )
    _replace_on_line(path, line, old, new)
    with pytest.raises(sources.SourceError) as err:
        sources.read_source("chexpert", chexpert, metadata_only=True)
    byte = next(b for b in new if b >= 0x80)
    assert f"train.csv, line {line}, column {column!r}: byte {byte:#04x} is not UTF-8" in str(err.value)
    assert "1 row(s) hold such bytes" in str(err.value)
    code, _, stderr = _inspect(capsys, "chexpert", chexpert)
    assert code == 2 and f"train.csv, line {line}, column {column!r}" in _one_error_line(stderr)


@pytest.mark.parametrize(
    "column, old, new",
    [("View Position", b",PA,", b",P\xc1,"), ("Finding Labels", b",No Finding,", b",No Find\xedng,")],
)
def test_non_utf8_byte_in_an_nih_column_names_file_line_and_column(nih, column, old, new):
    path = nih / "Data_Entry_2017_v2020.csv"
    line = next(i for i, text in enumerate(path.read_bytes().split(b"\n"), 1) if old in text)
    _replace_on_line(path, line, old, new)
    with pytest.raises(
        sources.SourceError,
        match=rf"Data_Entry_2017_v2020\.csv, line {line}, column {column!r}: "
        rf"byte 0x[0-9a-f]{{2}} is not UTF-8",
    ):
        sources.read_source("nih", nih, metadata_only=True)


def test_non_utf8_line_is_the_physical_line_after_multiline_values_and_in_text_columns(tmp_path):
    import gzip

    raw = b'id,note,view\n1,"two\nlines",PA\n2,"three\nmore\nlines",AP\n3,plain,P\xe1\n4,x,PA\n'
    path = tmp_path / "labels.csv.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(sources.SourceError, match=r"labels\.csv\.gz, line 7, column 'view': byte 0xe1"):
        sources.read_table(path, ["id", "note", "view"])
    text = tmp_path / "ids.csv"  # a column read as text (dtype str) takes pyarrow's other path
    text.write_bytes(b"id,view\n1,PA\n0\xe97,AP\n")
    with pytest.raises(sources.SourceError, match=r"ids\.csv, line 3, column 'id': byte 0xe9 is not UTF-8"):
        sources.read_table(text, ["id", "view"], dtype={"id": str})
    header = tmp_path / "header.csv"
    header.write_bytes(b"id,vi\xe9w\n1,PA\n")
    with pytest.raises(sources.SourceError, match=r"header\.csv, line 1 \(the header\): byte 0xe9"):
        sources.read_table(header, ["id"])


def test_non_utf8_byte_in_a_split_list_names_its_line(nih):
    lists = nih / "train_val_list.txt"
    lines = lists.read_bytes().split(b"\n")
    lines[2] = lines[2] + b"\xff"
    lists.write_bytes(b"\n".join(lines))
    with pytest.raises(sources.SourceError, match=r"train_val_list\.txt, line 3: byte 0xff is not UTF-8"):
        sources.read_source("nih", nih, metadata_only=True)


# ---- 2. special files are not "absent"; a real absence is said and recorded -------------------------
@pytest.mark.parametrize(
    "kind, make",
    [
        ("directory", os.mkdir),
        ("FIFO (named pipe)", os.mkfifo),
        ("broken symbolic link", lambda p: os.symlink(p.parent / "gone.csv", p)),
    ],
)
def test_special_file_in_place_of_valid_csv_is_an_error_not_a_fallback(chexpert, kind, make):
    (chexpert / "valid.csv").unlink(missing_ok=True)
    make(chexpert / "valid.csv")
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            sources.read_source("chexpert", chexpert, metadata_only=True)
            outcome.append(None)
        except sources.SourceError as err:
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)  # a FIFO opened for reading would block forever
    reader.start()
    reader.join(timeout=60)
    assert outcome, "the reader blocked on a special file"
    assert isinstance(outcome[0], sources.SourceError)
    assert f"valid.csv: is a {kind}; expected the CheXpert valid label file as a regular file" in str(outcome[0])


def test_absent_valid_csv_falls_back_with_a_warning_and_a_note(chexpert, capsys):
    (chexpert / "valid.csv").unlink()
    with pytest.warns(UserWarning, match=r"valid\.csv is absent: the valid split is carved from train"):
        table = sources.read_source("chexpert", chexpert, metadata_only=True)
    assert set(table["split"]) == {"train"}
    assert "carved from train" in sources.notes_of(table)["valid_split"]
    code, summary, _ = _inspect(capsys, "chexpert", chexpert)
    assert code == 0 and "carved from train" in summary["notes"]["valid_split"]


def test_special_file_in_place_of_an_nih_list_is_an_error(nih):
    (nih / "test_list.txt").unlink()
    os.mkdir(nih / "test_list.txt")
    with pytest.raises(sources.SourceError, match=r"test_list\.txt: is a directory; expected the NIH official split"):
        sources.read_source("nih", nih, metadata_only=True)


# ---- 3. a partial official split list is an error, never a quiet re-split --------------------------
def test_truncated_nih_list_names_the_lists_and_the_unlisted_images(nih):
    lists = nih / "train_val_list.txt"
    names = lists.read_text().split()
    lists.write_text("".join(f"{n}\n" for n in names[:-2]))  # two images fell off the end
    with pytest.raises(sources.SourceError) as err:
        sources.read_source("nih", nih, metadata_only=True)
    message = str(err.value)
    assert "train_val_list.txt and" in message and "test_list.txt: 2 of the" in message
    assert "are in neither list" in message and names[-2] in message and names[-1] in message


def test_one_nih_list_alone_or_an_image_in_both_is_an_error(nih):
    first = (nih / "test_list.txt").read_text().split()[0]
    with open(nih / "train_val_list.txt", "a") as handle:
        handle.write(f"{first}\n")
    with pytest.raises(sources.SourceError, match=rf"1 image\(s\) are in both lists, e.g. \['{first}'\]"):
        sources.read_source("nih", nih, metadata_only=True)
    (nih / "train_val_list.txt").unlink()
    with pytest.raises(sources.SourceError, match=r"train_val_list\.txt is absent but test_list\.txt is there"):
        sources.read_source("nih", nih, metadata_only=True)


def test_nih_without_lists_is_split_by_patient_said_and_recorded(nih):
    (nih / "train_val_list.txt").unlink()
    (nih / "test_list.txt").unlink()
    with pytest.warns(UserWarning, match="no official split, NIH is split by patient"):
        table = sources.read_source("nih", nih, metadata_only=True)
    assert set(table["split"]) == {""} and "official_split" in sources.notes_of(table)


# ---- 4. a field a cell's kind ignores would still change its run id: refused ------------------
@pytest.mark.parametrize(
    "kind, field, value",
    [
        ("transfer", "epochs", 3),
        ("transfer", "views", ()),
        ("transfer", "labels", "union"),
        ("transfer", "sources", ("chexpert",)),
        ("transfer", "data_fraction", 0.5),
        ("pretrain", "target", "cifar10"),
        ("pretrain", "shots", 5),
        ("pretrain", "shots_mode", "paper"),
        ("pretrain", "sampler", "oversample"),
        ("pretrain", "head", "concat"),
        ("pretrain", "head_init", "zero"),
    ],
)
def test_field_ignored_by_the_cells_kind_is_refused(kind, field, value):
    base = {"kind": kind, "sources": ("chexpert",)} if kind == "pretrain" else {"kind": kind, "target": "cifar10"}
    other = "pretrain" if kind == "transfer" else "transfer"
    with pytest.raises(ConfigError, match=rf"RunConfig\.{field} = .* on a {kind} cell; {field} only acts on {other}"):
        RunConfig(**{**base, field: value})


def test_fields_that_act_on_both_kinds_are_accepted_and_steps_with_epochs_is_refused(tmp_path):
    for cfg in (
        RunConfig(kind="pretrain", sources=("padchest",), label_mode="paper", split_mode="paper", steps=5),
        RunConfig(target="padchest-cl", label_mode="paper", split_mode="paper", uncertain="ones", steps=5),
    ):
        assert cfg.label_mode == "paper"
    path = tmp_path / "cell.yaml"
    path.write_text("kind: pretrain\nsources: [chexpert]\nepochs: 3\nsteps: 100\n")
    with pytest.raises(
        ConfigError,
        match=r"cell\.yaml: RunConfig\.epochs = 3 and RunConfig\.steps = 100 on a "
        r"pretrain cell; steps overrides epochs",
    ):
        RunConfig.from_yaml(path)


# ---- config values of the wrong type or range: the file, the field, the value, what is expected ------
@pytest.mark.parametrize(
    "line, message",
    [
        ("shots: five", "RunConfig.shots = 'five'; expected an integer >= 0"),
        ("steps: '10'", "RunConfig.steps = '10'; expected an integer >= 0"),
        ("lr: fast", "RunConfig.lr = 'fast'; expected a number >= 0"),
        ("seed: abc", "RunConfig.seed = 'abc'; expected an integer from 0 to 2**32 - 1"),
        ("seed: -1", "RunConfig.seed = -1; expected an integer from 0 to 2**32 - 1"),
        ("batch_size: 0", "RunConfig.batch_size = 0; expected an integer >= 1"),
        ("image_size: -8", "RunConfig.image_size = -8; expected an integer >= 0"),
        ("shots: true", "RunConfig.shots = True; expected an integer >= 0"),  # a bool where an int is expected
        ("steps: 2.5", "RunConfig.steps = 2.5; expected an integer >= 0"),
        ("compile: 1", "RunConfig.compile = 1; expected true or false"),  # an int where a bool is expected
        ("arch: [a, b]", "RunConfig.arch = ['a', 'b']; expected a non-empty string"),  # a list where a str is expected
        ("arch: ''", "RunConfig.arch = ''; expected a non-empty string"),
        ("target: 5", "RunConfig.target = 5; expected a string"),
        ("mixup: -0.5", "RunConfig.mixup = -0.5; expected -1 (BiT-HyperRule decides) or a MixUp alpha >= 0"),
        ("lr: .nan", "RunConfig.lr = nan; expected a number >= 0"),
        ("head: mlp", "RunConfig.head = 'mlp'; expected one of ['linear', 'concat']"),
        ("roots: {cifar10: /data}", "RunConfig.roots = {'cifar10': '/data'}; expected a list"),
        ("roots: [cifar10]", "RunConfig.roots entry 'cifar10'; expected 'name=DIR'"),
        ("roots: [cifar10=/a, cifar10=/b]", "RunConfig.roots names 'cifar10' twice"),
        ("init: run:abc", "RunConfig.init = 'run:abc'; expected run:<run id>"),
        ("init: pretrain:chexpert", "RunConfig.init = 'pretrain:chexpert' names a pre-training cell of a sweep file"),
    ],
)
def test_wrong_config_value_names_file_field_value_and_what_is_expected(tmp_path, line, message):
    path = tmp_path / "cell.yaml"
    target = "" if line.startswith("target:") else "target: cifar10\n"  # a key may appear once (issue 19)
    path.write_text(f"kind: transfer\n{target}{line}\n")
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_pretrain_data_fraction_of_the_wrong_type_and_the_cli_line(tmp_path, capsys):
    path = tmp_path / "cell.yaml"
    path.write_text("kind: pretrain\nsources: [chexpert]\ndata_fraction: half\n")
    assert cli.main(["train", str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"xrstudy: error: {path}: RunConfig.data_fraction = 'half'; expected a number with 0 < f <= 1")


def test_whole_numbers_in_float_fields_give_one_run_id_and_config_file_faults(tmp_path):
    assert RunConfig(target="x", lr=1).run_id == RunConfig(target="x", lr=1.0).run_id
    assert isinstance(RunConfig(target="x", lr=1).lr, float)
    assert RunConfig(target="x", seed=np.int64(3)).seed == 3  # a notebook loop's numpy integer
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match=r"fifo\.yaml: not a regular file"):
        RunConfig.from_yaml(tmp_path / "fifo.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"kind: transfer\ntarget: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml, line 2: byte 0xe9 is not UTF-8"):
        RunConfig.from_yaml(tmp_path / "latin.yaml")


def test_a_sweep_file_is_read_by_the_same_rules(tmp_path):
    from xrstudy.sweeps.sweepfile import SweepError, load_sweep

    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(SweepError, match=r"fifo\.yaml: not a regular file"):  # refused, not waited on
        load_sweep(tmp_path / "fifo.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"transfer:\n  - {target: caf\xe9}\n")
    with pytest.raises(SweepError, match=r"latin\.yaml, line 2: byte 0xe9 is not UTF-8"):
        load_sweep(tmp_path / "latin.yaml")
    with pytest.raises(SweepError, match=r"absent\.yaml: no such sweep file"):
        load_sweep(tmp_path / "absent.yaml")


# ---- name=DIR and run:<id>, each parsed once ------------------------------------------------------
def test_root_entries_and_parent_references_have_one_parser_each(tmp_path, capsys):
    assert parse_root(" chexpert = /data/c ") == ("chexpert", Path("/data/c"))
    for bad in ("chexpert", "=/data", "chexpert="):
        with pytest.raises(ConfigError, match="expected 'name=DIR'"):
            parse_root(bad)
    assert RunConfig(target="t", roots=("t=/d",)).root_map == {"t": Path("/d")}
    with pytest.raises(SystemExit):
        cli.main(["data", "merge", "--source", "chexpert", "--metadata-only"])
    assert "--source entry 'chexpert'; expected 'name=DIR'" in capsys.readouterr().err

    assert parent_run_id("run:pretrain-0123456789ab") == "pretrain-0123456789ab"
    assert parent_run_id("scratch") is None and parent_run_id("/some/checkpoint.pt") is None
    cfg = RunConfig(target="t", init="run:pretrain-0123456789ab", out_dir=str(tmp_path))
    assert models.checkpoint_path(cfg, cfg.init) == tmp_path / "runs" / "pretrain-0123456789ab" / "checkpoint.pt"


# ---- 8. a full disk: checked before the memory map, ENOSPC is one line with the path ----------------
def _image_paths(tmp_path: Path, count: int = 6) -> list[str]:
    paths = []
    for i in range(count):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((20, 24), 10 * i, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _cache_bytes(folder: Path) -> dict[str, bytes]:
    names = ("images.u8", "done.npy", "checksums.npy", "quarantine.json", "paths.txt")
    return {name: (folder / name).read_bytes() for name in names}


def test_cache_checks_free_space_before_mapping(tmp_path, monkeypatch):
    paths = _image_paths(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=10**6, used=10**6 - 1000, free=1000))
    with pytest.raises(fileio.DiskFullError) as err:
        imagecache.build_cache(paths, 64, tmp_path / "cache", "L")
    folder = tmp_path / "cache" / imagecache.cache_key(paths, 64, "L")[:16]
    assert str(err.value).startswith(
        f"not enough free space in {folder} for the image cache (6 images at 64px L): needs 1.0 MiB, 1000 B free"
    )
    assert not list((tmp_path / "cache").rglob("images.u8"))  # nothing mapped, nothing half-written
    assert imagecache.check_free_space is fileio.check_free_space  # the training path calls the same check


def test_enospc_while_building_is_one_line_and_resume_gives_the_identical_cache(tmp_path, monkeypatch, capsys):
    paths = _image_paths(tmp_path, 10)
    reference = imagecache.build_cache(paths, 16, tmp_path / "reference", "L")
    real_save, calls = np.save, []

    def full_disk_on_second_chunk(handle, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # each chunk saves checksums.npy, then done.npy
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(handle, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", full_disk_on_second_chunk)
    with pytest.raises(fileio.DiskFullError) as err:
        imagecache.build_cache(paths, 16, tmp_path / "cache", "L", chunk_size=3)
    folder = tmp_path / "cache" / reference.key[:16]
    assert str(err.value).startswith(f"no space left on device writing {folder / 'done.npy'} (")
    monkeypatch.setattr(np, "save", real_save)  # space freed
    resumed = imagecache.build_cache(paths, 16, tmp_path / "cache", "L", chunk_size=3)
    assert resumed.reused == 3 and resumed.built == 7
    assert _cache_bytes(folder) == _cache_bytes(reference.folder)


def test_enospc_when_reserving_the_images_file_names_it(tmp_path, monkeypatch):
    paths = _image_paths(tmp_path)

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(fileio.DiskFullError, match=r"no space left on device writing .*images\.u8"):
        imagecache.build_cache(paths, 16, tmp_path / "cache", "L")


def test_enospc_in_the_shared_writers_and_the_cli_names_the_path(tmp_path, monkeypatch, capsys):
    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)
    target = tmp_path / "results" / "run.json"
    with pytest.raises(fileio.DiskFullError, match=rf"no space left on device writing {target} \("):
        fileio.atomic_write_json(target, {"a": 1})
    assert not list(target.parent.iterdir())  # the temporary file is removed

    cfg = RunConfig(target="t")
    with pytest.raises(fileio.DiskFullError, match=r"cell\.yaml"):
        cfg.to_yaml(tmp_path / "cell.yaml")
    table = pd.DataFrame({"source": ["s"], "image_id": ["a"], "split": ["train"]})
    with pytest.raises(fileio.DiskFullError, match=r"no space left on device writing .*splits/s\.csv"):
        splits.save_split(table, tmp_path / "splits" / "s.csv")

    def handler(_args):
        raise OSError(errno.ENOSPC, "No space left on device")  # a writer that did not say which file

    monkeypatch.setattr(cli, "resolve_handler", lambda _target: handler)
    assert cli.main(["figures", "--results", str(tmp_path)]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "xrstudy: error: no space left on device (the writer did not "
        "say which file); free some space and run the same command again"
    )


def test_a_full_disk_in_torch_save_names_the_checkpoint(tmp_path, monkeypatch):
    """torch.save to a file name reports a full disk as a bare RuntimeError ("unexpected pos"): the
    checkpoint writer says which file and how much space, and leaves neither a temp file nor a sidecar.
    The same RuntimeError with room to spare is not called a full disk."""
    import torch

    model = torch.nn.Linear(64, 64)  # 16.6 kB of tensors
    target = tmp_path / "runs" / "r" / "checkpoint.pt"

    def failing_save(obj, file, *args, **kwargs):
        Path(file).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=10**6, used=10**6 - 1000, free=1000))
    with pytest.raises(
        fileio.DiskFullError,
        match=rf"no space left on device writing {target} \(1000 B free there, "
        rf"about 16\.\d KiB to write; the writer said: .*unexpected pos",
    ):
        models.write_checkpoint(target, model, {"arch": "linear"})
    assert not list(target.parent.iterdir())  # no temp file, no sidecar

    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=10**12, used=0, free=10**12))
    with pytest.raises(RuntimeError, match="unexpected pos") as err:
        models.write_checkpoint(target, model, {"arch": "linear"})
    assert not isinstance(err.value, fileio.DiskFullError) and not list(target.parent.iterdir())


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.slow
def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and permission to mount; skipped otherwise): `data cache` ends with one
    line (it was a SIGBUS, rc 135); with the free-space check switched off the reservation still fails
    cleanly; after the tmpfs grows, the cache equals one built on a roomy disk."""
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "1m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = layouts.write_layout(
            "chexpert", tmp_path / "CheXpert-v1.0-small", _records(40, splits=(("train", 0.8), ("valid", 0.2)))
        )
        command = [
            sys.executable,
            "-m",
            "xrstudy.cli",
            "data",
            "cache",
            "chexpert",
            "--root",
            str(root),
            "--size",
            "256",
            "--workers",
            "1",
            "--cache-dir",
            str(small / "cache"),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert "not enough free space in" in _one_error_line(done.stderr) and "needs" in done.stderr
        paths = sorted(sources.read_source("chexpert", root)["path"])
        unchecked = (
            f"from xrstudy.pixels import imagecache; imagecache.check_free_space = lambda *a, **k: None; "
            f"imagecache.build_cache({paths!r}, 256, {str(small / 'cache')!r}, 'L')"
        )
        done = subprocess.run([sys.executable, "-c", unchecked], capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and "DiskFullError: no space left on device writing" in done.stderr, done
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        resumed = imagecache.build_cache(paths, 256, small / "cache", "L").folder  # (the folder: no memory map
        reference = imagecache.build_cache(paths, 256, tmp_path / "roomy", "L").folder  # kept open on the tmpfs)
        assert _cache_bytes(resumed) == _cache_bytes(reference)
    finally:
        gc.collect()
        if subprocess.run(["umount", str(small)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(small)], capture_output=True)


# ---- Ctrl-C while the CLI starts: exit 130, one line -------------------------------------------------
def test_ctrl_c_while_building_the_parser_or_importing_a_command(monkeypatch, capsys):
    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["--help"]) == 130
    assert "interrupted" in _one_error_line(capsys.readouterr().err)
    monkeypatch.undo()
    monkeypatch.setattr(cli, "resolve_handler", interrupted)
    assert cli.main(["figures"]) == 130
    assert "interrupted" in _one_error_line(capsys.readouterr().err)


def test_ctrl_c_during_the_console_scripts_imports(tmp_path):
    """What the `xrstudy` script runs (`from xrstudy.cli import main; sys.exit(main())`), with Ctrl-C
    arriving while PyYAML is imported: importing the script's module loads only the standard library,
    so the interrupt lands inside `main`."""
    script = (
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'yaml': raise KeyboardInterrupt\n"
        "from xrstudy.cli import main\n"
        "assert not [m for m in sys.modules if m.startswith('xrstudy.') and m != 'xrstudy.cli'], sys.modules\n"
        "sys.modules.pop('yaml', None); sys.meta_path.insert(0, CtrlC())\n"
        "sys.exit(main(['--help']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])},
    )
    assert done.returncode == 130, done.stderr
    assert "interrupted" in _one_error_line(done.stderr)


# ---- a non-numeric age is counted, not silently NaN ----------------------------------------------------
def test_unreadable_ages_are_counted_in_data_inspect(chexpert, nih, capsys):
    path = chexpert / "train.csv"
    lines = path.read_text().split("\n")
    header = lines[0].split(",")
    age = header.index("Age")
    for number in (1, 2):  # two rows: a word and a blank-looking but non-numeric value
        cells = lines[number].split(",")
        cells[age] = ["abc", "n.a."][number - 1]
        lines[number] = ",".join(cells)
    path.write_text("\n".join(lines))
    code, summary, _ = _inspect(capsys, "chexpert", chexpert)
    assert code == 0 and summary["notes"]["age_unreadable"] == 2

    entry = nih / "Data_Entry_2017_v2020.csv"
    text = entry.read_text().split("\n")
    column = text[0].split(",").index("Patient Age")
    for number, value in ((1, "058Y"), (2, "old")):  # the 2017 file's "058Y" is an age; "old" is not
        cells = text[number].split(",")
        cells[column] = value
        text[number] = ",".join(cells)
    entry.write_text("\n".join(text))
    table = sources.read_source("nih", nih, metadata_only=True)
    assert table["age"].iloc[0] == 58 and np.isnan(table["age"].iloc[1])
    assert sources.notes_of(table)["age_unreadable"] == 1
