"""Merge canonical tables of several sources into one (pure; inputs are never modified).

`intersection` (the paper's): keep the findings every source annotates -- C+M+N+P gives the 7
classes Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion, Pneumonia, Pneumothorax.
`union`: every finding of every source; NaN where a source does not annotate it, which the masked
loss ignores. "No Finding" is never a class. Filter views and apply the label policy per source
before merging (`xrstudy.data.studydata.prepare` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from xrstudy.config import LABEL_SETS
from xrstudy.data.labels import META_COLUMNS, finding_columns


def merged_findings(tables: Sequence[pd.DataFrame], labels: str = "intersection") -> list[str]:
    """The finding columns a merge keeps, sorted by name."""
    if labels not in LABEL_SETS:
        raise ValueError(f"labels={labels!r}; expected one of {LABEL_SETS}")
    sets = [set(finding_columns(t)) for t in tables]
    if not sets:
        return []
    chosen = set.intersection(*sets) if labels == "intersection" else set.union(*sets)
    return sorted(chosen)


def merge_sources(tables: Sequence[pd.DataFrame], labels: str = "intersection") -> pd.DataFrame:
    """One canonical table: META_COLUMNS (source and raw labels kept for provenance) + the findings."""
    if not tables:
        raise ValueError("merge_sources needs at least one table")
    names = [str(t["source"].iloc[0]) for t in tables if len(t)]
    if len(set(names)) < len(names):
        raise ValueError(f"a source appears twice in the merge: {names}")
    findings = merged_findings(tables, labels)
    if labels == "intersection" and not findings:
        raise ValueError(f"sources {names} share no finding; use labels='union'")
    extra = [c for c in ("label",) if any(c in t.columns for t in tables)]
    meta = pd.concat([t.reindex(columns=[*META_COLUMNS, *extra]) for t in tables], ignore_index=True)
    # Findings as one float32 block, NaN where a source does not annotate a finding (reindexing
    # hundreds of columns per table through pandas is ~100x slower on the real files).
    values = np.full((len(meta), len(findings)), np.nan, np.float32)
    position = {name: i for i, name in enumerate(findings)}
    offset = 0
    for table in tables:
        kept = [c for c in finding_columns(table) if c in position]
        values[offset : offset + len(table), [position[c] for c in kept]] = table[kept].to_numpy(
            np.float32, na_value=np.nan
        )
        offset += len(table)
    merged = pd.concat([meta, pd.DataFrame(values, columns=findings, copy=False)], axis=1)
    return merged


__all__ = ["merge_sources", "merged_findings", "LABEL_SETS"]
