"""What a cell costs, as pure functions: throughput, GPU-hours, cache bytes on disk, RAM per rank.

Throughput comes from `benchmarks/throughput.csv` (images/s per device, precision, arch, resolution,
eager or compiled: measured training steps). A pair not in the table is estimated from the nearest
measured one: by pixel count (images/s ~ 1 / side^2) for the same arch, and also by parameter count
(`benchmarks/arch_params.csv`; images/s ~ 1 / params) for another arch. Both are first-order models:
the measured R50x1 480-px figure is 14 % above the pixel-scaled 224-px one, and R152x4 runs 2.6x
slower than R152x2, not the 4.0x of their parameter counts, so every estimate says how it was made.

Memory: `cache_bytes` and `ram_per_rank_bytes` are written here until the training side exposes its
own (`xrstudy.hyper` / loaders): the uint8 cache holds every image of a dataset once at the recipe's
resize (1 channel for X-rays, 3 for natural images); today's loaders (`xrstudy.train.load_splits`)
copy a cell's train, valid and test images into memory on every rank.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
DEFAULT_DEVICE = "H100"


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    how: str  # "measured" or how it was scaled from a measured figure


def _table_path(name: str, variable: str) -> Path:
    return Path(os.environ.get(variable) or BENCHMARKS / name)


@functools.lru_cache(maxsize=4)
def _read(path: str) -> tuple[dict[str, str], ...]:
    try:
        with open(path, newline="") as handle:
            return tuple(csv.DictReader(handle))
    except FileNotFoundError:
        return ()


def throughput_table() -> tuple[dict[str, str], ...]:
    return _read(str(_table_path("throughput.csv", "XRSTUDY_THROUGHPUT")))


def arch_params() -> dict[str, float]:
    """Backbone parameters (millions) per timm arch name."""
    return {row["arch"]: float(row["params_m"]) for row in _read(str(_table_path("arch_params.csv", "XRSTUDY_ARCH_PARAMS")))}


def throughput(arch: str, resolution: int, device: str = DEFAULT_DEVICE, *, compiled: bool = False,
               table: tuple[dict[str, str], ...] | None = None, params: dict[str, float] | None = None) -> Throughput | None:
    """Training images/s of `arch` at `resolution` px on one `device`; None when nothing measured applies."""
    rows = [r for r in (throughput_table() if table is None else table) if r["device"] == device]
    params = arch_params() if params is None else params
    base = arch.split(".", 1)[0]
    mode = "compiled" if compiled and any(r["arch"] == base and r["mode"] == "compiled" for r in rows) else "eager"
    note = "" if mode == "compiled" or not compiled else "; eager figure (no compiled measurement)"
    same = [r for r in rows if r["arch"] == base and r["mode"] == mode]
    if same:
        row = _nearest_resolution(same, resolution)
        scale = (int(row["resolution"]) / resolution) ** 2
        how = "measured" if scale == 1 else f"scaled by pixel count from {row['arch']} at {row['resolution']} px"
        return Throughput(float(row["images_per_s"]) * scale, how + note)
    measured = [r for r in rows if r["mode"] == "eager" and r["arch"] in params]
    if base not in params or not measured:
        return None
    nearest_arch = min({r["arch"] for r in measured}, key=lambda a: abs(math.log(params[a] / params[base])))
    row = _nearest_resolution([r for r in measured if r["arch"] == nearest_arch], resolution)
    scale = (int(row["resolution"]) / resolution) ** 2 * params[nearest_arch] / params[base]
    how = (f"scaled by parameter count ({params[base]:.0f}M vs {params[nearest_arch]:.0f}M) and pixel count from "
           f"{nearest_arch} at {row['resolution']} px")
    return Throughput(float(row["images_per_s"]) * scale, how + ("; eager figure" if compiled else ""))


def _nearest_resolution(rows: list[dict[str, str]], resolution: int) -> dict[str, str]:
    return min(rows, key=lambda r: abs(math.log(int(r["resolution"]) / resolution)))


def gpu_hours(image_steps: int, speed: Throughput | None) -> float | None:
    """Hours on one GPU for `image_steps` training images (forward + backward + update)."""
    return None if speed is None or speed.images_per_s <= 0 else image_steps / speed.images_per_s / 3600


def channels(modality: str) -> int:
    return 1 if modality == "xray" else 3


def cache_bytes(n_images: int, side: int, modality: str) -> int:
    """Bytes of the uint8 image cache: every image of the dataset once, `side` x `side` pixels."""
    return int(n_images) * side * side * channels(modality)


def ram_per_rank_bytes(n_images_in_memory: int, side: int, modality: str) -> int:
    """Bytes of images each rank holds: today's loaders copy the cell's train + valid + test images."""
    return int(n_images_in_memory) * side * side * channels(modality)


__all__ = ["Throughput", "throughput", "throughput_table", "arch_params", "gpu_hours", "cache_bytes",
           "ram_per_rank_bytes", "channels", "DEFAULT_DEVICE"]  # fmt: skip
