"""Write images + labels in the on-disk layouts the real datasets are distributed in.

The demo and the tests use these writers to build miniature copies of CheXpert, NIH, PadChest,
MIMIC-CXR-JPG, ... so that `xrstudy.sources` reads them through exactly the code that reads the
real datasets. A `Record` is one image with its patient, study, view and labels in canonical
terms; each writer translates it into its source's own file names, columns and vocabulary.

    layouts.write_layout("chexpert", root, records)

One writer per distributed layout (11 datasets, plus the paper modes' PadChest cases and pinned COVIDx
release), each next to the others it mirrors: longer than ~400 lines on purpose, as `sources.py` is.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image

from xrstudy import labels


@dataclass(frozen=True)
class Record:
    """One image in canonical terms. `findings`: canonical name -> 1, 0, -1 (uncertain) or None."""

    patient: int
    study: int
    view: str  # canonical: PA, AP, AP_SUPINE, LATERAL, COSTAL, OTHER
    sex: str  # "M", "F" or ""
    age: int
    findings: dict[str, float | None]
    split: str  # train, valid, test
    image: np.ndarray = field(repr=False)
    label: str = ""  # single-label targets: the class name
    # The source's own label text, written as it is (None: made from `findings`). PadChest: the `Labels`
    # cell ("" = empty, as in 103 rows of the real file); MIMIC: "" = the study has no label row.
    raw: str | None = None
    file: str = ""  # the image's file name where a writer takes it from the record (PadChest ImageID)


Writer = Callable[[Path, list[Record]], None]
WRITERS: dict[str, Writer] = {}


def register_writer(name: str) -> Callable[[Writer], Writer]:
    def add(fn: Writer) -> Writer:
        WRITERS[name] = fn
        return fn

    return add


def write_layout(name: str, root: str | Path, records: Iterable[Record]) -> Path:
    """Write `records` under `root` in the layout of source `name` (see WRITERS)."""
    if name not in WRITERS:
        raise ValueError(f"no layout writer for {name!r}; known: {sorted(WRITERS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    WRITERS[name](root, list(records))
    return root


def save_image(path: Path, image: np.ndarray) -> None:
    """PNG keeps 16 bits (PadChest); JPEG is 8-bit like CheXpert / MIMIC-CXR-JPG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path)


def _write_csv_gz(path: Path, frame: pd.DataFrame) -> None:
    # mtime=0: byte-identical files on every run.
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(frame.to_csv(index=False).encode())


def _chexpert_values(record: Record) -> dict[str, float | None]:
    """The 14 CheXpert columns; `No Finding` is 1 when nothing positive or uncertain was drawn."""
    row = {column: record.findings.get(labels.CHEXPERT_SYNONYMS.get(column, column)) for column in labels.CHEXPERT_FINDINGS}
    drawn = any(v in (1.0, -1.0) for v in record.findings.values())
    row["No Finding"] = None if drawn else 1.0
    return row


# ---- CheXpert v1.0(-small): train.csv / valid.csv + patientNNNNN/studyN/viewN_frontal.jpg -----
@register_writer("chexpert")
def write_chexpert(root: Path, records: list[Record]) -> None:
    rows = {"train": [], "valid": []}
    views_in_study: dict[tuple[int, int], int] = {}
    for record in records:
        split = "valid" if record.split in ("valid", "test") else "train"
        number = views_in_study[(record.patient, record.study)] = views_in_study.get((record.patient, record.study), 0) + 1
        lateral = record.view == "LATERAL"
        relative = f"{split}/patient{record.patient:05d}/study{record.study}/view{number}_{'lateral' if lateral else 'frontal'}.jpg"
        save_image(root / relative, _as_uint8(record.image))
        rows[split].append({
            "Path": f"{root.name}/{relative}",
            "Sex": {"M": "Male", "F": "Female"}.get(record.sex, "Unknown"),
            "Age": record.age,
            "Frontal/Lateral": "Lateral" if lateral else "Frontal",
            "AP/PA": None if lateral else {"PA": "PA", "AP": "AP", "AP_SUPINE": "AP"}.get(record.view, "LL"),
            **_chexpert_values(record),
        })  # fmt: skip
    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", *labels.CHEXPERT_FINDINGS]
    for split, split_rows in rows.items():
        if split_rows:
            pd.DataFrame(split_rows, columns=columns).to_csv(root / f"{split}.csv", index=False)


