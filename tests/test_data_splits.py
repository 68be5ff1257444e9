"""`xrstudy.data.splits`: patient splits without overlap, byte-identical split files, the authors'
image-level split and nested data fractions."""

from __future__ import annotations

from xrstudy.data import sources, splits


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
