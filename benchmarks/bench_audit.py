"""Content hashing of `xrstudy data audit`: images/s by file bytes and by decoded pixels, 1 and N threads,
and a rerun answered from the hash cache, measured in one run (ratios hold on a loaded machine).

    python benchmarks/bench_audit.py [--n 1000] [--size 512] [--workers 2]

The files are 8-bit grey PNGs of smooth noise (X-ray-like compression), written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xrstudy.data import audit


def write_images(folder: Path, n: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    base = np.add.outer(np.arange(size), np.arange(size)) / (2 * size) * 200
    paths = []
    for i in range(n):
        image = np.clip(base + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


def timed(paths: list[str], content: str, workers: int, cache: Path | None) -> tuple[float, audit.Hashed]:
    start = time.perf_counter()
    hashed = audit.content_digests(paths, content, workers=workers, cache_dir=cache)
    return time.perf_counter() - start, hashed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as scratch:
        folder = Path(scratch)
        (folder / "images").mkdir()
        paths = write_images(folder / "images", args.n, args.size)
        megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
        print(
            f"{args.n} PNGs of {args.size} px ({megabytes:.0f} MB), {len(os.sched_getaffinity(0))} cores, "
            f"load avg {os.getloadavg()[0]:.1f}"
        )
        rates = {}
        for content in ("bytes", "pixels"):
            for workers in sorted({1, args.workers}):
                seconds, hashed = timed(paths, content, workers, None)
                assert len(hashed.digests) == args.n
                rates[(content, workers)] = args.n / seconds
                print(f"  {content:6s} {workers} thread(s): {args.n / seconds:8.0f} images/s ({seconds:.2f} s)")
        cache = folder / "cache"
        first, _ = timed(paths, "bytes", args.workers, cache)
        again, hashed = timed(paths, "bytes", args.workers, cache)
        assert hashed.from_cache == args.n
        print(
            f"  bytes with the cache: first {first:.2f} s, rerun {again:.3f} s ({first / again:.0f}x); "
            f"pixels / bytes speed {rates[('pixels', args.workers)] / rates[('bytes', args.workers)]:.2f}; "
            f"{args.workers} threads / 1 (bytes) {rates[('bytes', args.workers)] / rates[('bytes', 1)]:.2f}"
        )


if __name__ == "__main__":
    main()