# ---- MIMIC-CXR-JPG 2.0: three csv.gz files + files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg -------
@register_writer("mimic")
def write_mimic(root: Path, records: list[Record]) -> None:
    label_rows, meta_rows, split_rows, seen_studies = [], [], [], set()
    for i, record in enumerate(records):
        subject = 10_000_000 + record.patient
        study = 50_000_000 + record.patient * 10 + record.study
        dicom = f"{i:08x}-{subject:08d}-{study:08d}"
        path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        save_image(path, _as_uint8(record.image))
        view = {"AP_SUPINE": "AP", "OTHER": "LL", "COSTAL": "LL"}.get(record.view, record.view)
        meta_rows.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                          "ViewPosition": view, "Rows": record.image.shape[0], "Columns": record.image.shape[1]})  # fmt: skip
        split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                           "split": {"valid": "validate"}.get(record.split, record.split)})
        if (subject, study) not in seen_studies and record.raw != "":  # one label row per study (if any)
            seen_studies.add((subject, study))
            label_rows.append({"subject_id": subject, "study_id": study, **_chexpert_values(record)})
    columns = ["subject_id", "study_id", *sorted(["No Finding", *labels.CHEXPERT_FINDINGS])]
    _write_csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", pd.DataFrame(label_rows, columns=columns))
    _write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", pd.DataFrame(meta_rows))
    _write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", pd.DataFrame(split_rows))


# ---- NIH ChestX-ray14: Data_Entry_2017_v2020.csv + images/*.png + train_val_list / test_list ---
@register_writer("nih")
def write_nih(root: Path, records: list[Record]) -> None:
    rows, lists = [], {"train_val_list.txt": [], "test_list.txt": []}
    follow_up: dict[int, int] = {}
    for record in records:
        if record.view not in ("PA", "AP"):  # NIH holds frontal views only
            continue
        number = follow_up[record.patient] = follow_up.get(record.patient, -1) + 1
        name = f"{record.patient:08d}_{number:03d}.png"
        save_image(root / "images" / name, _as_uint8(record.image))
        # NIH has no uncertain or unknown labels: -1 is written as a finding, blank as absent.
        found = [labels.NIH_NAMES.get(k, k) for k, v in sorted(record.findings.items()) if v in (1.0, -1.0)]
        rows.append({
            "Image Index": name, "Finding Labels": "|".join(found) or "No Finding", "Follow-up #": number,
            "Patient ID": record.patient, "Patient Age": record.age, "Patient Gender": record.sex or "M",
            "View Position": record.view, "OriginalImage[Width": record.image.shape[1],
            "Height]": record.image.shape[0], "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143,
        })  # fmt: skip
        lists["test_list.txt" if record.split == "test" else "train_val_list.txt"].append(name)
    pd.DataFrame(rows).to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    for name, entries in lists.items():
        (root / name).write_text("".join(f"{e}\n" for e in entries))


# ---- PadChest: PADCHEST_..._160K_01.02.19.csv + <ImageDir>/<ImageID> 16-bit PNGs -----------------
PADCHEST_PROJECTIONS = {"PA": "PA", "AP": "AP", "AP_SUPINE": "AP_horizontal", "LATERAL": "L", "COSTAL": "COSTAL",
                        "OTHER": "UNK"}
# A value spanning two lines, as 5,214 rows of the real file have: line numbers are not row + 2.
LONG_CUIS = "['C0262950' 'C0223683' 'C0020164' 'C0003483' 'C0444532' 'C0448034'\n 'C0920882' 'C0025066']"


