"""`xrstudy.data.merge`: the intersection and union of findings across sources."""

from __future__ import annotations

import pandas as pd
import pytest

from xrstudy.data import labels, merge, phantoms, sources


def test_intersection_and_union_merge(roots):
    chexpert = labels.apply_policy(sources.read_source("chexpert", roots["chexpert"]))
    nih = labels.apply_policy(sources.read_source("nih", roots["nih"]))
    before = chexpert.copy()
    both = merge.merge_sources([chexpert, nih], "intersection")
    assert labels.finding_columns(both) == sorted(phantoms.DRAWN_FINDINGS)  # the paper's 7
    pd.testing.assert_frame_equal(chexpert, before)
    union = merge.merge_sources([chexpert, nih], "union")
    assert {"Support Devices", "Hernia", "Pleural Thickening"} <= set(union.columns)
    assert union.loc[union["source"] == "chexpert", "Hernia"].isna().all()  # not annotated -> unknown
    assert len(union) == len(both) == len(chexpert) + len(nih)
    with pytest.raises(ValueError, match="twice"):
        merge.merge_sources([nih, nih])
