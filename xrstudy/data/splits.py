"""Train / valid / test splits, saved as files whose SHA-256 goes into every result.

- `official`: a source's own split where it has one; images without one are split by patient.
  A missing valid (NIH: train_val / test) or test split (CheXpert: train / valid) is carved from
  train, by patient.
- `patient`: every source split by patient, ignoring official splits.
- `paper`: each dataset split, and ordered, as the authors' dataset class does (`paper_splits`):
  PadChest an image-level 90/10 cut of `RandomState(42)`'s shuffle (it puts images of one patient in
  train and test; `patient_overlap` measures how many), Tuberculosis 85/15 per source folder, Flowers'
  official sets swapped, NIH train_val / test lists, the rest official. No validation set is carved out.

Patient assignment hashes `seed:patient_id` (SHA-256) to a number in [0, 1): deterministic,
independent of row order and of the other patients, so nested subsets are nested by construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from xrstudy.config import SPLIT_MODES
from xrstudy.fileio import atomic_write_bytes, sha256_file

SPLITS = ("train", "valid", "test")
PAPER_SEED = 42


def patient_uniform(patients: pd.Series, seed: int) -> np.ndarray:
    """A number in [0, 1) per row from the hash of (seed, patient id); equal patients -> equal numbers."""
    codes, uniques = pd.factorize(patients, sort=False)
    values = (
        np.array(
            [int.from_bytes(hashlib.sha256(f"{seed}:{p}".encode()).digest()[:8], "big") for p in uniques],
            dtype=np.float64,
        )
        / 2.0**64
    )
    return values[codes]


def _by_patient(patients: pd.Series, seed: int, valid_fraction: float, test_fraction: float) -> np.ndarray:
    u = patient_uniform(patients, seed)
    return np.where(u < test_fraction, "test", np.where(u < test_fraction + valid_fraction, "valid", "train"))


def assign_splits(
    table: pd.DataFrame,
    mode: str = "official",
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> pd.DataFrame:
    """A new table whose `split` column is train / valid / test for every row (per source).

    `paper` follows the authors' rules (`paper_splits`; seed and fractions are theirs, the arguments
    are not used) and returns the rows in their datasets' order, less the rows their splits leave out.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode {mode!r}; expected one of {SPLIT_MODES}")
    if mode == "paper":
        return paper_splits(table)[0]
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError(
            f"valid_fraction={valid_fraction}, test_fraction={test_fraction}; expected fractions summing below 1"
        )
    split = table["split"].fillna("").astype(str).to_numpy(dtype=object, copy=True)
    for source in pd.unique(table["source"]):
        rows = (table["source"] == source).to_numpy()
        patients = table.loc[rows, "patient_id"]
        own = split[rows]
        if mode == "patient" or not (own != "").any():
            own = _by_patient(patients, seed, valid_fraction, test_fraction)
        else:
            blank = own == ""
            own[blank] = _by_patient(patients[blank], seed, valid_fraction, test_fraction)
            for missing, fraction in (("valid", valid_fraction), ("test", test_fraction)):
                if not (own == missing).any():  # carve the missing split out of train, by patient
                    u = patient_uniform(patients, seed + 1 + SPLITS.index(missing))
                    own[(own == "train") & (u < fraction)] = missing
        split[rows] = own
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected {SPLITS}")
    return table.assign(split=split.astype(str))


# ---- the authors' splits (split_mode: paper) ------------------------------------------------------
# Each rule gets one source's rows in file order and returns (positions, split names): the rows kept,
# in the order of the authors' dataset (train first; "positions" of few-shot sampling are this order).
PaperRule = Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]
PAPER_RULES: dict[str, PaperRule] = {}
PADCHEST_TRAIN_FRACTION = 0.9  # transfer_learning/datasets/padchest.py: SEED = 42, TRAIN_RATIO = 0.9
TUBERCULOSIS_TRAIN_FRACTION = 0.85  # transfer_learning/datasets/tuberculosis.py: SEED = 42, RATIO_TRAIN = 0.85
TUBERCULOSIS_FOLDERS = ("CHNCXR", "MCUCXR")  # configs/finetune/tuberculosis_full.yaml: Shenzhen, then Montgomery
# COVIDx as the authors downloaded it (README: kaggle.com/andyczhao/covidx-cxr2/version/3): COVIDx CXR-2,
# the COVIDx V8B lists of COVID-Net (train 13,794 negative + 2,158 positive, test 200 + 200), no val.txt.
COVIDX_PAPER_SIZES = {"train": 15_952, "test": 400}