@register_writer("padchest")
def write_padchest(root: Path, records: list[Record]) -> None:
    """Findings are canonical names (written as their plain PadChest term) or PadChest terms as they
    are; `Record.raw` gives the `Labels` text itself ("" = empty) and `Record.file` the ImageID."""
    term_of = {canonical: terms[0] for canonical, terms in labels.PADCHEST_TERMS_OF.items()}
    rows = []
    for i, record in enumerate(records):
        image_id = record.file or f"{record.patient:06d}{record.study:02d}{i:06d}_demo.png"
        image_dir = i % 3
        save_image(root / str(image_dir) / image_id, record.image)
        terms = [term_of.get(k, k) for k, v in sorted(record.findings.items()) if v in (1.0, -1.0)]
        if record.label and record.label != "normal":
            terms = [term_of.get(record.label, record.label.lower())]  # PadChest-Cl: exactly one term
        text = repr(terms or ["normal"]) if record.raw is None else (record.raw or None)
        rows.append({
            "ImageID": image_id, "ImageDir": image_dir, "StudyDate_DICOM": 20150101 + record.study,
            "StudyID": f"{record.patient:06d}-{record.study}", "PatientID": f"{record.patient:06d}",
            "PatientBirth": 2015 - record.age, "PatientSex_DICOM": record.sex or "O",
            "Projection": PADCHEST_PROJECTIONS[record.view], "MethodLabel": "Physician",
            "Labels": text,
            # numpy-style reprs as in the real file, where long ones break over two lines
            "labelCUIS": "[" + " ".join(f"'C{i:07d}'" for _ in terms) + "]",
            "LocalizationsCUIS": LONG_CUIS if i % 4 == 1 else "[]",
        })  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", index=False)


# Rows that tell the authors' PadChest reading (label_mode paper) from the term vocabulary: their
# substring tests and synonyms, the rows they drop, the projections they read. (Labels text, view,
# file name, the 27 pathologies the authors' class marks; "" file = a made-up name.)
PADCHEST_PAPER_CASES = (
    ("['pleural effusion']", "PA", "", {"Effusion"}),
    ("['pericardial effusion']", "PA", "", {"Effusion"}),  # a substring, not the finding
    ("['consolidation']", "AP", "", {"Consolidation", "Infiltration"}),  # two pathologies: not PadChest-Cl
    ("['air bronchogram']", "PA", "", {"Consolidation", "Infiltration"}),
    ("['interstitial pattern']", "LATERAL", "", {"Infiltration"}),
    ("['electrical device']", "AP_SUPINE", "", {"Support Devices"}),
    ("['pacemaker', 'cardiomegaly']", "PA", "", {"Support Devices", "Cardiomegaly"}),
    ("['apical pleural thickening']", "COSTAL", "", {"Pleural Thickening"}),
    ("['adenopathy']", "PA", "", {"Hilar Enlargement"}),
    ("['subcutaneous emphysema']", "AP", "", {"Emphysema"}),
    ("['normal']", "PA", "", set()),
    ("['exclude']", "PA", "", set()),  # the vocabulary's unknown; the authors read it as no pathology
    ("['COPD signs']", "PA", "", set()),  # upper case: "copd" would not match
    ("['calcified granuloma']", "OTHER", "", {"Granuloma"}),  # an unknown projection: never read
    ("", "PA", "", set()),  # no labels: dropped
    ("['nodule']", "PA", "216840111366964012819207061112010307142602253_04-014-084.png", {"Nodule"}),  # excluded
    ("['scoliosis']", "LATERAL", "269300710246070740096540277379121868595_e7zsan.png", {"Scoliosis"}),  # excluded
)


