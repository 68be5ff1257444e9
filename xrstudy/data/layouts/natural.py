"""Writers of the natural-image layouts read by `xrstudy.data.sources.natural`: ImageFolder trees, CIFAR-10 /
CIFAR-100 (python pickles), Oxford-IIIT Pets and Oxford Flowers-102 (the .mat files or fast.ai's copy)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from xrstudy.data.layouts.records import WRITERS, Record, check_labels, register_writer, rgb, save_image


# ---- any ImageFolder tree: <split>/<class>/<image>.png --------------------------------------------
@register_writer("imagefolder")
def write_imagefolder(root: Path, records: list[Record]) -> None:
    counter: dict[str, int] = {}
    for record in records:
        key = f"{record.split}/{record.label}"
        counter[key] = counter.get(key, 0) + 1
        save_image(root / record.split / record.label / f"{counter[key]:05d}.png", record.image)


# ---- CIFAR-10 / CIFAR-100, python version: pickled dicts with bytes keys, data N x 3072 uint8 -------
def _cifar_batch(records: list[Record], names: list[str], labels_key: bytes, batch_label: str) -> dict:
    data = (
        np.stack([rgb(r.image, 32).transpose(2, 0, 1).reshape(-1) for r in records])
        if records
        else np.zeros((0, 3072), np.uint8)
    )
    return {
        b"batch_label": batch_label.encode(),
        labels_key: [names.index(r.label) for r in records],
        b"data": data,
        b"filenames": [f"{r.label}_s_{r.patient:06d}.png".encode() for r in records],
    }


def _dump(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=2)  # the originals are Python 2 pickles


@register_writer("cifar10")
def write_cifar10(root: Path, records: list[Record]) -> None:
    """cifar-10-batches-py/: train (and valid) records dealt over data_batch_1..5, test in test_batch;
    batches.meta lists the classes present, sorted (the real file lists airplane..truck)."""
    check_labels("cifar10", records)
    names = sorted({r.label for r in records})
    folder = root / "cifar-10-batches-py"
    train = [r for r in records if r.split != "test"]
    for b in range(5):
        _dump(
            folder / f"data_batch_{b + 1}", _cifar_batch(train[b::5], names, b"labels", f"training batch {b + 1} of 5")
        )
    _dump(
        folder / "test_batch",
        _cifar_batch([r for r in records if r.split == "test"], names, b"labels", "testing batch 1 of 1"),
    )
    _dump(
        folder / "batches.meta",
        {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in names], b"num_vis": 3072},
    )


@register_writer("cifar100")
def write_cifar100(root: Path, records: list[Record]) -> None:
    """cifar-100-python/{train, test, meta}; every class in one coarse super-class "demo"."""
    check_labels("cifar100", records)
    names = sorted({r.label for r in records})
    folder = root / "cifar-100-python"
    for split, subset in (
        ("train", [r for r in records if r.split != "test"]),
        ("test", [r for r in records if r.split == "test"]),
    ):
        batch = _cifar_batch(subset, names, b"fine_labels", f"{split}ing batch 1 of 1")
        batch[b"coarse_labels"] = [0] * len(subset)
        _dump(folder / split, batch)
    _dump(folder / "meta", {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"demo"]})


# ---- Oxford-IIIT Pets: annotations/{list,trainval,test}.txt + images/<Breed>_<N>.jpg ----------------
@register_writer("pets")
def write_pets(root: Path, records: list[Record]) -> None:
    """Labels are breed names; capitalised = cat (species 1), else dog (2), as in the originals.
    Class ids follow the case-insensitive alphabetical order, as in the originals; valid -> trainval."""
    check_labels("pets", records)
    if any(not r.label.replace("_", "").isalpha() for r in records):
        raise ValueError("pets writer: breed names must be letters and '_' (the image name is <breed>_<N>)")
    breeds = sorted({r.label for r in records}, key=str.lower)
    species = {b: 1 if b[0].isupper() else 2 for b in breeds}
    breed_id = {b: 1 + [c for c in breeds if species[c] == species[b]].index(b) for b in breeds}
    counter: dict[str, int] = {}
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for record in records:
        counter[record.label] = counter.get(record.label, 0) + 1
        image = f"{record.label}_{counter[record.label]}"
        save_image(root / "images" / f"{image}.jpg", rgb(record.image))
        line = f"{image} {breeds.index(record.label) + 1} {species[record.label]} {breed_id[record.label]}\n"
        lines["test" if record.split == "test" else "trainval"].append(line)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    header = (
        "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"
        "#BREED ID: 1-25:Cat 1:12:Dog\n#All images with 1st letter as captial are cat images\n"
        "#images with small first letter are dog images\n"
    )
    (root / "annotations" / "list.txt").write_text(header + "".join(lines["trainval"] + lines["test"]))
    for split, entries in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("".join(entries))


# ---- Oxford Flowers-102: imagelabels.mat + setid.mat + jpg/image_NNNNN.jpg --------------------------
def _flower_images(root: Path, records: list[Record], name: str) -> list[tuple[int, Record]]:
    """Check the labels are class numbers "1".."102", write jpg/image_NNNNN.jpg (NNNNN from 1), and return
    (number, record) in file order: both Flowers-102 layouts hold the same image folder."""
    bad = sorted({r.label for r in records if not r.label.isdigit() or not 1 <= int(r.label) <= 102})
    if bad:
        raise ValueError(f"{name} writer: labels {bad}; expected class numbers '1'..'102'")
    for number, record in enumerate(records, start=1):
        save_image(root / "jpg" / f"image_{number:05d}.jpg", rgb(record.image))
    return list(enumerate(records, start=1))


@register_writer("flowers102")
def write_flowers102(root: Path, records: list[Record]) -> None:
    """Labels are class numbers "1".."102"; `Record.split` is the official split (train -> trnid,
    valid -> valid, test -> tstid), which the `flowers102` adapter then swaps as the paper did."""
    from scipy.io import savemat

    ids: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for number, record in _flower_images(root, records, "flowers102"):
        ids[{"train": "trnid", "valid": "valid", "test": "tstid"}[record.split]].append(number)
    savemat(root / "imagelabels.mat", {"labels": np.array([[int(r.label) for r in records]], np.uint8)})
    savemat(root / "setid.mat", {key: np.array([values], np.uint16) for key, values in ids.items()})


@register_writer("flowers102-fastai")
def write_flowers102_fastai(root: Path, records: list[Record]) -> None:
    """fast.ai's copy, which the authors downloaded: train.txt / valid.txt / test.txt ('jpg/image_NNNNN.jpg
    CLASS', CLASS = the .mat class number - 1) beside jpg/; labels "1".."102" as for `flowers102`."""
    lines: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for number, record in _flower_images(root, records, "flowers102-fastai"):
        lines[record.split].append(f"jpg/image_{number:05d}.jpg {int(record.label) - 1}\n")
    for split, entries in lines.items():
        (root / f"{split}.txt").write_text("".join(entries))


WRITERS["flowers102-official"] = write_flowers102  # the same files; only the adapters differ
