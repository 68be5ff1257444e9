"""xrstudy's fastai learner vs a plain PyTorch loop doing the same work on the same model and data.

    python benchmarks/bench_learner.py                      # resnetv2_tiny_bit, 32 px, batch 8, 20 steps x 7 repeats
    python benchmarks/bench_learner.py --arch resnetv2_50x1_bit --size 32 --batch 4 --steps 4 --repeats 4
    python benchmarks/bench_learner.py --device cuda --resident --compile \
        --arch resnetv2_50x1_bit --size 224 --batch 128
    python benchmarks/bench_learner.py --device cuda --stream --compile --arch resnetv2_50x1_bit --size 224 --batch 128
    python benchmarks/bench_learner.py --history --log-every 1 --steps 40   # the training history's cost

Default: both sides iterate the same step-indexed batches gathered from one uint8 image array
(`StepLoader`, with its background prefetch), the same augmentation on the device (one affine_grid /
grid_sample), normalisation, masked BCE, SGD Nesterov with AGC, the same LR schedule, no host syncs
per step; on CUDA bf16 autocast and channels_last. The learner (fastai's own Learner and DataLoaders)
adds only fastai's callback dispatch and its Learner / optimiser set-up (timed too).
--resident: both sides cycle through the same batches made once on the device (no data path at all):
  the learner's own overhead over a raw timm loop.
--stream: the learner fed from a memory-mapped uint8 file in the image cache's layout (the training
  data path) vs the same learner on device-resident batches; prints images/s of both, their ratio and
  the share of the time the step waited for a batch. With --checked every gathered row is first checked
  against its CRC-32 (`ImageCache.check_rows`, as training does), from a fresh state each run: every
  read is a first read, the worst case of the cache's checksums.
  the share of the time the step waited for a batch.
--history: the learner with its HistoryLogger (history.csv + TensorBoard every --log-every steps; 0 =
  the run's default interval, i.e. every step up to 200 steps) vs the same learner without, the
  training steps alone timed (the writer's set-up is once per run); prints what logging costs in % of
  step time (goal <= 2 % at the default interval).
Runs alternate (learner, raw, raw, learner, ...) after a warm-up. Shared machines are noisy and noise
only ever adds time, so ratios are taken from the fastest repeat of each side (medians and process CPU
time are printed too); ratio = raw / learner time per step (1.0 = no overhead). A last line
`RESULT key=value ...` is for benchmarks/gpu_suite.sh.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import adaptive_clip_grad

from xrstudy.config import RunConfig
from xrstudy.pixels.loaders import Augment, Batching, Split, StepLoader
from xrstudy.training.callbacks import normalise
from xrstudy.training.history import log_interval
from xrstudy.training.learner import TrainSetup, fit, make_learner, masked_bce_with_logits
from xrstudy.training.models import create_model
from xrstudy.training.recipes import AGC_CLIP, MOMENTUM, Schedule


def make_data(n: int, size: int, classes: int, seed: int = 0, images: np.ndarray | None = None) -> Split:
    rng = np.random.default_rng(seed)
    if images is None:
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    n = len(images)
    targets = rng.integers(0, 2, (n, classes)).astype(np.float32)
    targets[rng.random((n, classes)) < 0.2] = np.nan
    return Split.of(images, torch.from_numpy(targets))


def with_checksums(split: Split) -> Callable[[], Split]:
    """A maker of `split` checked as the training path checks cache rows: a fresh ImageCache (no row
    verified yet) over the same memmap, with each row's CRC-32 recorded once here."""
    import dataclasses

    from xrstudy.pixels.imagecache import ImageCache, slot_checksum

    pixels = split.images.view(np.ndarray)
    checksums = np.array([slot_checksum(row) for row in pixels], dtype=np.uint32)
    paths = tuple(f"{i:08d}" for i in range(len(pixels)))

    def fresh() -> Split:
        cache = ImageCache(Path("."), "bench", paths, pixels.shape[1], "L", split.images, {}, checksums=checksums)
        return dataclasses.replace(split, check=cache.check_rows)

    return fresh


