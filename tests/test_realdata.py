"""The adapters on the real NIH, CheXpert and PadChest label files shipped in the torchxrayvision wheel.

Every count is checked against an independent computation written here with plain pandas / ast.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.data import labels, merge, splits, studydata

txv = pytest.importorskip("torchxrayvision")
pytestmark = pytest.mark.realdata
DATA = Path(txv.__file__).parent / "data"
FILES = {
    "nih": ("Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017_v2020.csv.gz"),
    "chexpert": ("chexpert_train.csv.gz", "train.csv.gz"),  # CheXpert's train.csv, gzipped by txv
    "padchest": ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",) * 2,
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Each label file under the name the dataset distributes it as (metadata-only roots)."""
    base = tmp_path_factory.mktemp("real")
    out = {}
    for name, (shipped, distributed) in FILES.items():
        if not (DATA / shipped).is_file():
            pytest.skip(f"{shipped} not in this torchxrayvision wheel")
        (base / name).mkdir()
        (base / name / distributed).symlink_to(DATA / shipped)
        out[name] = base / name
    return out


@pytest.fixture(scope="module")
def raw():
    return {
        "nih": pd.read_csv(DATA / FILES["nih"][0]),
        "chexpert": pd.read_csv(DATA / FILES["chexpert"][0]),
        "padchest": pd.read_csv(DATA / FILES["padchest"][0], usecols=["ImageID", "PatientID", "Projection", "Labels"]),
    }


@pytest.fixture(scope="module")
def inspected(roots):
    cache = {}

    def get(name, views=(), uncertain="ignore"):
        key = (name, tuple(views), uncertain)
        if key not in cache:
            cache[key] = studydata.inspect_source(name, roots[name], views, uncertain, metadata_only=True)
        return cache[key]

    return get


def test_nih_counts(inspected, raw):
    nih = raw["nih"]
    summary = inspected("nih")
    assert summary["images"] == len(nih) == 112120
    assert summary["patients"] == nih["Patient ID"].nunique() == 30805
    assert summary["views"] == nih["View Position"].value_counts().to_dict()
    terms = nih["Finding Labels"].str.split("|").map(set)
    for finding in labels.NIH_FINDINGS:
        positive = int(terms.map(lambda s, f=finding: f in s).sum())
        name = labels.NIH_SYNONYMS.get(finding, finding)
        assert summary["labels"][name] == {"positive": positive, "negative": len(nih) - positive, "unknown": 0}
    pa = inspected("nih", ("PA",))
    assert pa["images"] == (nih["View Position"] == "PA").sum() and pa["views"] == summary["views"]


@pytest.mark.parametrize("policy", ["ignore", "ones", "zeros"])
def test_chexpert_counts_under_each_policy(inspected, raw, policy):
    chexpert = raw["chexpert"]
    summary = inspected("chexpert", ("PA", "AP"), policy)
    frontal = chexpert[(chexpert["Frontal/Lateral"] == "Frontal") & chexpert["AP/PA"].isin(["PA", "AP"])]
    assert summary["images"] == len(frontal)
    assert summary["patients"] == frontal["Path"].str.split("/").str[2].nunique()
    assert summary["views"] == {"AP": 161590, "LATERAL": 32387, "OTHER": 17, "PA": 29420}
    normal = frontal["No Finding"] == 1
    for column in labels.CHEXPERT_FINDINGS:
        values = frontal[column].copy()
        values[values.isna() & normal] = 0.0
        uncertain = values == -1
        positive = (values == 1).sum() + (uncertain.sum() if policy == "ones" else 0)
        negative = (values == 0).sum() + (uncertain.sum() if policy == "zeros" else 0)
        unknown = values.isna().sum() + (uncertain.sum() if policy == "ignore" else 0)
        name = labels.CHEXPERT_SYNONYMS.get(column, column)
        assert summary["labels"][name] == {"positive": positive, "negative": negative, "unknown": unknown}, column


def test_padchest_counts(inspected, raw):
    padchest = raw["padchest"]
    summary = inspected("padchest")
    assert summary["images"] == len(padchest) == 160861
    assert summary["patients"] == padchest["PatientID"].nunique() == 67625
    assert summary["views"]["AP_SUPINE"] == (padchest["Projection"] == "AP_horizontal").sum() == 14346
    assert summary["views"]["LATERAL"] == (padchest["Projection"] == "L").sum()
    term_sets = padchest["Labels"].map(
        lambda s: {t.strip() for t in ast.literal_eval(s)} if isinstance(s, str) else None
    )
    unknown_rows = term_sets.map(lambda s: s is None or "exclude" in s)
    for finding in ("Effusion", "Cardiomegaly", "Atelectasis", "Pneumothorax", "COPD signs", "Support Devices"):
        terms = set(labels.PADCHEST_TERMS_OF.get(finding, [finding]))
        hit = term_sets[~unknown_rows].map(lambda s, t=terms: bool(s & t))
        assert summary["labels"][finding] == {
            "positive": int(hit.sum()),
            "negative": int((~hit).sum()),
            "unknown": int(unknown_rows.sum()),
        }, finding


