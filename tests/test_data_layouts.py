"""`xrstudy.data.layouts`: the miniature writers' registry."""

from __future__ import annotations

import numpy as np
import pytest

from xrstudy.data import layouts
from xrstudy.data.layouts import Record


def test_record_writer_registry_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="no layout writer"):
        layouts.write_layout("nope", tmp_path, [Record(1, 1, "PA", "M", 40, {}, "train", np.zeros((4, 4), np.uint8))])
