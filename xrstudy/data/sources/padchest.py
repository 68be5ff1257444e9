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

from xrstudy.data import labels
from xrstudy.data.sources.registry import SourceError, register
from xrstudy.data.sources.tables import canonical, check_unique, find_file, line_of, read_table, require_images

PADCHEST_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_LAYOUT = f"{PADCHEST_FILE}(.gz) and the numbered ImageDir folders of 16-bit PNGs"
# Projection -> canonical view; the rest (EXCLUDE, UNK) is OTHER. The authors call AP_horizontal "AP Supine".
PADCHEST_VIEWS = {"PA": "PA", "L": "LATERAL", "AP": "AP", "AP_horizontal": "AP_SUPINE", "COSTAL": "COSTAL"}


@dataclass(frozen=True)
class PadchestFrame:
    """The label file and its terms. The 161k `Labels` texts repeat (~29k distinct), so each distinct
    text is parsed and checked once; a row's terms are those of its text."""

    frame: pd.DataFrame
    text_of_row: np.ndarray  # per row of `frame`: its distinct text in `terms_of_text`; -1 = no `Labels`
    terms_of_text: list[list[str]]  # the stripped, non-empty terms of each distinct text, as listed
    path: Path


def _read_padchest_terms(root: Path) -> PadchestFrame:
    path = find_file(root, [PADCHEST_FILE], "PadChest label file")
    frame = read_table(
        path,
        ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"],
        optional=["StudyID", "PatientBirth", "PatientSex_DICOM", "StudyDate_DICOM"],
        dtype={"ImageID": str, "PatientID": str, "StudyID": str},
    )
    check_unique(frame["ImageID"], path, "ImageID")
    text_of_row, distinct = pd.factorize(frame["Labels"])  # distinct texts in order of first appearance

    def first_row(text: int) -> int:
        return frame.index[int(np.argmax(text_of_row == text))]

    texts = pd.Series(distinct, dtype="str")
    malformed = ~texts.str.strip().str.match(r"^\[.*\]$").to_numpy(dtype=bool)
    if malformed.any():
        text = int(np.argmax(malformed))
        raise SourceError(
            f"{path}, line {line_of(path, first_row(text))}, column 'Labels': {texts[text]!r}; "
            f"expected a Python-list string such as ['pleural effusion', 'cardiomegaly']"
        )
    # "['pleural effusion', 'cardiomegaly']" -> its terms, split in Arrow
    inner = pc.replace_substring_regex(pa.array(texts, type=pa.string()), r"^\s*\[\s*'?|'?\s*\]\s*$", "")
    parts = pc.split_pattern_regex(inner, r"'\s*,\s*'")
    terms_of_text: list[list[str]] = [[] for _ in range(len(texts))]
    for text, term in zip(
        pc.list_parent_indices(parts).to_pylist(), pc.utf8_trim_whitespace(pc.list_flatten(parts)).to_pylist()
    ):
        if term:
            terms_of_text[text].append(term)
    vocabulary = labels.padchest_vocabulary()
    for text, terms in enumerate(terms_of_text):  # the first unknown term in file order
        unknown = [term for term in terms if term not in vocabulary]
        if unknown:
            raise SourceError(
                f"{path}, line {line_of(path, first_row(text))}, column 'Labels': unknown PadChest "
                f"term {unknown[0]!r}; known terms are listed in xrstudy/padchest_terms.txt "
                f"(add a mapping in xrstudy.data.labels.PADCHEST_TERMS_OF if it is a synonym)"
            )
    return PadchestFrame(frame, text_of_row, terms_of_text, path)


def _padchest_meta(name: str, root: Path, parsed: PadchestFrame, metadata_only: bool) -> dict:
    require_images(root, str(parsed.frame["ImageDir"].iloc[0]), name, metadata_only)
    frame = parsed.frame
    image_dir = pd.to_numeric(frame["ImageDir"], errors="coerce").astype("Int64").astype(str)
    age = np.nan
    if "StudyDate_DICOM" in frame and "PatientBirth" in frame:
        age = pd.to_numeric(frame["StudyDate_DICOM"], errors="coerce") // 10000 - pd.to_numeric(
            frame["PatientBirth"], errors="coerce"
        )
    return dict(
        image_id=frame["ImageID"],
        path=str(root) + os.sep + image_dir + os.sep + frame["ImageID"],
        patient_id=frame["PatientID"],
        study_id=frame.get("StudyID", frame["ImageID"]),
        view=frame["Projection"].map(PADCHEST_VIEWS).fillna("OTHER"),
        sex=frame.get("PatientSex_DICOM", pd.Series("", index=frame.index)).where(lambda s: s.isin(["M", "F"]), ""),
        age=age,
        raw_labels=frame["Labels"],
    )


