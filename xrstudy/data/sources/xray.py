"""X-ray sources and targets read from their distributed files: CheXpert, MIMIC-CXR-JPG, NIH ChestX-ray14,
COVIDx CXR-2 and Tuberculosis (Shenzhen + Montgomery). PadChest and PadChest-Cl have their own module
(`xrstudy.data.sources.padchest`): one vocabulary, two entries.

Transfer-target layouts read here, each exactly as distributed (root = the extracted folder):
  covidx        train.txt, test.txt (newer releases also val.txt), lines `patient_id filename class data_source`
                with class positive / negative; images in train/, test/ (val/). Official splits; patients as given.
  tuberculosis  Shenzhen + Montgomery PNGs named CHNCXR_0001_0.png / MCUCXR_0001_0.png anywhere under root
                (ChinaSet_AllFiles/CXR_png/, MontgomerySet/CXR_png/); suffix _0 normal, _1 tuberculosis; masks
                (folders named *mask*) and other files are skipped with a warning that counts them. No official
                split: split_mode paper is the authors' 85/15 per folder (xrstudy.data.splits), the other modes split
                by patient. Every image is its own patient.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from xrstudy.data import labels
from xrstudy.data.sources.registry import SourceError, register
from xrstudy.data.sources.tables import (
    canonical,
    check_unique,
    check_values,
    concat,
    fallback,
    find_file,
    line_of,
    lines_of,
    optional_file,
    read_table,
    read_text,
    regex_groups,
    require_images,
    split_names,
    text_lines,
    unique_lines,
    with_notes,
)

# ---- CheXpert v1.0 / v1.0-small ---------------------------------------------------------------
CHEXPERT_LAYOUT = "train.csv and valid.csv (CheXpert v1.0 or v1.0-small) beside train/ and valid/ image folders"


# train.csv of CheXpert v1.0 (the torchxrayvision wheel's copy): Frontal rows by AP/PA (LL, RL -> OTHER), Lateral.
@register(
    "chexpert",
    multilabel=True,
    modality="xray",
    layout=CHEXPERT_LAYOUT,
    cache_reads="always",
    published_train_by_view=(("PA", 29_420), ("AP", 161_590), ("LATERAL", 32_387), ("OTHER", 17)),
)
def read_chexpert(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    required = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", labels.NO_FINDING, *labels.CHEXPERT_FINDINGS]
    frames, notes = [], {}
    for split in ("train", "valid"):
        path = optional_file(root, [f"{split}.csv"], f"CheXpert {split} label file")
        if path is None and split == "valid":  # some copies ship train.csv alone: say so, and record it
            notes["valid_split"] = fallback(
                name,
                f"{root}/valid.csv is absent: the valid split is carved from train by patient (xrstudy.data.splits)",
            )
            continue
        path = path or find_file(root, [f"{split}.csv"], f"CheXpert {split} label file")
        frame = read_table(path, required)
        check_values(frame, [labels.NO_FINDING, *labels.CHEXPERT_FINDINGS], path)
        parts = regex_groups(frame["Path"], r"(?P<patient>patient\d+)/(?P<study>study\d+)/")
        if parts["patient"].isna().any():
            index = parts["patient"].isna().idxmax()
            raise SourceError(
                f"{path}, line {line_of(path, index)}, column 'Path': {frame['Path'][index]!r}; "
                f"expected '<folder>/{split}/patientNNNNN/studyN/viewN_<frontal|lateral>.jpg'"
            )
        frames.append((split, path, frame, parts))
    require_images(root, "train", name, metadata_only)

    tables = []
    for split, path, frame, parts in frames:
        check_unique(frame["Path"], path, "Path")
        # `Path` starts with the distributed folder name; resolve the rest against --root so a
        # renamed copy (e.g. /data/chexpert) works as well.
        relative = pd.Series(
            pc.replace_substring_regex(pa.array(frame["Path"]), r"^[^/]*/", "", max_replacements=1),
            index=frame.index,
            dtype="str",
        )
        frontal = frame["Frontal/Lateral"].eq("Frontal")
        view = np.select([~frontal, frame["AP/PA"].eq("PA"), frame["AP/PA"].eq("AP")], ["LATERAL", "PA", "AP"], "OTHER")
        findings = frame[[labels.NO_FINDING, *labels.CHEXPERT_FINDINGS]].rename(columns=labels.CHEXPERT_SYNONYMS)
        tables.append(
            canonical(
                name,
                image_id=frame["Path"],
                path=str(root) + os.sep + relative,
                patient_id=parts["patient"],
                study_id=parts["patient"] + "/" + parts["study"],
                view=view,
                sex=frame["Sex"].map({"Male": "M", "Female": "F"}),
                age=frame["Age"],
                split=split,
                findings=findings,
            )
        )
    return with_notes(concat(tables), notes)


# ---- MIMIC-CXR-JPG 2.0 ---------------------------------------------------------------------------
MIMIC_LAYOUT = "mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz and files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg"


# Not in any wheel: MIMIC-CXR-JPG 2.0.0 metadata ViewPosition counts over all splits (PA 96,161, AP 147,173,
# LATERAL + LL 117,985) times the official train share 368,960 / 377,110 images; estimates.
@register(
    "mimic",
    multilabel=True,
    modality="xray",
    layout=MIMIC_LAYOUT,
    cache_reads="always",
    published_train_by_view=(("PA", 94_083), ("AP", 143_992), ("LATERAL", 115_435)),
)
def read_mimic(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    label_path = find_file(root, ["mimic-cxr-2.0.0-chexpert.csv"], "MIMIC-CXR-JPG CheXpert label file")
    meta_path = find_file(root, ["mimic-cxr-2.0.0-metadata.csv"], "MIMIC-CXR-JPG metadata file")
    split_path = find_file(root, ["mimic-cxr-2.0.0-split.csv"], "MIMIC-CXR-JPG split file")
    finding_columns = [labels.NO_FINDING, *labels.CHEXPERT_FINDINGS]
    study_labels = read_table(label_path, ["subject_id", "study_id", *finding_columns])
    check_values(study_labels, finding_columns, label_path)
    check_unique(study_labels["study_id"], label_path, "study_id")
    meta = read_table(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"], dtype={"dicom_id": str})
    check_unique(meta["dicom_id"], meta_path, "dicom_id")
    split = read_table(split_path, ["dicom_id", "split"], dtype={"dicom_id": str})
    check_unique(split["dicom_id"], split_path, "dicom_id")
    require_images(root, "files", name, metadata_only)

    # One row per image; studies without a label row keep unknown (NaN) findings.
    images = meta.merge(split, on="dicom_id", how="left", validate="one_to_one")
    images = images.merge(
        study_labels, on=["subject_id", "study_id"], how="left", validate="many_to_one", indicator="label_row"
    )
    subject, study = images["subject_id"].astype(str), images["study_id"].astype(str)
    relative = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + images["dicom_id"] + ".jpg"
    position = images["ViewPosition"]
    view = np.select(
        [position.eq("PA"), position.eq("AP"), position.isin(["LATERAL", "LL"])], ["PA", "AP", "LATERAL"], "OTHER"
    )
    findings = images[finding_columns].rename(columns=labels.CHEXPERT_SYNONYMS)
    # Which images have a row in the label file (the authors read only those: label_mode paper).
    raw_labels = np.where((images["label_row"] == "both").to_numpy(), labels.MIMIC_LABEL_FILE, "")
    return canonical(
        name,
        image_id=images["dicom_id"],
        path=str(root) + os.sep + relative,
        patient_id=subject,
        study_id=study,
        view=view,
        split=split_names(images["split"]),
        raw_labels=raw_labels,
        findings=findings,
    )


# ---- NIH ChestX-ray14 ------------------------------------------------------------------------------
NIH_LAYOUT = (
    "Data_Entry_2017.csv or Data_Entry_2017_v2020.csv, images*/ folders, optional train_val_list.txt / test_list.txt"
)


def _nih_image_index(root: Path) -> dict[str, str]:
    """Image file name -> path over every images*/ folder (the Kaggle copy nests images_NNN/images/)."""
    index = {}
    for folder in sorted(root.glob("images*")):
        for directory in (folder, folder / "images"):
            if directory.is_dir():
                with os.scandir(directory) as entries:
                    index.update((e.name, e.path) for e in entries if e.is_file())
    return index


NIH_LISTS = {"train_val_list.txt": "train", "test_list.txt": "test"}


def _nih_official_split(name: str, root: Path, entry_path: Path, images: pd.Series) -> tuple[pd.Series, dict]:
    """The official split from train_val_list.txt / test_list.txt, and the notes. Both lists absent:
    no official split (warned, recorded; xrstudy.data.splits splits NIH by patient). Anything partial -- one
    list alone, an image in neither list or in both -- is an error: a quiet re-split by patient would
    move unlisted images into the test set and put one patient in train and test."""
    lists = {file: optional_file(root, [file], f"NIH official split list {file}") for file in NIH_LISTS}
    split = pd.Series("", index=images.index)
    if not any(lists.values()):
        message = f"{' and '.join(NIH_LISTS)} are absent under {root}: no official split, NIH is split by patient"
        return split, {"official_split": fallback(name, message)}
    absent = [file for file, path in lists.items() if path is None]
    if absent:
        raise SourceError(
            f"{root}: {absent[0]} is absent but {[f for f in lists if f not in absent][0]} is "
            f"there; expected both official NIH split lists (or neither, to split by patient)"
        )
    listed = {file: set(read_text(path, "image file names").split()) for file, path in lists.items()}
    in_both = sorted(set.intersection(*listed.values()) & set(images))
    if in_both:
        raise SourceError(
            f"{' and '.join(str(p) for p in lists.values())}: {len(in_both)} image(s) are in both "
            f"lists, e.g. {in_both[:3]}; expected each image of {entry_path.name} in exactly one"
        )
    for file, split_name in NIH_LISTS.items():
        split[images.isin(listed[file])] = split_name
    unlisted = images[split == ""]
    if len(unlisted):
        raise SourceError(
            f"{' and '.join(str(p) for p in lists.values())}: {len(unlisted)} of the {len(images)} "
            f"images of {entry_path.name} are in neither list, e.g. {unlisted.iloc[:3].tolist()} "
            f"(line(s) {lines_of(entry_path, unlisted.index[:3])}); expected every image in exactly "
            f"one of them (a truncated list?). Restore the lists, or remove both to split NIH by patient"
        )
    return split, {}


# train_val_list.txt holds 86,524 images (not in the wheel); split by view with the whole file's shares
# (Data_Entry_2017_v2020: PA 67,310, AP 44,810 of 112,120), so the per-view numbers are estimates.
@register(
    "nih",
    multilabel=True,
    modality="xray",
    layout=NIH_LAYOUT,
    cache_reads="metadata_only",
    published_train_by_view=(("PA", 51_944), ("AP", 34_580)),
)
def read_nih(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    path = find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "NIH Data_Entry file")
    frame = read_table(
        path,
        ["Image Index", "Finding Labels", "Patient ID", "View Position"],
        optional=["Follow-up #", "Patient Age", "Patient Gender"],
    )
    check_unique(frame["Image Index"], path, "Image Index")
    known = set(labels.NIH_FINDINGS) | {"No Finding"}
    # The label strings repeat (~800 distinct in 112k rows): check and split each distinct one once.
    codes, distinct = pd.factorize(frame["Finding Labels"].fillna(""))
    terms = [set(text.split("|")) for text in distinct]
    bad = [i for i, listed in enumerate(terms) if not listed <= known]
    if bad:
        first = frame.index[np.flatnonzero(codes == bad[0])[0]]
        term = next(t for t in distinct[bad[0]].split("|") if t not in known)
        raise SourceError(
            f"{path}, line {line_of(path, first)}, column 'Finding Labels': unknown term "
            f"{term!r}; expected '|'-separated terms from {sorted(known)}"
        )
    # NIH has no uncertain or unknown labels: a finding not listed is absent (0).
    present = np.array([[finding in listed for finding in labels.NIH_FINDINGS] for listed in terms], np.float32)
    findings = pd.DataFrame(
        present.reshape(-1, len(labels.NIH_FINDINGS))[codes],
        columns=[labels.NIH_SYNONYMS.get(f, f) for f in labels.NIH_FINDINGS],
    )

    split, notes = _nih_official_split(name, root, path, frame["Image Index"])
    if metadata_only:
        paths = str(root / "images") + os.sep + frame["Image Index"]
    else:
        index = _nih_image_index(root)
        if not index:
            raise SourceError(
                f"{name}: no images under {root}/images*/; to work from {path.name} alone pass "
                f"metadata_only=True (CLI: --metadata-only)"
            )
        fallback = str(root / "images") + os.sep  # absent files: quarantined and reported by the cache
        paths = [index.get(image, fallback + image) for image in frame["Image Index"]]
    age = np.nan
    if "Patient Age" in frame:  # integers in the v2020 file; strings like "058Y" in some older copies
        age = frame["Patient Age"]
        if not pd.api.types.is_numeric_dtype(age):  # "058Y" -> "058"; anything else is counted as unreadable
            age = age.str.replace(r"^\s*(\d+)\s*[Yy]?\s*$", r"\1", regex=True)
    follow = frame["Follow-up #"].astype(str) if "Follow-up #" in frame else frame["Image Index"]
    patient = frame["Patient ID"].astype(str)
    return canonical(
        name,
        image_id=frame["Image Index"],
        path=paths,
        patient_id=patient,
        study_id=patient + "/" + follow,
        view=frame["View Position"].where(frame["View Position"].isin(["PA", "AP"]), "OTHER"),
        sex=frame.get("Patient Gender", ""),
        age=age,
        split=split,
        raw_labels=frame["Finding Labels"],
        findings=findings,
    ).pipe(with_notes, notes)


# ---- COVIDx CXR-2 ----------------------------------------------------------------------------------
COVIDX_LAYOUT = (
    "train.txt and test.txt (and val.txt) with lines 'patient_id filename class data_source' "
    "(class positive or negative) beside train/ and test/ (and val/) image folders"
)
COVIDX_LINE = re.compile(r"^(?P<patient>\S+)\s+(?P<file>\S.*?)\s+(?P<cls>\S+)\s+(?P<origin>\S+)$")
COVIDX_CLASSES = ("negative", "positive")


@register(
    "covidx",
    multilabel=False,
    modality="xray",
    layout=COVIDX_LAYOUT,
    cache_reads="always",
    published_classes=2,
    published_train_size=15_952,
    shares_images_with=("nih",),
    paper_fewshot="kshot_finder",
    paper_keeps_colour=True,  # their datasets/covidx_cxr2.py:21: default_loader
)
def read_covidx(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """COVIDx CXR-2: binary COVID-19 positive vs negative, official train / (val /) test files."""
    files = {
        "train": find_file(root, ["train.txt"], "COVIDx train list"),
        "test": find_file(root, ["test.txt"], "COVIDx test list"),
    }
    if (val := optional_file(root, ["val.txt"], "COVIDx val list")) is not None:  # older releases have none
        files["valid"] = val
    folders = {"train": "train", "valid": "val", "test": "test"}
    expected = "'patient_id filename class data_source', class one of " + "/".join(COVIDX_CLASSES)
    rows = []  # (split, patient, filename, class, class as written, path, line)
    for split, path in files.items():
        for line, text in text_lines(path, expected):
            match = COVIDX_LINE.match(text)
            if match is None:
                raise SourceError(
                    f"{path}, line {line}: {text!r} has {len(text.split())} field(s); "
                    f"expected 4 space-separated fields {expected}"
                )
            cls = match["cls"].lower()
            if cls not in COVIDX_CLASSES:
                raise SourceError(
                    f"{path}, line {line}, field 3 (class): {match['cls']!r}; expected one of {list(COVIDX_CLASSES)}"
                )
            rows.append((split, match["patient"], match["file"], cls, match["cls"], path, line))
    for split in files:
        require_images(root, folders[split], name, metadata_only)
    split, patient, filename, cls, written, path, line = zip(*rows)
    image_id = [f"{folders[s]}/{f}" for s, f in zip(split, filename)]
    unique_lines(image_id, list(zip(path, line)), "image")
    return canonical(
        name,
        image_id=image_id,
        path=[str(root / i) for i in image_id],
        patient_id=list(patient),
        study_id=image_id,
        view="OTHER",
        split=list(split),
        raw_labels=list(written),
        label=list(cls),
    )


# ---- Tuberculosis: Shenzhen + Montgomery ------------------------------------------------------------
TUBERCULOSIS_PATTERN = re.compile(r"^(?P<set>CHNCXR|MCUCXR)_(?P<number>\d+)_(?P<label>[01])\.png$", re.IGNORECASE)
TUBERCULOSIS_CLASSES = {"0": "normal", "1": "tuberculosis"}
TUBERCULOSIS_LAYOUT = (
    "Shenzhen (CHNCXR_NNNN_L.png) and/or Montgomery (MCUCXR_NNNN_L.png) PNGs anywhere under "
    "the root, e.g. ChinaSet_AllFiles/CXR_png/ and MontgomerySet/CXR_png/; L = 0 normal, 1 TB"
)


@register(
    "tuberculosis",
    multilabel=False,
    modality="xray",
    layout=TUBERCULOSIS_LAYOUT,
    published_classes=2,
    published_train_size=679,
    paper_fewshot="kshot_finder",
    paper_keeps_colour=True,  # their datasets/tuberculosis.py:27: default_loader
)
def read_tuberculosis(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """Shenzhen + Montgomery TB sets; the label is the file-name suffix. The file names are the labels,
    so `metadata_only` reads the same files. Masks (any folder named *mask*, e.g. Montgomery's
    ManualMask/leftMask/ holding PNGs of the same names) and files named otherwise (clinical readings,
    read-me files) are skipped; `warnings.warn` reports how many."""
    found: dict[str, str] = {}
    skipped: list[str] = []
    masks = 0
    for directory, subdirs, filenames in os.walk(root):
        subdirs.sort()
        relative = Path(directory).relative_to(root)
        in_mask_folder = any("mask" in part.lower() for part in relative.parts)
        for filename in sorted(filenames):
            if TUBERCULOSIS_PATTERN.match(filename) is None:
                skipped.append(str(relative / filename))
            elif in_mask_folder:
                masks += 1
            elif filename in found:
                raise SourceError(
                    f"{name}: {filename} occurs twice, {found[filename]} and "
                    f"{os.path.join(directory, filename)}; point the root at one copy of each set"
                )
            else:
                found[filename] = os.path.join(directory, filename)
    if not found:
        raise SourceError(
            f"{name}: no image named like CHNCXR_0001_0.png or MCUCXR_0001_0.png under {root} "
            f"({len(skipped)} other files, {masks} masks); expected {TUBERCULOSIS_LAYOUT}"
        )
    if skipped or masks:
        warnings.warn(
            f"{name}: read {len(found)} images under {root}; skipped {masks} segmentation mask(s) and "
            f"{len(skipped)} file(s) not named like CHNCXR_0001_0.png / MCUCXR_0001_0.png "
            f"(e.g. {skipped[:3]})",
            stacklevel=2,
        )
    filenames = sorted(found)
    matches = [TUBERCULOSIS_PATTERN.match(f) for f in filenames]
    stems = [f"{m['set'].upper()}_{m['number']}" for m in matches]
    return canonical(
        name,
        image_id=filenames,
        path=[found[f] for f in filenames],
        patient_id=stems,
        study_id=stems,
        view="PA",
        split="",
        raw_labels=[m["label"] for m in matches],
        label=[TUBERCULOSIS_CLASSES[m["label"]] for m in matches],
    )
