"""Image cache: decode + resize rate vs. reading the pre-resized uint8 cache, measured in one run.

Writes N synthetic 512 x 512 grayscale JPEGs (X-ray-like: smooth shapes + noise) and a tenth as many
16-bit PNGs to a temp dir, then measures
  - decode + centre crop + resize (xrstudy.pixels.decoding.prepare_image), 1 worker and all workers (img/s)
  - build_cache with all workers into a fresh cache (img/s; includes memmap writes and progress flushes)
  - reading random batches of 256 from the cache memmap (img/s; the page cache is warm after the build)
  - one first epoch (every row once, random batches of 256) with and without the checksum check that
    loaders run on first read (`ImageCache.check_rows`), best of 3 alternating: the check's cost ratio
and prints the ratio cache-read / decode.

    python benchmarks/bench_cache.py [--n 2000] [--size 224] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xrstudy.pixels.decoding import prepare_image
from xrstudy.pixels.imagecache import build_cache
from xrstudy.training.cost import throughput

SIDE = 512
BATCH = 256


def synthetic_radiograph(rng: np.random.Generator) -> np.ndarray:
    """float in [0, 1]: a vertical gradient, a few soft ellipses ("lungs", "heart") and noise."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    image = 0.2 + 0.3 * y
    for _ in range(4):
        cy, cx, ry, rx = rng.uniform(0.2, 0.8, 2).tolist() + rng.uniform(0.08, 0.3, 2).tolist()
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        image += rng.uniform(-0.25, 0.25) * np.exp(-inside * 2.0)
    image += rng.normal(0.0, 0.02, image.shape)
    return np.clip(image, 0.0, 1.0)


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        image = synthetic_radiograph(rng)
        if i % 11 == 10:  # ~1 in 11: a PadChest-style 16-bit PNG
            path = folder / f"{i:05d}.png"
            Image.fromarray(np.rint(image * 65535).astype(np.uint16)).save(path)
        else:
            path = folder / f"{i:05d}.jpg"
            Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def _prepare(args: tuple[str, int, str]) -> int:
    return int(prepare_image(*args).sum() >= 0)


def decode_rate(paths: list[str], size: int, mode: str, workers: int) -> float:
    jobs = [(path, size, mode) for path in paths]
    start = time.perf_counter()
    if workers <= 1:
        for job in jobs:
            _prepare(job)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_prepare, jobs, chunksize=16):
                pass
    return len(paths) / (time.perf_counter() - start)


def read_rate(images: np.ndarray, seconds: float = 2.0, seed: int = 0) -> float:
    """img/s of random batches of 256 copied out of the memmap (what a training loader does)."""
    rng = np.random.default_rng(seed)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = np.sort(rng.choice(len(images), size=min(BATCH, len(images)), replace=False))
        count += int(np.ascontiguousarray(images[batch]).shape[0])
    return count / (time.perf_counter() - start)


