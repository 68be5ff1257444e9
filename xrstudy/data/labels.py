"""Canonical findings, per-source synonym maps, the uncertain-label policy and the view filter.

Canonical table (one row per image, built by `xrstudy.data.sources`): the `META_COLUMNS` below and one
float column per finding holding 1, 0, -1 (uncertain, before the policy) or NaN (unknown).
Every function here returns a new table; the caller's DataFrame is never modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from xrstudy.config import VIEWS

META_COLUMNS = ("image_id", "path", "source", "patient_id", "study_id", "view", "sex", "age", "split", "raw_labels")
UNCERTAIN_POLICIES = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}
_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3  # always on from pandas 3

# "No Finding" is a CheXpert/MIMIC column, not a class: the policy reads it, then drops it.
NO_FINDING = "No Finding"
# Columns that are neither metadata nor findings (single-label targets' class, No Finding).
NON_FINDING_COLUMNS = frozenset(META_COLUMNS) | {"label", NO_FINDING}

# ---- CheXpert and MIMIC-CXR (the same 14 columns, CheXpert labeler) ----------------------------
CHEXPERT_FINDINGS = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_SYNONYMS = {"Pleural Effusion": "Effusion"}  # source column -> canonical name

# ---- NIH ChestX-ray14 ('Finding Labels', pipe-separated) ---------------------------------------
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
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
    "Atelectasis": [
        "atelectasis",
        "laminar atelectasis",
        "lobar atelectasis",
        "segmental atelectasis",
        "round atelectasis",
        "atelectasis basal",
        "total atelectasis",
    ],
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
    "Fracture": [
        "fracture",
        "rib fracture",
        "callus rib fracture",
        "clavicle fracture",
        "humeral fracture",
        "vertebral fracture",
    ],
    "Enlarged Cardiomediastinum": ["mediastinal enlargement", "superior mediastinal enlargement"],
    "Support Devices": [
        "NSG tube",
        "endotracheal tube",
        "tracheostomy tube",
        "chest drain tube",
        "catheter",
        "central venous catheter",
        "central venous catheter via jugular vein",
        "central venous catheter via subclavian vein",
        "central venous catheter via umbilical vein",
        "reservoir central venous catheter",
        "pacemaker",
        "dual chamber device",
        "single chamber device",
        "electrical device",
    ],
}
PADCHEST_SYNONYMS = {term: canonical for canonical, terms in PADCHEST_TERMS_OF.items() for term in terms}
# Terms that say something about the study, not a finding. "normal" lists no finding (absent = 0
# already); "exclude" marks a study the annotators set aside: its labels are unknown (NaN).
PADCHEST_NOT_FINDINGS = frozenset({"normal", "unchanged", "suboptimal study", "exclude"})
PADCHEST_EXCLUDE = "exclude"


@lru_cache(maxsize=1)
def padchest_vocabulary() -> frozenset[str]:
    """Every term that occurs in the released PadChest label file (`padchest_terms.txt`)."""
    text = resources.files("xrstudy.data").joinpath("padchest_terms.txt").read_text()
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def padchest_finding(term: str) -> str:
    """Canonical finding name of a PadChest term ("pleural effusion" -> "Effusion")."""
    if term in PADCHEST_SYNONYMS:
        return PADCHEST_SYNONYMS[term]
    return term[:1].upper() + term[1:]  # "aortic elongation" -> "Aortic elongation", "COPD signs" kept


# ---- the authors' datasets (label_mode: paper) ---------------------------------------------------
# PadChest as `transfer_learning/datasets/padchest.py` of the authors' repository builds it: 27
# pathologies, each marked when its lower-cased name or one of its synonyms occurs anywhere in the
# row's `Labels` text (a substring test: "effusion" also hits "pericardial effusion", "device" hits
# "electrical device"); listed in the order the authors sort them.
PADCHEST_PATHOLOGIES = (
    "Air Trapping",
    "Aortic Atheromatosis",
    "Aortic Elongation",
    "Atelectasis",
    "Bronchiectasis",
    "Cardiomegaly",
    "Consolidation",
    "Costophrenic Angle Blunting",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Flattened Diaphragm",
    "Fracture",
    "Granuloma",
    "Hemidiaphragm Elevation",
    "Hernia",
    "Hilar Enlargement",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
    "Scoliosis",
    "Support Devices",
    "Tuberculosis",
)
PADCHEST_PATHOLOGY_SYNONYMS = {
    "Infiltration": (
        "infiltrates",
        "interstitial pattern",
        "ground glass pattern",
        "reticular interstitial pattern",
        "reticulonodular interstitial pattern",
        "alveolar pattern",
        "consolidation",
        "air bronchogram",
    ),
    "Pleural_Thickening": ("pleural thickening",),
    "Consolidation": ("air bronchogram",),
    "Hilar Enlargement": ("adenopathy", "pulmonary artery enlargement"),
    "Support Devices": ("device", "pacemaker"),
}
PADCHEST_PATHOLOGY_NAMES = {"Pleural_Thickening": "Pleural Thickening"}  # authors' name -> canonical (as NIH)
# Image files the authors' class drops ("missing" and "wrong" files; one is listed twice there).
PADCHEST_EXCLUDED_IMAGES = frozenset(
    {
        "216840111366964012819207061112010307142602253_04-014-084.png",
        "216840111366964012989926673512011074122523403_00-163-058.png",
        "216840111366964012959786098432011033083840143_00-176-115.png",
        "216840111366964012558082906712009327122220177_00-102-064.png",
        "216840111366964012339356563862009072111404053_00-043-192.png",
        "216840111366964013076187734852011291090445391_00-196-188.png",
        "216840111366964012373310883942009117084022290_00-064-025.png",
        "216840111366964012283393834152009033102258826_00-059-087.png",
        "216840111366964012373310883942009170084120009_00-097-074.png",
        "216840111366964012819207061112010315104455352_04-024-184.png",
        "216840111366964013829543166512013353113303615_02-092-190.png",
        "216840111366964012904401302362010337093236130_03-198-079.png",
        "216840111366964012904401302362010336141343749_03-198-010.png",
        "216840111366964012989926673512011151082430686_00-157-045.png",
        "216840111366964012989926673512011083134050913_00-168-009.png",
        "216840111366964012373310883942009077082646386_00-047-124.png",
        "216840111366964013686042548532013208193054515_02-026-007.png",
        "216840111366964013962490064942014134093945580_01-178-104.png",
        "216840111366964012819207061112010281134410801_00-129-131.png",
        "216840111366964013590140476722013043111952381_02-065-198.png",
        "216840111366964012283393834152009027091819347_00-007-136.png",
        "216840111366964012373310883942009152114636712_00-102-045.png",
        "216840111366964012283393834152009033140208626_00-059-118.png",
        "216840111366964013590140476722013058110301622_02-056-111.png",
        "216840111366964012487858717522009280135853083_00-075-001.png",
        "216840111366964013590140476722013049100117076_02-063-097.png",
        "216840111366964013649110343042013092101343018_02-075-146.png",
        "216840111366964012819207061112010306085429121_04-020-102.png",
        "269300710246070740096540277379121868595_e7zsan.png",
        "216840111366964012373310883942009180082307973_00-097-011.png",
    }
)
# The view names of the authors' configs (`views: ["PA", "AP", "AP Supine", "L", "COSTAL"]`), by canonical view.
AUTHORS_VIEW_NAMES = {"PA": "PA", "AP": "AP", "AP_SUPINE": "AP Supine", "LATERAL": "L", "COSTAL": "COSTAL"}
# Per source, the canonical views whose raw names are the authors' names (default: all of the above).
# MIMIC's laterals are "LATERAL" / "LL", never "L": the 4-source run kept none of them.
SOURCE_VIEWS_NAMED_AS_AUTHORS = {"mimic": {"PA", "AP"}}
PADCHEST_PAPER_VIEWS = ("PA", "AP", "AP_SUPINE", "LATERAL", "COSTAL")  # configs/finetune/padchest.yaml
MIMIC_LABEL_FILE = "mimic-cxr-2.0.0-chexpert.csv"  # MIMIC `raw_labels` of an image whose study has a label row


def padchest_pathologies(labels_text: pd.Series) -> pd.DataFrame:
    """The authors' 27 PadChest columns (1 / 0) of each `Labels` text, canonical names, their order.

    Their `str.contains` patterns hold no regex characters, so each is a plain substring test; it is
    run once per distinct text (~29k of the 161k rows)."""
    codes, texts = pd.factorize(labels_text.fillna("").astype(str), sort=False)
    texts = [str(text) for text in texts]
    hits = np.zeros((len(texts), len(PADCHEST_PATHOLOGIES)), bool)
    for j, pathology in enumerate(PADCHEST_PATHOLOGIES):
        for pattern in (pathology.lower(), *PADCHEST_PATHOLOGY_SYNONYMS.get(pathology, ())):
            hits[:, j] |= np.fromiter([pattern in text for text in texts], bool, len(texts))
    names = [PADCHEST_PATHOLOGY_NAMES.get(p, p) for p in PADCHEST_PATHOLOGIES]
    return pd.DataFrame(hits[codes].astype(np.float32), columns=names, index=labels_text.index)


# Sources whose findings `as_authors_read` rebuilds from `raw_labels` (it needs no finding column of theirs).
FINDINGS_FROM_TEXT = frozenset({"padchest"})


def as_authors_read(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """A source's table as the authors' dataset class reads it (label_mode: paper), and rows dropped by reason.

    PadChest: rows without `Labels` and the authors' excluded files go; the findings become the 27
    substring pathologies. MIMIC: images of studies without a row in the label file go (the authors
    join the label file to the metadata). CheXpert / NIH read the same. Rows keep their file order.
    """
    source = str(table["source"].iloc[0]) if len(table) else ""
    reasons: dict[str, np.ndarray] = {}
    if source == "padchest":
        reasons["no_labels"] = (table["raw_labels"] == "").to_numpy()
        reasons["excluded_file"] = table["image_id"].isin(PADCHEST_EXCLUDED_IMAGES).to_numpy() & ~reasons["no_labels"]
    elif source == "mimic":
        reasons["no_label_row"] = (table["raw_labels"] != MIMIC_LABEL_FILE).to_numpy()
    dropped = {f"{source}:{why}": int(mask.sum()) for why, mask in reasons.items() if mask.any()}
    keep = np.flatnonzero(~np.logical_or.reduce([*reasons.values(), np.zeros(len(table), bool)]))
    if source == "padchest":  # select the metadata alone: the ~190 term columns are replaced
        meta = table[[c for c in table.columns if c not in set(finding_columns(table))]].iloc[keep]
        return pd.concat(
            [meta.reset_index(drop=True), padchest_pathologies(meta["raw_labels"]).reset_index(drop=True)], axis=1
        ), dropped
    return (table.iloc[keep].reset_index(drop=True) if len(keep) < len(table) else table), dropped


def single_label(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Rows with exactly one of `classes` positive, labelled by it (the authors' SingleLabelFromMultiLabel:
    unknown counts as absent); a new single-label table with `label` instead of the finding columns."""
    values = np.nan_to_num(table[list(classes)].to_numpy(dtype=np.float32, na_value=np.nan), nan=0.0)
    single = values.sum(axis=1) == 1
    label = np.asarray(classes, dtype=object)[values[single].argmax(axis=1)]
    return table.loc[single].drop(columns=finding_columns(table)).assign(label=label)


