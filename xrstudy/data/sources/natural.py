"""Natural-image targets read from their distributed files: any ImageFolder tree, CIFAR-10 / CIFAR-100,
Oxford-IIIT Pets and Oxford Flowers-102. Each image is its own patient.

Layouts, each exactly as distributed (root = the extracted folder):
  imagefolder         class folders of images, optionally inside train/, valid/ (val/) and test/ folders; also
                      every name outside the registry (`source_of`).
  cifar10, cifar100   the python pickles: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} and
                      cifar-100-python/{train, test, meta}; root is that folder or its parent. Image paths are batch
                      members `FILE#N` (decoded by xrstudy.pixels.imagecache). Official train/test. Every file is
                      read by xrstudy.pickles' restricted unpickler: a pickle naming code is refused, never run.
  pets                Oxford-IIIT Pets: annotations/{trainval,test}.txt (`Abyssinian_100 1 1 1`), images/{name}.jpg;
                      class = name without the trailing _NNN. trainval -> train, test -> test.
  flowers102          imagelabels.mat, setid.mat, jpg/image_00001.jpg (or fast.ai's train.txt / valid.txt / test.txt,
                      classes from 0, which the authors downloaded). `flowers102` is the paper's swapped split (train =
                      tstid, 6,149 images; valid = valid; test = trnid), `flowers102-official` the official one
                      (train = trnid, valid = valid, test = tstid). Classes "1".."102".
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xrstudy.data.sources.registry import SOURCES, SourceError, register
from xrstudy.data.sources.tables import canonical, find_file, require_images, text_lines, unique_lines
from xrstudy.pickles import DatasetPickleError, load_dataset_pickle
from xrstudy.yamlfiles import shorten

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "valid",
    "valid": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
}
IMAGEFOLDER_LAYOUT = "class folders of images, optionally inside train/, valid/ (or val/) and test/ folders"


def _utf8(path: Path, name: str) -> str:
    """`str(path)`, or a SourceError naming a file name that is not UTF-8 (Python hands such bytes over as
    lone surrogates, which no split file, cache key or result JSON can hold)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise SourceError(
            f"{name}: file name {shown} is not UTF-8; rename it (xrstudy writes every path as UTF-8 text)"
        ) from None
    return text


def _class_images(folder: Path, name: str) -> Iterable[tuple[str, str]]:
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                yield class_dir.name, _utf8(file, name)