def padchest_paper_records(repeat: int = 1, *, size: int = 16) -> list[Record]:
    """`PADCHEST_PAPER_CASES` as PadChest records, `repeat` times (new patients and file names each
    time, except the excluded files, which occur once): a miniature for the paper modes."""
    records = []
    for r in range(repeat):
        for i, (text, view, file, _) in enumerate(PADCHEST_PAPER_CASES):
            if file and r:
                continue
            patient = r * len(PADCHEST_PAPER_CASES) + i + 1
            image = (np.arange(size * size, dtype=np.uint32).reshape(size, size) * 257 + patient * 911) % 65535
            records.append(Record(patient=patient, study=1, view=view, sex="F",
                                  age=60, findings={}, split="", image=image.astype(np.uint16), raw=text,
                                  file=file))  # fmt: skip
    return records


# ---- any ImageFolder tree: <split>/<class>/<image>.png --------------------------------------------
@register_writer("imagefolder")
def write_imagefolder(root: Path, records: list[Record]) -> None:
    counter: dict[str, int] = {}
    for record in records:
        key = f"{record.split}/{record.label}"
        counter[key] = counter.get(key, 0) + 1
        save_image(root / record.split / record.label / f"{counter[key]:05d}.png", record.image)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else np.round(image / 257.0).astype(np.uint8)



# ---- transfer targets: COVIDx, Tuberculosis, CIFAR-10/100, Oxford-IIIT Pets, Flowers-102 ---------
# `Record.label` is the class; `Record.split` the official split (train / valid / test) the writer
# files it under. Every writer checks the labels it can write and raises ValueError otherwise.
import pickle  # noqa: E402 - imports of the transfer-target writers, kept with them


def _rgb(image: np.ndarray, size: int | None = None) -> np.ndarray:
    """An RGB uint8 copy of a grey or colour image, optionally resized to size x size."""
    picture = Image.fromarray(_as_uint8(image)).convert("RGB")
    if size is not None and picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(picture)


def _check_labels(name: str, records: list[Record], allowed: Iterable[str] | None = None) -> None:
    allowed = set(allowed) if allowed is not None else None
    bad = sorted({r.label for r in records if not r.label or (allowed is not None and r.label not in allowed)})
    if bad:
        raise ValueError(f"{name} writer: labels {bad}; expected {sorted(allowed) if allowed else 'non-empty class names'}")


# ---- COVIDx CXR-2: train.txt / val.txt / test.txt ('patient file class source') + train/ val/ test/ --
@register_writer("covidx")
def write_covidx(root: Path, records: list[Record]) -> None:
    """Labels positive / negative; a `valid` record goes to val.txt + val/ (newer releases)."""
    _check_labels("covidx", records, ("positive", "negative"))
    folders = {"train": "train", "valid": "val", "test": "test"}
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for i, record in enumerate(records):
        folder = folders[record.split]
        filename = f"{record.patient:06d}-{record.study}-{i:05d}.png"
        save_image(root / folder / filename, _as_uint8(record.image))
        lines.setdefault(folder, []).append(f"{record.patient:06d} {filename} {record.label} demo\n")
    for folder, entries in lines.items():
        (root / f"{folder}.txt").write_text("".join(entries))


# COVIDx CXR-2 as the authors pinned it (xrstudy.splits.COVIDX_PAPER_SIZES; no val.txt): the class mix of
# COVID-Net's V8B lists (train 13,794 negative + 2,158 positive, test 200 + 200).
COVIDX_V3_CLASSES = {"train": {"negative": 13_794, "positive": 2_158}, "test": {"negative": 200, "positive": 200}}


@register_writer("covidx-v3")
def write_covidx_v3(root: Path, records: list[Record]) -> None:
    """`covidx`'s files at the pinned release's size: the records (train / test) with their images, then
    label-only lines (no image: for metadata-only reads) up to its counts per split and class."""
    _check_labels("covidx-v3", records, ("positive", "negative"))
    if any(r.split not in ("train", "test") for r in records):
        raise ValueError("covidx-v3 writer: splits train and test only (the pinned release has no val.txt)")
    write_covidx(root, records)
    for split, classes in COVIDX_V3_CLASSES.items():
        lines = (root / f"{split}.txt").read_text().splitlines(keepends=True) if (root / f"{split}.txt").is_file() else []
        for cls, count in classes.items():
            have = sum(r.split == split and r.label == cls for r in records)
            if have > count:
                raise ValueError(f"covidx-v3 writer: {have} {split} {cls} records; the release has {count}")
            lines += [f"{900000 + n} {split}-{cls}-{n:05d}.png {cls} rsna\n" for n in range(count - have)]
        (root / f"{split}.txt").write_text("".join(lines))


