"""Adapters on miniature copies of the real layouts, label policy, merge, splits, few-shot, prepare."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrstudy.config import ConfigError, RunConfig
from xrstudy.data import fewshot, labels, layouts, merge, phantoms, sources, splits, studydata
from xrstudy.data.layouts import Record

SMALL = phantoms.PhantomStyle(height=24, width=20)


@pytest.fixture(scope="module")
def xray_records():
    return phantoms.xray_records(
        16,
        seed=0,
        style=SMALL,
        uncertain_share=0.3,
        blank_share=0.3,
        splits=(("train", 0.7), ("valid", 0.15), ("test", 0.15)),
    )


@pytest.fixture(scope="module")
def roots(tmp_path_factory, xray_records):
    base = tmp_path_factory.mktemp("sources")
    out = {}
    for name in ("chexpert", "nih", "mimic"):
        out[name] = layouts.write_layout(name, base / name, xray_records)
    out["padchest"] = layouts.write_layout(
        "padchest",
        base / "padchest",
        phantoms.xray_records(
            10, seed=1, style=phantoms.PhantomStyle(height=24, width=20, bits=16), uncertain_share=0, blank_share=0
        ),
    )
    out["padchest-cl"] = layouts.write_layout(
        "padchest",
        base / "padchest-cl",
        phantoms.single_finding_records(4, seed=2, classes=("normal", "Effusion", "Cardiomegaly"), style=SMALL),
    )
    out["shapes"] = layouts.write_layout("imagefolder", base / "shapes", phantoms.shape_records(3, seed=3, size=16))
    return out


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


def test_policy_keeps_explicit_values_and_never_mutates_the_input():
    raw = pd.DataFrame(
        {
            "source": ["chexpert"] * 3,
            "No Finding": [1.0, 1.0, np.nan],
            "Edema": [np.nan, -1.0, np.nan],
            "Effusion": [0.0, 1.0, -1.0],
        }
    )
    before = raw.copy()
    out = labels.apply_policy(raw, "ignore")
    pd.testing.assert_frame_equal(raw, before)
    assert out["Edema"].tolist()[0] == 0.0 and np.isnan(out["Edema"].tolist()[1]) and np.isnan(out["Edema"][2])
    assert out["Effusion"].tolist()[:2] == [0.0, 1.0] and np.isnan(out["Effusion"][2])
    assert labels.apply_policy(raw, "ones")["Effusion"][2] == 1.0
    with pytest.raises(ValueError, match="uncertain policy"):
        labels.apply_policy(raw, "maybe")


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


def test_intersection_and_union_merge(roots):
    chexpert = labels.apply_policy(sources.read_source("chexpert", roots["chexpert"]))
    nih = labels.apply_policy(sources.read_source("nih", roots["nih"]))
    before = chexpert.copy()
    both = merge.merge_sources([chexpert, nih], "intersection")
    assert labels.finding_columns(both) == sorted(phantoms.DRAWN_FINDINGS)  # the paper's 7
    pd.testing.assert_frame_equal(chexpert, before)
    union = merge.merge_sources([chexpert, nih], "union")
    assert {"Support Devices", "Hernia", "Pleural Thickening"} <= set(union.columns)
    assert union.loc[union["source"] == "chexpert", "Hernia"].isna().all()  # not annotated -> unknown
    assert len(union) == len(both) == len(chexpert) + len(nih)
    with pytest.raises(ValueError, match="twice"):
        merge.merge_sources([nih, nih])


def test_patient_split_has_no_overlap_and_is_byte_identical(roots, tmp_path):
    table = sources.read_source("chexpert", roots["chexpert"])
    a = splits.assign_splits(table, "patient", seed=0)
    b = splits.assign_splits(table.sample(frac=1, random_state=1), "patient", seed=0)
    assert splits.patient_overlap(a) == {"patients": 0, "images": 0}
    assert splits.save_split(a, tmp_path / "a.csv") == splits.save_split(b, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    official = splits.assign_splits(table, "official")
    assert set(official["split"]) == {"train", "valid", "test"}  # CheXpert has no test: carved by patient
    assert splits.patient_overlap(official)["patients"] == 0
    assert (official.loc[table["split"] == "valid", "split"] == "valid").all()


def test_paper_split_is_image_level_and_nested_fractions_are_nested(roots):
    table = sources.read_source("padchest", roots["padchest"])
    paper = splits.assign_splits(table, "paper")  # the authors' 90/10 of RandomState(42): no knobs
    assert set(paper["split"]) == {"train", "test"} and (paper["split"] == "train").sum() == int(len(table) * 0.9)
    assert splits.patient_overlap(paper)["patients"] > 0  # the paper's flaw, measured
    small, large = splits.fraction_subset(table, 0.3), splits.fraction_subset(table, 0.6)
    assert set(small["image_id"]) <= set(large["image_id"])
    assert not set(small["patient_id"]) & set(table.loc[~table["image_id"].isin(small["image_id"]), "patient_id"])


def test_few_shot_single_and_multi_label():
    pool = pd.DataFrame({"image_id": [f"i{i}" for i in range(30)], "label": list("abc") * 10, "split": "train"})
    one = fewshot.sample_shots(pool, 2, seed=0)
    assert one["label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 2}
    pd.testing.assert_frame_equal(one, fewshot.sample_shots(pool.sample(frac=1, random_state=0), 2, seed=0))
    assert not one["image_id"].equals(fewshot.sample_shots(pool, 2, seed=1)["image_id"])
    with pytest.raises(fewshot.FewShotError, match="class 'a' has 10"):
        fewshot.sample_shots(pool, 11, seed=0)
    with pytest.raises(fewshot.FewShotError, match="training split only"):
        fewshot.sample_shots(pool.assign(split="test"), 1, seed=0)

    rng = np.random.default_rng(0)
    multi = pd.DataFrame(rng.random((200, 4)) < 0.2, columns=list("wxyz")).astype(np.float32)
    multi.iloc[::7, 0] = np.nan
    multi.insert(0, "image_id", [f"m{i:03d}" for i in range(200)])
    chosen = fewshot.sample_shots(multi, 3, seed=0, classes=list("wxyz"))
    assert ((chosen[list("wxyz")] == 1).sum() >= 3).all()
    assert len(chosen) <= 12


def _cfg(roots, tmp_path, **kw):
    entries = tuple(f"{n}={p}" for n, p in roots.items())
    return RunConfig(roots=entries, out_dir=str(tmp_path), **kw)


def test_prepare_pretrain_and_transfer(roots, tmp_path):
    study = studydata.prepare(_cfg(roots, tmp_path, kind="pretrain", sources=("chexpert", "nih", "padchest")))
    assert study.multilabel and study.classes == tuple(sorted(phantoms.DRAWN_FINDINGS))
    assert study.dropped.get("chexpert:view", 0) > 0  # laterals filtered, and counted
    assert len(study.split_sha256) == 64 and (tmp_path / "splits").is_dir()
    assert not set(study.train["image_id"]) & set(study.test["image_id"])
    again = studydata.prepare(_cfg(roots, tmp_path, kind="pretrain", sources=("chexpert", "nih", "padchest")))
    assert again.split_sha256 == study.split_sha256

    half = studydata.prepare(_cfg(roots, tmp_path, kind="pretrain", sources=("chexpert",), data_fraction=0.5))
    full = studydata.prepare(_cfg(roots, tmp_path, kind="pretrain", sources=("chexpert",)))
    assert set(half.train["image_id"]) < set(full.train["image_id"])

    target = studydata.prepare(
        _cfg(roots, tmp_path, kind="transfer", target="padchest-cl", shots=1, seed=3, label_mode="terms")
    )  # the exact-term task (paper: the authors' 27 classes)
    assert target.classes == ("Cardiomegaly", "Effusion", "normal") and not target.multilabel
    assert target.train["label"].value_counts().to_dict() == dict.fromkeys(target.classes, 1)
    assert set(target.shots_ids) == set(target.train["image_id"])
    assert not set(target.shots_ids) & set(target.test["image_id"])
    for study_data in (study, target):  # each row's cache row, found once in prepare, is its path's place
        assert list(study_data.universe) == sorted(set(study_data.universe))
        for name in ("train", "valid", "test"):
            rows = study_data.universe_rows[name]
            table = getattr(study_data, name)
            assert [study_data.universe[r] for r in rows] == table["path"].astype(str).tolist()

    shapes = studydata.prepare(_cfg(roots, tmp_path, kind="pretrain", sources=("shapes",), views=()))
    assert not shapes.multilabel and len(shapes.classes) == len(phantoms.SHAPES)
    with pytest.raises(ConfigError, match="mix"):
        studydata.prepare(_cfg(roots, tmp_path, kind="pretrain", sources=("chexpert", "shapes")))
    with pytest.raises(ConfigError, match="no root"):
        studydata.prepare(RunConfig(kind="transfer", target="covidx", out_dir=str(tmp_path)))


# ---- bad input: errors name the file, the line and the column ---------------------------------
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


def test_record_writer_registry_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="no layout writer"):
        layouts.write_layout("nope", tmp_path, [Record(1, 1, "PA", "M", 40, {}, "train", np.zeros((4, 4), np.uint8))])


def test_cli_cache_builds_then_reuses(roots, tmp_path, capsys):
    from xrstudy import cli

    args = [
        "data",
        "cache",
        "nih",
        "--root",
        str(roots["nih"]),
        "--size",
        "16",
        "--workers",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    images = len(sources.read_source("nih", roots["nih"]))
    assert f"({images} images, 16px L)" in first and f"built {images}" in first and "quarantined 0" in first
    assert cli.main(args) == 0
    assert f"reused {images}" in capsys.readouterr().out


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


def test_universe_of_refuses_parts_outside_the_table():
    """The cache rows of each split come from one factorisation; a part with a path the table lacks
    (or a row without a path) is an error, never a wrong row."""
    table = pd.DataFrame({"path": ["b.png", "a.png", "c.png"]})
    universe, rows = studydata.universe_of(table, {"train": table.iloc[[0, 2]], "test": table.iloc[[1]]})
    assert universe == ("a.png", "b.png", "c.png") and rows["train"].tolist() == [1, 2] and rows["test"].tolist() == [0]
    with pytest.raises(ValueError, match="outside the table"):
        studydata.universe_of(table, {"train": pd.DataFrame({"path": ["d.png"]})})
    with pytest.raises(ValueError, match="no image path"):
        studydata.universe_of(table, {"train": pd.DataFrame({"path": [None]})})