@register("imagefolder", multilabel=False, modality="natural", layout=IMAGEFOLDER_LAYOUT, paper_fewshot="kshot_finder")
def read_imagefolder(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    split_dirs = {
        SPLIT_FOLDERS[p.name.lower()]: p
        for p in sorted(root.iterdir())
        if p.is_dir() and p.name.lower() in SPLIT_FOLDERS
    }
    rows = [
        (split, label, path)
        for split, folder in (split_dirs or {"": root}).items()
        for label, path in _class_images(folder, name)
    ]
    if not rows:
        raise SourceError(
            f"{name}: no images under {root}; expected {IMAGEFOLDER_LAYOUT} "
            f"(a name outside {sorted(SOURCES)} is read as an ImageFolder tree)"
        )
    split, label, path = zip(*rows)
    image_id = [os.path.relpath(p, root) for p in path]
    return canonical(
        name,
        image_id=image_id,
        path=list(path),
        patient_id=image_id,
        study_id=image_id,
        view="OTHER",
        split=list(split),
        label=list(label),
    )


# Handwritten digits (the demo's natural target, scikit-learn's 8x8 digits) as an ImageFolder tree: a
# mirrored digit is no digit, so their training crops are never flipped (with flips the demo's
# full-shot accuracy was ~91 %, without ~96 %, as a logistic regression's).
register(
    "digits",
    multilabel=False,
    modality="natural",
    layout=IMAGEFOLDER_LAYOUT,
    paper_fewshot="kshot_finder",
    mirror_invariant=False,
    # scikit-learn's 1,797 digits of 8 x 8 px as the demo writes them (xrstudy.data.phantoms.digit_records, seed 5)
    published_classes=10,
    published_train_size=1_422,
    native_hw=(8, 8),
)(read_imagefolder)


# ---- CIFAR-10 / CIFAR-100 (python version) --------------------------------------------------------
CIFAR10_LAYOUT = "cifar-10-batches-py/ (or its contents): data_batch_1..data_batch_5, test_batch, batches.meta"
CIFAR100_LAYOUT = "cifar-100-python/ (or its contents): train, test, meta"


def _cifar_pickle(path: Path, keys: Sequence[str]) -> dict[str, object]:
    """The entries `keys` (b"..." in the originals; str keys accepted) of one CIFAR pickle, read by the
    restricted unpickler: a pickle naming anything but what CIFAR's files hold is refused, not run."""
    try:
        batch = load_dataset_pickle(path)
    except DatasetPickleError as err:  # names the file, and the refused global if there is one
        raise SourceError(f"{err}; CIFAR's python pickles are dicts with keys {list(keys)}") from None
    if not isinstance(batch, dict):
        raise SourceError(f"{path}: holds a {type(batch).__name__}; expected a pickled dict with keys {keys}")
    out = {}
    for key in keys:
        for candidate in (key.encode(), key):
            if candidate in batch:
                out[key] = batch[candidate]
                break
    missing = [k for k in keys if k not in out and k != "data"]
    if missing:
        raise SourceError(
            f"{path}: no key(s) {missing}; expected keys {list(keys)}, found {shorten(list(batch)[:10], 200)}"
        )
    return out


def _cifar_names(path: Path, key: str) -> list[str]:
    names = _cifar_pickle(path, [key])[key]
    try:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (TypeError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}, key {key!r}: {err}; expected a list of class names") from None


def _read_cifar(
    name: str,
    root: Path,
    metadata_only: bool,
    *,
    folder: str,
    meta: str,
    names_key: str,
    labels_key: str,
    batches: Sequence[tuple[str, str]],
) -> pd.DataFrame:
    base = root / folder if (root / folder).is_dir() else root
    class_names = _cifar_names(find_file(base, [meta], f"{name} meta file"), names_key)
    tables = []
    for batch_name, split in batches:
        path = base / batch_name
        if not path.is_file():
            raise SourceError(f"{base}: no {batch_name}; expected {[b for b, _ in batches] + [meta]}")
        batch = _cifar_pickle(path, [labels_key, "data"])
        try:
            values = np.asarray(batch[labels_key]).ravel()
            values = values.astype(np.int64, casting="safe" if len(values) else "unsafe")
        except (TypeError, ValueError) as err:
            raise SourceError(f"{path}, key {labels_key!r}: {err}; expected integer class indices") from None
        bad = (values < 0) | (values >= len(class_names))
        if bad.any():
            i = int(np.argmax(bad))
            raise SourceError(
                f"{path}, key {labels_key!r}, entry {i}: value {values[i]}; expected 0.."
                f"{len(class_names) - 1} (the {len(class_names)} names in {meta})"
            )
        if "data" in batch:
            rows = int(np.shape(batch["data"])[0]) if np.ndim(batch["data"]) == 2 else -1
            if rows != len(values) or np.shape(batch["data"])[1] != 3072:
                raise SourceError(
                    f"{path}, key 'data': shape {np.shape(batch['data'])}; expected "
                    f"({len(values)}, 3072), one 3x32x32 image per label"
                )
        elif not metadata_only:
            raise SourceError(
                f"{path}: no key 'data' (the pixels); to work from the labels alone pass "
                f"metadata_only=True (CLI: --metadata-only)"
            )
        image_id = [f"{batch_name}#{i}" for i in range(len(values))]
        tables.append(
            canonical(
                name,
                image_id=image_id,
                path=[f"{path}#{i}" for i in range(len(values))],
                patient_id=image_id,
                study_id=image_id,
                view="OTHER",
                split=split,
                label=[class_names[v] for v in values],
            )
        )
    return pd.concat(tables, ignore_index=True)


@register(
    "cifar10",
    multilabel=False,
    modality="natural",
    layout=CIFAR10_LAYOUT,
    published_classes=10,
    published_train_size=50_000,
    class_size=5_000,
    native_hw=(32, 32),
    paper_fewshot="kshot_finder",
    paper_batch_split=2,  # configs/finetune/cifar*.yaml: batch 128, batch_split 2
)
def read_cifar10(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    batches = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    return _read_cifar(
        name,
        root,
        metadata_only,
        folder="cifar-10-batches-py",
        meta="batches.meta",
        names_key="label_names",
        labels_key="labels",
        batches=batches,
    )


@register(
    "cifar100",
    multilabel=False,
    modality="natural",
    layout=CIFAR100_LAYOUT,
    published_classes=100,
    published_train_size=50_000,
    class_size=500,
    native_hw=(32, 32),
    paper_fewshot="kshot_finder",
    paper_batch_split=2,  # configs/finetune/cifar*.yaml: batch 128, batch_split 2
)
def read_cifar100(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """CIFAR-100 with its 100 fine labels (the coarse super-classes are not used by the study)."""
    return _read_cifar(
        name,
        root,
        metadata_only,
        folder="cifar-100-python",
        meta="meta",
        names_key="fine_label_names",
        labels_key="fine_labels",
        batches=[("train", "train"), ("test", "test")],
    )


# ---- Oxford-IIIT Pets ---------------------------------------------------------------------------------
PETS_LAYOUT = "annotations/trainval.txt and annotations/test.txt ('Abyssinian_100 1 1 1' lines) beside images/"
PETS_LINE = re.compile(r"^(?P<image>(?P<cls>\S+)_\d+)\s+(?P<id>\d+)\s+(?P<species>\d+)\s+(?P<breed>\d+)$")


@register(
    "pets",
    multilabel=False,
    modality="natural",
    layout=PETS_LAYOUT,
    published_classes=37,
    published_train_size=3_680,
    paper_fewshot="kshot_finder",
)
def read_pets(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """Oxford-IIIT Pets, 37 breeds; the class name is the image name without its trailing _NNN
    (cat breeds are capitalised in the originals, dog breeds are not: kept as distributed)."""
    expected = "'<Breed>_<N> CLASS-ID SPECIES BREED-ID', e.g. 'Abyssinian_100 1 1 1'"
    rows = []  # (split, image, class, path, line)
    first_of_id: dict[int, tuple[str, Path, int]] = {}  # class id -> (breed, file, line) where first seen
    first_of_breed: dict[str, tuple[int, Path, int]] = {}
    for file, split in (("trainval.txt", "train"), ("test.txt", "test")):
        path = find_file(root, [f"annotations/{file}"], f"Oxford-IIIT Pets {file}")
        for line, text in text_lines(path, expected, comments=True):
            match = PETS_LINE.match(text)
            if match is None or int(match["id"]) < 1 or match["species"] not in ("1", "2"):
                raise SourceError(
                    f"{path}, line {line}: {text!r}; expected {expected} (CLASS-ID 1..37, SPECIES 1 = cat or 2 = dog)"
                )
            class_id, breed = int(match["id"]), match["cls"]
            seen_breed, seen_path, seen_line = first_of_id.setdefault(class_id, (breed, path, line))
            seen_id, other_path, other_line = first_of_breed.setdefault(breed, (class_id, path, line))
            if seen_breed != breed or seen_id != class_id:
                raise SourceError(
                    f"{path}, line {line}: {text!r} gives breed {breed!r} CLASS-ID {class_id}, but "
                    f"{seen_path.name} line {seen_line} gives id {class_id} to {seen_breed!r} and "
                    f"{other_path.name} line {other_line} gives {breed!r} id {seen_id}; "
                    f"expected one CLASS-ID per breed"
                )
            rows.append((split, match["image"], breed, path, line))
    require_images(root, "images", name, metadata_only)
    split, image, cls, path, line = zip(*rows)
    unique_lines(image, list(zip(path, line)), "image")
    return canonical(
        name,
        image_id=list(image),
        path=[str(root / "images" / f"{i}.jpg") for i in image],
        patient_id=list(image),
        study_id=list(image),
        view="OTHER",
        split=list(split),
        label=list(cls),
    )


# ---- Oxford Flowers-102 ------------------------------------------------------------------------------
FLOWERS_LAYOUT = (
    "imagelabels.mat and setid.mat (trnid, valid, tstid) beside jpg/image_00001.jpg ..., or fast.ai's "
    "copy: train.txt, valid.txt, test.txt ('jpg/image_00001.jpg 76', classes from 0) beside jpg/"
)
FLOWERS_SETS = ("trnid", "valid", "tstid")


def _mat_vector(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        content = loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as err:
        raise SourceError(f"{path}: cannot read as a MATLAB .mat file ({err}); expected a variable {key!r}") from None
    if key not in content:
        found = [k for k in content if not k.startswith("__")]
        raise SourceError(f"{path}: no variable {key!r}; expected {key!r}, found {found}")
    values = np.asarray(content[key]).ravel()
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(values == np.round(values))):
        raise SourceError(f"{path}, variable {key!r}: {values.dtype} values; expected whole 1-based numbers")
    return values.astype(np.int64)


FLOWERS_FASTAI_LISTS = {"train.txt": "trnid", "valid.txt": "valid", "test.txt": "tstid"}
FLOWERS_FASTAI_LINE = re.compile(r"^(?P<file>jpg/image_\d{5}\.jpg)\s+(?P<cls>\d+)$")


def _read_flowers_fastai(name: str, root: Path, metadata_only: bool, split_of: dict[str, str]) -> pd.DataFrame:
    """fast.ai's copy (the authors' download): train.txt / valid.txt / test.txt with lines
    'jpg/image_06734.jpg 0', classes counted from 0 (class "1" of the .mat files is 0 here)."""
    expected = "'jpg/image_NNNNN.jpg CLASS' with CLASS 0..101"
    rows = []  # (image, class as 1..102, set, path, line)
    for file, key in FLOWERS_FASTAI_LISTS.items():
        path = find_file(root, [file], f"Flowers-102 (fast.ai) {file}")
        for line, text in text_lines(path, expected):
            match = FLOWERS_FASTAI_LINE.match(text)
            if match is None or int(match["cls"]) > 101:
                raise SourceError(f"{path}, line {line}: {text!r}; expected {expected}")
            rows.append((match["file"].removeprefix("jpg/"), str(int(match["cls"]) + 1), key, path, line))
    require_images(root, "jpg", name, metadata_only)
    image, label, key, path, line = zip(*rows)
    unique_lines(image, list(zip(path, line)), "image")
    return canonical(
        name,
        image_id=list(image),
        path=[str(root / "jpg" / i) for i in image],
        patient_id=list(image),
        study_id=list(image),
        view="OTHER",
        split=[split_of[k] for k in key],
        label=list(label),
    )


def _read_flowers(name: str, root: Path, metadata_only: bool, split_of: dict[str, str]) -> pd.DataFrame:
    if (
        not any((root / f).is_file() for f in ("imagelabels.mat", "imagelabels.mat.gz"))
        and (root / "train.txt").is_file()
    ):
        return _read_flowers_fastai(name, root, metadata_only, split_of)
    label_path = find_file(root, ["imagelabels.mat"], "Flowers-102 label file")
    set_path = find_file(root, ["setid.mat"], "Flowers-102 split file")
    classes = _mat_vector(label_path, "labels")
    if len(classes) == 0 or classes.min() < 1:
        raise SourceError(
            f"{label_path}, variable 'labels': smallest value {classes.min(initial=0)}; "
            f"expected class numbers from 1 (1..102)"
        )
    split = np.full(len(classes), "", dtype=object)
    for key in FLOWERS_SETS:
        ids = _mat_vector(set_path, key)
        outside = (ids < 1) | (ids > len(classes))
        if outside.any():
            i = int(np.argmax(outside))
            raise SourceError(
                f"{set_path}, variable {key!r}, entry {i}: image {ids[i]}; expected 1.."
                f"{len(classes)} (the images of {label_path.name})"
            )
        taken = split[ids - 1] != ""
        if taken.any() or len(np.unique(ids)) < len(ids):
            i = int(np.argmax(taken)) if taken.any() else int(np.argmax(pd.Series(ids).duplicated().to_numpy()))
            raise SourceError(
                f"{set_path}, variable {key!r}, entry {i}: image {ids[i]} is listed twice; "
                f"expected {list(FLOWERS_SETS)} to be disjoint"
            )
        split[ids - 1] = key
    require_images(root, "jpg", name, metadata_only)
    listed = np.flatnonzero(split != "")
    if len(listed) < len(classes):
        warnings.warn(
            f"{name}: {len(classes) - len(listed)} of the {len(classes)} images of {label_path.name} "
            f"are in none of {list(FLOWERS_SETS)} of {set_path.name}; left out",
            stacklevel=3,
        )
    image_id = [f"image_{i + 1:05d}.jpg" for i in listed]
    return canonical(
        name,
        image_id=image_id,
        path=[str(root / "jpg" / i) for i in image_id],
        patient_id=image_id,
        study_id=image_id,
        view="OTHER",
        split=[split_of[s] for s in split[listed]],
        label=[str(c) for c in classes[listed]],
    )


@register(
    "flowers102",
    multilabel=False,
    modality="natural",
    layout=FLOWERS_LAYOUT,
    published_classes=102,
    published_train_size=6_149,
    paper_fewshot="kshot_finder",
)
def read_flowers102(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """Flowers-102 as the paper uses it: official train and test swapped, i.e. train = tstid (6,149
    images), valid = valid (1,020), test = trnid (1,020). `flowers102-official` keeps the official split."""
    return _read_flowers(name, root, metadata_only, {"trnid": "test", "valid": "valid", "tstid": "train"})


@register(
    "flowers102-official",
    multilabel=False,
    modality="natural",
    layout=FLOWERS_LAYOUT,
    published_classes=102,
    published_train_size=1_020,
    paper_fewshot="kshot_finder",
)
def read_flowers102_official(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """Flowers-102 with the official split: train = trnid (1,020), valid = valid (1,020), test = tstid (6,149)."""
    return _read_flowers(name, root, metadata_only, {"trnid": "train", "valid": "valid", "tstid": "test"})