def memmap_images(folder: Path, n: int, size: int) -> np.ndarray:
    """n x size x size random uint8 in a file, opened read-only as np.memmap (the cache's layout)."""
    path = folder / f"images-{n}-{size}.u8"
    if not path.exists() or path.stat().st_size != n * size * size:
        rng = np.random.default_rng(0)
        with open(path, "wb") as handle:
            for first in range(0, n, 1024):
                handle.write(rng.integers(0, 256, min(1024, n - first) * size * size, dtype=np.uint8).tobytes())
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, size, size))


def make_model(arch: str, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(RunConfig(kind="pretrain", sources=("bench",), arch=arch), classes)


class ResidentLoader:
    """Batches made once on the device, cycled: what the learner trains on with no data path at all
    (the same interface as xrstudy.pixels.loaders.StepLoader, as far as the learner uses it)."""

    n_inp = 2

    def __init__(self, batches: Sequence[tuple[Any, ...]], batching: Batching, start: int, stop: int):
        self.batches, self.batching, self.start, self.stop = batches, batching, start, stop
        self.stats = {"wait_s": 0.0}

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.batching.micro_steps

    def between(self, start: int, stop: int) -> ResidentLoader:
        return ResidentLoader(self.batches, self.batching, start, stop)

    def to(self, device: torch.device) -> ResidentLoader:
        return self

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return (self.batches[i % len(self.batches)] for i in range(len(self)))


def resident_batches(split: Split, setup: TrainSetup, count: int = 8) -> list[tuple[Any, ...]]:
    return list(StepLoader(split, setup.batching, 0, count, setup.device))


def raw_loop(model: torch.nn.Module, batches: Callable[[], Any], setup: TrainSetup) -> None:
    """The same training steps, hand-written: what the learner must keep up with."""
    device = setup.device
    model = model.to(device).train()
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    head = set(model.get_classifier().parameters())
    clipped = [p for p in model.parameters() if p not in head]
    opt = torch.optim.SGD(
        model.parameters(), lr=setup.schedule.base_lr, momentum=MOMENTUM, nesterov=True, weight_decay=setup.weight_decay
    )
    forward = torch.compile(model) if setup.compile else model
    size = setup.augment.out_size
    for step, (images, draws, targets, weights) in zip(range(setup.schedule.steps), batches()):
        images = images.to(torch.float32, memory_format=torch.contiguous_format)
        grid = F.affine_grid(draws["theta"], [len(images), images.shape[1], size, size], align_corners=False)
        images = normalise(
            F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False),
            setup.mean,
            setup.std,
            setup.channels_last,
        )
        for group in opt.param_groups:
            group["lr"] = setup.schedule.lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.precision == "bf16"):
            logits = forward(images)
        loss = masked_bce_with_logits(logits.float(), targets, weights)
        loss.backward()
        adaptive_clip_grad(clipped, clip_factor=AGC_CLIP)
        opt.step()
        opt.zero_grad()


def learner_loop(
    model: torch.nn.Module, split: Split, setup: TrainSetup, resident: Sequence[tuple[Any, ...]] | None = None
) -> dict[str, float]:
    learn = make_learner(model, split, setup)
    if resident is not None:
        learn.dls.train = ResidentLoader(resident, setup.batching, 0, setup.schedule.steps)
    stats = learn.dls.train.stats
    fit(learn)
    return stats


