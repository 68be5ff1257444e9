"""Write images + labels in the on-disk layouts the real datasets are distributed in.

The demo and the tests use these writers to build miniature copies of CheXpert, NIH, PadChest,
MIMIC-CXR-JPG, ... so that `xrstudy.sources` reads them through exactly the code that reads the
real datasets. A `Record` is one image with its patient, study, view and labels in canonical
terms; each writer translates it into its source's own file names, columns and vocabulary.

    layouts.write_layout("chexpert", root, records)
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
    view: str  # canonical: PA, AP, AP_SUPINE, LATERAL, OTHER
    sex: str  # "M", "F" or ""
    age: int
    findings: dict[str, float | None]
    split: str  # train, valid, test
    image: np.ndarray = field(repr=False)
    label: str = ""  # single-label targets: the class name


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
        view = {"AP_SUPINE": "AP", "OTHER": "LL"}.get(record.view, record.view)
        meta_rows.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                          "ViewPosition": view, "Rows": record.image.shape[0], "Columns": record.image.shape[1]})  # fmt: skip
        split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                           "split": {"valid": "validate"}.get(record.split, record.split)})
        if (subject, study) not in seen_studies:  # one label row per study
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
PADCHEST_PROJECTIONS = {"PA": "PA", "AP": "AP", "AP_SUPINE": "AP_horizontal", "LATERAL": "L", "OTHER": "COSTAL"}


@register_writer("padchest")
def write_padchest(root: Path, records: list[Record]) -> None:
    term_of = {canonical: terms[0] for canonical, terms in labels.PADCHEST_TERMS_OF.items()}
    rows = []
    for i, record in enumerate(records):
        image_id = f"{record.patient:06d}{record.study:02d}{i:06d}_demo.png"
        image_dir = i % 3
        save_image(root / str(image_dir) / image_id, record.image)
        terms = [term_of[k] for k, v in sorted(record.findings.items()) if v in (1.0, -1.0)]
        if record.label and record.label != "normal":
            terms = [term_of.get(record.label, record.label.lower())]  # PadChest-Cl: exactly one term
        rows.append({
            "ImageID": image_id, "ImageDir": image_dir, "StudyDate_DICOM": 20150101 + record.study,
            "StudyID": f"{record.patient:06d}-{record.study}", "PatientID": f"{record.patient:06d}",
            "PatientBirth": 2015 - record.age, "PatientSex_DICOM": record.sex or "O",
            "Projection": PADCHEST_PROJECTIONS[record.view], "MethodLabel": "Physician",
            "Labels": repr(terms or ["normal"]),
        })  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", index=False)


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

