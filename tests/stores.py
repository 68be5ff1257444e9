"""A results store with a known scaling law, for the figure, notebook and statistics tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrstudy.config import RunConfig
from xrstudy.results import store

ARCHS = {"resnetv2_50x1_bit": 23.5, "resnetv2_101x1_bit": 42.5, "resnetv2_152x4_bit": 928.0}


FRACTIONS = (0.1, 0.3, 1.0)


def synthetic_store(results_dir: Path, seeds=(0, 1, 2)) -> Path:
    """A tiny store with a known scaling law: error = 0.1 + 0.1 · f^-0.5 · (P / 23.5)^-0.2 + noise,
    pre-training data fractions f × three BiT sizes P, PadChest-Cl mean AUC at 10 shots and full."""
    rng = np.random.default_rng(0)
    for arch, params in ARCHS.items():
        for fraction in FRACTIONS:
            pre = RunConfig(kind="pretrain", name="chexpert", sources=("chexpert",), arch=arch, data_fraction=fraction)
            store.save(store.new_result(pre, {"valid/auc": 0.7}), results_dir)
            for shots in (10, 0):
                for seed in seeds:
                    cell = RunConfig(
                        kind="transfer",
                        target="padchest-cl",
                        init=f"run:{pre.run_id}",
                        arch=arch,
                        shots=shots,
                        seed=seed,
                        init_label="chexpert",
                    )
                    error = 0.1 + 0.1 * fraction**-0.5 * (params / 23.5) ** -0.2 + (0.05 if shots else 0.0)
                    error += rng.normal(0, 0.002)
                    store.save(store.new_result(cell, {"test/auc": 1.0 - error}), results_dir)
    return results_dir