# ---- the canonical table --------------------------------------------------------------------
def finding_columns(table: pd.DataFrame) -> list[str]:
    """The finding columns of a canonical table, in table order."""
    return [c for c in table.columns if c not in NON_FINDING_COLUMNS]


def apply_policy(table: pd.DataFrame, uncertain: str = "ignore", *, no_finding: str = "blank") -> pd.DataFrame:
    """Resolve `No Finding` and uncertain (-1) labels; returns a new table without -1 or `No Finding`.

    CheXpert / MIMIC: `No Finding == 1` turns every *blank* finding of that row into 0 (`no_finding=
    "blank"`, explicit values stay) or every finding, explicit values included (`"all"`, the authors'
    `chexpert.py` / `mimic.py`, applied before -1 is read). Then -1 becomes NaN (`ignore`, the paper's),
    1 (`ones`) or 0 (`zeros`).
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy {uncertain!r}; expected one of {sorted(UNCERTAIN_POLICIES)}")
    if no_finding not in ("blank", "all"):
        raise ValueError(f"no_finding={no_finding!r}; expected 'blank' or 'all'")
    findings = finding_columns(table)
    values = table[findings].to_numpy(dtype=np.float32, na_value=np.nan, copy=True)
    if NO_FINDING in table.columns:
        normal = (table[NO_FINDING].to_numpy(dtype=np.float32, na_value=np.nan) == 1.0)[:, None]
        target = normal if no_finding == "all" else normal & np.isnan(values)
        values = np.where(target, np.float32(0.0), values)
    values[values == -1.0] = UNCERTAIN_POLICIES[uncertain]
    resolved = pd.DataFrame(values, columns=findings, index=table.index)
    return pd.concat([table.drop(columns=[*findings, NO_FINDING], errors="ignore"), resolved], axis=1)


def filter_views(table: pd.DataFrame, views: Sequence[str], *, as_authors: bool = False) -> pd.DataFrame:
    """Rows whose canonical view is in `views` (empty = all views).

    `as_authors`: keep a view only where the source's own name for it is the name the authors' configs
    use (`AUTHORS_VIEW_NAMES`); their dataset classes compare those names with the raw view strings, so
    e.g. MIMIC's `LATERAL` is not their "L" and unknown projections (OTHER) are never selected.
    """
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; canonical views are {list(VIEWS)}")
    if not views:
        return table.copy(deep=not _COPY_ON_WRITE)  # under copy-on-write a shallow copy is already a new table
    if not as_authors:
        return table[table["view"].isin(list(views))]  # boolean indexing already returns a new table
    keep = np.zeros(len(table), bool)
    for source in pd.unique(table["source"]):
        named = SOURCE_VIEWS_NAMED_AS_AUTHORS.get(str(source), set(AUTHORS_VIEW_NAMES))
        keep |= ((table["source"] == source) & table["view"].isin(sorted(set(views) & named))).to_numpy()
    return table[keep]


def label_counts(table: pd.DataFrame, findings: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """finding -> {"positive", "negative", "unknown"} (and "uncertain" while -1 remain).

    Counted over the findings as one row-major block, a slab of rows at a time: a merged table holds
    its findings as one float32 block, in which a single column is strided (~8x slower per column)."""
    names = list(findings) if findings is not None else finding_columns(table)
    totals = np.zeros((4, len(names)), np.int64)  # positive, negative, unknown, uncertain
    values = table[names].to_numpy(dtype=np.float32, na_value=np.nan)
    for start in range(0, len(values), _COUNT_ROWS):
        rows = values[start : start + _COUNT_ROWS]
        totals += [(rows == 1).sum(0), (rows == 0).sum(0), np.isnan(rows).sum(0), (rows == -1).sum(0)]
    counts = {}
    for name, (positive, negative, unknown, uncertain) in zip(names, totals.T.tolist()):
        entry = {"positive": positive, "negative": negative, "unknown": unknown}
        if uncertain:
            entry["uncertain"] = uncertain
        counts[name] = entry
    return counts


_COUNT_ROWS = 1 << 16


__all__ = [
    "META_COLUMNS",
    "VIEWS",
    "CHEXPERT_FINDINGS",
    "NIH_FINDINGS",
    "PADCHEST_TERMS_OF",
    "PADCHEST_PATHOLOGIES",
    "PADCHEST_EXCLUDED_IMAGES",
    "AUTHORS_VIEW_NAMES",
    "finding_columns",
    "apply_policy",
    "filter_views",
    "label_counts",
    "padchest_vocabulary",
    "padchest_finding",
    "padchest_pathologies",
    "as_authors_read",
    "single_label",
]
