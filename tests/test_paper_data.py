"""The data as the authors built it (label_mode / split_mode / shots_mode `paper`), on miniature copies
of the real layouts: PadChest's 27 substring pathologies and the rows they drop, the PadChest-Cl task,
each target split and ordered as their dataset classes do, their two k-shot samplers, pre-training data,
and the planner's training-set sizes. Every expectation is computed here independently."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.io import savemat

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.data import fewshot, labels, layouts, phantoms, sources, splits, studydata
from xrstudy.data.layouts import Record

FIVE_VIEWS = ("PA", "AP", "AP_SUPINE", "LATERAL", "COSTAL")


def _image(i, size=8):
    return ((np.arange(size * size).reshape(size, size) * 3 + i * 17) % 255).astype(np.uint8)


@pytest.fixture(scope="module")
def padchest_root(tmp_path_factory):
    return layouts.write_layout(
        "padchest", tmp_path_factory.mktemp("paper") / "padchest", layouts.padchest_paper_records(repeat=4)
    )


def _cfg(tmp_path, name, root, **kw):
    return RunConfig(roots=(f"{name}={root}",), out_dir=str(tmp_path), **kw)


# ---- PadChest labels ---------------------------------------------------------------------------------
def test_padchest_paper_labels_are_substrings_and_synonyms(padchest_root):
    raw, table = studydata.read_labelled("padchest", padchest_root, label_mode="paper")
    names = [labels.PADCHEST_PATHOLOGY_NAMES.get(p, p) for p in labels.PADCHEST_PATHOLOGIES]
    assert labels.finding_columns(table) == names and len(names) == 27
    expected = {text: hit for text, _, file, hit in layouts.PADCHEST_PAPER_CASES if text and not file}
    for text, row in zip(table["raw_labels"], table[names].to_numpy()):
        assert {n for n, v in zip(names, row) if v == 1} == expected[text], text
    assert not table[names].isna().any().any()
    # Dropped: the empty Labels cells and the authors' excluded files (each once), nothing else.
    assert len(raw) - len(table) == 4 + 2
    assert not table["image_id"].isin(labels.PADCHEST_EXCLUDED_IMAGES).any() and (table["raw_labels"] != "").all()
    # Terms mode keeps today's vocabulary: "pericardial effusion" is its own finding there.
    terms = studydata.read_labelled("padchest", padchest_root)[1]
    assert "Pericardial effusion" in terms.columns and len(terms) == len(raw)


def test_read_without_findings_is_the_whole_read_less_its_findings(padchest_root):
    """PadChest's reader without the term matrix (what label_mode paper reads) gives the same rows,
    metadata, order and notes; a source without such a reader drops its finding columns."""
    sources.clear_read_cache()
    light = sources.read_source("padchest", padchest_root, findings=False)
    whole = sources.read_source("padchest", padchest_root)
    meta = [c for c in whole.columns if c in labels.META_COLUMNS]
    assert list(light.columns) == meta and "Effusion" in whole.columns
    pd.testing.assert_frame_equal(light, whole[meta])
    assert sources.notes_of(light) == sources.notes_of(whole)
    sources.clear_read_cache()  # the other order: the whole read first
    whole = sources.read_source("padchest", padchest_root)
    pd.testing.assert_frame_equal(sources.read_source("padchest", padchest_root, findings=False), light)
    cl = sources.read_source("padchest-cl", padchest_root, findings=False)  # no such reader: columns dropped
    assert list(cl.columns) == [*labels.META_COLUMNS, "label"]


def test_authors_pathology_list_sorts_as_theirs_and_patterns_are_plain_substrings():
    assert list(labels.PADCHEST_PATHOLOGIES) == sorted(labels.PADCHEST_PATHOLOGIES)
    canonical = [labels.PADCHEST_PATHOLOGY_NAMES.get(p, p) for p in labels.PADCHEST_PATHOLOGIES]
    assert canonical == sorted(canonical)  # renaming Pleural_Thickening keeps their class order
    patterns = [p.lower() for p in labels.PADCHEST_PATHOLOGIES] + [
        s for syn in labels.PADCHEST_PATHOLOGY_SYNONYMS.values() for s in syn
    ]
    assert all(set(p) <= set("abcdefghijklmnopqrstuvwxyz _") for p in patterns)  # str.contains == substring
    assert labels.PADCHEST_PATHOLOGY_SYNONYMS["Support Devices"] == ("device", "pacemaker")
    assert "consolidation" in labels.PADCHEST_PATHOLOGY_SYNONYMS["Infiltration"]
    assert len(labels.PADCHEST_EXCLUDED_IMAGES) == 30


def test_views_as_the_authors_name_them(padchest_root):
    read = studydata.labelled("padchest", padchest_root, label_mode="paper", views=FIVE_VIEWS)
    assert set(read.table["view"]) == set(FIVE_VIEWS)  # COSTAL is its own view; unknown projections (OTHER) go
    assert read.dropped["padchest:view"] == 4
    raw = sources.read_source("padchest", padchest_root)
    assert set(raw["view"]) == {*FIVE_VIEWS, "OTHER"}
    two = studydata.labelled("padchest", padchest_root, label_mode="paper", views=("PA", "AP")).table
    assert set(two["view"]) == {"PA", "AP"}


# ---- PadChest split and PadChest-Cl ------------------------------------------------------------------
def _authors_padchest(root, views):
    """An independent re-enactment of the authors' filters and split on the written label file."""
    csv = pd.read_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv")
    names = {"AP_horizontal": "AP Supine"}
    authors = {labels.AUTHORS_VIEW_NAMES[v] for v in views}
    csv = csv[csv["Projection"].replace(names).isin(authors)]
    csv = csv[~csv["Labels"].isnull()]
    csv = csv[~csv["ImageID"].isin(labels.PADCHEST_EXCLUDED_IMAGES)]
    inds = np.arange(len(csv))
    np.random.RandomState(42).shuffle(inds)
    n = int(len(inds) * 0.9)
    return csv.iloc[inds[:n]], csv.iloc[inds[n:]]