def test_padchest_cl_is_the_single_term_images(roots, raw):
    table = studydata.read_labelled("padchest-cl", roots["padchest"], metadata_only=True)[0]
    term_lists = raw["padchest"]["Labels"].dropna().map(lambda s: [t.strip() for t in ast.literal_eval(s) if t.strip()])
    single = term_lists[term_lists.map(len) == 1].map(lambda t: t[0])
    single = single[~single.isin(["unchanged", "suboptimal study", "exclude"])]
    assert len(table) == len(single)
    assert table["label"].value_counts()["Effusion"] == single.isin(labels.PADCHEST_TERMS_OF["Effusion"]).sum()


def test_intersections_give_the_papers_seven_classes(inspected):
    c = set(inspected("chexpert")["labels"])
    n = set(inspected("nih")["labels"])
    p = set(inspected("padchest")["labels"])
    seven = {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia", "Pneumothorax"}
    assert c & n == seven and c & n & p == seven
    assert len(c) == 13  # C alone (and C+M): the 13 CheXpert findings, No Finding is not a class


def test_merge_of_the_three_files(roots):
    table = studydata.merge_entries([f"{n}={r}" for n, r in roots.items()], views=("PA", "AP"), metadata_only=True)
    summary = studydata.merge_summary(table)
    assert summary["labels"] == sorted(merge.merged_findings([table]))
    assert len(summary["labels"]) == 7 and summary["images"] == sum(summary["per_source"].values())
    assert summary["per_source"]["nih"] == 112120


@pytest.mark.parametrize("name", ["nih", "padchest"])
def test_patient_splits_of_real_files_do_not_leak_and_are_byte_identical(roots, name, tmp_path, capsys):
    shas = []
    for run in range(2):
        out = tmp_path / f"split{run}.csv"
        assert cli.main(["data", "split", name, "--root", str(roots[name]), "--metadata-only", "--out", str(out)]) == 0
        shas.append(capsys.readouterr().out.strip())
    assert shas[0] == shas[1] and len(shas[0]) == 64
    assert (tmp_path / "split0.csv").read_bytes() == (tmp_path / "split1.csv").read_bytes()
    split = pd.read_csv(tmp_path / "split0.csv", dtype=str)
    table = studydata.read_labelled(name, roots[name], metadata_only=True)[0]
    joined = table[["image_id", "patient_id"]].merge(split, on="image_id")
    assert len(joined) == len(table)
    assert splits.patient_overlap(joined)["patients"] == 0
    assert np.isclose((joined["split"] == "test").mean(), 0.1, atol=0.02)


def test_paper_split_of_padchest_leaks_patients(roots, tmp_path, capsys):
    out = tmp_path / "paper.csv"
    cli.main(
        [
            "data",
            "split",
            "padchest",
            "--root",
            str(roots["padchest"]),
            "--metadata-only",
            "--mode",
            "paper",
            "--out",
            str(out),
        ]
    )
    capsys.readouterr()
    split = pd.read_csv(out, dtype=str)
    table = studydata.read_labelled("padchest", roots["padchest"], metadata_only=True)[0]
    leak = splits.patient_overlap(table[["image_id", "patient_id"]].merge(split, on="image_id"))
    assert leak["patients"] > 1000  # the paper's image-level split puts thousands of patients on both sides


# ---- the authors' PadChest (label_mode / split_mode / shots_mode paper) ---------------------------------
PADCHEST_PATHOLOGIES = {  # transfer_learning/datasets/padchest.py, written out again for an independent check
    "Atelectasis": [],
    "Consolidation": ["air bronchogram"],
    "Pneumothorax": [],
    "Edema": [],
    "Emphysema": [],
    "Fibrosis": [],
    "Effusion": [],
    "Pneumonia": [],
    "Pleural_Thickening": ["pleural thickening"],
    "Cardiomegaly": [],
    "Nodule": [],
    "Mass": [],
    "Hernia": [],
    "Fracture": [],
    "Granuloma": [],
    "Flattened Diaphragm": [],
    "Bronchiectasis": [],
    "Aortic Elongation": [],
    "Scoliosis": [],
    "Hilar Enlargement": ["adenopathy", "pulmonary artery enlargement"],
    "Support Devices": ["device", "pacemaker"],
    "Tuberculosis": [],
    "Air Trapping": [],
    "Costophrenic Angle Blunting": [],
    "Aortic Atheromatosis": [],
    "Hemidiaphragm Elevation": [],
    "Infiltration": [
        "infiltrates",
        "interstitial pattern",
        "ground glass pattern",
        "reticular interstitial pattern",
        "reticulonodular interstitial pattern",
        "alveolar pattern",
        "consolidation",
        "air bronchogram",
    ],
}


@pytest.fixture(scope="module")
def authors_padchest():
    """The authors' filters, labels and split with pandas, as their class does them."""
    csv = pd.read_csv(DATA / FILES["padchest"][0], low_memory=False)
    csv.loc[csv["Projection"].isin(["AP_horizontal"]), "Projection"] = "AP Supine"
    out = {}
    for views in (["PA", "AP"], ["PA", "AP", "AP Supine", "L", "COSTAL"]):
        part = csv[csv["Projection"].isin(views)]
        part = part[~part["Labels"].isnull()]
        part = part[~part["ImageID"].isin(labels.PADCHEST_EXCLUDED_IMAGES)]
        marks = []
        for pathology in sorted(PADCHEST_PATHOLOGIES):
            mask = part["Labels"].str.contains(pathology.lower())
            for synonym in PADCHEST_PATHOLOGIES[pathology]:
                mask |= part["Labels"].str.contains(synonym.lower())
            marks.append(mask.values)
        inds = np.arange(len(part))
        np.random.RandomState(42).shuffle(inds)
        n = int(len(inds) * 0.9)
        out[len(views)] = (
            part.iloc[inds[:n]],
            part.iloc[inds[n:]],
            np.asarray(marks).T[inds[:n]],
            np.asarray(marks).T[inds[n:]],
        )
    return out


@pytest.mark.parametrize(
    "views, counts", [("PA,AP", (86_578, 9_620)), ("PA,AP,AP_SUPINE,LATERAL,COSTAL", (144_638, 16_071))]
)
def test_padchest_paper_split_is_the_authors(roots, authors_padchest, tmp_path, capsys, views, counts):
    shas = []
    for run in range(2):
        out = tmp_path / f"split{run}.csv"
        assert (
            cli.main(
                [
                    "data",
                    "split",
                    "padchest",
                    "--root",
                    str(roots["padchest"]),
                    "--metadata-only",
                    "--mode",
                    "paper",
                    "--views",
                    views,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        shas.append(capsys.readouterr().out.strip())
    assert shas[0] == shas[1] and (tmp_path / "split0.csv").read_bytes() == (tmp_path / "split1.csv").read_bytes()
    split = pd.read_csv(tmp_path / "split0.csv", dtype=str)
    train, test, _, _ = authors_padchest[len(views.split(","))]
    assert ((split["split"] == "train").sum(), (split["split"] == "test").sum()) == counts == (len(train), len(test))
    assert set(split.loc[split["split"] == "train", "image_id"]) == set(train["ImageID"])


def test_padchest_cl_is_the_authors_27_class_task(roots, authors_padchest, tmp_path, capsys):
    _, _, train_marks, test_marks = authors_padchest[5]
    out = tmp_path / "cl.csv"
    assert (
        cli.main(
            [
                "data",
                "split",
                "padchest-cl",
                "--root",
                str(roots["padchest"]),
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
    split = pd.read_csv(out, dtype=str)
    single_train, single_test = train_marks.sum(1) == 1, test_marks.sum(1) == 1
    assert (split["split"] == "train").sum() == single_train.sum() == 37_387
    assert (split["split"] == "test").sum() == single_test.sum() == 4_153
    assert (
        cli.main(
            [
                "data",
                "inspect",
                "padchest-cl",
                "--root",
                str(roots["padchest"]),
                "--metadata-only",
                "--json",
                "--split-mode",
                "paper",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["classes"]) == 27 and summary["classes"][6] == "Consolidation"
    authors_counts = np.bincount(train_marks[single_train].argmax(1), minlength=27).tolist()
    assert list(summary["per_class_per_split"]["train"].values()) == authors_counts
    assert summary["per_class"]["Consolidation"] == 0  # "consolidation" also marks Infiltration: never single


def test_padchest_cl_paper_shots_are_deterministic_and_from_train(roots, tmp_path, capsys):
    args = ["data", "shots", "padchest-cl", "--root", str(roots["padchest"]), "--metadata-only", "--shots", "5"]
    assert cli.main([*args, "--seed", "1"]) == 0
    first = capsys.readouterr().out.split()
    assert cli.main([*args, "--seed", "1"]) == 0 and capsys.readouterr().out.split() == first
    assert cli.main([*args, "--seed", "2"]) == 0 and capsys.readouterr().out.split() != first
    cfg = RunConfig(
        kind="transfer",
        target="padchest-cl",
        roots=(f"padchest-cl={roots['padchest']}",),
        metadata_only=True,
        label_mode="paper",
        split_mode="paper",
        shots_mode="paper",
        shots=5,
        seed=1,
        out_dir=str(tmp_path),
    )
    study = studydata.prepare(cfg)
    assert list(study.shots_ids) == first and len(first) == 26 * 5  # Consolidation has no image: fewer, no error
    assert not set(first) & set(study.test["image_id"])
    assert studydata.train_size(cfg) == 130 and studydata.train_size(cfg.replace(shots=0)) == 37_387


def test_nih_reads_the_same_in_paper_mode(roots, raw):
    """nih.py marks a finding by `str.contains(name)` over `Finding Labels`: the same as xrstudy's terms."""
    paper = studydata.read_labelled("nih", roots["nih"], label_mode="paper", metadata_only=True)[1]
    nih = raw["nih"]
    for finding in labels.NIH_FINDINGS:
        expected = nih["Finding Labels"].str.contains(finding).to_numpy(dtype=np.float32)
        np.testing.assert_array_equal(paper[labels.NIH_SYNONYMS.get(finding, finding)].to_numpy(), expected)


def test_chexpert_as_the_authors_read_it(roots, raw, tmp_path):
    chexpert = raw["chexpert"]
    view = chexpert["Frontal/Lateral"].where(chexpert["Frontal/Lateral"] != "Frontal", chexpert["AP/PA"])
    frontal = chexpert[view.isin(["PA", "AP"])]
    cfg = RunConfig(
        kind="pretrain",
        sources=("chexpert",),
        roots=(f"chexpert={roots['chexpert']}",),
        metadata_only=True,
        label_mode="paper",
        split_mode="paper",
        out_dir=str(tmp_path),
    )
    assert studydata.train_size(cfg) == len(frontal) == 191_010  # rows without a known label are kept, as theirs
    assert studydata.train_size(cfg.replace(views=("PA", "AP", "AP_SUPINE", "LATERAL", "COSTAL"))) == 223_397
    table = studydata.read_labelled(
        "chexpert", roots["chexpert"], views=("PA", "AP"), label_mode="paper", metadata_only=True
    )[1]
    healthy = (frontal["No Finding"] == 1).to_numpy()
    for column in labels.CHEXPERT_FINDINGS:
        values = frontal[column].to_numpy(dtype=np.float32, copy=True)
        values[healthy] = 0.0
        values[values == -1] = np.nan
        ours = table[labels.CHEXPERT_SYNONYMS.get(column, column)].to_numpy()
        np.testing.assert_array_equal(ours, values, err_msg=column)


def test_cli_inspect_and_merge_json(roots, capsys):
    assert (
        cli.main(["data", "inspect", "nih", "--root", str(roots["nih"]), "--views", "PA", "--metadata-only", "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"source", "images", "patients", "views", "labels", "notes", "dropped"}
    assert summary["notes"]["age_unreadable"] == 0 and "no official split" in summary["notes"]["official_split"]
    assert summary["images"] == 67310 and summary["views"] == {"AP": 44810, "PA": 67310}
    assert summary["dropped"] == {"nih:view": 44810}  # rows left out, by reason
    assert set(summary["labels"]["Effusion"]) == {"positive", "negative", "unknown"}
    entries = [f"--source=nih={roots['nih']}", f"--source=chexpert={roots['chexpert']}"]
    assert cli.main(["data", "merge", *entries, "--views", "PA,AP", "--metadata-only", "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert set(merged) == {"images", "patients", "labels", "per_source", "counts"}
    assert len(merged["labels"]) == 7 and merged["per_source"]["chexpert"] == 161590 + 29420


def test_error_lines_of_the_real_padchest_file_count_its_multiline_values():
    """5,214 PadChest rows have a LocalizationsCUIS value over two lines: row + 2 is the wrong line."""
    import gzip

    from xrstudy.data import sources

    path = DATA / FILES["padchest"][0]
    with gzip.open(path, "rt", newline="") as handle:
        physical = handle.read().split("\n")
    frame = pd.read_csv(path, usecols=[0, 1])  # the unnamed leading index and ImageID
    rows = [0, 13, 14, 50_000, len(frame) - 1]
    expected = []
    for row in rows:  # the line where the row starts is the one that opens with its leading index column
        prefix = f"{frame.iloc[row, 0]},{frame.iloc[row, 1]},"
        expected.append(1 + next(i for i, text in enumerate(physical) if text.startswith(prefix)))
    assert sources.lines_of(path, rows) == expected
    assert expected[-1] > len(frame) + 1 + 5000  # far from row + 2
