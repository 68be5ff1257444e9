"""What a cell costs, as pure functions: throughput, GPU-hours, images per GPU and the micro-batch, cache bytes
on disk, RAM per rank.

The tables are package data (`xrstudy/training/tables/*.csv`, read through `importlib.resources`, so a wheel
install plans as the repository does); `$XRSTUDY_THROUGHPUT`, `$XRSTUDY_MEMORY` and `$XRSTUDY_ARCH_PARAMS`
name other files. A missing or unreadable table is a `CostTableError` naming it, never an estimate of zero.

Throughput comes from `tables/throughput.csv` (images/s per device, precision, arch, resolution,
eager or compiled: measured training steps). A pair not in the table is estimated from the nearest
measured one: by pixel count (images/s ~ 1 / side^2) for the same arch, and also by parameter count
(`tables/arch_params.csv`; images/s ~ 1 / params) for another arch. Both are first-order models:
the measured R50x1 480-px figure is 14 % above the pixel-scaled 224-px one, and R152x4 runs 2.6x
slower than R152x2, not the 4.0x of their parameter counts, so every estimate says how it was made.

Images per GPU come from `tables/memory.csv`: per (device, arch, resolution) the most training
images one GPU holds (H100 bf16: estimates of `benchmarks/bench_gpu_fit.py` for the six BiT sizes, a model
that reproduces the authors' own R152x4 micro-batches on A100-40GB; A100-40GB rows: the authors' choices).
A resolution not in the table is scaled from the nearest one by pixel count, an arch without rows from the
nearest arch by parameter count (a lower bound for wider networks). `micro_batch` turns that into the cell's
execution field: the global batch is then reached by gradient accumulation (the training side).

Cache bytes on disk and host memory per rank are the training side's own pure functions
(`xrstudy.training.recipes.cache_bytes`, `ram_per_rank`); the plan calls them.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
import math
import os
from dataclasses import dataclass

from xrstudy.config import base_arch

DEFAULT_DEVICE = "H100"
# table -> the environment variable naming another file for it (benchmarks write the package's own copy)
TABLES = {
    "throughput.csv": "XRSTUDY_THROUGHPUT",
    "memory.csv": "XRSTUDY_MEMORY",
    "arch_params.csv": "XRSTUDY_ARCH_PARAMS",
}
CPU = "cpu"  # the device name of a run without a GPU: no table row, fp32


class CostTableError(OSError):
    """A throughput / memory / parameter table is missing or unreadable (a wheel built without its package data)."""


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    how: str  # "measured" or how it was scaled from a measured figure


def table_text(name: str) -> tuple[str, str]:
    """(where, text) of table `name`: the file its environment variable names, else the package's copy."""
    override = os.environ.get(TABLES[name])
    try:
        if override:
            with open(override, newline="", encoding="utf-8") as handle:
                return override, handle.read()
        resource = importlib.resources.files("xrstudy.training") / "tables" / name
        return str(resource), resource.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        where = override or f"xrstudy/training/tables/{name} (package data)"
        raise CostTableError(
            f"{where}: cannot read the {name.removesuffix('.csv')} table ({getattr(err, 'strerror', None) or err}); "
            f"reinstall xrstudy with its package data{'' if override else f' or set ${TABLES[name]} to a copy'}"
        ) from None


@functools.lru_cache(maxsize=len(TABLES))
def _read(name: str, override: str | None) -> tuple[dict[str, str], ...]:
    where, text = table_text(name)
    rows = tuple(csv.DictReader(io.StringIO(text, newline="")))
    if not rows:
        raise CostTableError(f"{where}: the {name.removesuffix('.csv')} table has no rows")
    return rows


def read_table(name: str) -> tuple[dict[str, str], ...]:
    """The rows of table `name` (cached per file: a changed environment variable reads the other file)."""
    return _read(name, os.environ.get(TABLES[name]))


def throughput_table() -> tuple[dict[str, str], ...]:
    return read_table("throughput.csv")


def arch_params() -> dict[str, float]:
    """Backbone parameters (millions) per timm arch name."""
    return {row["arch"]: float(row["params_m"]) for row in read_table("arch_params.csv")}


def table_device(name: str) -> str:
    """The tables' name of a GPU (`torch.cuda.get_device_name`: "NVIDIA H100 80GB HBM3" -> "H100"); a GPU
    the tables do not list keeps its own name (no estimate for it)."""
    devices = {row["device"] for row in (*throughput_table(), *memory_table())}
    matches = [d for d in devices if all(part.lower() in name.lower() for part in d.split("-"))]
    return max(matches, key=len) if matches else name


