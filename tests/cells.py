"""Tiny study cells for training tests: phantom X-ray and shape studies built in their real layouts, and the
pre-training / transfer RunConfigs the training, history, model and protocol tests run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from fastai.callback.core import Callback
from PIL import Image

from xrstudy.config import RunConfig
from xrstudy.data.studydata import StudyData

FINDINGS = ("Cardiomegaly", "Effusion")


SHAPES = ("disc", "bar", "ring")


TINY = "resnetv2_tiny_bit"


def _xray(findings: set[str], rng: np.random.Generator) -> np.ndarray:
    image = rng.normal(60, 12, (40, 36))
    if "Cardiomegaly" in findings:
        image[14:34, 10:28] += 110
    if "Effusion" in findings:
        image[30:, :] += 80
    return image.clip(0, 255).astype(np.uint8)


def _shape(name: str, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:24, 0:24]
    r = np.hypot(y - 12 - rng.integers(-2, 3), x - 12 - rng.integers(-2, 3))
    mask = {"disc": r < 7, "ring": (r > 5) & (r < 8), "bar": (abs(y - 12) < 3)}[name]
    image = np.stack([mask * 200, mask * (100 + rng.integers(0, 100)), np.full_like(mask, 40, dtype=int)], -1)
    return (image + rng.integers(0, 30, image.shape)).clip(0, 255).astype(np.uint8)


def xray_study(folder: Path, n: int = 30, seed: int = 0) -> StudyData:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        findings = {f for f in FINDINGS if rng.random() < 0.5}
        path = folder / f"x{i:03d}.png"
        Image.fromarray(_xray(findings, rng)).save(path)
        row = {"image_id": f"x{i}", "path": str(path), **{f: float(f in findings) for f in FINDINGS}}
        if rng.random() < 0.2:
            row[FINDINGS[int(rng.integers(0, 2))]] = np.nan  # unknown
        rows.append(row)
    table = pd.DataFrame(rows)
    cut = (n * 6 // 10, n * 8 // 10)
    return StudyData(
        train=table[: cut[0]],
        valid=table[cut[0] : cut[1]],
        test=table[cut[1] :],
        classes=FINDINGS,
        multilabel=True,
        split_sha256="xray-split",
        dropped={"view": 1},
        modality="xray",
    )


def shapes_study(folder: Path, per_class: int = 6, seed: int = 1) -> StudyData:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in SHAPES:
        for i in range(per_class):
            path = folder / f"{name}{i}.png"
            Image.fromarray(_shape(name, rng)).save(path)
            rows.append({"image_id": f"{name}{i}", "path": str(path), "label": name})
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
    cut = len(table) * 2 // 3
    return StudyData(
        train=table[:cut],
        valid=table[:0],
        test=table[cut:],
        classes=SHAPES,
        multilabel=False,
        split_sha256="shapes-split",
        shots_ids=tuple(table["image_id"][:3]),
    )


def pretrain_cfg(out: Path, **changes) -> RunConfig:
    return RunConfig(
        **{
            "kind": "pretrain",
            "sources": ("demo",),
            "arch": TINY,
            "image_size": 24,
            "steps": 6,
            "batch_size": 8,
            "mixup": 0.2,
            "out_dir": str(out),
            **changes,
        }
    )


def transfer_cfg(out: Path, **changes) -> RunConfig:
    return RunConfig(
        **{
            "kind": "transfer",
            "target": "shapes",
            "arch": TINY,
            "image_size": 24,
            "steps": 4,
            "batch_size": 6,
            "out_dir": str(out),
            **changes,
        }
    )


# ---- stopping a run part-way (resume tests) ------------------------------------------------------
class Stop(Exception):
    pass


class StopAfter(Callback):
    order = 99

    def __init__(self, step: int):
        self.stop_step = step

    def after_step(self) -> None:
        if self.learn.step + 1 == self.stop_step:
            raise Stop(self.stop_step)