def read_padchest_without_findings(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """PadChest's canonical metadata and `raw_labels`, the file checked as by `read_padchest`, without
    its ~190 term columns (label_mode paper rebuilds the authors' 27 pathologies from the text)."""
    return canonical(name, split="", **_padchest_meta(name, root, _read_padchest_terms(root), metadata_only))


# The authors' split of the 160K file (wheel copy): their filters, 5 views, RandomState(42), first 90 % train.
@register(
    "padchest",
    multilabel=True,
    modality="xray",
    layout=PADCHEST_LAYOUT,
    cache_reads="always",
    published_train_by_view=(
        ("PA", 82_484),
        ("LATERAL", 44_620),
        ("AP_SUPINE", 12_899),
        ("AP", 4_060),
        ("COSTAL", 575),
    ),
    read_without_findings=read_padchest_without_findings,
)
def read_padchest(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    parsed = _read_padchest_terms(root)
    # PadChest annotates its whole vocabulary: a finding no row mentions is still a 0 column.
    # Absent = 0 (as in NIH); a row without labels or marked "exclude" is unknown throughout.
    vocabulary = labels.padchest_vocabulary() - labels.PADCHEST_NOT_FINDINGS
    columns = sorted({labels.padchest_finding(t) for t in vocabulary})
    column_of = {term: columns.index(labels.padchest_finding(term)) for term in vocabulary}
    # One row of findings per distinct text (the last: no `Labels`), then one per image by its text.
    per_text = np.zeros((len(parsed.terms_of_text) + 1, len(columns)), np.float32)
    hits = [
        (text, column_of[term])
        for text, terms in enumerate(parsed.terms_of_text)
        for term in terms
        if term in column_of
    ]
    if hits:
        per_text[tuple(np.array(hits).T)] = 1.0
    per_text[[text for text, terms in enumerate(parsed.terms_of_text) if labels.PADCHEST_EXCLUDE in terms]] = np.nan
    per_text[-1] = np.nan
    values = per_text[parsed.text_of_row]
    return canonical(
        name,
        split="",
        findings=pd.DataFrame(values, columns=columns, copy=False),
        **_padchest_meta(name, root, parsed, metadata_only),
    )


@register(
    "padchest-cl",
    multilabel=False,
    modality="xray",
    layout=PADCHEST_LAYOUT,
    cache_reads="always",
    published_classes=27,
    published_train_size=37_387,
    transfer_pipeline="xray",
    shares_images_with=("padchest",),
    paper_fewshot="label_array",
    paper_single_label_of="padchest",
    paper_views=labels.PADCHEST_PAPER_VIEWS,
    input_stats=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # Consolidation's name and its synonym (air bronchogram) also mark Infiltration: no image has it alone
    paper_empty_classes=("Consolidation",),
)  # configs/finetune/padchest.yaml: mean, std
def read_padchest_cl(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """PadChest-Cl: images whose label list holds exactly one term, that term (or "normal") as the class."""
    parsed = _read_padchest_terms(root)
    set_aside = labels.PADCHEST_NOT_FINDINGS - {"normal"}
    class_of_text = np.array(
        [
            (terms[0] if terms[0] == "normal" else labels.padchest_finding(terms[0]))
            if len(terms) == 1 and terms[0] not in set_aside
            else None
            for terms in parsed.terms_of_text
        ]
        + [None],
        dtype=object,
    )
    rows = np.flatnonzero(pd.notna(class_of_text)[parsed.text_of_row])  # the last entry: no `Labels`
    classes = class_of_text[parsed.text_of_row[rows]]
    kept = PadchestFrame(parsed.frame.iloc[rows], parsed.text_of_row[rows], parsed.terms_of_text, parsed.path)
    return canonical(name, split="", label=classes, **_padchest_meta(name, root, kept, metadata_only))