def throughput(
    arch: str,
    resolution: int,
    device: str = DEFAULT_DEVICE,
    *,
    compiled: bool = False,
    table: tuple[dict[str, str], ...] | None = None,
    params: dict[str, float] | None = None,
) -> Throughput | None:
    """Training images/s of `arch` at `resolution` px on one `device`; None when nothing measured applies."""
    rows = [r for r in (throughput_table() if table is None else table) if r["device"] == device]
    params = arch_params() if params is None else params
    base = base_arch(arch)
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
    how = (
        f"scaled by parameter count ({params[base]:.0f}M vs {params[nearest_arch]:.0f}M) and pixel count from "
        f"{nearest_arch} at {row['resolution']} px"
    )
    return Throughput(float(row["images_per_s"]) * scale, how + ("; eager figure" if compiled else ""))


def _nearest_resolution(rows: list[dict[str, str]], resolution: int) -> dict[str, str]:
    return min(rows, key=lambda r: abs(math.log(int(r["resolution"]) / resolution)))


@dataclass(frozen=True)
class Fit:
    images: int  # most training images per GPU (a power of two)
    how: str


def memory_table() -> tuple[dict[str, str], ...]:
    return read_table("memory.csv")


def images_per_gpu(
    arch: str,
    resolution: int,
    device: str = DEFAULT_DEVICE,
    table: tuple[dict[str, str], ...] | None = None,
    params: dict[str, float] | None = None,
) -> Fit | None:
    """Most training images of `arch` at `resolution` px one `device` holds; None when the table has no row
    for the device (an arch without rows is scaled from the nearest one by parameter count)."""
    base = base_arch(arch)
    on_device = [r for r in (memory_table() if table is None else table) if r["device"] == device]
    rows = [r for r in on_device if r["arch"] == base]
    scaled_by, share = [], 1.0
    if not rows:  # the nearest arch of the table by parameter count
        params = arch_params() if params is None else params
        known = {r["arch"] for r in on_device} & set(params)
        if base not in params or not known:
            return None
        nearest = min(known, key=lambda a: abs(math.log(params[a] / params[base])))
        rows, share = [r for r in on_device if r["arch"] == nearest], params[nearest] / params[base]
        scaled_by.append(
            f"by parameter count from {nearest} ({params[base]:.0f}M vs {params[nearest]:.0f}M; activations grow "
            f"more slowly than parameters with width, so this errs small)"
        )
    row = _nearest_resolution(rows, resolution)
    if int(row["resolution"]) != resolution:
        scaled_by.append(f"by pixel count from {row['resolution']} px")  # activations grow with the pixels
    if not scaled_by:
        return Fit(int(row["images_per_gpu"]), f"{device} {row['precision']}: {row['source']}")
    scaled = int(row["images_per_gpu"]) * share * (int(row["resolution"]) / resolution) ** 2
    images = 1 << max(0, int(math.floor(math.log2(max(scaled, 1)))))
    return Fit(images, f"{device} {row['precision']}: scaled {' and '.join(scaled_by)} ({row['source']})")


def micro_batch(images_per_gpu: int | None, per_device_batch: int, group: int = 1) -> int:
    """The `micro_batch` of a cell whose devices each take `per_device_batch` images per step: 0 (the whole
    per-device batch at once) when it fits or nothing is known, else the largest divisor of the per-device
    batch that fits, so that accumulation reaches the global batch exactly. `group`: images that must stay
    in one pass (the authors' MixUp micro-batch in loader_mode paper): the micro-batch is a multiple of it,
    at least one group even where the memory table says fewer fit."""
    if not images_per_gpu or per_device_batch <= images_per_gpu:
        return 0
    fitting = [d for d in range(group, images_per_gpu + 1, group) if per_device_batch % d == 0]
    return max(fitting) if fitting else group


def known_devices() -> list[str]:
    """The devices the throughput and memory tables have rows for (sorted)."""
    return sorted({r["device"] for r in (*throughput_table(), *memory_table())})


def check_device(device: str) -> str:
    """`device`, or a ValueError when the tables have rows but none for it: a typo (`H10`) would otherwise
    plan every cell without an estimate and size every job for one GPU, without a word."""
    known = known_devices()
    if known and device not in known and device.lower() != CPU:
        raise ValueError(
            f"device {device[:40]!r} has no row in the throughput or memory tables "
            f"({table_text('throughput.csv')[0]}, memory.csv); known devices: {', '.join(known)}"
        )
    return device


def gpu_hours(image_steps: int, speed: Throughput | None) -> float | None:
    """Hours on one GPU for `image_steps` training images (forward + backward + update)."""
    return None if speed is None or speed.images_per_s <= 0 else image_steps / speed.images_per_s / 3600


__all__ = [
    "CostTableError",
    "read_table",
    "table_device",
    "TABLES",
    "CPU",
    "Throughput",
    "throughput",
    "throughput_table",
    "arch_params",
    "Fit",
    "images_per_gpu",
    "memory_table",
    "micro_batch",
    "gpu_hours",
    "known_devices",
    "check_device",
    "DEFAULT_DEVICE",
]
