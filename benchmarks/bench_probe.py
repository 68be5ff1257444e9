"""The linear probe's costs, measured in one run: feature extraction vs a training step, and a cached feature file.

    python benchmarks/bench_probe.py                                    # resnetv2_tiny_bit, 32 px, on this CPU
    python benchmarks/bench_probe.py --device cuda --arch resnetv2_50x1_bit --size 224 --batch 128 --images 4096

1. extraction / training: images/s of `xrstudy.training.probe.extract_features` (fp32, the evaluation view,
   streamed from a memory-mapped uint8 file in the image cache's layout) over images/s of a plain training step
   on the same model and batch (forward + backward + SGD; bf16 autocast and channels_last on CUDA, fp32 on a
   CPU). `xrstudy sweep plan` prices a probe's extraction at 1 / recipes.FORWARD_SHARE = 3 x the training
   images/s: this ratio checks that assumption (on CUDA it also carries fp32 features vs bf16 training).
2. reuse: seconds to get the features of every image the first time (extracted, written in parts, published)
   over the second (read from the finished file): what every further seed and shot count of a probe saves.
Shared machines are noisy and noise only adds time: each side keeps its fastest repeat. The last line
`RESULT key=value ...` is for benchmarks/gpu_suite.sh.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xrstudy.config import RunConfig
from xrstudy.pixels.loaders import Split
from xrstudy.training import probe, recipes
from xrstudy.training.callbacks import normalise
from xrstudy.training.models import create_model


def training_images_per_s(model, images: np.ndarray, batch: int, steps: int, device: torch.device) -> float:
    """A plain training step (forward, cross-entropy, backward, SGD) on batches gathered from `images`."""
    cuda = device.type == "cuda"
    model.train().requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    rng = np.random.default_rng(0)
    targets = torch.from_numpy(rng.integers(0, 10, batch)).to(device)

    def step(i: int) -> None:
        rows = (np.arange(batch) + i * batch) % len(images)
        x = torch.from_numpy(images[rows]).to(device).unsqueeze(1).float()
        x = normalise(x, (0.5,) * 3, (0.5,) * 3, cuda)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up (cuDNN autotuning, allocator)
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    if cuda:
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnetv2_tiny_bit")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="training batch; features are extracted at 2x")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    with tempfile.TemporaryDirectory(prefix="bench-probe-") as scratch:
        folder = Path(scratch)
        images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, (args.images, args.size, args.size))
        images[:] = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
        images.flush()
        images = np.load(folder / "images.npy", mmap_mode="r")  # read-only, as the image cache is mapped
        split = Split.of(images, torch.zeros(len(images)))
        cfg = RunConfig(target="cifar10", arch=args.arch)
        net = probe.backbone(create_model(cfg, num_classes=10)).to(device)
        if cuda:
            net = net.to(memory_format=torch.channels_last)
        feature_batch = 2 * args.batch  # recipes.probe_recipe: twice a training pass

        def extract(part: Split) -> np.ndarray:
            return probe.extract_features(
                net, part, eval_size=args.size, mean=(0.5,) * 3, std=(0.5,) * 3, batch=feature_batch, device=device
            )

        extract(Split.of(images[:feature_batch], torch.zeros(feature_batch)))  # warm-up
        extraction, first, second = [], [], []
        for repeat in range(args.repeats):
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            extract(split)
            if cuda:
                torch.cuda.synchronize()
            extraction.append(len(split) / (time.perf_counter() - started))
            key = probe.FeatureKey(f"bench-{repeat}", "weights", args.arch, args.size, (0.5,), (0.5,))
            started = time.perf_counter()
            built = probe.cached_features(folder / "features", key, split, extract)
            first.append(time.perf_counter() - started)
            started = time.perf_counter()
            read = probe.cached_features(folder / "features", key, split, extract)
            np.asarray(read.values[: len(split)]).sum()  # touch every feature, as a probe's rows do
            second.append(time.perf_counter() - started)
            assert built.extracted == len(split) and read.extracted == 0

        train_net = create_model(cfg, num_classes=10).to(device)
        if cuda:
            train_net = train_net.to(memory_format=torch.channels_last)
        training = [
            training_images_per_s(train_net, images, args.batch, args.steps, device) for _ in range(args.repeats)
        ]

    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    ratio = max(extraction) / max(training)
    print(f"device {name}; {args.arch} at {args.size} px; {args.images} images; training batch {args.batch}")
    print(f"extraction (fp32)   {max(extraction):10.1f} images/s  (repeats: {[round(v, 1) for v in extraction]})")
    print(f"training step       {max(training):10.1f} images/s  (repeats: {[round(v, 1) for v in training]})")
    print(f"extraction / training = {ratio:.2f}  (the plan assumes {1 / recipes.FORWARD_SHARE:.0f})")
    print(f"features first {min(first):.3f} s, read again {min(second):.4f} s: reuse {min(first) / min(second):.0f}x")
    print(
        f"RESULT mode=probe arch={args.arch} size={args.size} batch={args.batch} device={device.type} "
        f"extract_per_s={max(extraction):.1f} train_per_s={max(training):.1f} ratio={ratio:.2f} "
        f"reuse={min(first) / min(second):.0f}"
    )


if __name__ == "__main__":
    main()
