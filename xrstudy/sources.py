"""One adapter per dataset, all with the same interface: `read_source(name, root) -> canonical table`.

Each adapter reads the source's own files exactly as distributed (label files plain or gzipped)
and returns the canonical table of `xrstudy.labels` (META_COLUMNS + one float column per finding
with 1 / 0 / -1 / NaN, or a `label` column for single-label targets). Uncertain labels are kept
as -1 here; `labels.apply_policy` resolves them.

`metadata_only=True` reads the label files alone (the images may be absent), so the real label
files can be counted, merged and split at full size. Without it, a missing image folder is an
error; a missing single image is left to the image cache, which quarantines and reports it.

Bad input raises `SourceError` naming the file, the row (line number in the file, header = 1)
and the column, with what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from xrstudy import labels


class SourceError(ValueError):
    """A source's files are not what its adapter expects."""


Reader = Callable[[str, Path, bool], pd.DataFrame]  # (registry name, root, metadata_only) -> table


@dataclass(frozen=True)
class Source:
    name: str
    read: Reader
    multilabel: bool  # multi-label findings (X-ray pre-training sources) or one `label` per image
    modality: str  # "xray" or "natural": images are grayscale or colour
    layout: str  # what `root` must hold, for error messages and the README


SOURCES: dict[str, Source] = {}


def register(name: str, *, multilabel: bool, modality: str, layout: str) -> Callable[[Reader], Reader]:
    def add(read: Reader) -> Reader:
        SOURCES[name] = Source(name, read, multilabel, modality, layout)
        return read

    return add


def source_of(name: str) -> Source:
    """The adapter of `name`; a name outside the registry is read as an ImageFolder tree."""
    if name in SOURCES:
        return SOURCES[name]
    folder = SOURCES["imagefolder"]
    return Source(name, folder.read, folder.multilabel, folder.modality, folder.layout)


def read_source(name: str, root: str | Path, metadata_only: bool = False) -> pd.DataFrame:
    """The canonical table of source `name` stored under `root`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"{name}: root {root} is not a directory; expected {source_of(name).layout}")
    return source_of(name).read(name, root, metadata_only)


# ---- shared helpers ------------------------------------------------------------------------
def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` (each also as .gz) under root; a clear error when none is there."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise SourceError(f"{root}: no {what} found; expected one of {[str(n) for n in names]} (plain or .gz)")


def read_table(path: Path, required: Iterable[str], *, optional: Iterable[str] = (),
               dtype: dict | None = None) -> pd.DataFrame:
    """Read a label file (csv or csv.gz), checking it has rows and the columns we need."""
    required, optional = list(required), list(optional)
    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise SourceError(f"{path}: the file is empty; expected a header with columns {required}") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise SourceError(f"{path}: cannot read as CSV ({err})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; expected columns {required}, found {list(header)}")
    wanted = required + [c for c in optional if c in header]
    frame = pd.read_csv(path, usecols=wanted, dtype=dtype, low_memory=False)
    if frame.empty:
        raise SourceError(f"{path}: no rows below the header")
    return frame


def line_of(index: int) -> int:
    """Line number in the file of a row read by pandas (the header is line 1)."""
    return int(index) + 2


def check_unique(ids: pd.Series, path: Path, column: str) -> None:
    duplicated = ids.duplicated(keep=False)
    if duplicated.any():
        first = ids[duplicated].iloc[0]
        rows = [line_of(i) for i in ids.index[ids == first][:5]]
        raise SourceError(f"{path}: duplicate {column} {first!r} on lines {rows} "
                          f"({int(ids.duplicated().sum())} duplicates in all); each image must appear once")


def check_values(frame: pd.DataFrame, columns: Sequence[str], path: Path, allowed=(1.0, 0.0, -1.0)) -> None:
    """Label columns hold only the allowed numbers or blank."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = (values.isna() & frame[column].notna()) | ~(values.isna() | values.isin(allowed))
        if bad.any():
            index = bad.idxmax()
            raise SourceError(f"{path}, line {line_of(index)}, column {column!r}: value {frame[column][index]!r}; "
                              f"expected one of {list(allowed)} or blank")


