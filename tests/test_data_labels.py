"""`xrstudy.data.labels`: the label policy keeps explicit values and never mutates its input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xrstudy.data import labels


def test_policy_keeps_explicit_values_and_never_mutates_the_input():
    raw = pd.DataFrame(
        {
            "source": ["chexpert"] * 3,
            "No Finding": [1.0, 1.0, np.nan],
            "Edema": [np.nan, -1.0, np.nan],
            "Effusion": [0.0, 1.0, -1.0],
        }
    )
    before = raw.copy()
    out = labels.apply_policy(raw, "ignore")
    pd.testing.assert_frame_equal(raw, before)
    assert out["Edema"].tolist()[0] == 0.0 and np.isnan(out["Edema"].tolist()[1]) and np.isnan(out["Edema"][2])
    assert out["Effusion"].tolist()[:2] == [0.0, 1.0] and np.isnan(out["Effusion"][2])
    assert labels.apply_policy(raw, "ones")["Effusion"][2] == 1.0
    with pytest.raises(ValueError, match="uncertain policy"):
        labels.apply_policy(raw, "maybe")
