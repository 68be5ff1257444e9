"""xrstudy's fastai learner vs a plain PyTorch loop doing the same work on the same model and data.

    python benchmarks/bench_learner.py                      # resnetv2_tiny_bit, 32 px, batch 8, 20 steps x 7 repeats
    python benchmarks/bench_learner.py --arch resnetv2_50x1_bit --size 32 --batch 4 --steps 4 --repeats 4

Both sides: the same step-indexed batches gathered from one uint8 image array (`StepLoader`, with its
background prefetch), the same augmentation on the device (one affine_grid / grid_sample),
normalisation, masked BCE, SGD Nesterov with AGC, the same LR schedule, no host syncs per step. The
learner (fastai's own Learner and DataLoaders) adds only fastai's callback dispatch and its
Learner / optimiser set-up (timed too). Runs alternate (learner, raw, raw,
learner, ...) after a warm-up. Shared machines are noisy and noise only ever adds time, so the ratio
is taken from the fastest repeat of each side (medians and process CPU time are printed too);
ratio = raw / learner time per step (= learner throughput relative to the plain loop; 1.0 = no
overhead). Small crops make a step short, which exposes per-step overhead most.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import adaptive_clip_grad

from xrstudy.callbacks import normalise
from xrstudy.config import RunConfig
from xrstudy.hyper import AGC_CLIP, MOMENTUM, Schedule
from xrstudy.learner import TrainSetup, fit, make_learner, masked_bce_with_logits
from xrstudy.loaders import Augment, Split, StepLoader
from xrstudy.models import create_model


def make_data(n: int, size: int, classes: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    targets = rng.integers(0, 2, (n, classes)).astype(np.float32)
    targets[rng.random((n, classes)) < 0.2] = np.nan
    return Split.of(images, torch.from_numpy(targets))


def make_model(arch: str, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(RunConfig(kind="pretrain", sources=("bench",), arch=arch), classes)


def raw_loop(model: torch.nn.Module, split: Split, setup: TrainSetup) -> None:
    """The same training steps, hand-written: what the learner must keep up with."""
    device = setup.device
    model = model.to(device).train()
    head = set(model.get_classifier().parameters())
    clipped = [p for p in model.parameters() if p not in head]
    opt = torch.optim.SGD(model.parameters(), lr=setup.schedule.base_lr, momentum=MOMENTUM, nesterov=True,
                          weight_decay=setup.weight_decay)
    loader = StepLoader(split, setup.batching, 0, setup.schedule.steps, device)
    size = setup.augment.out_size
    for step, (images, draws, targets, denominator) in enumerate(loader):
        images = images.to(torch.float32, memory_format=torch.contiguous_format)
        grid = F.affine_grid(draws["theta"], [len(images), images.shape[1], size, size], align_corners=False)
        images = normalise(F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False),
                           setup.mean, setup.std, setup.channels_last)
        for group in opt.param_groups:
            group["lr"] = setup.schedule.lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.precision == "bf16"):
            logits = model(images)
        loss = masked_bce_with_logits(logits.float(), targets, denominator)
        loss.backward()
        adaptive_clip_grad(clipped, clip_factor=AGC_CLIP)
        opt.step()
        opt.zero_grad()


def learner_loop(model: torch.nn.Module, split: Split, setup: TrainSetup) -> None:
    fit(make_learner(model, split, setup))


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    split = make_data(max(4 * args.batch, 64), round(args.size * 1.1), args.classes)
    setup = TrainSetup(
        multilabel=True, num_classes=args.classes,
        schedule=Schedule(steps=args.steps, warmup=max(1, args.steps // 6), decays=(args.steps // 2,), base_lr=0.01),
        per_device_batch=args.batch, seed=0,
        augment=Augment(out_size=args.size, crop_fraction=1 / 1.1, flip=True),
        eval_size=args.size, weight_decay=1e-4, device=device,
        precision="bf16" if device.type == "cuda" else "fp32", channels_last=device.type == "cuda",
    )
    loops = {"learner": learner_loop, "raw": raw_loop}
    times: dict[str, list[float]] = {name: [] for name in loops}
    cpu: dict[str, list[float]] = {name: [] for name in loops}
    for name, loop in loops.items():  # warm-up (allocator, first-call overheads)
        loop(make_model(args.arch, args.classes), split, setup)
    for repeat in range(args.repeats):
        order = list(loops.items()) if repeat % 2 == 0 else list(loops.items())[::-1]  # no first-mover bias
        for name, loop in order:
            model = make_model(args.arch, args.classes)
            if device.type == "cuda":
                torch.cuda.synchronize()
            started, cpu_started = time.perf_counter(), time.process_time()
            loop(model, split, setup)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - started) / args.steps)
            cpu[name].append((time.process_time() - cpu_started) / args.steps)
    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = best["raw"] / best["learner"]
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {where}; torch {torch.__version__}")
    print(f"model {args.arch}, crop {args.size} px, batch {args.batch}, {args.steps} steps x {args.repeats} repeats")
    for name in loops:
        spread = ", ".join(f"{1000 * t:.1f}" for t in times[name])
        print(f"  {name:8s} best {1000 * best[name]:.2f} ms/step, median {1000 * median[name]:.2f}  (all: {spread})")
    cpu_best = {name: min(values) for name, values in cpu.items()}
    print(f"  CPU time (process, all threads) best: learner {1000 * cpu_best['learner']:.2f} ms/step, "
          f"raw {1000 * cpu_best['raw']:.2f} ms/step")
    print(f"ratio raw/learner = {ratio:.3f} (best wall), {median['raw'] / median['learner']:.3f} (median wall), "
          f"{cpu_best['raw'] / cpu_best['learner']:.3f} (best CPU time)"
          "  -- learner throughput relative to the plain loop; goal >= 0.9")


if __name__ == "__main__":
    main()
