"""Exploring sources stays legible on real vocabularies: at most the top findings plus the merge's label
set, a co-occurrence matrix of at most 30 x 30, no PNG over 2,400 px a side; the CSVs keep every count.
Checked on the real NIH, CheXpert and PadChest label files shipped in the torchxrayvision wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from xrstudy.plots import explore, figures

FILES = {  # name -> (file in the torchxrayvision wheel, name the dataset distributes it as)
    "nih": ("Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017_v2020.csv.gz"),
    "chexpert": ("chexpert_train.csv.gz", "train.csv.gz"),
    "padchest": ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",) * 2,
}
SEVEN = {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia", "Pneumothorax"}


def _toy() -> pd.DataFrame:
    """Two sources: A annotates f0..f39 (f_i positive in 40 - i rows), B annotates f0, f1 and g."""
    rng = np.random.default_rng(0)
    a = pd.DataFrame({f"f{i}": (np.arange(60) < 40 - i).astype(float) for i in range(40)})
    b = pd.DataFrame({"f0": rng.integers(0, 2, 20).astype(float), "f1": np.zeros(20), "g": np.ones(20)})
    a = a.assign(source="a", image_id=[f"a{i}" for i in range(60)], patient_id="a:1", view="PA")
    b = b.assign(source="b", image_id=[f"b{i}" for i in range(20)], patient_id="b:1", view="AP")
    return pd.concat([a, b], ignore_index=True)


def test_shown_findings_are_the_top_ones_plus_the_merges_label_set():
    frame = _toy()
    assert explore.merge_findings(frame) == ["f0", "f1"]
    shown = explore.shown_findings(frame, top=5)
    assert shown == ["f0", "f1", "f2", "f3", "f4"]  # most positives first
    assert explore.shown_findings(frame, top=1) == ["f0", "f1"]  # f1 belongs to the merge: always shown
    assert len(explore.shown_findings(frame, labels="union", top=25)) == 25
    assert len(explore.shown_findings(frame, top=40, limit=30)) == 30
    counts = explore.finding_counts(frame)
    assert len(counts) == 40 + 3 and counts.set_index(["source", "finding"]).loc[("a", "f39"), "positive"] == 1


@pytest.fixture(scope="module")
def real_frame(tmp_path_factory):
    txv = pytest.importorskip("torchxrayvision")
    data = Path(txv.__file__).parent / "data"
    base = tmp_path_factory.mktemp("real")
    entries = []
    for name, (shipped, distributed) in FILES.items():
        if not (data / shipped).is_file():
            pytest.skip(f"{shipped} not in this torchxrayvision wheel")
        (base / name).mkdir()
        (base / name / distributed).symlink_to(data / shipped)
        entries.append(f"{name}={base / name}")
    return explore.read_sources(entries, metadata_only=True)


@pytest.mark.realdata
@pytest.mark.slow
def test_exploration_of_the_real_label_files_is_legible(real_frame, tmp_path):
    frame = real_frame
    vocabulary = explore.finding_counts(frame)
    assert vocabulary.finding.nunique() > 150, "PadChest's terms are all counted"
    assert set(explore.merge_findings(frame)) == SEVEN
    shown = explore.shown_findings(frame)
    assert SEVEN <= set(shown) and len(shown) <= explore.TOP_FINDINGS + len(SEVEN)

    found = explore.explore_sources(frame, tmp_path)
    assert set(found.figures) == {"finding_counts", "label_cooccurrence", "uncertain_shares", "sample_grid"}
    assert all(isinstance(fig, Figure) for fig in found.figures.values())
    for png in (p for p in found.files if p.suffix == ".png"):
        with Image.open(png) as image:
            assert max(image.size) <= figures.MAX_PIXELS, f"{png.name} is {image.size}"
    matrix = found.figures["label_cooccurrence"].axes[0]
    assert len(matrix.get_yticklabels()) <= explore.MAX_MATRIX and len(matrix.get_xticklabels()) <= explore.MAX_MATRIX
    bars = found.figures["finding_counts"].axes[0]
    assert len(bars.get_yticklabels()) == len(shown)
    # the CSVs keep the full counts
    assert len(pd.read_csv(tmp_path / "finding_counts.csv")) == len(vocabulary)
    pairs = pd.read_csv(tmp_path / "label_cooccurrence.csv")
    assert pairs.given.nunique() > explore.MAX_MATRIX and (pairs.both_positive <= pairs.given_positive).all()

    union = explore.plot_finding_counts(frame, labels="union", top=10)
    assert len(union.axes[0].get_yticklabels()) == 10
