"""Memory of a training run as the dataset grows: does a rank's own memory stay bounded?

    python benchmarks/bench_memory.py                              # 20k and 200k images, 96 px, 1 and 2 processes
    python benchmarks/bench_memory.py --sizes 2000 20000 --px 64 --steps 10
    PYTHONPATH=/path/to/old/checkout python benchmarks/bench_memory.py ...   # the same cells on other code

For each size it writes a synthetic image cache in the real format (xrstudy.pixels.imagecache: images.u8 +
paths.txt + done.npy + checksums.npy + quarantine.json + meta.json under cache/{key[:16]}, so `build_cache` finds it
finished and decodes nothing), builds a 7-finding StudyData over it, and runs a short pre-training
cell through `xrstudy.training.train.run` (resnetv2_tiny_bit, grayscale, the X-ray pipeline at --px) in fresh
processes: one process, then two gloo processes (WORLD_SIZE=2, as torchrun sets it).

Printed per cell: cache bytes; peak anonymous resident memory per process (RssAnon of
/proc/<pid>/status, sampled every 5 ms by a thread in the process: heap, tensors, pinned buffers --
the file-backed pages of the memory-mapped cache, which the OS page cache shares between processes,
are not in it), also as growth over the process's footprint just before `train.run`; the time from
`train.run` to the first optimiser step; images/s over the steps after the first two. Then the
ratio (peak growth at the large size - at the small size) / (cache bytes large - small): how much
of each extra cache byte a rank holds itself (goal <= 0.1; a path that loads the split is >= 1).
A final line trains the same model directly on the large cache with the background prefetch off
and on (images/s).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia", "Pneumothorax")
HELD_OUT = 256  # valid and test images each; the rest trains


# ---- a synthetic cache in the real format ----------------------------------------------------------
def synthetic_paths(folder: Path, count: int) -> list[str]:
    return [str(folder / "img" / f"{i:07d}.png") for i in range(count)]


def write_synthetic_cache(cache_dir: Path, paths: list[str], size: int, mode: str = "L", seed: int = 0) -> Path:
    """A finished xrstudy image cache of random pixels for `paths` (written in 64 MB chunks)."""
    from xrstudy.pixels import imagecache

    unique = sorted(set(paths))
    key = imagecache.cache_key(unique, size, mode)
    folder = Path(cache_dir) / key[:16]
    shape = (len(unique), size, size) if mode == "L" else (len(unique), size, size, 3)
    if (folder / "quarantine.json").exists():
        return folder  # written by an earlier run
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_image = int(np.prod(shape[1:]))
    chunk = max(1, (64 << 20) // per_image)
    checksums = np.zeros(len(unique), dtype=np.uint32)  # a done slot needs its CRC-32, as the build records it
    with open(folder / "images.u8", "wb") as handle:
        for first in range(0, len(unique), chunk):
            count = min(chunk, len(unique) - first)
            pixels = rng.integers(0, 256, (count, per_image), dtype=np.uint8)
            checksums[first : first + count] = [imagecache.slot_checksum(row) for row in pixels]
            handle.write(pixels.tobytes())
    (folder / "paths.txt").write_text("".join(f"{p}\n" for p in unique))
    np.save(folder / "checksums.npy", checksums)
    np.save(folder / "done.npy", np.ones(len(unique), dtype=bool))
    (folder / "meta.json").write_text(
        json.dumps(
            {
                "format": imagecache.FORMAT_VERSION,
                "key": key,
                "size": size,
                "mode": mode,
                "count": len(unique),
                "shape": list(shape),
                "dtype": "uint8",
            }
        )
    )
    (folder / "quarantine.json").write_text("{}")
    return folder


def write_probe_images(paths: list[str], size: int, count: int = 20) -> None:
    """Real PNGs at the first training paths: code that probes an image before training finds one."""
    from PIL import Image

    for path in paths[:count]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size), 128, np.uint8)).save(path)


def synthetic_study(paths: list[str], seed: int = 0):  # -> xrstudy.data.studydata.StudyData
    import pandas as pd

    from xrstudy.data.studydata import StudyData

    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2, (len(paths), len(FINDINGS))).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    table = pd.DataFrame(values, columns=list(FINDINGS))
    table.insert(0, "path", paths)
    table.insert(0, "image_id", [f"i{i}" for i in range(len(paths))])
    cut = len(paths) - 2 * HELD_OUT
    parts = {
        "train": table[:cut],
        "valid": table[cut : cut + HELD_OUT].reset_index(drop=True),
        "test": table[cut + HELD_OUT :].reset_index(drop=True),
    }
    extra = {}
    if "universe_rows" in StudyData.__dataclass_fields__:  # as data.prepare makes it (older code: no such field)
        from xrstudy.data.studydata import universe_of

        universe, extra["universe_rows"] = universe_of(table, parts)
    else:
        universe = tuple(sorted(paths))
    return StudyData(
        **parts,
        classes=FINDINGS,
        multilabel=True,
        split_sha256="synthetic",
        modality="xray",
        universe=universe,
        **extra,
    )


# ---- measuring a process --------------------------------------------------------------------------
def rss_anon() -> int:
    """Anonymous resident bytes of this process (file-backed and shared page-cache pages excluded)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler:
    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak, self._stop = every_s, rss_anon(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(self.every_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())


def child(args: argparse.Namespace) -> None:
    """One process of a cell: build the study, run train.run under the sampler, print JSON."""
    import torch
    from fastai.callback.core import Callback

    from xrstudy.config import RunConfig
    from xrstudy.training import train

    torch.set_num_threads(args.threads)
    folder = Path(args.dir) / f"n{args.count}"
    paths = synthetic_paths(folder, args.count)
    study = synthetic_study(paths)

    class Clock(Callback):
        order = 99

        def __init__(self) -> None:
            self.times: list[float] = []

        def after_step(self) -> None:
            self.times.append(time.perf_counter())

        def before_batch(self) -> None:
            if self.training and not hasattr(self, "first"):
                self.first = time.perf_counter()

    clock = Clock()
    cfg = RunConfig(
        kind="pretrain",
        sources=("synthetic",),
        arch="resnetv2_tiny_bit",
        image_size=args.px,
        steps=args.steps,
        batch_size=args.batch,
        mixup=0.0,
        out_dir=str(folder / f"out{args.world}"),
        cache_dir=str(Path(args.dir) / "cache"),
        device="cpu",
    )
    before, error = rss_anon(), ""
    with PeakSampler() as sampler:
        started = time.perf_counter()
        try:
            train.run(cfg, study=study, callbacks=[clock])
        except Exception as err:  # noqa: BLE001 - reported: code under test may fail after training
            error = f"{type(err).__name__}: {str(err).splitlines()[-1][:80]}"
    timed = clock.times[2:]
    rate = (len(timed) - 1) * args.batch / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
    print(
        json.dumps(
            {
                "rank": int(os.environ.get("RANK", "0")),
                "before": before,
                "peak": sampler.peak,
                "first_step_s": clock.first - started,
                "images_per_s": rate,
                "error": error,
            }
        )
    )


def run_cell(args: argparse.Namespace, count: int, world: int) -> list[dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": str(args.threads),
        }
        command = [
            sys.executable,
            __file__,
            "--child",
            "--count",
            str(count),
            "--world",
            str(world),
            "--dir",
            args.dir,
            "--px",
            str(args.px),
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--threads",
            str(args.threads),
        ]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a benchmark process failed (exit {proc.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def prefetch_line(args: argparse.Namespace, count: int) -> str:
    """images/s of the learner on the large cache with the background prefetch off and on."""
    import torch

    from xrstudy.config import RunConfig
    from xrstudy.pixels.imagecache import build_cache
    from xrstudy.pixels.loaders import Augment, Split
    from xrstudy.training.learner import TrainSetup, fit, make_learner
    from xrstudy.training.models import create_model
    from xrstudy.training.recipes import Schedule

    torch.set_num_threads(args.threads)
    folder = Path(args.dir) / f"n{count}"
    cache = build_cache(synthetic_paths(folder, count), args.px, Path(args.dir) / "cache", "L")
    rng = np.random.default_rng(0)
    targets = torch.from_numpy(rng.integers(0, 2, (count, len(FINDINGS))).astype(np.float32))
    split = Split.of(cache.images, targets)
    rates = {}
    for prefetch in (0, 2, 0, 2):
        setup = TrainSetup(
            multilabel=True,
            num_classes=len(FINDINGS),
            per_device_batch=args.batch,
            seed=prefetch,
            schedule=Schedule(steps=args.steps, warmup=1, decays=(), base_lr=0.01),
            augment=Augment(out_size=args.px),
            eval_size=args.px,
            weight_decay=0.0,
            prefetch=prefetch,
        )
        model = create_model(RunConfig(kind="pretrain", sources=("b",), arch="resnetv2_tiny_bit"), len(FINDINGS))
        learn = make_learner(model, split, setup)
        started = time.perf_counter()
        fit(learn)
        rates.setdefault(prefetch, []).append(args.steps * args.batch / (time.perf_counter() - started))
    return (
        f"learner on the {count}-image cache, {args.steps} steps x {args.batch}: prefetch off "
        f"{max(rates[0]):.0f} img/s, prefetch 2 (background thread) {max(rates[2]):.0f} img/s (best of 2 each)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[20_000, 200_000], help="images in the two caches")
    parser.add_argument("--px", type=int, default=96, help="cached side length (grayscale)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="processes per cell")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "xrstudy-bench-memory"))
    parser.add_argument(
        "--skip-prefetch",
        action="store_true",
        help="leave out the prefetch off/on line (e.g. for code without xrstudy.pixels.loaders)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import xrstudy

    cache_bytes = {}
    for count in args.sizes:
        paths = synthetic_paths(Path(args.dir) / f"n{count}", count)
        folder = write_synthetic_cache(Path(args.dir) / "cache", paths, args.px)
        write_probe_images(paths, args.px)
        cache_bytes[count] = (folder / "images.u8").stat().st_size
    print(
        f"xrstudy from {Path(xrstudy.__file__).parent}; {args.steps} steps, global batch {args.batch}, "
        f"{args.px} px grayscale, {args.threads} torch thread(s) per process"
    )
    print(
        "| images | cache MB | processes | peak RssAnon MB per process (growth in train.run) "
        "| time to first step s | images/s |"
    )
    print("|---|---|---|---|---|---|")
    peaks: dict[tuple[int, int], float] = {}
    for world in args.worlds:
        for count in args.sizes:
            reports = run_cell(args, count, world)
            peak = max(r["peak"] for r in reports)
            growth = max(r["peak"] - r["before"] for r in reports)
            peaks[(world, count)] = peak
            first = max(r["first_step_s"] for r in reports)
            rate = reports[0]["images_per_s"]
            errors = "; ".join(sorted({r["error"] for r in reports if r.get("error")}))
            print(
                f"| {count} | {cache_bytes[count] / 1e6:.0f} | {world} | {peak / 1e6:.0f} ({growth / 1e6:+.0f}) "
                f"| {first:.2f} | {rate:.0f} |" + (f" after training: {errors}" if errors else "")
            )
    small, large = args.sizes
    for world in args.worlds:
        ratio = (peaks[(world, large)] - peaks[(world, small)]) / (cache_bytes[large] - cache_bytes[small])
        print(f"{world} process(es): peak RssAnon growth / cache growth = {ratio:.3f} (goal <= 0.1)")
    if not args.skip_prefetch:
        print(prefetch_line(args, large))


if __name__ == "__main__":
    main()