def first_epoch_seconds(cache_dir: Path, paths: list[str], size: int, mode: str, checked: bool, seed: int = 0) -> float:
    """Seconds to gather every row once in random batches of 256 from a freshly opened cache (nothing
    verified yet), checking each batch's rows against the build's checksums first when `checked`."""
    cache = build_cache(paths, size, cache_dir, mode)  # reopened: a new object, no row verified
    order = np.random.default_rng(seed).permutation(len(cache))
    start = time.perf_counter()
    for first in range(0, len(order), BATCH):
        rows = order[first : first + BATCH]
        if checked:
            cache.check_rows(rows)
        np.take(cache.images, rows, axis=0)
    return time.perf_counter() - start


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of images (512 x 512)")
    parser.add_argument("--size", type=int, default=224, help="cached side length")
    parser.add_argument("--mode", default="L", choices=("L", "RGB"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="'all workers'")
    parser.add_argument("--results", type=Path, help="append a row to this RESULTS.md")
    parser.add_argument("--device", default=f"CPU, {os.cpu_count()} cores (this machine)")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args()
    os.environ.setdefault("XRSTUDY_NO_PROGRESS", "1")

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as work:
        work_dir = Path(work)
        (work_dir / "images").mkdir()
        start = time.perf_counter()
        paths = write_images(work_dir / "images", args.n)
        print(
            f"wrote {len(paths)} images ({sum(p.endswith('.png') for p in paths)} 16-bit PNG) "
            f"in {time.perf_counter() - start:.1f} s"
        )

        one = decode_rate(paths, args.size, args.mode, 1)
        print(f"decode + resize, 1 worker:        {one:8.0f} img/s")
        many = decode_rate(paths, args.size, args.mode, args.workers)
        print(f"decode + resize, {args.workers} workers:      {many:8.0f} img/s  ({many / one:.2f}x)")

        start = time.perf_counter()
        cache = build_cache(paths, args.size, work_dir / "cache", args.mode, args.workers)
        build = len(paths) / (time.perf_counter() - start)
        print(f"cache build, {args.workers} workers:          {build:8.0f} img/s  ({cache.report()})")
        start = time.perf_counter()
        build_cache(paths, args.size, work_dir / "cache", args.mode, args.workers)
        reopen = time.perf_counter() - start
        print(f"reopen finished cache:            {reopen * 1000:8.1f} ms")

        read = read_rate(cache.images)
        print(f"cache read, random batches of {BATCH}: {read:8.0f} img/s")
        print(f"ratio cache read / decode: {read / one:.0f}x (1 worker), {read / many:.0f}x ({args.workers} workers)")
        plain, checked = [], []
        for _ in range(3):  # alternating, best of 3: the page cache is warm for both
            plain.append(first_epoch_seconds(work_dir / "cache", paths, args.size, args.mode, checked=False))
            checked.append(first_epoch_seconds(work_dir / "cache", paths, args.size, args.mode, checked=True))
        check_ratio = min(checked) / min(plain)
        check_us = (min(checked) - min(plain)) / len(paths) * 1e6
        speed = throughput("resnetv2_50x1_bit", args.size)  # the cost table's fastest training step (H100)
        share = check_us / (1e6 / speed.images_per_s) if speed else float("nan")
        print(
            f"first epoch, gather only: {min(plain) * 1000:.0f} ms; with checksums checked: "
            f"{min(checked) * 1000:.0f} ms; ratio {check_ratio:.2f}; the check costs {check_us:.1f} us/image "
            f"(decode: {1e6 / one:.0f} us/image), {share:.1%} of a first epoch of R50x1 training at the cost "
            f"table's H100 rate (less where the prefetch thread overlaps it with the step)"
        )
        load = os.getloadavg()[0]
        print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs")

    command = (
        f"python benchmarks/bench_cache.py --n {args.n} --size {args.size} --mode {args.mode} --workers {args.workers}"
    )
    figures = (
        f"{args.n} x 512px JPEG/16-bit PNG -> {args.size}px {args.mode}: decode+resize {one:.0f} img/s (1 worker), "
        f"{many:.0f} img/s ({args.workers} workers); cache build {build:.0f} img/s; cache read {read:.0f} img/s "
        f"(random batches of {BATCH}, warm page cache); read/decode {read / one:.0f}x (1 worker), "
        f"{read / many:.0f}x ({args.workers} workers); reopen {reopen * 1000:.0f} ms; first epoch gather "
        f"{min(plain) * 1000:.0f} ms, with checksums {min(checked) * 1000:.0f} ms (ratio {check_ratio:.2f}; "
        f"{check_us:.1f} us/image = {share:.1%} of an H100 R50x1 first epoch); "
        f"load avg {load:.1f}"
    )
    row = f"| image cache | `{command}` | {args.device} | {args.date} | {git_commit()} | {figures} |"
    print(row)
    if args.results:
        with open(args.results, "a") as handle:
            handle.write(row + "\n")


if __name__ == "__main__":
    main()
