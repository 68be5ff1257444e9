"""PadChest and PadChest-Cl: one label file, one term vocabulary, two registry entries.

`padchest` is the multi-label pre-training source (every term of the vocabulary mapped to a canonical
finding, absent = 0, "exclude" or no labels = unknown); `padchest-cl` the single-label target of the
images whose label list holds exactly one term (that term, or "normal", as the class).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from xrstudy import labels
from xrstudy.sources.registry import SourceError, register
from xrstudy.sources.tables import canonical, check_unique, find_file, line_of, read_table, require_images

PADCHEST_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_LAYOUT = f"{PADCHEST_FILE}(.gz) and the numbered ImageDir folders of 16-bit PNGs"
# Projection -> canonical view; the rest (EXCLUDE, UNK) is OTHER. The authors call AP_horizontal "AP Supine".
PADCHEST_VIEWS = {"PA": "PA", "L": "LATERAL", "AP": "AP", "AP_horizontal": "AP_SUPINE", "COSTAL": "COSTAL"}


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
        raise SourceError(f"{path}, line {line_of(path, index)}, column 'Labels': {listed[index]!r}; "
                          f"expected a Python-list string such as ['pleural effusion', 'cardiomegaly']")
    # "['pleural effusion', 'cardiomegaly']" -> one row per term, in Arrow (str.findall + explode
    # loops in Python: 0.2 s on the real file)
    inner = pc.replace_substring_regex(pa.array(listed, type=pa.string()), r"^\s*\[\s*'?|'?\s*\]\s*$", "")
    parts = pc.split_pattern_regex(inner, r"'\s*,\s*'")
    terms = pd.Series(pc.utf8_trim_whitespace(pc.list_flatten(parts)), dtype="str",
                      index=listed.index[pc.list_parent_indices(parts).to_numpy()])  # fmt: skip
    terms = terms[terms != ""]
    unknown = terms[~terms.isin(labels.padchest_vocabulary())]
    if len(unknown):
        raise SourceError(f"{path}, line {line_of(path, unknown.index[0])}, column 'Labels': unknown PadChest term "
                          f"{unknown.iloc[0]!r}; known terms are listed in xrstudy/padchest_terms.txt "
                          f"(add a mapping in xrstudy.labels.PADCHEST_TERMS_OF if it is a synonym)")
    return PadchestFrame(frame, terms, path)


def _padchest_meta(name: str, root: Path, parsed: PadchestFrame, metadata_only: bool) -> dict:
    require_images(root, str(parsed.frame["ImageDir"].iloc[0]), name, metadata_only)
    frame = parsed.frame
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


# The authors' split of the 160K file (wheel copy): their filters, 5 views, RandomState(42), first 90 % train.
@register("padchest", multilabel=True, modality="xray", layout=PADCHEST_LAYOUT, cache_reads="always",
          published_train_by_view=(("PA", 82_484), ("LATERAL", 44_620), ("AP_SUPINE", 12_899), ("AP", 4_060),
                                   ("COSTAL", 575)))
def read_padchest(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    parsed = _read_padchest_terms(root)
    frame, terms = parsed.frame, parsed.terms
    canonical_of = {t: labels.padchest_finding(t) for t in labels.padchest_vocabulary()}
    findings_terms = terms[~terms.isin(labels.PADCHEST_NOT_FINDINGS)].map(canonical_of)
    # PadChest annotates its whole vocabulary: a finding no row mentions is still a 0 column.
    # Absent = 0 (as in NIH); a row without labels or marked "exclude" is unknown throughout.
    columns = sorted({labels.padchest_finding(t) for t in labels.padchest_vocabulary() - labels.PADCHEST_NOT_FINDINGS})
    values = np.zeros((len(frame), len(columns)), np.float32)
    position = pd.Series(np.arange(len(frame)), index=frame.index)
    code = pd.Categorical(findings_terms, categories=columns).codes
    values[position[findings_terms.index].to_numpy(), code] = 1.0
    unknown_rows = frame["Labels"].isna() | frame.index.isin(terms.index[terms == labels.PADCHEST_EXCLUDE])
    values[unknown_rows.to_numpy()] = np.nan
    return canonical(name, split="", findings=pd.DataFrame(values, columns=columns, copy=False),
                     **_padchest_meta(name, root, parsed, metadata_only))


@register("padchest-cl", multilabel=False, modality="xray", layout=PADCHEST_LAYOUT, cache_reads="always",
          published_classes=27, published_train_size=37_387, transfer_pipeline="xray", shares_images_with=("padchest",),
          paper_fewshot="label_array", paper_single_label_of="padchest", paper_views=labels.PADCHEST_PAPER_VIEWS,
          input_stats=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))  # configs/finetune/padchest.yaml: mean, std
def read_padchest_cl(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """PadChest-Cl: images whose label list holds exactly one term, that term (or "normal") as the class."""
    parsed = _read_padchest_terms(root)
    per_row = parsed.terms.groupby(level=0).agg(["count", "first"])
    single = per_row[(per_row["count"] == 1) & ~per_row["first"].isin(labels.PADCHEST_NOT_FINDINGS - {"normal"})]
    classes = single["first"].map(lambda t: t if t == "normal" else labels.padchest_finding(t))
    kept = PadchestFrame(parsed.frame.loc[single.index], parsed.terms, parsed.path)
    return canonical(name, split="", label=classes, **_padchest_meta(name, root, kept, metadata_only))

