"""Writers of the X-ray layouts read by `xrstudy.data.sources.xray`: CheXpert, MIMIC-CXR-JPG, NIH ChestX-ray14,
COVIDx CXR-2 (and its pinned paper release) and Tuberculosis (Shenzhen + Montgomery)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xrstudy.data import labels
from xrstudy.data.layouts.records import Record, as_uint8, check_labels, register_writer, save_image, write_csv_gz


def _chexpert_values(record: Record) -> dict[str, float | None]:
    """The 14 CheXpert columns; `No Finding` is 1 when nothing positive or uncertain was drawn."""
    row = {
        column: record.findings.get(labels.CHEXPERT_SYNONYMS.get(column, column)) for column in labels.CHEXPERT_FINDINGS
    }
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
        number = views_in_study[(record.patient, record.study)] = (
            views_in_study.get((record.patient, record.study), 0) + 1
        )
        lateral = record.view == "LATERAL"
        side = "lateral" if lateral else "frontal"
        relative = f"{split}/patient{record.patient:05d}/study{record.study}/view{number}_{side}.jpg"
        save_image(root / relative, as_uint8(record.image))
        rows[split].append(
            {
                "Path": f"{root.name}/{relative}",
                "Sex": {"M": "Male", "F": "Female"}.get(record.sex, "Unknown"),
                "Age": record.age,
                "Frontal/Lateral": "Lateral" if lateral else "Frontal",
                "AP/PA": None if lateral else {"PA": "PA", "AP": "AP", "AP_SUPINE": "AP"}.get(record.view, "LL"),
                **_chexpert_values(record),
            }
        )
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
        save_image(path, as_uint8(record.image))
        view = {"AP_SUPINE": "AP", "OTHER": "LL", "COSTAL": "LL"}.get(record.view, record.view)
        meta_rows.append(
            {
                "dicom_id": dicom,
                "subject_id": subject,
                "study_id": study,
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                "ViewPosition": view,
                "Rows": record.image.shape[0],
                "Columns": record.image.shape[1],
            }
        )
        split_rows.append(
            {
                "dicom_id": dicom,
                "study_id": study,
                "subject_id": subject,
                "split": {"valid": "validate"}.get(record.split, record.split),
            }
        )
        if (subject, study) not in seen_studies and record.raw != "":  # one label row per study (if any)
            seen_studies.add((subject, study))
            label_rows.append({"subject_id": subject, "study_id": study, **_chexpert_values(record)})
    columns = ["subject_id", "study_id", *sorted(["No Finding", *labels.CHEXPERT_FINDINGS])]
    write_csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", pd.DataFrame(label_rows, columns=columns))
    write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", pd.DataFrame(meta_rows))
    write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", pd.DataFrame(split_rows))


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
        save_image(root / "images" / name, as_uint8(record.image))
        # NIH has no uncertain or unknown labels: -1 is written as a finding, blank as absent.
        found = [labels.NIH_NAMES.get(k, k) for k, v in sorted(record.findings.items()) if v in (1.0, -1.0)]
        rows.append(
            {
                "Image Index": name,
                "Finding Labels": "|".join(found) or "No Finding",
                "Follow-up #": number,
                "Patient ID": record.patient,
                "Patient Age": record.age,
                "Patient Gender": record.sex or "M",
                "View Position": record.view,
                "OriginalImage[Width": record.image.shape[1],
                "Height]": record.image.shape[0],
                "OriginalImagePixelSpacing[x": 0.143,
                "y]": 0.143,
            }
        )
        lists["test_list.txt" if record.split == "test" else "train_val_list.txt"].append(name)
    pd.DataFrame(rows).to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    for name, entries in lists.items():
        (root / name).write_text("".join(f"{e}\n" for e in entries))


# ---- COVIDx CXR-2: train.txt / val.txt / test.txt ('patient file class source') + train/ val/ test/ --
@register_writer("covidx")
def write_covidx(root: Path, records: list[Record]) -> None:
    """Labels positive / negative; a `valid` record goes to val.txt + val/ (newer releases)."""
    check_labels("covidx", records, ("positive", "negative"))
    folders = {"train": "train", "valid": "val", "test": "test"}
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for i, record in enumerate(records):
        folder = folders[record.split]
        filename = f"{record.patient:06d}-{record.study}-{i:05d}.png"
        save_image(root / folder / filename, as_uint8(record.image))
        lines.setdefault(folder, []).append(f"{record.patient:06d} {filename} {record.label} demo\n")
    for folder, entries in lines.items():
        (root / f"{folder}.txt").write_text("".join(entries))


# COVIDx CXR-2 as the authors pinned it (xrstudy.data.splits.COVIDX_PAPER_SIZES; no val.txt): the class mix of
# COVID-Net's V8B lists (train 13,794 negative + 2,158 positive, test 200 + 200).
COVIDX_V3_CLASSES = {"train": {"negative": 13_794, "positive": 2_158}, "test": {"negative": 200, "positive": 200}}


@register_writer("covidx-v3")
def write_covidx_v3(root: Path, records: list[Record]) -> None:
    """`covidx`'s files at the pinned release's size: the records (train / test) with their images, then
    label-only lines (no image: for metadata-only reads) up to its counts per split and class."""
    check_labels("covidx-v3", records, ("positive", "negative"))
    if any(r.split not in ("train", "test") for r in records):
        raise ValueError("covidx-v3 writer: splits train and test only (the pinned release has no val.txt)")
    write_covidx(root, records)
    for split, classes in COVIDX_V3_CLASSES.items():
        lines = (
            (root / f"{split}.txt").read_text().splitlines(keepends=True) if (root / f"{split}.txt").is_file() else []
        )
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
    check_labels("tuberculosis", records, TUBERCULOSIS_SUFFIX)
    sets = (("ChinaSet_AllFiles", "CHNCXR"), ("MontgomerySet", "MCUCXR"))
    numbers = [0, 0]
    for i, record in enumerate(records):
        folder, prefix = sets[i % 2]
        numbers[i % 2] += 1
        stem = f"{prefix}_{numbers[i % 2]:04d}_{TUBERCULOSIS_SUFFIX[record.label]}"
        save_image(root / folder / "CXR_png" / f"{stem}.png", as_uint8(record.image))
        sex = {"M": "male", "F": "female"}.get(record.sex, "male")
        if prefix == "CHNCXR":
            reading = (
                f"{sex} {record.age}yrs\n{'normal' if record.label == 'normal' else 'PTB in the right upper field'}\n"
            )
        else:
            reading = f"Patient's Sex: {sex[0].upper()}\nPatient's Age: {record.age:03d}Y\n{record.label}\n"
        (root / folder / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (root / folder / "ClinicalReadings" / f"{stem}.txt").write_text(reading)
        if prefix == "MCUCXR":
            mask = np.zeros(record.image.shape[:2], np.uint8)
            mask[:, : mask.shape[1] // 2] = 255
            for side in ("leftMask", "rightMask"):
                save_image(root / folder / "ManualMask" / side / f"{stem}.png", mask)