@pytest.mark.parametrize("views", [("PA", "AP"), FIVE_VIEWS])
def test_padchest_paper_split_is_the_authors(padchest_root, tmp_path, capsys, views):
    out = tmp_path / "split.csv"
    assert (
        cli.main(
            [
                "data",
                "split",
                "padchest",
                "--root",
                str(padchest_root),
                "--mode",
                "paper",
                "--views",
                ",".join(views),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    sha = capsys.readouterr().out.strip()
    split = pd.read_csv(out, dtype=str)
    assert {"image_id", "split"} <= set(split.columns)
    train, test = _authors_padchest(padchest_root, views)
    assert set(split.loc[split["split"] == "train", "image_id"]) == set(train["ImageID"])
    assert set(split.loc[split["split"] == "test", "image_id"]) == set(test["ImageID"])
    # The table itself comes in the authors' order (their shuffled positions).
    table = studydata.split_table(
        studydata.labelled("padchest", padchest_root, views=views, label_mode="paper").table, "paper"
    )[0]
    assert list(table.loc[table["split"] == "train", "image_id"]) == list(train["ImageID"])
    assert (
        cli.main(
            [
                "data",
                "split",
                "padchest",
                "--root",
                str(padchest_root),
                "--mode",
                "paper",
                "--views",
                ",".join(views),
                "--out",
                str(tmp_path / "again.csv"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == sha and out.read_bytes() == (tmp_path / "again.csv").read_bytes()


def test_padchest_cl_paper_task(padchest_root, tmp_path, capsys):
    study = studydata.prepare(
        _cfg(
            tmp_path,
            "padchest-cl",
            padchest_root,
            kind="transfer",
            target="padchest-cl",
            label_mode="paper",
            split_mode="paper",
        )
    )
    names = tuple(labels.PADCHEST_PATHOLOGY_NAMES.get(p, p) for p in labels.PADCHEST_PATHOLOGIES)
    assert study.classes == names and not study.multilabel and len(study.valid) == 0
    train, test = _authors_padchest(padchest_root, FIVE_VIEWS)
    single = {text: next(iter(hit)) for text, _, _, hit in layouts.PADCHEST_PAPER_CASES if len(hit) == 1}
    for authors, ours in ((train, study.train), (test, study.test)):
        kept = authors[authors["Labels"].isin(single)]  # order kept: the shuffled positions, single-label rows
        assert list(ours["image_id"]) == list(kept["ImageID"])
        assert list(ours["label"]) == [single[t] for t in kept["Labels"]]
    assert "Consolidation" not in set(study.train["label"])  # "consolidation" also marks Infiltration
    # The terms mode keeps today's task.
    terms = studydata.prepare(
        _cfg(tmp_path, "padchest-cl", padchest_root, kind="transfer", target="padchest-cl", label_mode="terms")
    )
    assert "Pericardial effusion" in terms.classes

    assert (
        cli.main(
            [
                "data",
                "inspect",
                "padchest-cl",
                "--root",
                str(padchest_root),
                "--metadata-only",
                "--json",
                "--split-mode",
                "paper",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == list(names) and summary["per_class"]["Consolidation"] == 0
    assert summary["splits"] == {"train": len(study.train), "valid": 0, "test": len(study.test)}
    assert sum(summary["per_class"].values()) == summary["images"] == len(study.train) + len(study.test)
    out = tmp_path / "cl.csv"
    assert (
        cli.main(
            [
                "data",
                "split",
                "padchest-cl",
                "--root",
                str(padchest_root),
                "--metadata-only",
                "--mode",
                "paper",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (pd.read_csv(out)["split"] == "train").sum() == len(study.train)


# ---- CheXpert, MIMIC, NIH ----------------------------------------------------------------------------
def test_no_finding_overrides_explicit_values_in_paper_mode():
    raw = pd.DataFrame(
        {
            "source": ["chexpert"] * 3,
            "No Finding": [1.0, 1.0, np.nan],
            "Edema": [1.0, -1.0, -1.0],
            "Effusion": [np.nan, 0.0, 1.0],
        }
    )
    paper = labels.apply_policy(raw, "ignore", no_finding="all")
    assert paper["Edema"].tolist()[:2] == [0.0, 0.0] and np.isnan(paper["Edema"][2])
    assert paper["Effusion"].tolist() == [0.0, 0.0, 1.0]
    terms = labels.apply_policy(raw, "ignore")
    assert terms["Edema"][0] == 1.0 and np.isnan(terms["Edema"][1])


@pytest.fixture(scope="module")
def xray_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("xray")
    records = phantoms.xray_records(
        12,
        seed=5,
        style=phantoms.PhantomStyle(height=16, width=16),
        uncertain_share=0.3,
        blank_share=0.3,
        splits=(("train", 0.7), ("valid", 0.15), ("test", 0.15)),
    )
    mimic = [Record(**{**r.__dict__, "raw": "" if i % 9 == 0 else None}) for i, r in enumerate(records)]
    out = {name: layouts.write_layout(name, base / name, records) for name in ("chexpert", "nih")}
    out["mimic"] = layouts.write_layout("mimic", base / "mimic", mimic)
    out["padchest"] = layouts.write_layout("padchest", base / "padchest", layouts.padchest_paper_records(3))
    return out, records, mimic


def test_mimic_paper_reads_labelled_studies_and_the_authors_views(xray_roots):
    roots, _, mimic = xray_roots
    raw = sources.read_source("mimic", roots["mimic"])
    no_row = (raw["raw_labels"] == "").sum()
    labelled_studies = {(r.patient, r.study) for r in mimic if r.raw != ""}
    assert no_row > 0 and no_row == sum((r.patient, r.study) not in labelled_studies for r in mimic)
    read = studydata.labelled("mimic", roots["mimic"], label_mode="paper", views=FIVE_VIEWS)
    assert read.dropped["mimic:no_label_row"] == no_row
    assert set(read.table["view"]) <= {"PA", "AP"}  # MIMIC's laterals are not the authors' "L"
    chexpert = studydata.labelled("chexpert", roots["chexpert"], label_mode="paper", views=FIVE_VIEWS).table
    assert "LATERAL" in set(chexpert["view"])  # CheXpert's Lateral is their "L"


def test_pretraining_data_as_the_authors_used_it(xray_roots, tmp_path):
    roots, _, _ = xray_roots
    entries = tuple(f"{n}={p}" for n, p in roots.items())
    cfg = RunConfig(
        kind="pretrain",
        sources=("padchest", "nih", "mimic", "chexpert"),
        roots=entries,
        views=FIVE_VIEWS,
        label_mode="paper",
        split_mode="paper",
        out_dir=str(tmp_path),
    )
    study = studydata.prepare(cfg)
    assert study.classes == (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Effusion",
        "Pneumonia",
        "Pneumothorax",
    )
    assert list(pd.unique(study.train["source"])) == ["chexpert", "mimic", "nih", "padchest"]  # their merge order
    test_list = set((roots["nih"] / "test_list.txt").read_text().split())
    train_list = set((roots["nih"] / "train_val_list.txt").read_text().split())
    assert set(study.valid.loc[study.valid["source"] == "nih", "image_id"]) == test_list  # their NIH validation
    assert set(study.train.loc[study.train["source"] == "nih", "image_id"]) == train_list
    assert not (study.test["source"].isin(["chexpert", "nih", "padchest"])).any()
    assert (study.valid["source"] == "padchest").sum() > 0  # PadChest's 10 %: their validation set
    assert "train:no_known_label" not in study.dropped  # the authors keep rows with no known label
    assert studydata.train_size(cfg) == len(study.train)
    pair = RunConfig(
        kind="pretrain",
        sources=("chexpert", "mimic"),
        roots=entries,
        split_mode="paper",
        label_mode="paper",
        out_dir=str(tmp_path),
    )
    assert list(pd.unique(studydata.prepare(pair).train["source"])) == ["mimic", "chexpert"]  # type: chexpert_mimic


def test_nih_paper_split_is_an_inner_join_with_the_lists():
    table = pd.DataFrame(
        {"source": "nih", "image_id": list("abcd"), "path": list("abcd"), "split": ["train", "", "test", "train"]}
    )
    out, dropped = splits.paper_splits(table)
    assert list(out["image_id"]) == ["a", "c", "d"] and dropped == {"nih:outside_paper_split": 1}
    with pytest.raises(ValueError, match="train_val_list.txt and test_list.txt"):
        splits.paper_splits(table.assign(split=""))


# ---- targets as the authors split and order them ----------------------------------------------------
def test_tuberculosis_per_folder_split_and_the_published_sizes(tmp_path):
    root = tmp_path / "tb"
    names = {
        "ChinaSet_AllFiles/CXR_png": [f"CHNCXR_{i:04d}_{i % 2}.png" for i in range(1, 663)],
        "MontgomerySet/CXR_png": [f"MCUCXR_{i:04d}_{int(i > 80)}.png" for i in range(1, 139)],
    }
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for file in files:
            (root / folder / file).touch()  # metadata-only: the names are the labels
    table, _ = studydata.split_table(sources.read_source("tuberculosis", root, metadata_only=True), "paper")
    expected = {"train": [], "test": []}
    for files in names.values():  # tuberculosis.py: sorted(glob), RandomState(42).shuffle, int(0.85 n)
        files = sorted(files)
        np.random.RandomState(42).shuffle(files)
        n = int(len(files) * 0.85)
        expected["train"] += files[:n]
        expected["test"] += files[n:]
    assert list(table.loc[table["split"] == "train", "image_id"]) == expected["train"]
    assert list(table.loc[table["split"] == "test", "image_id"]) == expected["test"]
    assert len(expected["train"]) == 679 == sources.SOURCES["tuberculosis"].published_train_size
    assert len(expected["test"]) == 121
    cfg = _cfg(
        tmp_path, "tuberculosis", root, kind="transfer", target="tuberculosis", split_mode="paper", metadata_only=True
    )
    assert studydata.train_size(cfg) == 679 and len(studydata.prepare(cfg).valid) == 0


def _flowers_mat(root, rng):
    """The official set sizes (1,020 / 1,020 / 6,149 of 8,189 images, 102 classes), labels only."""
    labels_ = np.concatenate([np.arange(1, 103).repeat(80)[: 8189 - 102], np.arange(1, 103)])
    rng.shuffle(labels_)
    ids = rng.permutation(8189) + 1
    root.mkdir()
    savemat(root / "imagelabels.mat", {"labels": labels_[None, :].astype(np.uint8)})
    savemat(root / "setid.mat", {"trnid": ids[None, :1020], "valid": ids[None, 1020:2040], "tstid": ids[None, 2040:]})
    return labels_, ids


def test_flowers_trains_on_the_official_test_set_in_image_folder_order(tmp_path):
    labels_, ids = _flowers_mat(tmp_path / "flowers", np.random.default_rng(0))
    cfg = _cfg(
        tmp_path,
        "flowers102",
        tmp_path / "flowers",
        kind="transfer",
        target="flowers102",
        split_mode="paper",
        metadata_only=True,
    )
    study = studydata.prepare(cfg)
    assert (len(study.train), len(study.valid), len(study.test)) == (6149, 0, 2040)
    assert sources.SOURCES["flowers102"].published_train_size == 6149 == studydata.train_size(cfg)
    # ImageFolder over mod_train: class folders (fast.ai's 0-based numbers) in text order, then file names.
    folders = sorted({str(c - 1) for c in labels_})
    expected = [
        f"image_{i:05d}.jpg" for folder in folders for i in sorted(ids[2040:]) if str(labels_[i - 1] - 1) == folder
    ]
    assert list(study.train["image_id"]) == expected


def test_flowers_fastai_copy_reads_as_the_mat_files(tmp_path):
    records = [
        Record(i, 1, "OTHER", "", 0, {}, split, _image(i), label)
        for i, (split, label) in enumerate([("train", "1"), ("valid", "2"), ("test", "102"), ("test", "1")] * 2)
    ]
    mat = sources.read_source("flowers102", layouts.write_layout("flowers102", tmp_path / "mat", records))
    fast = sources.read_source("flowers102", layouts.write_layout("flowers102-fastai", tmp_path / "fast", records))
    key = ["image_id", "label", "split"]
    pd.testing.assert_frame_equal(
        mat[key].sort_values("image_id").reset_index(drop=True),
        fast[key].sort_values("image_id").reset_index(drop=True),
    )
    assert "jpg/image_00003.jpg 101" in (tmp_path / "fast" / "test.txt").read_text()


def test_flowers_fastai_lists_with_bad_lines_name_file_and_line(tmp_path):
    root = tmp_path / "fast"
    (root / "jpg").mkdir(parents=True)
    (root / "train.txt").write_text("jpg/image_00001.jpg 0\n")
    (root / "valid.txt").write_text("jpg/image_00002.jpg 102\n")
    (root / "test.txt").write_text("jpg/image_00003.jpg 4\n")
    with pytest.raises(sources.SourceError, match=r"valid.txt, line 1: .*CLASS 0..101"):
        sources.read_source("flowers102", root)
    (root / "valid.txt").write_text("jpg/image_00001.jpg 3\n")
    with pytest.raises(sources.SourceError, match="duplicate image 'image_00001.jpg'"):
        sources.read_source("flowers102", root)


def test_covidx_is_pinned_to_the_authors_release(tmp_path):
    records = [
        Record(i, 1, "PA", "", 0, {}, split, _image(i), label)
        for i, (split, label) in enumerate([("train", "positive"), ("train", "negative"), ("test", "negative")])
    ]
    root = layouts.write_layout("covidx-v3", tmp_path / "v3", records)
    cfg = _cfg(tmp_path, "covidx", root, kind="transfer", target="covidx", split_mode="paper", metadata_only=True)
    study = studydata.prepare(cfg)
    assert (len(study.train), len(study.valid), len(study.test)) == (15_952, 0, 400)
    assert sources.SOURCES["covidx"].published_train_size == 15_952 == studydata.train_size(cfg)
    train_txt = [line.split()[1] for line in (root / "train.txt").read_text().splitlines()]
    assert list(study.train["image_id"]) == [f"train/{f}" for f in train_txt]  # train.txt order
    other = layouts.write_layout(
        "covidx", tmp_path / "other", records + [Record(9, 1, "PA", "", 0, {}, "valid", _image(9), "negative")]
    )
    with pytest.raises(ValueError, match=r"other lists .*version 3.*split_mode official") as err:
        studydata.prepare(_cfg(tmp_path, "covidx", other, kind="transfer", target="covidx", split_mode="paper"))
    assert "val.txt 1" in str(err.value)
    assert len(studydata.prepare(_cfg(tmp_path, "covidx", other, kind="transfer", target="covidx")).train) > 0


def test_registry_records_the_authors_facts():
    facts = {
        name: (s.paper_fewshot, s.published_train_size, s.shares_images_with) for name, s in sources.SOURCES.items()
    }
    assert facts["padchest-cl"] == ("label_array", 37_387, ("padchest",))
    assert facts["covidx"] == ("kshot_finder", 15_952, ("nih",))
    for name, size in (
        ("cifar10", 50_000),
        ("cifar100", 50_000),
        ("pets", 3_680),
        ("flowers102", 6_149),
        ("tuberculosis", 679),
    ):
        assert facts[name][:2] == ("kshot_finder", size), name
    assert all(not facts[n][0] for n in ("chexpert", "mimic", "nih", "padchest"))
    assert sources.source_of("my-folder").paper_fewshot == "kshot_finder"  # an ImageFolder, as theirs


# ---- few-shot -----------------------------------------------------------------------------------------
def _authors_label_array(labels_, n_classes, k, seed):
    rng = np.random.RandomState(seed)
    inds = np.arange(len(labels_))
    out = []
    for cl in range(n_classes):
        inds_cl = inds[labels_ == cl]
        rng.shuffle(inds_cl)
        out.append(inds_cl[:k])
    out = np.concatenate(out)
    rng.shuffle(out)
    return out


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, labels_):
        self.labels_ = labels_

    def __len__(self):
        return len(self.labels_)

    def __getitem__(self, i):
        return i, int(self.labels_[i])


def _authors_finder(labels_, n_classes, k, seed):
    """BiT's finder with torch's own DataLoader: shuffled by a seeded Generator, batches of 1024."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    loader = torch.utils.data.DataLoader(_Indexed(labels_), batch_size=1024, shuffle=True, generator=generator)
    kept: dict[int, deque] = {}
    for positions, batch_labels in loader:
        for position, label in zip(positions.tolist(), batch_labels.tolist()):
            kept.setdefault(label, deque(maxlen=k)).append(position)
            if sum(map(len, kept.values())) == k * n_classes:
                chosen = [p for q in kept.values() for p in q]
                np.random.RandomState(seed).shuffle(chosen)
                return chosen
    raise AssertionError("not found")


@pytest.mark.parametrize("seed", [0, 4])
def test_paper_samplers_are_the_authors(seed):
    rng = np.random.default_rng(seed)
    labels_ = rng.integers(0, 5, 3000)
    labels_[labels_ == 4] = rng.integers(0, 4, (labels_ == 4).sum())  # class 4 empty, class 3 short below
    labels_[np.flatnonzero(labels_ == 3)[3:]] = 0
    for k in (1, 5, 100):
        np.testing.assert_array_equal(
            fewshot.label_array_shots(labels_, 5, k, seed), _authors_label_array(labels_, 5, k, seed)
        )
    chosen = fewshot.label_array_shots(labels_, 5, 5, seed)
    assert np.bincount(labels_[chosen], minlength=5).tolist() == [5, 5, 5, 3, 0]  # fewer, no error
    full = rng.integers(0, 7, 5000)
    for k in (1, 10, 300):
        assert fewshot.kshot_finder_shots(full, 7, k, seed) == _authors_finder(full, 7, k, seed)
    with pytest.raises(fewshot.FewShotError, match="short"):
        fewshot.kshot_finder_shots(labels_, 5, 1, seed)


def test_paper_shots_follow_the_authors_order_and_never_touch_test(tmp_path, capsys):
    records = [
        Record(i, 1, "OTHER", "", 0, {}, split, _image(i), label)
        for i, (split, label) in enumerate(
            [(s, c) for s in ("train", "test") for c in ("cat", "dog", "emu") for _ in range(6 if s == "train" else 3)]
        )
    ]
    root = layouts.write_layout("cifar10", tmp_path / "cifar", records)
    table = sources.read_source("cifar10", root)
    args = ["data", "shots", "cifar10", "--root", str(root), "--mode", "paper", "--shots", "2", "--seed", "3"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out.split()
    train = table[table["split"] == "train"].reset_index(drop=True)  # data_batch_1..5 order
    classes = sorted(set(train["label"]))
    expected = _authors_finder(train["label"].map(classes.index).to_numpy(), 3, 2, 3)
    assert printed == list(train["image_id"].iloc[expected])
    assert not set(printed) & set(table.loc[table["split"] == "test", "image_id"])
    assert cli.main(args) == 0 and capsys.readouterr().out.split() == printed  # deterministic per seed
    assert cli.main([*args[:-1], "4"]) == 0 and capsys.readouterr().out.split() != printed
    with pytest.raises(fewshot.FewShotError, match="training split only"):
        fewshot.sample_shots_paper(table, 1, 0, classes, "kshot_finder")
    exact = studydata.prepare(_cfg(tmp_path, "cifar10", root, kind="transfer", target="cifar10", shots=2, seed=3))
    assert sorted(exact.train["label"].value_counts().tolist()) == [2, 2, 2]


def test_train_size_equals_prepare_without_writing(padchest_root, tmp_path):
    out = tmp_path / "never"
    for shots in (0, 1, 3):
        cfg = _cfg(
            out,
            "padchest-cl",
            padchest_root,
            kind="transfer",
            target="padchest-cl",
            label_mode="paper",
            split_mode="paper",
            shots_mode="paper",
            shots=shots,
            seed=2,
        )
        size = studydata.train_size(cfg)
        assert not out.exists()
        assert size == len(studydata.prepare(cfg.replace(metadata_only=True, out_dir=str(tmp_path))).train)