def require_images(root: Path, folder: str, name: str, metadata_only: bool) -> None:
    if not metadata_only and not (root / folder).is_dir():
        raise SourceError(f"{name}: image folder {root / folder} does not exist; to work from the label files "
                          f"alone pass metadata_only=True (CLI: --metadata-only)")


def canonical(source: str, *, image_id, path, patient_id, study_id, view, sex="", age=np.nan, split="",
              raw_labels="", findings: pd.DataFrame | None = None, label=None) -> pd.DataFrame:
    """Assemble a canonical table (META_COLUMNS, then findings or `label`)."""
    image_id = pd.Series(image_id).astype(str).reset_index(drop=True)
    n = len(image_id)

    def column(values, dtype=str):
        if np.isscalar(values) or values is None:
            return np.full(n, values, dtype=object if dtype is str else dtype)
        values = pd.Series(values).reset_index(drop=True)
        return values.fillna("").astype(str).to_numpy() if dtype is str else values.to_numpy(dtype=dtype)

    table = pd.DataFrame({
        "image_id": image_id.to_numpy(), "path": column(path), "source": source,
        "patient_id": f"{source}:" + pd.Series(column(patient_id)), "study_id": column(study_id),
        "view": column(view), "sex": column(sex), "age": column(age, np.float32), "split": column(split),
        "raw_labels": column(raw_labels),
    })  # fmt: skip
    if findings is not None:
        values = findings.to_numpy(dtype=np.float32, na_value=np.nan)
        table = pd.concat([table, pd.DataFrame(values, columns=list(findings.columns))], axis=1)
    if label is not None:
        table["label"] = column(label)
    return table


def _split_names(series: pd.Series) -> pd.Series:
    return series.map({"train": "train", "valid": "valid", "validate": "valid", "val": "valid", "test": "test"})


# ---- CheXpert v1.0 / v1.0-small ---------------------------------------------------------------
CHEXPERT_LAYOUT = "train.csv and valid.csv (CheXpert v1.0 or v1.0-small) beside train/ and valid/ image folders"


