"""Train / valid / test splits, saved as files whose SHA-256 goes into every result.

- `official`: a source's own split where it has one; images without one are split by patient.
  A missing valid (NIH: train_val / test) or test split (CheXpert: train / valid) is carved from
  train, by patient.
- `patient`: every source split by patient, ignoring official splits.
- `paper`: official where present, else the paper's image-level random 90/10 split (seed 42).
  It puts images of one patient in train and test; `patient_overlap` measures how many.

Patient assignment hashes `seed:patient_id` (SHA-256) to a number in [0, 1): deterministic,
independent of row order and of the other patients, so nested subsets are nested by construction.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from xrstudy.config import SPLIT_MODES
from xrstudy.io import atomic_write_bytes

SPLITS = ("train", "valid", "test")
PAPER_SEED = 42
PAPER_TEST_FRACTION = 0.1


def patient_uniform(patients: pd.Series, seed: int) -> np.ndarray:
    """A number in [0, 1) per row from the hash of (seed, patient id); equal patients -> equal numbers."""
    codes, uniques = pd.factorize(patients, sort=False)
    values = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{p}".encode()).digest()[:8], "big")
                       for p in uniques], dtype=np.float64) / 2.0**64  # fmt: skip
    return values[codes]


def _by_patient(patients: pd.Series, seed: int, valid_fraction: float, test_fraction: float) -> np.ndarray:
    u = patient_uniform(patients, seed)
    return np.where(u < test_fraction, "test", np.where(u < test_fraction + valid_fraction, "valid", "train"))


def _by_image(n: int, seed: int, valid_fraction: float, test_fraction: float) -> np.ndarray:
    u = np.random.default_rng(seed).random(n)
    return np.where(u < test_fraction, "test", np.where(u < test_fraction + valid_fraction, "valid", "train"))


def assign_splits(table: pd.DataFrame, mode: str = "official", *, seed: int = 0, valid_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> pd.DataFrame:
    """A new table whose `split` column is train / valid / test for every row (per source)."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode {mode!r}; expected one of {SPLIT_MODES}")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError(f"valid_fraction={valid_fraction}, test_fraction={test_fraction}; expected fractions summing below 1")
    split = table["split"].fillna("").astype(str).to_numpy(dtype=object, copy=True)
    for source in pd.unique(table["source"]):
        rows = (table["source"] == source).to_numpy()
        patients = table.loc[rows, "patient_id"]
        own = split[rows]
        if mode == "patient" or not (own != "").any():
            if mode == "paper":
                own = _by_image(int(rows.sum()), seed, valid_fraction, test_fraction)
            else:
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
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
        save_split(table, path)
    return path, sha


def fraction_subset(table: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """Patient-grouped subset of about `fraction` of the rows; a smaller fraction gives a subset."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction}; expected 0 < fraction <= 1")
    if fraction == 1:
        return table.copy()
    return table[patient_uniform(table["patient_id"], seed + 1000) < fraction].copy()


__all__ = ["assign_splits", "patient_overlap", "save_split", "save_split_by_content",
           "split_bytes", "fraction_subset", "patient_uniform", "SPLIT_MODES"]