def history_bench(args: argparse.Namespace, setup: TrainSetup, split: Split, device: torch.device) -> None:
    """The same learner with and without its training history, alternating; only `fit` is timed."""
    from xrstudy.training.monitor import HistoryLogger

    every = log_interval(args.steps, args.log_every)
    model = make_model(args.arch, args.classes)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    times: dict[str, list[float]] = {"logging": [], "silent": []}
    cpu: dict[str, list[float]] = {"logging": [], "silent": []}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as folder:

        def once(logged: bool) -> tuple[float, float]:
            model.load_state_dict(initial)
            watch = (
                HistoryLogger(
                    Path(folder) / "run",
                    total_steps=args.steps,
                    every=every,
                    global_batch=args.batch,
                    train_size=len(split),
                )
                if logged
                else None
            )
            learn = make_learner(model, split, setup, [watch] if watch else [])
            if watch:
                watch.open(0)
            try:
                seconds, cpu_seconds, _ = timed(lambda: fit(learn), device, args.steps)
            finally:
                if watch:
                    watch.close()
            return seconds, cpu_seconds

        once(True), once(False)  # warm-up
        for repeat in range(args.repeats):
            for logged in (True, False) if repeat % 2 == 0 else (False, True):
                name = "logging" if logged else "silent"
                wall, cpu_time = once(logged)
                times[name].append(wall)
                cpu[name].append(cpu_time)
    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    cpu_best = {name: min(values) for name, values in cpu.items()}
    cost = best["logging"] / best["silent"] - 1
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; model {args.arch}, crop {args.size} px, batch {args.batch}")
    print(f"{args.steps} steps x {args.repeats} repeats per side, alternating")
    print(f"history every {every} step(s) ({'the default' if not args.log_every else '--log-every'})")
    for name in times:
        print(
            f"  {name:8s} best {1000 * best[name]:.2f} ms/step, median {1000 * median[name]:.2f}, "
            f"best CPU time {1000 * cpu_best[name]:.2f} ms/step"
        )
    print(
        f"logging costs {100 * cost:+.1f} % of step time (best wall), "
        f"{100 * (median['logging'] / median['silent'] - 1):+.1f} % (median wall), "
        f"{100 * (cpu_best['logging'] / cpu_best['silent'] - 1):+.1f} % (best CPU time)"
    )
    print("goal: <= 2 % at the default interval")
    print(
        f"RESULT mode=history arch={args.arch} size={args.size} batch={args.batch} every={every} "
        f"ratio={best['silent'] / best['logging']:.3f} cost_pct={100 * cost:.2f}"
    )


