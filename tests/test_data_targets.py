"""Transfer-target adapters (COVIDx, Tuberculosis, CIFAR-10/100, Pets, Flowers-102) on miniature copies
of their real layouts, written by `xrstudy.data.layouts`: classes, splits, counts, paths, patients, few-shot
preparation, and the errors bad input gives."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
from scipy.io import savemat

from xrstudy.config import RunConfig
from xrstudy.data import layouts, phantoms, sources, splits, studydata
from xrstudy.data.layouts import Record
from xrstudy.data.sources import SourceError

SMALL = phantoms.PhantomStyle(height=20, width=16)
PETS = ("Abyssinian", "american_bulldog", "Bengal", "beagle")
CIFAR10 = ("airplane", "cat", "truck")
CIFAR100 = ("apple", "bee", "whale", "zebra")
FLOWERS = ("1", "17", "102")


def _natural(classes, per_split, seed):
    """Shape images, one class each, `per_split` = {split: images per class}; one patient per image."""
    rng = np.random.default_rng(seed)
    records = []
    for split, n in per_split.items():
        for c, label in enumerate(classes):
            for _ in range(n):
                image = phantoms.draw_shape(phantoms.SHAPES[c % len(phantoms.SHAPES)], rng, size=16)
                records.append(Record(len(records) + 1, 1, "OTHER", "", 0, {}, split, image, label))
    return records


def _chest(label, patient, study, split, rng):
    image = phantoms.to_pixels(
        phantoms.draw_chest(set() if label in ("negative", "normal") else {"Consolidation"}, rng, SMALL), 8
    )
    return Record(patient, study, "PA", "F", 50, {}, split, image, label)


def _covidx_records(seed=0):
    """COVIDx: 8 train patients per class with 2 images each, 2 test patients per class with 1."""
    rng = np.random.default_rng(seed)
    records, patient = [], 0
    for split, patients, images in (("train", 8, 2), ("test", 2, 1)):
        for label in ("negative", "positive"):
            for _ in range(patients):
                patient += 1
                records += [_chest(label, patient, s + 1, split, rng) for s in range(images)]
    return records


def _tb_records(seed=0):
    rng = np.random.default_rng(seed)
    return [_chest(label, i, 1, "train", rng) for i, label in enumerate(["normal", "tuberculosis"] * 8)]


MINIATURES = {  # registry name -> (writer, records, classes, {split: images} as read)
    "covidx": ("covidx", _covidx_records, ("negative", "positive"), {"train": 32, "test": 4}),
    "tuberculosis": ("tuberculosis", _tb_records, ("normal", "tuberculosis"), {"": 16}),
    "cifar10": ("cifar10", lambda: _natural(CIFAR10, {"train": 6, "test": 2}, 1), CIFAR10, {"train": 18, "test": 6}),
    "cifar100": (
        "cifar100",
        lambda: _natural(CIFAR100, {"train": 5, "test": 2}, 2),
        CIFAR100,
        {"train": 20, "test": 8},
    ),
    "pets": ("pets", lambda: _natural(PETS, {"train": 5, "test": 2}, 3), PETS, {"train": 20, "test": 8}),
    # official split: 2 trnid, 2 valid, 6 tstid per class; the paper's swap trains on tstid
    "flowers102": (
        "flowers102",
        lambda: _natural(FLOWERS, {"train": 2, "valid": 2, "test": 6}, 4),
        FLOWERS,
        {"train": 18, "valid": 6, "test": 6},
    ),
    "flowers102-official": (
        "flowers102",
        lambda: _natural(FLOWERS, {"train": 2, "valid": 2, "test": 6}, 4),
        FLOWERS,
        {"train": 6, "valid": 6, "test": 18},
    ),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("targets")
    return {
        name: layouts.write_layout(writer, base / name, make()) for name, (writer, make, _, _) in MINIATURES.items()
    }


def _fresh(tmp_path, source):
    """A new copy of `source` for each edit: `read_source` caches tables by the root's top-level entries,
    so a file edited in place below them (annotations/, a CIFAR folder) would be served stale."""
    return shutil.copytree(source, tmp_path / f"copy{len(list(tmp_path.iterdir()))}")


def _read(name, root, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tuberculosis reports the masks and readings it skips
        return sources.read_source(name, root, **kwargs)


@pytest.mark.parametrize("name", sorted(MINIATURES))
def test_target_round_trip(roots, name):
    _, _, classes, counts = MINIATURES[name]
    table = _read(name, roots[name])
    assert not sources.source_of(name).multilabel
    assert sorted(table["label"].unique()) == sorted(classes)
    assert table["split"].value_counts().to_dict() == counts
    assert table["image_id"].is_unique and (table["source"] == name).all()
    assert table["patient_id"].str.startswith(f"{name}:").all()
    files = table["path"].str.replace(r"#\d+$", "", regex=True) if name.startswith("cifar") else table["path"]
    assert all(os.path.isfile(p) for p in files)
    assert set(table["view"]) == {"PA" if name == "tuberculosis" else "OTHER"}
    assert sources.source_of(name).modality == ("xray" if name in ("covidx", "tuberculosis") else "natural")
    summary = studydata.inspect_source(name, roots[name])
    assert summary["images"] == sum(counts.values()) and sorted(summary["labels"]) == sorted(classes)


@pytest.mark.parametrize("name", sorted(MINIATURES))
def test_prepare_one_shot_per_class_never_from_test(roots, name, tmp_path):
    cfg = RunConfig(kind="transfer", target=name, roots=(f"{name}={roots[name]}",), shots=1, out_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = studydata.prepare(cfg)
    _, _, classes, _ = MINIATURES[name]
    assert study.classes == tuple(sorted(classes)) and not study.multilabel
    assert sorted(study.train["label"]) == sorted(classes)  # exactly one image per class
    assert not set(study.train["image_id"]) & (set(study.test["image_id"]) | set(study.valid["image_id"]))
    official_test = _read(name, roots[name]).query("split == 'test'")["image_id"]
    assert not set(study.train["image_id"]) & set(official_test)
    assert len(study.test) > 0  # (valid may be empty: 10% of a handful of patients)


def test_covidx_patients_group_splits(roots):
    table = _read("covidx", roots["covidx"])
    assert table["patient_id"].nunique() == 20  # 16 train patients with 2 images, 4 test patients with 1
    assert table.groupby("patient_id").size().max() == 2
    split = splits.assign_splits(table, "official", seed=0, valid_fraction=0.3)
    assert (split["split"] == "valid").sum() > 0  # carved out of train by patient
    assert splits.patient_overlap(split) == {"patients": 0, "images": 0}
    assert table["image_id"].str.match(r"^(train|test)/").all()


def test_covidx_val_file_and_metadata_only(tmp_path):
    rng = np.random.default_rng(5)
    records = _covidx_records() + [_chest("positive", 99, 1, "valid", rng), _chest("negative", 98, 1, "valid", rng)]
    root = layouts.write_layout("covidx", tmp_path / "covidx", records)
    table = sources.read_source("covidx", root)
    assert (
        table["split"].value_counts()["valid"] == 2
        and table.query("split == 'valid'")["path"].str.contains("/val/").all()
    )
    shutil.rmtree(root / "train")
    assert len(sources.read_source("covidx", root, metadata_only=True)) == len(records)
    with pytest.raises(SourceError, match="train does not exist"):
        sources.read_source("covidx", root)


def test_covidx_bad_input(tmp_path):
    base = layouts.write_layout("covidx", tmp_path / "base", _covidx_records()[:4] + _covidx_records()[-2:])
    lines = (base / "test.txt").read_text().splitlines()
    root = _fresh(tmp_path, base)
    (root / "test.txt").unlink()
    with pytest.raises(SourceError, match=r"no COVIDx test list.*test\.txt"):
        sources.read_source("covidx", root)
    for text, error in [
        (f"{lines[0]}\n{lines[1].rsplit(' ', 2)[0]}\n", r"test\.txt, line 2: .* has 2 field\(s\); expected 4"),
        (
            f"{lines[0]}\n\n{lines[1].replace('positive', 'COVID-19')}\n",
            r"test\.txt, line 3, field 3 \(class\): 'COVID-19'; expected one of",
        ),
        (f"{lines[0]}\n{lines[0]}\n", r"test\.txt, line 2: duplicate image 'test/.*line 1"),
        ("\n", r"test\.txt: no entries; expected lines 'patient_id filename class data_source'"),
    ]:
        root = _fresh(tmp_path, base)
        (root / "test.txt").write_text(text)
        with pytest.raises(SourceError, match=error):
            sources.read_source("covidx", root)


def test_tuberculosis_skips_masks_and_readings_and_says_so(roots, tmp_path):
    with pytest.warns(UserWarning, match=r"skipped 16 segmentation mask\(s\) and 16 file\(s\) not named like"):
        table = sources.read_source("tuberculosis", roots["tuberculosis"])
    assert table["path"].str.contains("/CXR_png/").all() and (table["split"] == "").all()
    assert set(table["image_id"].str[:6]) == {"CHNCXR", "MCUCXR"}
    assert (table["label"] == np.where(table["image_id"].str.endswith("_1.png"), "tuberculosis", "normal")).all()
    assert table["patient_id"].is_unique and (table["view"] == "PA").all()

    (tmp_path / "empty" / "CXR_png").mkdir(parents=True)
    (tmp_path / "empty" / "CXR_png" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no image named like CHNCXR_0001_0.png"):
        sources.read_source("tuberculosis", tmp_path / "empty")
    copy = shutil.copytree(roots["tuberculosis"] / "ChinaSet_AllFiles", tmp_path / "two" / "a")
    shutil.copytree(copy, tmp_path / "two" / "b")
    with pytest.raises(SourceError, match="CHNCXR_0001_0.png occurs twice"):
        _read("tuberculosis", tmp_path / "two")


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_root_is_folder_or_parent_and_members_decode(roots, name, folder):
    parent = sources.read_source(name, roots[name])
    inner = sources.read_source(name, roots[name] / folder)
    assert parent["image_id"].tolist() == inner["image_id"].tolist()
    assert parent["image_id"].iloc[0] == ("data_batch_1#0" if name == "cifar10" else "train#0")
    from xrstudy.pixels import decoding

    pixels = decoding.prepare_image(parent["path"].iloc[0], 32, "RGB")  # FILE#N member of the first batch
    with open(parent["path"].iloc[0].rpartition("#")[0], "rb") as handle:
        written = pickle.load(handle, encoding="bytes")[b"data"][0]
    np.testing.assert_array_equal(pixels, written.reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar_few_records_leave_empty_batches(tmp_path):
    root = layouts.write_layout("cifar10", tmp_path / "c", _natural(("cat", "dog"), {"train": 1, "test": 1}, 0))
    table = sources.read_source("cifar10", root)
    assert table["image_id"].tolist() == ["data_batch_1#0", "data_batch_2#0", "test_batch#0", "test_batch#1"]


def _dump(path, value):
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=2)


def test_cifar_bad_input(roots, tmp_path):
    base = roots["cifar10"] / "cifar-10-batches-py"
    root = _fresh(tmp_path, base)
    (root / "data_batch_3").unlink()
    with pytest.raises(SourceError, match="no data_batch_3"):
        sources.read_source("cifar10", root)
    for batch, error in [
        (b"not a pickle", r"data_batch_3: not a readable pickle \(unknown opcode 0x6e\)"),
        (
            {b"labels": [0, 7], b"data": np.zeros((2, 3072), np.uint8)},
            r"data_batch_3, key 'labels', entry 1: value 7; expected 0..2",
        ),
        (
            {b"labels": [0, 1], b"data": np.zeros((3, 3072), np.uint8)},
            r"key 'data': shape \(3, 3072\); expected \(2, 3072\)",
        ),
        ({b"labels": [0, 1]}, "no key 'data'"),
    ]:
        root = _fresh(tmp_path, base)
        if isinstance(batch, bytes):
            (root / "data_batch_3").write_bytes(batch)
        else:
            _dump(root / "data_batch_3", batch)
        with pytest.raises(SourceError, match=error):
            sources.read_source("cifar10", root)
    assert len(sources.read_source("cifar10", root, metadata_only=True)) > 0  # labels without pixels
    root = _fresh(tmp_path, base)
    (root / "batches.meta").unlink()
    with pytest.raises(SourceError, match=r"batches\.meta"):
        sources.read_source("cifar10", root)
    _dump(root / "batches.meta", {b"names": []})
    with pytest.raises(SourceError, match=r"batches\.meta: no key\(s\) \['label_names'\]"):
        sources.read_source("cifar10", root)


def test_pets_classes_and_bad_input(roots, tmp_path):
    table = sources.read_source("pets", roots["pets"])
    assert table["path"].str.endswith(".jpg").all() and "Abyssinian_1" in set(table["image_id"])
    trainval = (roots["pets"] / "annotations" / "trainval.txt").read_text().splitlines()
    test = (roots["pets"] / "annotations" / "test.txt").read_text().splitlines()

    def edited(text, file="trainval.txt"):
        root = _fresh(tmp_path, roots["pets"])
        (root / "annotations" / file).write_text(text)
        return root

    assert len(sources.read_source("pets", edited("# a comment\n" + "\n".join(trainval) + "\n"))) == len(table)
    with pytest.raises(SourceError, match=r"trainval\.txt, line 3: 'Bengal_3 2'; expected"):
        sources.read_source("pets", edited("\n".join(trainval[:2] + ["Bengal_3 2"]) + "\n"))
    with pytest.raises(SourceError, match=r"test\.txt, line 1: 'beagle_1 3 7 1'; expected .*SPECIES 1"):
        sources.read_source("pets", edited("beagle_1 3 7 1\n", "test.txt"))
    assert trainval[0] == "Abyssinian_1 1 1 1"
    with pytest.raises(
        SourceError,
        match=r"trainval\.txt, line 2: 'beagle_1 1 2 1' gives breed 'beagle' CLASS-ID 1"
        r", but trainval\.txt line 1 gives id 1 to 'Abyssinian'",
    ):
        sources.read_source("pets", edited(f"{trainval[0]}\nbeagle_1 1 2 1\n"))
    with pytest.raises(
        SourceError,
        match=r"trainval\.txt, line 3: 'Abyssinian_10 9 1 1' gives breed 'Abyssinian' "
        r"CLASS-ID 9.* gives 'Abyssinian' id 1; expected one CLASS-ID per breed",
    ):
        sources.read_source("pets", edited(f"{trainval[0]}\n{trainval[1]}\nAbyssinian_10 9 1 1\n"))
    with pytest.raises(
        SourceError, match=r"test\.txt, line 1: duplicate image 'Abyssinian_1' \(first on .*trainval\.txt, line 1"
    ):
        sources.read_source("pets", edited(trainval[0] + "\n", "test.txt"))
    root = _fresh(tmp_path, roots["pets"])
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(SourceError, match=r"annotations/test\.txt"):
        sources.read_source("pets", root)
    root = edited("\n".join(test) + "\n", "test.txt")
    shutil.rmtree(root / "images")
    assert len(sources.read_source("pets", root, metadata_only=True)) == len(table)
    with pytest.raises(SourceError, match="images does not exist"):
        sources.read_source("pets", root)


def test_flowers_splits_swapped_and_bad_input(roots, tmp_path):
    paper = sources.read_source("flowers102", roots["flowers102"]).set_index("image_id")
    official = sources.read_source("flowers102-official", roots["flowers102"]).set_index("image_id")
    swap = {"train": "test", "valid": "valid", "test": "train"}
    assert (paper["split"] == official["split"].map(swap)).all()
    assert paper.index[0] == "image_00001.jpg" and paper["path"].str.contains("/jpg/image_").all()

    def edited(setid):
        root = _fresh(tmp_path, roots["flowers102"])
        savemat(root / "setid.mat", {k: np.array([v]) for k, v in setid.items()})
        return root

    with pytest.raises(SourceError, match=r"setid\.mat, variable 'valid', entry 0: image 2 is listed twice"):
        sources.read_source("flowers102", edited({"trnid": [1, 2], "valid": [2, 3], "tstid": [4]}))
    with pytest.raises(SourceError, match=r"variable 'tstid', entry 0: image 99; expected 1\.\.30"):
        sources.read_source("flowers102", edited({"trnid": [1, 2], "valid": [3], "tstid": [99]}))
    with pytest.warns(UserWarning, match="26 of the 30 images"):
        assert len(sources.read_source("flowers102", edited({"trnid": [1, 2], "valid": [3], "tstid": [4]}))) == 4
    with pytest.raises(SourceError, match=r"setid\.mat: no variable 'valid'"):
        sources.read_source("flowers102", edited({"trnid": [1, 2], "tstid": [4]}))
    root = _fresh(tmp_path, roots["flowers102"])
    (root / "imagelabels.mat").write_text("not a mat file")
    with pytest.raises(SourceError, match=r"imagelabels\.mat: cannot read as a MATLAB \.mat file"):
        sources.read_source("flowers102", root)
    (root / "imagelabels.mat").unlink()
    with pytest.raises(SourceError, match=r"imagelabels\.mat"):
        sources.read_source("flowers102-official", root)


def test_writers_refuse_labels_the_layout_cannot_hold(tmp_path):
    image = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="covidx writer: labels"):
        layouts.write_layout("covidx", tmp_path / "c", [Record(1, 1, "PA", "", 0, {}, "train", image, "COVID-19")])
    with pytest.raises(ValueError, match="flowers102 writer: labels"):
        layouts.write_layout("flowers102", tmp_path / "f", [Record(1, 1, "OTHER", "", 0, {}, "train", image, "rose")])