# ---- Tuberculosis: ChinaSet_AllFiles/CXR_png/CHNCXR_NNNN_L.png + MontgomerySet/CXR_png/MCUCXR_NNNN_L.png --
TUBERCULOSIS_SUFFIX = {"normal": 0, "tuberculosis": 1}


@register_writer("tuberculosis")
def write_tuberculosis(root: Path, records: list[Record]) -> None:
    """Alternately Shenzhen and Montgomery images, with what else the sets hold beside them:
    Shenzhen's ClinicalReadings/*.txt and Montgomery's ManualMask/{left,right}Mask/ PNGs of the same
    names (which the adapter must skip). `Record.split` is ignored: the sets have no split."""
    _check_labels("tuberculosis", records, TUBERCULOSIS_SUFFIX)
    sets = (("ChinaSet_AllFiles", "CHNCXR"), ("MontgomerySet", "MCUCXR"))
    numbers = [0, 0]
    for i, record in enumerate(records):
        folder, prefix = sets[i % 2]
        numbers[i % 2] += 1
        stem = f"{prefix}_{numbers[i % 2]:04d}_{TUBERCULOSIS_SUFFIX[record.label]}"
        save_image(root / folder / "CXR_png" / f"{stem}.png", _as_uint8(record.image))
        sex = {"M": "male", "F": "female"}.get(record.sex, "male")
        if prefix == "CHNCXR":
            reading = f"{sex} {record.age}yrs\n{'normal' if record.label == 'normal' else 'PTB in the right upper field'}\n"
            (root / folder / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
            (root / folder / "ClinicalReadings" / f"{stem}.txt").write_text(reading)
        else:
            reading = f"Patient's Sex: {sex[0].upper()}\nPatient's Age: {record.age:03d}Y\n{record.label}\n"
            (root / folder / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
            (root / folder / "ClinicalReadings" / f"{stem}.txt").write_text(reading)
            mask = np.zeros(record.image.shape[:2], np.uint8)
            mask[:, : mask.shape[1] // 2] = 255
            for side in ("leftMask", "rightMask"):
                save_image(root / folder / "ManualMask" / side / f"{stem}.png", mask)


# ---- CIFAR-10 / CIFAR-100, python version: pickled dicts with bytes keys, data N x 3072 uint8 -------
def _cifar_batch(records: list[Record], names: list[str], labels_key: bytes, batch_label: str) -> dict:
    data = np.stack([_rgb(r.image, 32).transpose(2, 0, 1).reshape(-1) for r in records]) if records \
        else np.zeros((0, 3072), np.uint8)
    return {b"batch_label": batch_label.encode(), labels_key: [names.index(r.label) for r in records],
            b"data": data, b"filenames": [f"{r.label}_s_{r.patient:06d}.png".encode() for r in records]}


def _dump(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=2)  # the originals are Python 2 pickles


@register_writer("cifar10")
def write_cifar10(root: Path, records: list[Record]) -> None:
    """cifar-10-batches-py/: train (and valid) records dealt over data_batch_1..5, test in test_batch;
    batches.meta lists the classes present, sorted (the real file lists airplane..truck)."""
    _check_labels("cifar10", records)
    names = sorted({r.label for r in records})
    folder = root / "cifar-10-batches-py"
    train = [r for r in records if r.split != "test"]
    for b in range(5):
        _dump(folder / f"data_batch_{b + 1}", _cifar_batch(train[b::5], names, b"labels", f"training batch {b + 1} of 5"))
    _dump(folder / "test_batch", _cifar_batch([r for r in records if r.split == "test"], names, b"labels", "testing batch 1 of 1"))
    _dump(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in names],
                                    b"num_vis": 3072})


@register_writer("cifar100")
def write_cifar100(root: Path, records: list[Record]) -> None:
    """cifar-100-python/{train, test, meta}; every class in one coarse super-class "demo"."""
    _check_labels("cifar100", records)
    names = sorted({r.label for r in records})
    folder = root / "cifar-100-python"
    for split, subset in (("train", [r for r in records if r.split != "test"]),
                          ("test", [r for r in records if r.split == "test"])):
        batch = _cifar_batch(subset, names, b"fine_labels", f"{split}ing batch 1 of 1")
        batch[b"coarse_labels"] = [0] * len(subset)
        _dump(folder / split, batch)
    _dump(folder / "meta", {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"demo"]})


