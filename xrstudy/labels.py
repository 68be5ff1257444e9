"""Canonical findings, per-source synonym maps, the uncertain-label policy and the view filter.

Canonical table (one row per image, built by `xrstudy.sources`): the `META_COLUMNS` below and one
float column per finding holding 1, 0, -1 (uncertain, before the policy) or NaN (unknown).
Every function here returns a new table; the caller's DataFrame is never modified.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from xrstudy.config import VIEWS

META_COLUMNS = ("image_id", "path", "source", "patient_id", "study_id", "view", "sex", "age", "split", "raw_labels")
UNCERTAIN_POLICIES = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}

# "No Finding" is a CheXpert/MIMIC column, not a class: the policy reads it, then drops it.
NO_FINDING = "No Finding"
# Columns that are neither metadata nor findings (single-label targets' class, No Finding).
NON_FINDING_COLUMNS = frozenset(META_COLUMNS) | {"label", NO_FINDING}

# ---- CheXpert and MIMIC-CXR (the same 14 columns, CheXpert labeler) ----------------------------
CHEXPERT_FINDINGS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip
CHEXPERT_SYNONYMS = {"Pleural Effusion": "Effusion"}  # source column -> canonical name

# ---- NIH ChestX-ray14 ('Finding Labels', pipe-separated) ---------------------------------------
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
NIH_SYNONYMS = {"Pleural_Thickening": "Pleural Thickening"}
NIH_NAMES = {canonical: term for term, canonical in NIH_SYNONYMS.items()}  # canonical -> NIH term

# ---- PadChest (lower-case terms in a Python-list string) ---------------------------------------
# Canonical finding -> the PadChest terms that mean it; the first term is the plain one. Only terms
# that *are* the finding are mapped (subtypes, e.g. "laminar atelectasis" for Atelectasis, or
# "loculated pleural effusion" for Effusion). Related-but-different terms stay their own finding:
# "pericardial effusion" is not a pleural effusion, "subcutaneous emphysema" is not Emphysema,
# "air bronchogram" is a sign that can accompany consolidation but is not one, "infiltrates" ->
# NIH's Infiltration but not CheXpert's broader "Lung Opacity".
PADCHEST_TERMS_OF = {
    "Atelectasis": ["atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis",
                    "round atelectasis", "atelectasis basal", "total atelectasis"],
    "Cardiomegaly": ["cardiomegaly"],
    "Consolidation": ["consolidation"],
    "Edema": ["pulmonary edema"],
    "Effusion": ["pleural effusion", "loculated pleural effusion", "loculated fissural effusion"],
    "Pneumonia": ["pneumonia", "atypical pneumonia"],
    "Pneumothorax": ["pneumothorax", "hydropneumothorax"],
    "Emphysema": ["emphysema"],
    "Nodule": ["nodule", "multiple nodules"],
    "Mass": ["pulmonary mass", "mass"],
    "Fibrosis": ["pulmonary fibrosis"],
    "Pleural Thickening": ["pleural thickening", "apical pleural thickening"],
    "Hernia": ["hiatal hernia"],
    "Infiltration": ["infiltrates"],
    "Fracture": ["fracture", "rib fracture", "callus rib fracture", "clavicle fracture", "humeral fracture",
                 "vertebral fracture"],
    "Enlarged Cardiomediastinum": ["mediastinal enlargement", "superior mediastinal enlargement"],
    "Support Devices": ["NSG tube", "endotracheal tube", "tracheostomy tube", "chest drain tube", "catheter",
                        "central venous catheter", "central venous catheter via jugular vein",
                        "central venous catheter via subclavian vein", "central venous catheter via umbilical vein",
                        "reservoir central venous catheter", "pacemaker", "dual chamber device",
                        "single chamber device", "electrical device"],
}  # fmt: skip
PADCHEST_SYNONYMS = {term: canonical for canonical, terms in PADCHEST_TERMS_OF.items() for term in terms}
# Terms that say something about the study, not a finding. "normal" lists no finding (absent = 0
# already); "exclude" marks a study the annotators set aside: its labels are unknown (NaN).
PADCHEST_NOT_FINDINGS = frozenset({"normal", "unchanged", "suboptimal study", "exclude"})
PADCHEST_EXCLUDE = "exclude"


@lru_cache(maxsize=1)
def padchest_vocabulary() -> frozenset[str]:
    """Every term that occurs in the released PadChest label file (`padchest_terms.txt`)."""
    text = resources.files("xrstudy").joinpath("padchest_terms.txt").read_text()
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def padchest_finding(term: str) -> str:
    """Canonical finding name of a PadChest term ("pleural effusion" -> "Effusion")."""
    if term in PADCHEST_SYNONYMS:
        return PADCHEST_SYNONYMS[term]
    return term[:1].upper() + term[1:]  # "aortic elongation" -> "Aortic elongation", "COPD signs" kept


# ---- the canonical table --------------------------------------------------------------------
def finding_columns(table: pd.DataFrame) -> list[str]:
    """The finding columns of a canonical table, in table order."""
    return [c for c in table.columns if c not in NON_FINDING_COLUMNS]


def apply_policy(table: pd.DataFrame, uncertain: str = "ignore") -> pd.DataFrame:
    """Resolve `No Finding` and uncertain (-1) labels; returns a new table without -1 or `No Finding`.

    CheXpert / MIMIC: `No Finding == 1` turns every *blank* finding of that row into 0; explicit
    values stay. Then -1 becomes NaN (`ignore`, the paper's), 1 (`ones`) or 0 (`zeros`).
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy {uncertain!r}; expected one of {sorted(UNCERTAIN_POLICIES)}")
    findings = finding_columns(table)
    values = table[findings].to_numpy(dtype=np.float32, na_value=np.nan, copy=True)
    if NO_FINDING in table.columns:
        normal = (table[NO_FINDING].to_numpy(dtype=np.float32, na_value=np.nan) == 1.0)[:, None]
        values = np.where(normal & np.isnan(values), np.float32(0.0), values)
    values[values == -1.0] = UNCERTAIN_POLICIES[uncertain]
    resolved = pd.DataFrame(values, columns=findings, index=table.index)
    return pd.concat([table.drop(columns=[*findings, NO_FINDING], errors="ignore"), resolved], axis=1)


def filter_views(table: pd.DataFrame, views: Sequence[str]) -> pd.DataFrame:
    """Rows whose canonical view is in `views` (empty = all views)."""
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; canonical views are {list(VIEWS)}")
    if not views:
        return table.copy()
    return table[table["view"].isin(list(views))]  # boolean indexing already returns a new table


def label_counts(table: pd.DataFrame, findings: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """finding -> {"positive", "negative", "unknown"} (and "uncertain" while -1 remain)."""
    counts = {}
    for name in findings if findings is not None else finding_columns(table):
        column = table[name].to_numpy(dtype=np.float32, na_value=np.nan)
        entry = {"positive": int((column == 1).sum()), "negative": int((column == 0).sum()),
                 "unknown": int(np.isnan(column).sum())}  # fmt: skip
        if (column == -1).any():
            entry["uncertain"] = int((column == -1).sum())
        counts[name] = entry
    return counts


__all__ = [
    "META_COLUMNS", "VIEWS", "CHEXPERT_FINDINGS", "NIH_FINDINGS", "PADCHEST_TERMS_OF", "finding_columns",
    "apply_policy", "filter_views", "label_counts", "padchest_vocabulary", "padchest_finding",
]  # fmt: skip