def paper_rule(*names: str) -> Callable[[PaperRule], PaperRule]:
    def add(rule: PaperRule) -> PaperRule:
        PAPER_RULES.update(dict.fromkeys(names, rule))
        return rule

    return add


def shuffled_cut(n: int, train_fraction: float, seed: int = PAPER_SEED) -> tuple[np.ndarray, int]:
    """`RandomState(seed)` shuffles positions 0..n-1; the first `int(n * fraction)` are train."""
    positions = np.arange(n)
    np.random.RandomState(seed).shuffle(positions)
    return positions, int(n * train_fraction)


def _train_then_test(positions: np.ndarray, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    return positions, np.where(np.arange(len(positions)) < n_train, "train", "test")


@paper_rule("padchest", "padchest-cl")
def _padchest(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Image-level 90/10 over the rows left after the view / label / excluded-file filters, in file order."""
    return _train_then_test(*shuffled_cut(len(rows), PADCHEST_TRAIN_FRACTION))


@paper_rule("tuberculosis")
def _tuberculosis(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per source folder: the sorted PNG names shuffled by RandomState(42), the first int(0.85 n) train;
    the authors' Merge puts Shenzhen before Montgomery in both sets."""
    prefix = rows["image_id"].str.upper().str[:6].to_numpy()
    unknown = sorted(set(prefix) - set(TUBERCULOSIS_FOLDERS))
    if unknown:
        raise ValueError(f"tuberculosis: image names starting {unknown}; expected {list(TUBERCULOSIS_FOLDERS)} files")
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for folder in TUBERCULOSIS_FOLDERS:
        members = np.flatnonzero(prefix == folder)
        members = members[np.argsort(rows["image_id"].to_numpy()[members], kind="stable")]  # sorted(glob(...))
        order, n_train = shuffled_cut(len(members), TUBERCULOSIS_TRAIN_FRACTION)
        parts["train"].append(members[order[:n_train]])
        parts["test"].append(members[order[n_train:]])
    train, test = (np.concatenate(parts[s]) for s in ("train", "test"))
    return np.concatenate([train, test]), np.array(["train"] * len(train) + ["test"] * len(test))


def flowers_folder(label: str) -> str:
    """The class folder of a Flowers-102 class in the authors' image folders, made from fast.ai's lists,
    whose class numbers start at 0 (the .mat files' start at 1)."""
    return str(int(label) - 1)


@paper_rule("flowers102")
def _flowers(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """mod_train = official test set (train), mod_test = valid + train (test), each an ImageFolder:
    class folders in text order ("0", "1", "10", "100", ...), then file names in order."""
    split = np.where(rows["split"].to_numpy() == "train", "train", "test")
    key = pd.DataFrame(
        {
            "split": pd.Categorical(split, ["train", "test"]),
            "folder": rows["label"].map(flowers_folder).to_numpy(),
            "file": rows["image_id"].to_numpy(),
        }
    )
    positions = key.sort_values(["split", "folder", "file"], kind="stable").index.to_numpy()
    return positions, split[positions]


@paper_rule("nih")
def _nih(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """train_val_list.txt and test_list.txt (the authors join each list: images in neither are left out)."""
    positions = np.flatnonzero(rows["split"].isin(["train", "test"]).to_numpy())
    if len(rows) and not len(positions):
        raise ValueError(
            "nih: split_mode paper reads train_val_list.txt and test_list.txt (the authors' split); "
            "no image is listed in either: add both lists beside the Data_Entry file"
        )
    return positions, rows["split"].to_numpy()[positions]


@paper_rule("covidx")
def _covidx(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """train.txt / test.txt of COVIDx CXR-2 as pinned by the authors; another release is an error."""
    counts = rows["split"].value_counts().to_dict()
    if counts != COVIDX_PAPER_SIZES:
        lists = {"train": "train.txt", "valid": "val.txt", "test": "test.txt"}
        found = ", ".join(f"{lists.get(s, s)} {n:,}" for s, n in sorted(counts.items()))
        path, image = str(rows["path"].iloc[0]), str(rows["image_id"].iloc[0])
        root = path[: -len(image)].rstrip("/\\") if path.endswith(image) else path
        raise ValueError(
            f"covidx: {root} lists {found} images; split_mode paper reads COVIDx CXR-2 as the authors "
            f"downloaded it (Kaggle andyczhao/covidx-cxr2, version 3: train.txt "
            f"{COVIDX_PAPER_SIZES['train']:,} and test.txt {COVIDX_PAPER_SIZES['test']} images, no "
            f"val.txt); point the covidx root at that release, or read this one with split_mode official"
        )
    return _official(rows)


def _official(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    split = rows["split"].fillna("").astype(str).to_numpy()
    if (split == "").any():
        source = rows["source"].iloc[0]
        raise ValueError(
            f"{source}: {int((split == '').sum())} images without an official split and no rule of the "
            f"authors for them; use split_mode official or patient for {source!r}"
        )
    return np.arange(len(rows)), split


def paper_splits(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The authors' split of every source of `table` (rules in PAPER_RULES, else the official split);
    a new table in their datasets' order, and the rows their splits leave out, by source."""
    keys = table[[c for c in ("source", "image_id", "path", "split", "label") if c in table.columns]]
    order, names, dropped = [], [], {}
    for source in pd.unique(keys["source"]):
        where = np.flatnonzero((keys["source"] == source).to_numpy())
        positions, split = PAPER_RULES.get(str(source), _official)(keys.iloc[where].reset_index(drop=True))
        if len(positions) < len(where):
            dropped[f"{source}:outside_paper_split"] = len(where) - len(positions)
        order.append(where[np.asarray(positions, dtype=np.int64)])
        names.append(np.asarray(split, dtype=object).astype(str))
    rows = np.concatenate(order) if order else np.zeros(0, np.int64)
    split = np.concatenate(names) if names else np.zeros(0, str)
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected {SPLITS}")
    return table.iloc[rows].reset_index(drop=True).assign(split=split), dropped


def patient_overlap(table: pd.DataFrame) -> dict[str, int]:
    """Patients present in more than one split (the paper's PadChest split leaks them)."""
    per_patient = table.groupby("patient_id")["split"].nunique()
    leaking = per_patient[per_patient > 1].index
    return {"patients": int(len(leaking)), "images": int(table["patient_id"].isin(leaking).sum())}


def split_bytes(table: pd.DataFrame) -> bytes:
    """The split file: `source,image_id,split`, sorted, '\\n' line ends -- byte-identical across runs."""
    frame = table[["source", "image_id", "split"]].sort_values(["source", "image_id"], kind="stable")
    return frame.to_csv(index=False, lineterminator="\n").encode()


def save_split(table: pd.DataFrame, path: str | Path) -> str:
    """Write the split file atomically; return its SHA-256."""
    data = split_bytes(table)
    atomic_write_bytes(path, data)  # unique temp + fsync + replace; a full disk names the file
    return hashlib.sha256(data).hexdigest()


def save_split_by_content(table: pd.DataFrame, folder: str | Path) -> tuple[Path, str]:
    """Write to `folder/{sha256[:16]}.csv` (equal splits share one file); return (path, sha256)."""
    data = split_bytes(table)
    sha = hashlib.sha256(data).hexdigest()
    path = Path(folder) / f"{sha[:16]}.csv"
    if not path.is_file() or sha256_file(path) != sha:
        atomic_write_bytes(path, data)
    return path, sha


def fraction_subset(table: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """Patient-grouped subset of about `fraction` of the rows; a smaller fraction gives a subset."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction}; expected 0 < fraction <= 1")
    if fraction == 1:
        return table.copy()
    return table[patient_uniform(table["patient_id"], seed + 1000) < fraction].copy()


__all__ = [
    "assign_splits",
    "paper_splits",
    "PAPER_RULES",
    "shuffled_cut",
    "patient_overlap",
    "save_split",
    "save_split_by_content",
    "split_bytes",
    "fraction_subset",
    "patient_uniform",
    "SPLIT_MODES",
]
