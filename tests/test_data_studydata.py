"""`xrstudy.data.studydata`: `prepare(cfg)` for pre-training and transfer cells, and the universe of rows."""

from __future__ import annotations

import pandas as pd
import pytest

from xrstudy.config import ConfigError, RunConfig
from xrstudy.data import phantoms, studydata


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