# ---- Oxford-IIIT Pets: annotations/{list,trainval,test}.txt + images/<Breed>_<N>.jpg ----------------
@register_writer("pets")
def write_pets(root: Path, records: list[Record]) -> None:
    """Labels are breed names; capitalised = cat (species 1), else dog (2), as in the originals.
    Class ids follow the case-insensitive alphabetical order, as in the originals; valid -> trainval."""
    _check_labels("pets", records)
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
        save_image(root / "images" / f"{image}.jpg", _rgb(record.image))
        line = f"{image} {breeds.index(record.label) + 1} {species[record.label]} {breed_id[record.label]}\n"
        lines["test" if record.split == "test" else "trainval"].append(line)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    header = ("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"
              "#BREED ID: 1-25:Cat 1:12:Dog\n#All images with 1st letter as captial are cat images\n"
              "#images with small first letter are dog images\n")
    (root / "annotations" / "list.txt").write_text(header + "".join(lines["trainval"] + lines["test"]))
    for split, entries in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("".join(entries))


# ---- Oxford Flowers-102: imagelabels.mat + setid.mat + jpg/image_NNNNN.jpg --------------------------
@register_writer("flowers102")
def write_flowers102(root: Path, records: list[Record]) -> None:
    """Labels are class numbers "1".."102"; `Record.split` is the official split (train -> trnid,
    valid -> valid, test -> tstid), which the `flowers102` adapter then swaps as the paper did."""
    from scipy.io import savemat

    bad = sorted({r.label for r in records if not r.label.isdigit() or not 1 <= int(r.label) <= 102})
    if bad:
        raise ValueError(f"flowers102 writer: labels {bad}; expected class numbers '1'..'102'")
    ids: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for number, record in enumerate(records, start=1):
        save_image(root / "jpg" / f"image_{number:05d}.jpg", _rgb(record.image))
        ids[{"train": "trnid", "valid": "valid", "test": "tstid"}[record.split]].append(number)
    savemat(root / "imagelabels.mat", {"labels": np.array([[int(r.label) for r in records]], np.uint8)})
    savemat(root / "setid.mat", {key: np.array([values], np.uint16) for key, values in ids.items()})


@register_writer("flowers102-fastai")
def write_flowers102_fastai(root: Path, records: list[Record]) -> None:
    """fast.ai's copy, which the authors downloaded: train.txt / valid.txt / test.txt ('jpg/image_NNNNN.jpg
    CLASS', CLASS = the .mat class number - 1) beside jpg/; labels "1".."102" as for `flowers102`."""
    bad = sorted({r.label for r in records if not r.label.isdigit() or not 1 <= int(r.label) <= 102})
    if bad:
        raise ValueError(f"flowers102-fastai writer: labels {bad}; expected class numbers '1'..'102'")
    lines: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for number, record in enumerate(records, start=1):
        save_image(root / "jpg" / f"image_{number:05d}.jpg", _rgb(record.image))
        lines[record.split].append(f"jpg/image_{number:05d}.jpg {int(record.label) - 1}\n")
    for split, entries in lines.items():
        (root / f"{split}.txt").write_text("".join(entries))


WRITERS["flowers102-official"] = write_flowers102  # the same files; only the adapters differ