@register("chexpert", multilabel=True, modality="xray", layout=CHEXPERT_LAYOUT)
def read_chexpert(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    required = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", labels.NO_FINDING, *labels.CHEXPERT_FINDINGS]
    frames = []
    for split in ("train", "valid"):
        try:
            path = find_file(root, [f"{split}.csv"], f"CheXpert {split} label file")
        except SourceError:
            if split == "valid":  # some copies ship train.csv alone
                continue
            raise
        frame = read_table(path, required)
        check_values(frame, [labels.NO_FINDING, *labels.CHEXPERT_FINDINGS], path)
        parts = frame["Path"].str.extract(r"(?P<patient>patient\d+)/(?P<study>study\d+)/")
        if parts["patient"].isna().any():
            index = parts["patient"].isna().idxmax()
            raise SourceError(f"{path}, line {line_of(index)}, column 'Path': {frame['Path'][index]!r}; "
                              f"expected '<folder>/{split}/patientNNNNN/studyN/viewN_<frontal|lateral>.jpg'")
        frames.append((split, path, frame, parts))
    require_images(root, "train", name, metadata_only)

    tables = []
    for split, path, frame, parts in frames:
        check_unique(frame["Path"], path, "Path")
        # `Path` starts with the distributed folder name; resolve the rest against --root so a
        # renamed copy (e.g. /data/chexpert) works as well.
        relative = frame["Path"].str.split("/", n=1).str[1]
        frontal = frame["Frontal/Lateral"].eq("Frontal")
        view = np.select([~frontal, frame["AP/PA"].eq("PA"), frame["AP/PA"].eq("AP")],
                         ["LATERAL", "PA", "AP"], "OTHER")
        findings = frame[[labels.NO_FINDING, *labels.CHEXPERT_FINDINGS]].rename(columns=labels.CHEXPERT_SYNONYMS)
        tables.append(canonical(
            name, image_id=frame["Path"], path=str(root) + os.sep + relative, patient_id=parts["patient"],
            study_id=parts["patient"] + "/" + parts["study"], view=view,
            sex=frame["Sex"].map({"Male": "M", "Female": "F"}), age=pd.to_numeric(frame["Age"], errors="coerce"),
            split=split, findings=findings))  # fmt: skip
    return pd.concat(tables, ignore_index=True)


# ---- MIMIC-CXR-JPG 2.0 ---------------------------------------------------------------------------
MIMIC_LAYOUT = "mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz and files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg"


@register("mimic", multilabel=True, modality="xray", layout=MIMIC_LAYOUT)
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
    images = images.merge(study_labels, on=["subject_id", "study_id"], how="left", validate="many_to_one")
    subject, study = images["subject_id"].astype(str), images["study_id"].astype(str)
    relative = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + images["dicom_id"] + ".jpg"
    position = images["ViewPosition"]
    view = np.select([position.eq("PA"), position.eq("AP"), position.isin(["LATERAL", "LL"])],
                     ["PA", "AP", "LATERAL"], "OTHER")
    findings = images[finding_columns].rename(columns=labels.CHEXPERT_SYNONYMS)
    return canonical(name, image_id=images["dicom_id"], path=str(root) + os.sep + relative, patient_id=subject,
                     study_id=study, view=view, split=_split_names(images["split"]), findings=findings)


# ---- NIH ChestX-ray14 ------------------------------------------------------------------------------
NIH_LAYOUT = "Data_Entry_2017.csv or Data_Entry_2017_v2020.csv, images*/ folders, optional train_val_list.txt / test_list.txt"


def _nih_image_index(root: Path) -> dict[str, str]:
    """Image file name -> path over every images*/ folder (the Kaggle copy nests images_NNN/images/)."""
    index = {}
    for folder in sorted(root.glob("images*")):
        for directory in (folder, folder / "images"):
            if directory.is_dir():
                with os.scandir(directory) as entries:
                    index.update((e.name, e.path) for e in entries if e.is_file())
    return index


@register("nih", multilabel=True, modality="xray", layout=NIH_LAYOUT)
def read_nih(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    path = find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "NIH Data_Entry file")
    frame = read_table(path, ["Image Index", "Finding Labels", "Patient ID", "View Position"],
                       optional=["Follow-up #", "Patient Age", "Patient Gender"])
    check_unique(frame["Image Index"], path, "Image Index")
    terms = frame["Finding Labels"].fillna("").str.split("|")
    known = set(labels.NIH_FINDINGS) | {"No Finding"}
    exploded = terms.explode()
    unknown = exploded[~exploded.isin(known)]
    if len(unknown):
        raise SourceError(f"{path}, line {line_of(unknown.index[0])}, column 'Finding Labels': unknown term "
                          f"{unknown.iloc[0]!r}; expected '|'-separated terms from {sorted(known)}")
    # NIH has no uncertain or unknown labels: a finding not listed is absent (0).
    wrapped = "|" + frame["Finding Labels"] + "|"
    findings = pd.DataFrame({labels.NIH_SYNONYMS.get(f, f): wrapped.str.contains(f"|{f}|", regex=False).astype(np.float32)
                             for f in labels.NIH_FINDINGS})  # fmt: skip

    split = pd.Series("", index=frame.index)
    for list_name, split_name in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        if (root / list_name).is_file():
            listed = set((root / list_name).read_text().split())
            split[frame["Image Index"].isin(listed)] = split_name
    if metadata_only:
        paths = str(root / "images") + os.sep + frame["Image Index"]
    else:
        index = _nih_image_index(root)
        if not index:
            raise SourceError(f"{name}: no images under {root}/images*/; to work from {path.name} alone pass "
                              f"metadata_only=True (CLI: --metadata-only)")
        fallback = str(root / "images") + os.sep  # absent files: quarantined and reported by the cache
        paths = [index.get(image, fallback + image) for image in frame["Image Index"]]
    age = frame["Patient Age"].astype(str).str.extract(r"(\d+)")[0] if "Patient Age" in frame else np.nan
    follow = frame["Follow-up #"].astype(str) if "Follow-up #" in frame else frame["Image Index"]
    patient = frame["Patient ID"].astype(str)
    return canonical(
        name, image_id=frame["Image Index"], path=paths, patient_id=patient, study_id=patient + "/" + follow,
        view=frame["View Position"].where(frame["View Position"].isin(["PA", "AP"]), "OTHER"),
        sex=frame.get("Patient Gender", ""), age=pd.to_numeric(age, errors="coerce"), split=split,
        raw_labels=frame["Finding Labels"], findings=findings)  # fmt: skip


# ---- PadChest -------------------------------------------------------------------------------------
PADCHEST_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_LAYOUT = f"{PADCHEST_FILE}(.gz) and the numbered ImageDir folders of 16-bit PNGs"
PADCHEST_VIEWS = {"PA": "PA", "L": "LATERAL", "AP": "AP", "AP_horizontal": "AP_SUPINE", "COSTAL": "OTHER"}


@dataclass(frozen=True)
class PadchestFrame:
    frame: pd.DataFrame
    terms: pd.Series  # one stripped term per row of `frame` it belongs to (exploded; index = frame index)
    path: Path


def _read_padchest_terms(root: Path) -> PadchestFrame:
    path = find_file(root, [PADCHEST_FILE], "PadChest label file")
    frame = read_table(path, ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"],
                       optional=["StudyID", "PatientBirth", "PatientSex_DICOM", "StudyDate_DICOM"],
                       dtype={"ImageID": str, "PatientID": str, "StudyID": str})
    check_unique(frame["ImageID"], path, "ImageID")
    listed = frame["Labels"].dropna()
    malformed = ~listed.str.strip().str.match(r"^\[.*\]$")
    if malformed.any():
        index = malformed.idxmax()
        raise SourceError(f"{path}, line {line_of(index)}, column 'Labels': {listed[index]!r}; "
                          f"expected a Python-list string such as ['pleural effusion', 'cardiomegaly']")
    terms = listed.str.findall(r"'([^']*)'").explode().dropna().str.strip()
    terms = terms[terms != ""]
    unknown = terms[~terms.isin(labels.padchest_vocabulary())]
    if len(unknown):
        raise SourceError(f"{path}, line {line_of(unknown.index[0])}, column 'Labels': unknown PadChest term "
                          f"{unknown.iloc[0]!r}; known terms are listed in xrstudy/padchest_terms.txt "
                          f"(add a mapping in xrstudy.labels.PADCHEST_TERMS_OF if it is a synonym)")
    return PadchestFrame(frame, terms, path)


def _padchest_meta(name: str, root: Path, pc: PadchestFrame, metadata_only: bool) -> dict:
    require_images(root, str(pc.frame["ImageDir"].iloc[0]), name, metadata_only)
    frame = pc.frame
    image_dir = pd.to_numeric(frame["ImageDir"], errors="coerce").astype("Int64").astype(str)
    age = np.nan
    if "StudyDate_DICOM" in frame and "PatientBirth" in frame:
        age = pd.to_numeric(frame["StudyDate_DICOM"], errors="coerce") // 10000 - pd.to_numeric(frame["PatientBirth"], errors="coerce")
    return dict(
        image_id=frame["ImageID"], path=str(root) + os.sep + image_dir + os.sep + frame["ImageID"],
        patient_id=frame["PatientID"], study_id=frame.get("StudyID", frame["ImageID"]),
        view=frame["Projection"].map(PADCHEST_VIEWS).fillna("OTHER"),
        sex=frame.get("PatientSex_DICOM", pd.Series("", index=frame.index)).where(lambda s: s.isin(["M", "F"]), ""),
        age=age, raw_labels=frame["Labels"],
    )  # fmt: skip


@register("padchest", multilabel=True, modality="xray", layout=PADCHEST_LAYOUT)
def read_padchest(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    pc = _read_padchest_terms(root)
    frame, terms = pc.frame, pc.terms
    findings_terms = terms[~terms.isin(labels.PADCHEST_NOT_FINDINGS)].map(labels.padchest_finding)
    columns = sorted(set(findings_terms))
    # Absent = 0 (as in NIH); a row without labels or marked "exclude" is unknown throughout.
    values = np.zeros((len(frame), len(columns)), np.float32)
    position = pd.Series(np.arange(len(frame)), index=frame.index)
    code = pd.Categorical(findings_terms, categories=columns).codes
    values[position[findings_terms.index].to_numpy(), code] = 1.0
    unknown_rows = frame["Labels"].isna() | frame.index.isin(terms.index[terms == labels.PADCHEST_EXCLUDE])
    values[unknown_rows.to_numpy()] = np.nan
    return canonical(name, split="", findings=pd.DataFrame(values, columns=columns),
                     **_padchest_meta(name, root, pc, metadata_only))


@register("padchest-cl", multilabel=False, modality="xray", layout=PADCHEST_LAYOUT)
def read_padchest_cl(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """PadChest-Cl: images whose label list holds exactly one term, that term (or "normal") as the class."""
    pc = _read_padchest_terms(root)
    per_row = pc.terms.groupby(level=0).agg(["count", "first"])
    single = per_row[(per_row["count"] == 1) & ~per_row["first"].isin(labels.PADCHEST_NOT_FINDINGS - {"normal"})]
    classes = single["first"].map(lambda t: t if t == "normal" else labels.padchest_finding(t))
    kept = PadchestFrame(pc.frame.loc[single.index], pc.terms, pc.path)
    return canonical(name, split="", label=classes, **_padchest_meta(name, root, kept, metadata_only))


# ---- any ImageFolder tree ------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "valid", "valid": "valid", "validation": "valid",
                 "test": "test", "testing": "test"}  # fmt: skip
IMAGEFOLDER_LAYOUT = "class folders of images, optionally inside train/, valid/ (or val/) and test/ folders"


def _class_images(folder: Path) -> Iterable[tuple[str, str]]:
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                yield class_dir.name, str(file)


@register("imagefolder", multilabel=False, modality="natural", layout=IMAGEFOLDER_LAYOUT)
def read_imagefolder(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    split_dirs = {SPLIT_FOLDERS[p.name.lower()]: p for p in sorted(root.iterdir())
                  if p.is_dir() and p.name.lower() in SPLIT_FOLDERS}  # fmt: skip
    rows = [(split, label, path) for split, folder in (split_dirs or {"": root}).items()
            for label, path in _class_images(folder)]
    if not rows:
        raise SourceError(f"{name}: no images under {root}; expected {IMAGEFOLDER_LAYOUT} "
                          f"(a name outside {sorted(SOURCES)} is read as an ImageFolder tree)")
    split, label, path = zip(*rows)
    image_id = [os.path.relpath(p, root) for p in path]
    return canonical(name, image_id=image_id, path=list(path), patient_id=image_id, study_id=image_id,
                     view="OTHER", split=list(split), label=list(label))


__all__ = ["SOURCES", "Source", "SourceError", "register", "read_source", "source_of", "canonical", "read_table",
           "find_file", "check_unique", "line_of"]
