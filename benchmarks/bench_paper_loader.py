"""What loader_mode paper and weight_init torch cost, measured in one run (prints ratios, no assertion).

    python benchmarks/bench_paper_loader.py

1. Host time to plan and cut a step (positions, MixUp partners, loss weights of the global batch, then
   every micro-batch's slice), loader_mode paper vs uniform: an X-ray pre-training step (1,024 images,
   7 classes, 16 micro-batches of 64) and a transfer step (128 images in the authors' 4-image groups,
   MixUp on, 1 micro-batch).
2. The padding of the authors' partial micro-batches (positions computed / images that count), per
   paper transfer cell whose set does not split evenly, from the registry's published sizes.
3. Building R50x1 from scratch: weight_init torch (timm's init, then PyTorch's in the authors' order)
   vs timm; and the per-conv std ratio timm / torch it removes.
"""

from __future__ import annotations

import statistics
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")

from xrstudy.config import RunConfig  # noqa: E402 - after the warning filter
from xrstudy.pixels.loaders import Augment, Batching, Split, StepLoader  # noqa: E402
from xrstudy.training import recipes  # noqa: E402
from xrstudy.training.models import create_model  # noqa: E402

PAPER_SHOTS = {
    "cifar10": (1, 5, 10, 100, 500, 0),
    "cifar100": (1, 5, 10, 100, 500, 0),
    "pets": (1, 5, 10, 0),
    "flowers102": (1, 5, 10, 0),
    "covidx": (1, 5, 10, 100, 500, 0),
    "tuberculosis": (1, 5, 10, 100, 0),
    "padchest-cl": (1, 5, 10, 100, 0),
}
CLASSES = {"cifar10": 10, "cifar100": 100, "pets": 37, "flowers102": 102, "covidx": 2, "tuberculosis": 2}
CLASSES["padchest-cl"] = 26  # 27 outputs, one class without a single-label image
FULL = {"cifar10": 50_000, "cifar100": 50_000, "pets": 3_680, "flowers102": 6_149, "covidx": 15_952}
FULL.update({"tuberculosis": 679, "padchest-cl": 37_387})


def plan_seconds(split: Split, batching: Batching, steps: int) -> float:
    loader = StepLoader(split, batching, 0, steps)
    started = time.perf_counter()
    for step in range(steps):
        for micro in range(batching.micro_steps):
            loader.positions(step, 0, micro)
            loader.pairing(step, 0, micro)
            loader.weights(step, 0, micro)
    return (time.perf_counter() - started) / steps


def main() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (100_000, 7)).astype(np.float32)
    targets[rng.random(targets.shape) < 0.4] = np.nan
    xray = Split.of(np.zeros((100_000, 1, 1), np.uint8), torch.from_numpy(targets))
    pretrain = Batching(per_device_batch=1024, micro_batch=64, seed=0, augment=Augment(out_size=1))
    uniform = plan_seconds(xray, pretrain, 30)
    paper = plan_seconds(xray, Batching(**{**pretrain.__dict__, "group": 16}), 30)
    print(f"pre-training step plan (1,024 images, 16 micro-batches): uniform {uniform * 1e3:.2f} ms, paper")
    print(f"  {paper * 1e3:.2f} ms; ratio paper / uniform = {paper / uniform:.2f}")
    pets = Split.of(np.zeros((3680, 1, 1), np.uint8), torch.arange(3680) % 37)
    transfer = Batching(per_device_batch=128, seed=0, augment=Augment(out_size=1), multilabel=False, mixup_alpha=0.1)
    uniform = plan_seconds(pets, transfer, 200)
    paper = plan_seconds(pets, Batching(**{**transfer.__dict__, "group": 4, "group_stream": True}), 200)
    print(f"transfer step plan (128 images, MixUp): uniform {uniform * 1e3:.2f} ms, paper (32 groups of 4)")
    print(f"  {paper * 1e3:.2f} ms; ratio paper / uniform = {paper / uniform:.2f}")

    print("padding of partial micro-batches (positions computed / images that count), paper transfer cells:")
    for target, shots_list in PAPER_SHOTS.items():
        group = recipes.paper_micro_batch(target)
        for shots in shots_list:
            n = FULL[target] if shots == 0 else min(FULL[target], shots * CLASSES[target])
            if n < group or n % group == 0:
                continue
            slots = -(-n // group)
            print(f"  {target} {shots or 'full'}-shot: n={n}, group {group}: {slots * group / n:.3f}")

    cfg = RunConfig(kind="pretrain", sources=("chexpert",), arch="resnetv2_50x1_bit")
    timed = {}
    for init in ("timm", "torch"):
        started = time.perf_counter()
        model = create_model(cfg.replace(weight_init=init), 13)
        timed[init] = time.perf_counter() - started
        if init == "timm":
            stds = {n: m.weight.std().item() for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
        else:
            ratios = [stds[n] / m.weight.std().item() for n, m in model.named_modules() if n in stds]
    print(f"R50x1 from scratch: timm {timed['timm']:.2f} s, torch {timed['torch']:.2f} s")
    print(f"  ratio torch / timm = {timed['torch'] / timed['timm']:.2f}")
    print(
        f"per-conv std timm / torch init, R50x1 ({len(ratios)} convs incl. the head): min {min(ratios):.3f}, "
        f"median {statistics.median(ratios):.3f}, max {max(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