def timed(loop: Callable[[], Any], device: torch.device, steps: int) -> tuple[float, float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.process_time()
    out = loop()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps, (time.process_time() - cpu_started) / steps, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnetv2_tiny_bit")
    parser.add_argument("--size", type=int, default=32, help="training crop side (px)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    parser.add_argument("--resident", action="store_true", help="both sides on device-resident batches")
    parser.add_argument("--stream", action="store_true", help="learner: memory-mapped uint8 file vs resident batches")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=2,
        help="batches gathered ahead by the loader's thread (0: in the step's thread, as a loop without a data thread)",
    )
    parser.add_argument(
        "--checked", action="store_true", help="--stream: check each row's CRC-32 on first read (the cache's rule)"
    )
    parser.add_argument("--history", action="store_true", help="learner with / without its training history")
    parser.add_argument("--log-every", type=int, default=0, help="--history: steps between rows (0: the default)")
    parser.add_argument("--images", type=int, default=0, help="--stream: images in the file (default 32 x batch)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="--stream: where the uint8 file goes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    setup = TrainSetup(
        multilabel=True,
        num_classes=args.classes,
        schedule=Schedule(steps=args.steps, warmup=max(1, args.steps // 6), decays=(args.steps // 2,), base_lr=0.01),
        per_device_batch=args.batch,
        seed=0,
        augment=Augment(out_size=args.size, crop_fraction=1 / 1.1, flip=True),
        eval_size=args.size,
        weight_decay=1e-4,
        device=device,
        precision="bf16" if cuda else "fp32",
        channels_last=cuda,
        compile=args.compile,
        prefetch=args.prefetch,
    )
    side = round(args.size * 1.1)
    in_memory = make_data(max(4 * args.batch, 64), side, args.classes)
    if args.history:
        history_bench(args, setup, in_memory, device)
        return
    resident = resident_batches(in_memory, setup) if (args.resident or args.stream) else None
    if args.stream:
        streamed = make_data(
            0, side, args.classes, images=memmap_images(Path(args.dir), args.images or 32 * args.batch, side)
        )
        stream_split = with_checksums(streamed) if args.checked else lambda: streamed
        loops = {
            "learner": lambda m: learner_loop(m, stream_split(), setup),  # "learner" = the streaming path here
            "raw": lambda m: learner_loop(m, in_memory, setup, resident),
        }  # "raw" = the same learner, resident
    elif args.resident:
        loops = {
            "learner": lambda m: learner_loop(m, in_memory, setup, resident),
            "raw": lambda m: raw_loop(m, lambda: (resident[i % len(resident)] for i in range(args.steps)), setup),
        }
    else:
        loops = {
            "learner": lambda m: learner_loop(m, in_memory, setup),
            "raw": lambda m: raw_loop(
                m, lambda: iter(StepLoader(in_memory, setup.batching, 0, args.steps, device)), setup
            ),
        }
    times: dict[str, list[float]] = {name: [] for name in loops}
    cpu: dict[str, list[float]] = {name: [] for name in loops}
    waits: list[float] = []
    # One model per side, reset to the same initial weights before every run: a compiled graph is then
    # reused (torch.compile of the same module object hits dynamo's cache instead of recompiling).
    models = {name: make_model(args.arch, args.classes) for name in loops}
    initial = {k: v.detach().clone() for k, v in models["raw"].state_dict().items()}

    def fresh(name: str) -> torch.nn.Module:
        models[name].load_state_dict(initial)
        return models[name]

    for name, loop in loops.items():  # warm-up (allocator, cuDNN autotuning, compilation)
        loop(fresh(name))
    for repeat in range(args.repeats):
        order = list(loops.items()) if repeat % 2 == 0 else list(loops.items())[::-1]  # no first-mover bias
        for name, loop in order:
            model = fresh(name)
            per_step, cpu_step, stats = timed(functools.partial(loop, model), device, args.steps)
            times[name].append(per_step)
            cpu[name].append(cpu_step)
            if name == "learner" and isinstance(stats, dict):
                waits.append(stats.get("wait_s", 0.0) / (per_step * args.steps))
    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = best["raw"] / best["learner"]
    where = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    mode = (
        ("stream_checked" if args.checked else "stream") if args.stream else "resident" if args.resident else "loader"
    )
    labels = {"learner": "streamed" if args.stream else "learner", "raw": "resident" if args.stream else "raw"}
    print(f"device: {where}; torch {torch.__version__}; mode {mode}{' compiled' if args.compile else ''}")
    print(f"model {args.arch}, crop {args.size} px, batch {args.batch}, {args.steps} steps x {args.repeats} repeats")
    for name in loops:
        spread = ", ".join(f"{1000 * t:.1f}" for t in times[name])
        print(
            f"  {labels[name]:8s} best {1000 * best[name]:.2f} ms/step ({args.batch / best[name]:.0f} img/s), "
            f"median {1000 * median[name]:.2f}  (all: {spread})"
        )
    cpu_best = {name: min(values) for name, values in cpu.items()}
    print(
        f"  CPU time (process, all threads) best: {labels['learner']} {1000 * cpu_best['learner']:.2f} ms/step, "
        f"{labels['raw']} {1000 * cpu_best['raw']:.2f} ms/step"
    )
    wait = min(waits) if waits else 0.0
    print(
        f"ratio {labels['raw']}/{labels['learner']} = {ratio:.3f} (best wall), "
        f"{median['raw'] / median['learner']:.3f} (median wall), {cpu_best['raw'] / cpu_best['learner']:.3f} "
        f"(best CPU time); the step waited for data {100 * wait:.1f} % of the time"
    )
    print(
        f"RESULT mode={mode} compile={int(args.compile)} arch={args.arch} size={args.size} batch={args.batch} "
        f"ratio={ratio:.3f} img_s={args.batch / best['learner']:.1f} wait={wait:.3f}"
    )


if __name__ == "__main__":
    main()
