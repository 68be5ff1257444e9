"""`xrstudy.data.fewshot`: k-shot sets, single- and multi-label, never drawn from test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xrstudy.data import fewshot


def test_few_shot_single_and_multi_label():
    pool = pd.DataFrame({"image_id": [f"i{i}" for i in range(30)], "label": list("abc") * 10, "split": "train"})
    one = fewshot.sample_shots(pool, 2, seed=0)
    assert one["label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 2}
    pd.testing.assert_frame_equal(one, fewshot.sample_shots(pool.sample(frac=1, random_state=0), 2, seed=0))
    assert not one["image_id"].equals(fewshot.sample_shots(pool, 2, seed=1)["image_id"])
    with pytest.raises(fewshot.FewShotError, match="class 'a' has 10"):
        fewshot.sample_shots(pool, 11, seed=0)
    with pytest.raises(fewshot.FewShotError, match="training split only"):
        fewshot.sample_shots(pool.assign(split="test"), 1, seed=0)

    rng = np.random.default_rng(0)
    multi = pd.DataFrame(rng.random((200, 4)) < 0.2, columns=list("wxyz")).astype(np.float32)
    multi.iloc[::7, 0] = np.nan
    multi.insert(0, "image_id", [f"m{i:03d}" for i in range(200)])
    chosen = fewshot.sample_shots(multi, 3, seed=0, classes=list("wxyz"))
    assert ((chosen[list("wxyz")] == 1).sum() >= 3).all()
    assert len(chosen) <= 12
