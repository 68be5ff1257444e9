"""`xrstudy.data.sources`: every adapter reads its source's files as distributed (plain or gzipped, with
or without images); bad label files, split lists, file names and compressed bombs end in one line naming
the file, line and column; what a reader counts or falls back to is said."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import cli_error, one_error_line
from PIL import Image

from xrstudy import cli
from xrstudy.data import labels, layouts, phantoms, sources


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
    assert code == 2 and f"train.csv, line {line}, column {column!r}" in one_error_line(stderr)


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


def test_a_non_utf8_file_name_in_an_imagefolder_is_named(tmp_path, capsys):

    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    os.rename(tmp_path / "pets" / "cat" / "0.png", os.fsencode(tmp_path / "pets" / "cat") + b"/\xff\xfe.png")
    line = cli_error(capsys, ["data", "inspect", "mypets", "--root", str(tmp_path / "pets")])
    assert line == (
        f"xrstudy: error: mypets: file name {tmp_path / 'pets' / 'cat'}/\\xff\\xfe.png is not UTF-8; rename it "
        "(xrstudy writes every path as UTF-8 text)"
    )


def test_a_gzip_bomb_as_a_label_file_is_refused_before_it_fills_memory(tmp_path, capsys, monkeypatch):
    import gzip

    from xrstudy.data import phantoms
    from xrstudy.data.sources import tables

    root = layouts.write_layout("mimic", tmp_path / "mimic", phantoms.xray_records(6, seed=0, lateral_share=0.0))
    code = cli.main(["data", "inspect", "mimic", "--root", str(root), "--metadata-only", "--json"])
    assert code == 0, capsys.readouterr().err  # the layout's own .gz files are far below the bound
    capsys.readouterr()
    monkeypatch.setattr(tables, "GZIP_RATIO_FLOOR", 1 << 20)  # the bound of 64 MiB, scaled down to 1 MiB
    labels = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    header = gzip.decompress(labels.read_bytes()).split(b"\n")[0] + b"\n"
    labels.write_bytes(gzip.compress(header + b"1,2" + b"," * (8 << 20) + b"\n", compresslevel=9))
    size = labels.stat().st_size
    assert size < 20_000
    line = cli_error(capsys, ["data", "inspect", "mimic", "--root", str(root), "--metadata-only"])
    assert line.startswith(
        f"xrstudy: error: {labels}: expands past {1 << 20:,} bytes, more than 100-fold its {size:,} compressed "
        "bytes (a gzip bomb?); expected a CSV label file with columns ['subject_id', 'study_id', "
    )
    with pytest.raises(tables.SourceError, match=r"expands past 1,048,576 bytes, more than 100-fold"):
        tables.read_text(labels, "lines of text")  # the text reader (split lists) decompresses with the same bound
    labels.write_bytes(b"\x1f\x8b not gzip")
    assert cli_error(capsys, ["data", "inspect", "mimic", "--root", str(root), "--metadata-only"]).startswith(
        f"xrstudy: error: {labels}: cannot read as gzip ("
    )


def _expected_chexpert(records, name, policy):
    """What the CheXpert adapter + policy must give for one finding, straight from the records."""
    values = []
    for r in records:
        v = r.findings.get(name)
        nothing_drawn = not any(x in (1.0, -1.0) for x in r.findings.values())
        if v is None:
            v = 0.0 if nothing_drawn else np.nan
        if v == -1.0:
            v = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[policy]
        values.append(v)
    return np.array(values, np.float32)


@pytest.mark.parametrize("policy", ["ignore", "ones", "zeros"])
def test_chexpert_layout_round_trip_under_each_policy(roots, xray_records, policy):
    table = labels.apply_policy(sources.read_source("chexpert", roots["chexpert"]), policy)
    assert len(table) == len(xray_records)
    assert table["image_id"].str.startswith("chexpert/").all()  # the Path column, as distributed
    assert all(Path(p).is_file() for p in table["path"])
    assert {"LATERAL", "PA", "AP"} <= set(table["view"])
    assert table["patient_id"].str.startswith("chexpert:patient").all()
    assert "No Finding" not in table.columns and not (table[labels.finding_columns(table)] == -1).any().any()
    # Rows come back in file order: train.csv then valid.csv.
    ordered = [
        r
        for split in ("train", "valid")
        for r in xray_records
        if ("valid" if r.split in ("valid", "test") else "train") == split
    ]
    for name in phantoms.DRAWN_FINDINGS:
        np.testing.assert_array_equal(table[name].to_numpy(), _expected_chexpert(ordered, name, policy))


def test_nih_mimic_padchest_layouts(roots, xray_records):
    nih = sources.read_source("nih", roots["nih"])
    assert len(nih) == sum(r.view in ("PA", "AP") for r in xray_records)
    assert not nih[labels.finding_columns(nih)].isna().any().any()  # NIH: absent means 0
    assert set(nih["split"]) <= {"train", "test"} and (nih["split"] == "test").any()
    assert "Pleural Thickening" in nih.columns

    mimic = sources.read_source("mimic", roots["mimic"])
    assert len(mimic) == len(xray_records) and mimic["path"].map(lambda p: __import__("os").path.isfile(p)).all()
    assert set(mimic["split"]) == {"train", "valid", "test"}
    chexpert = sources.read_source("chexpert", roots["chexpert"])
    assert sorted(labels.finding_columns(mimic)) == sorted(labels.finding_columns(chexpert))

    padchest = sources.read_source("padchest", roots["padchest"])
    assert (padchest["split"] == "").all() and "Effusion" in padchest.columns
    assert padchest["raw_labels"].str.startswith("[").all()


def test_metadata_only_reads_label_files_without_images(roots, tmp_path):
    for name in ("chexpert", "nih", "padchest"):
        copy = tmp_path / name
        copy.mkdir()
        for file in roots[name].iterdir():
            if file.is_file():
                shutil.copy(file, copy / file.name)
        with pytest.raises(sources.SourceError, match="metadata_only"):
            sources.read_source(name, copy)
        assert len(sources.read_source(name, copy, metadata_only=True)) == len(sources.read_source(name, roots[name]))


def test_gzipped_label_files_read_the_same(roots, tmp_path):
    copy = tmp_path / "nih"
    shutil.copytree(roots["nih"], copy)
    plain = copy / "Data_Entry_2017_v2020.csv"
    with open(plain, "rb") as src, gzip.open(f"{plain}.gz", "wb") as dst:
        dst.write(src.read())
    plain.unlink()
    gzipped, plain_table = sources.read_source("nih", copy), sources.read_source("nih", roots["nih"])
    pd.testing.assert_frame_equal(gzipped.drop(columns="path"), plain_table.drop(columns="path"))


def test_missing_and_renamed_columns(roots, tmp_path):
    copy = tmp_path / "nih"
    shutil.copytree(roots["nih"], copy)
    entry = copy / "Data_Entry_2017_v2020.csv"
    pd.read_csv(entry).rename(columns={"Finding Labels": "Findings"}).to_csv(entry, index=False)
    with pytest.raises(
        sources.SourceError, match=r"Data_Entry_2017_v2020.csv: missing column\(s\) \['Finding Labels'\]"
    ):
        sources.read_source("nih", copy)
    entry.write_text("")
    with pytest.raises(sources.SourceError, match="empty"):
        sources.read_source("nih", copy)
    entry.unlink()
    with pytest.raises(sources.SourceError, match="no NIH Data_Entry file"):
        sources.read_source("nih", copy)
    with pytest.raises(sources.SourceError, match="not a directory"):
        sources.read_source("nih", tmp_path / "nowhere")


def test_unknown_terms_duplicates_and_bad_values_name_the_line(roots, tmp_path):
    copy = tmp_path / "padchest"
    shutil.copytree(roots["padchest"], copy)
    csv = copy / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    frame = pd.read_csv(csv)
    frame.loc[3, "Labels"] = "['pleural effusion', 'dragon scales']"
    frame.to_csv(csv, index=False)
    # Row 1's LocalizationsCUIS spans two lines (as in the real file), so row 3 starts on line 6, not 5.
    line = 1 + next(i for i, text in enumerate(csv.read_text().splitlines()) if "dragon scales" in text)
    assert line == 6
    with pytest.raises(
        sources.SourceError, match=rf"line {line}, column 'Labels': unknown PadChest term 'dragon scales'"
    ):
        sources.read_source("padchest", copy)
    frame.loc[3, "Labels"] = "['normal']"
    frame.loc[4, "ImageID"] = frame.loc[1, "ImageID"]
    frame.to_csv(csv, index=False)
    with pytest.raises(sources.SourceError, match=r"duplicate ImageID .* on lines \[3, 7\]"):
        sources.read_source("padchest", copy)

    chexpert = tmp_path / "chexpert"
    shutil.copytree(roots["chexpert"], chexpert)
    train = pd.read_csv(chexpert / "train.csv")
    train.loc[2, "Edema"] = 2.0
    train.to_csv(chexpert / "train.csv", index=False)
    with pytest.raises(sources.SourceError, match=r"train.csv, line 4, column 'Edema': value '2.0'"):
        sources.read_source("chexpert", chexpert)


def test_read_cache_follows_each_entrys_policy(roots, tmp_path, monkeypatch):
    """`Source.cache_reads`: CheXpert reads are kept, NIH's only when metadata-only (a full read scans its
    image folders), an ImageFolder tree's never; an edited label file is read afresh; every call gets its
    own copy."""
    import dataclasses

    calls: list[tuple[str, bool]] = []
    for name in ("chexpert", "nih", "imagefolder"):
        entry = sources.SOURCES[name]
        counted = (lambda read: lambda n, root, meta: calls.append((n, meta)) or read(n, root, meta))(entry.read)
        monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(entry, read=counted))
    assert {n: sources.SOURCES[n].cache_reads for n in ("chexpert", "nih", "imagefolder")} == {
        "chexpert": "always",
        "nih": "metadata_only",
        "imagefolder": "never",
    }
    copies = {name: tmp_path / name for name in ("chexpert", "nih", "shapes")}
    for name, copy in copies.items():
        shutil.copytree(roots[name], copy)

    def read_twice(name, root, metadata_only=False):
        calls.clear()
        first = sources.read_source(name, root, metadata_only)
        first.loc[0, "view"] = "edited by a caller"
        second = sources.read_source(name, root, metadata_only)
        assert second.loc[0, "view"] != "edited by a caller"  # the cache hands out copies
        return len(calls)

    assert read_twice("chexpert", copies["chexpert"]) == 1
    assert read_twice("chexpert", copies["chexpert"], metadata_only=True) == 1
    assert read_twice("nih", copies["nih"], metadata_only=True) == 1
    assert read_twice("nih", copies["nih"]) == 2
    assert read_twice("imagefolder", copies["shapes"]) == 2
    with open(copies["chexpert"] / "train.csv", "a") as handle:  # an edited label file is read afresh
        handle.write("\n")
    calls.clear()
    sources.read_source("chexpert", copies["chexpert"])
    assert calls == [("chexpert", False)]
    with pytest.raises(ValueError, match=r"cache_reads = 'sometimes'; expected one of"):
        dataclasses.replace(sources.SOURCES["nih"], cache_reads="sometimes")


def test_unknown_nih_term_and_old_style_ages(roots, tmp_path):
    copy = tmp_path / "nih"
    shutil.copytree(roots["nih"], copy)
    entry = copy / "Data_Entry_2017_v2020.csv"
    frame = pd.read_csv(entry)
    frame["Patient Age"] = frame["Patient Age"].map(lambda a: f"{a:03d}Y")  # the 2017 file's style
    frame.to_csv(entry, index=False)
    ages = sources.read_source("nih", copy)["age"]
    assert (
        ages.tolist() == pd.read_csv(roots["nih"] / "Data_Entry_2017_v2020.csv")["Patient Age"].astype(float).tolist()
    )
    frame.loc[2, "Finding Labels"] = "Effusion|Dragon"
    frame.to_csv(entry, index=False)
    with pytest.raises(sources.SourceError, match=r"line 4, column 'Finding Labels': unknown term 'Dragon'"):
        sources.read_source("nih", copy)
