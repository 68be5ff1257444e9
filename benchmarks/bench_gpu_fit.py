"""Images per GPU that fit in training memory: the estimate behind `xrstudy/training/tables/memory.csv` (no GPU).

    python benchmarks/bench_gpu_fit.py            # print the estimate and the check against the authors
    python benchmarks/bench_gpu_fit.py --write    # also rewrite the H100 rows of the package's memory table

The table is package data (`xrstudy/training/tables/memory.csv`, read by `xrstudy.training.cost` through
importlib.resources): `--write` rewrites the repository's copy, which the next install or wheel ships.

The model, per (arch, resolution), one training step with SGD + momentum under bf16 autocast:
- fixed: fp32 weights, gradients and momentum (12 bytes per parameter), autocast's bf16 weight copies
  (2 bytes per parameter), and what autograd saves of the weights (BiT's StdConv2d standardises every
  conv weight each step and keeps the result for backward: ~4 bytes per parameter);
- per image: the bytes autograd saves for backward, counted by running the timm model on the meta device
  (no memory, no compute) under `saved_tensors_hooks`, batch 2 minus batch 1, every tensor at fp32 (under
  bf16 autocast the conv inputs are bf16: the count is an upper bound);
- images per GPU: the largest power of two with fixed + n x per-image <= HEADROOM x the card's memory
  (the rest for cuDNN workspaces, the allocator's fragmentation, the CUDA context, evaluation batches).

Check against facts: the authors trained R152x4 on A100-40GB at 16 images per GPU at 224 px
(`train_local_batch_size: 16` in every X-ray pre-training config), 4 at 480 px (`batch: 128`,
`batch_split: 32` in `configs/finetune/*.yaml`) and 64 at 128 px (CIFAR: `batch_split: 2`). The model
must give at least those on that card; it gives exactly those (the authors' R152x4 choices are the
largest powers of two that fit; their R50x1 runs used the same micro-batches, far below what fits).
Not measured on a GPU: none was available to this project when it was written.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

TABLES = Path(__file__).resolve().parents[1] / "xrstudy" / "training" / "tables"  # the package data
HEADROOM = 0.8
CARDS_MIB = {"A100-40GB": 40_536, "H100": 81_559}  # memory.total that nvidia-smi reports
ARCHS = (  # the six BiT sizes of sweeps/scale.yaml
    "resnetv2_50x1_bit",
    "resnetv2_50x3_bit",
    "resnetv2_101x1_bit",
    "resnetv2_101x3_bit",
    "resnetv2_152x2_bit",
    "resnetv2_152x4_bit",
)
RESOLUTIONS = (128, 224, 480)
AUTHORS = {("resnetv2_152x4_bit", 128): 64, ("resnetv2_152x4_bit", 224): 16, ("resnetv2_152x4_bit", 480): 4}
SOURCE = (
    f"estimate (benchmarks/bench_gpu_fit.py): 18 B per parameter + autograd's saved bytes per image (meta "
    f"device, fp32) within {HEADROOM:.0%} of the card, power of two; the same model gives the authors' "
    f"R152x4 A100-40GB micro-batches (64 / 16 / 4 at 128 / 224 / 480 px)"
)


def saved_bytes(arch: str, side: int, batch: int) -> tuple[int, int]:
    """(bytes autograd saves for one forward of `batch` images, parameters), on the meta device."""
    import timm
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef

    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=10)
    weights = {StorageWeakRef(p.untyped_storage()).cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = StorageWeakRef(tensor.untyped_storage()).cdata  # one storage counted once (ReLU out = conv in)
        if key not in weights:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.empty(batch, 3, side, side, device="meta"))
    return sum(saved.values()), sum(p.numel() for p in model.parameters())


def images_per_gpu(arch: str, side: int, card_mib: int) -> tuple[int, float, float]:
    """(images, per-image GiB, fixed GiB) for one card."""
    one, params = saved_bytes(arch, side, 1)
    two, _ = saved_bytes(arch, side, 2)
    per_image = two - one
    fixed = 14 * params + (one - per_image)  # states + bf16 copies + the saved standardised weights
    room = HEADROOM * card_mib * 2**20 - fixed
    n = 1
    while 2 * n * per_image <= room:
        n *= 2
    return (n if n * per_image <= room else 0), per_image / 2**30, fixed / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the H100 rows of the package's memory table")
    args = parser.parse_args()
    rows = []
    for arch in ARCHS:
        for side in RESOLUTIONS:
            for card, mib in CARDS_MIB.items():
                n, per_image, fixed = images_per_gpu(arch, side, mib)
                authors = AUTHORS.get((arch, side)) if card == "A100-40GB" else None
                check = "" if authors is None else f"  authors {authors}: {'ok' if n == authors else 'DIFFERS'}"
                print(
                    f"{card:9s} {arch:20s} {side:4d} px  {per_image:6.3f} GiB/image  fixed {fixed:5.1f} GiB  "
                    f"-> {n:5d} images{check}"
                )
                if card == "H100":
                    rows.append(
                        {
                            "device": card,
                            "precision": "bf16",
                            "arch": arch,
                            "resolution": side,
                            "images_per_gpu": n,
                            "source": SOURCE,
                        }
                    )
    if args.write:
        path = TABLES / "memory.csv"
        with open(path, newline="") as handle:
            kept = [r for r in csv.DictReader(handle) if r["device"] != "H100"]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows + kept)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
