"""Batches for the learner, streamed from the memory-mapped uint8 image cache.

    train = Split(cache.images, rows, targets)            # cache rows + targets; no pixel is read yet
    loader = StepLoader(train, Batching(...), start=0, stop=500, device=device)
    for images, draws, targets, denominator in loader: ...   # one micro-batch per item

Design notes
- Nothing holds a split in memory. A split is a list of cache rows (plus targets); each micro-batch
  is gathered by its rows straight from the memory-mapped cache (`np.take`, which releases the GIL)
  into a staging buffer -- page-locked on CUDA, so the copy to the device is asynchronous -- by one
  background thread that runs `prefetch` batches ahead of the step. The OS page cache behind the
  memmap is shared by every rank on a node; what a rank holds itself is a few batches
  (benchmarks/bench_memory.py measures it).
- A step's batch is a pure function of (seed, step, rank): which images (a fresh order per data
  epoch, from the sampler), their augmentation (one affine view each) and the MixUp pairing and
  lambda. They are drawn here, on the host, in the prefetch thread; the device applies them
  (xrstudy.training.callbacks.PrepareBatch, MaskedMixUp). So a run resumed at step s sees exactly the
  batches of an uninterrupted run, and the "RNG state" of a checkpoint is just (seed, step).
- The global batch of step s is positions [s*B, (s+1)*B) of the epoch stream (so a batch larger
  than a few-shot training set wraps into the next epoch); rank r takes its slice of it, micro-batch
  m the m-th part of that slice. The augmentation is drawn for the whole global batch, so 1 or N
  processes see the same views. The masked BCE divides by the number of known targets of the whole
  global batch after MixUp, counted here from the targets: N processes x M micro-batches compute the
  1-process loss of the step up to float summation order, with no collective besides DDP's own.
  MixUp pairs images within what a device holds at once (its micro-batch), as BiT and the authors'
  finetune.py do, so with MixUp on the pairing depends on the per-device micro-batch.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from fastai.torch_core import to_detach

from xrstudy.pixels.prefetch import Prefetcher

Sampler = Literal["shuffle", "oversample"]
DEFAULT_PREFETCH = 2  # batches gathered ahead of the step (benchmarks/bench_memory.py: 0 vs 2)
CPU = torch.device("cpu")  # default device of loaders built without one


# ---- counter-based randomness -----------------------------------------------------------------
def counter_rng(seed: int, stream: str, step: int, rank: int = 0) -> np.random.Generator:
    """A generator that depends only on its arguments (no hidden state to save or restore)."""
    key = hashlib.blake2b(f"{seed}:{stream}:{step}:{rank}".encode(), digest_size=16).digest()
    return np.random.default_rng(list(np.frombuffer(key, dtype=np.uint32)))


# ---- a split: rows of the image cache ---------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One split as rows of an image array that stays where it is (the cache's read-only memmap).

    images: N x H x W (grey) or N x H x W x 3 (colour) uint8, the layout of xrstudy.pixels.imagecache' cache.
    rows: int64 rows of `images` in this split, in table order.
    targets: float32 len x K with NaN for unknown (multi-label) or int64 class indices (single-label).
    hw: original (height, width) per row when the cache squashed each image to a square (the BiT
        pipeline's aspect-true random crops need it); None when the cached square is the image.
    check: called with the rows of every gather before they are read (the cache's `check_rows`: its
        checksums), so damaged pixels stop the run instead of being trained on; None reads unchecked.
    """

    images: np.ndarray
    rows: np.ndarray
    targets: torch.Tensor
    hw: np.ndarray | None = None
    check: Callable[[np.ndarray], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = tuple(self.images.shape)
        if self.images.dtype != np.uint8 or not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 3)):
            raise ValueError(
                f"Split.images: expected uint8 N x H x W or N x H x W x 3, got {self.images.dtype} {shape}"
            )
        rows = np.asarray(self.rows, dtype=np.int64)
        object.__setattr__(self, "rows", rows)
        if rows.ndim != 1 or len(rows) != len(self.targets):
            raise ValueError(f"Split: {len(rows)} rows but {len(self.targets)} targets")
        if len(rows) and (rows.min() < 0 or rows.max() >= shape[0]):
            raise ValueError(f"Split.rows: outside the {shape[0]} images ({rows.min()}..{rows.max()})")
        if self.hw is not None and np.shape(self.hw) != (len(rows), 2):
            raise ValueError(f"Split.hw: expected {len(rows)} x 2 original sizes, got {np.shape(self.hw)}")

    @classmethod
    def of(cls, images: np.ndarray, targets: torch.Tensor, hw: np.ndarray | None = None) -> Split:
        """Every row of `images`, in order (tests, benchmarks)."""
        return cls(images, np.arange(len(images)), targets, hw)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def gather(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images at split positions, read from `images` (into `out` when given)."""
        rows = self.rows[positions]
        if self.check is not None:
            self.check(rows)
        if out is None:
            return np.take(self.images, rows, axis=0)
        return np.take(self.images, rows, axis=0, out=out[: len(rows)])


def empty_like(split: Split) -> Split:
    return Split(
        split.images, split.rows[:0], split.targets[:0], None if split.hw is None else split.hw[:0], split.check
    )


# ---- augmentation draws --------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """A random affine view of each image (sampled on the device by grid_sample), drawn per sample.

    BiT transfer (the authors' build_transforms "bit": Resize(resize) of the shorter side, aspect kept,
    RandomCrop(crop), RandomHorizontalFlip): `crop_fraction` = crop / resize of the shorter side,
    uniform crop position. The cache holds the whole image squashed to a square, so with the
    original (height, width) of each image the crop is taken aspect-true: along the longer side it
    covers crop / (resize * long / short) of the image.
    X-ray (their cohen_aug: albumentations ShiftScaleRotate(shift_limit=0.25, scale_limit=0.1,
    rotate_limit=45), then HorizontalFlip(p=0.5)): zoom 1 +- scale, rotation +- rotate_deg, a shift of
    up to `shift` of the image side applied after rotation and zoom (in output coordinates, as
    cv2.warpAffine does), borders reflected.
    """

    out_size: int
    crop_fraction: float = 1.0
    shift: float = 0.0
    scale: float = 0.0
    rotate_deg: float = 0.0
    flip: bool = True
    padding: str = "zeros"  # grid_sample padding_mode for pixels the view takes from outside the image

    def thetas(self, u: torch.Tensor, hw: np.ndarray | None = None) -> torch.Tensor:
        """B x 2 x 3 affine matrices (affine_grid's) from B x 5 uniform draws in [-1, 1]."""
        zoom = 1.0 + self.scale * u[:, 0]
        angle = math.radians(self.rotate_deg) * u[:, 1]
        fx = fy = torch.full((len(u),), self.crop_fraction)
        if hw is not None:  # aspect-true crop fractions of a squashed image
            h, w = (torch.from_numpy(np.maximum(hw[:, i], 1).astype(np.float32)) for i in (0, 1))
            short = torch.minimum(h, w)
            fy, fx = self.crop_fraction * short / h, self.crop_fraction * short / w
        sx, sy = fx / zoom, fy / zoom
        cos, sin = torch.cos(angle), torch.sin(angle)
        flip = torch.where(u[:, 4] < 0, -1.0, 1.0) if self.flip else torch.ones(len(u))
        dx, dy = 2 * self.shift * u[:, 2], 2 * self.shift * u[:, 3]  # shift in output coordinates
        tx = (1.0 - fx) * u[:, 2] - (cos * sx * dx - sin * sy * dy)  # crop position + rotated shift
        ty = (1.0 - fy) * u[:, 3] - (sin * sx * dx + cos * sy * dy)
        return torch.stack(
            [torch.stack([cos * sx * flip, -sin * sy, tx], 1), torch.stack([sin * sx * flip, cos * sy, ty], 1)], 1
        )


# ---- samplers: the order of one data epoch ---------------------------------------------------------
def shuffled(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(len(targets))


def class_balanced(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n draws with replacement, each example weighted n / count(its class): the authors'
    WeightedRandomSampler(weights, len(weights)) in finetune.py, as a function of the generator."""
    if targets.ndim != 1:
        raise ValueError("sampler 'oversample' balances single-label classes; this split is multi-label")
    counts = np.bincount(targets)
    weights = len(targets) / counts[targets]
    return rng.choice(len(targets), size=len(targets), replace=True, p=weights / weights.sum())


SAMPLERS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "shuffle": shuffled,
    "oversample": class_balanced,
}


def _device_images(images: np.ndarray, buffer: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """B x H x W (x 3) host uint8 -> B x C x H x W uint8 on `device` (a view; PrepareBatch makes it float)."""
    tensor = torch.from_numpy(images) if buffer is None else buffer[: len(images)]
    tensor = tensor.to(device, non_blocking=True)
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)


def _move(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


# ---- training: micro-batches of optimiser steps ---------------------------------------------------
@dataclass(frozen=True)
class Batching:
    """How a step's global batch is made: everything besides the data and the step range."""

    per_device_batch: int  # images per device per optimiser step (global batch / world)
    seed: int
    augment: Augment
    micro_batch: int = 0  # images per forward pass; 0 = the whole per-device batch
    multilabel: bool = True
    mixup_alpha: float = 0.0
    sampler: Sampler = "shuffle"
    rank: int = 0
    world: int = 1
    prefetch: int = DEFAULT_PREFETCH

    def __post_init__(self) -> None:
        if self.micro_batch and self.per_device_batch % self.micro_batch:
            raise ValueError(
                f"micro_batch {self.micro_batch} does not divide the per-device batch {self.per_device_batch}"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r}; expected one of {sorted(SAMPLERS)}")

    @property
    def micro(self) -> int:
        return self.micro_batch or self.per_device_batch

    @property
    def micro_steps(self) -> int:
        """Forward passes per optimiser step on one device."""
        return self.per_device_batch // self.micro


class StepLoader:
    """Micro-batches of optimiser steps [start, stop), as fastai iterates a DataLoader.

    Each item is (images uint8 B x C x H x W, draws {"theta", "perm", "lam"}, targets, denominator);
    `n_inp` = 2 tells fastai that the first two are the input (PrepareBatch consumes the draws).
    """

    n_inp = 2

    def __init__(
        self,
        split: Split,
        batching: Batching,
        start: int,
        stop: int,
        device: torch.device = CPU,
        stats: dict[str, float] | None = None,
    ):
        if len(split) == 0:
            raise ValueError("StepLoader: empty training split")
        self.split, self.batching, self.start, self.stop, self.device = split, batching, start, stop, device
        self.stats = stats if stats is not None else {"wait_s": 0.0}  # shared by the loaders of one run
        self._targets = split.targets.numpy()
        self._orders: dict[int, np.ndarray] = {}
        self._count: tuple[int, float] | None = None  # (step, known targets of its global batch)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.batching.micro_steps

    def to(self, device: torch.device) -> StepLoader:
        self.device = torch.device(device)
        return self

    def between(self, start: int, stop: int) -> StepLoader:
        """The same stream, for steps [start, stop)."""
        return StepLoader(self.split, self.batching, start, stop, self.device, self.stats)

    # -- which images ---------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._orders:
                if len(self._orders) > 4:
                    self._orders.pop(min(self._orders))
                rng = counter_rng(self.batching.seed, "epoch", epoch)
                self._orders[epoch] = SAMPLERS[self.batching.sampler](self._targets, rng)
            return self._orders[epoch]

    def positions(self, step: int, rank: int, micro: int) -> np.ndarray:
        """Split positions of micro-batch `micro` of `rank` at `step` (the epoch stream, sliced)."""
        b = self.batching
        n = len(self.split)
        first = (step * b.world + rank) * b.per_device_batch + micro * b.micro
        stream = np.arange(first, first + b.micro)
        epochs, offsets = stream // n, stream % n
        if epochs[0] == epochs[-1]:
            return self.epoch_order(int(epochs[0]))[offsets]
        return np.array([self.epoch_order(int(e))[o] for e, o in zip(epochs, offsets)])

    # -- what happens to them ------------------------------------------------------------------------
    def pairing(self, step: int, rank: int, micro: int) -> np.ndarray | None:
        """MixUp partner of each image of a micro-batch (None without MixUp)."""
        b = self.batching
        if b.mixup_alpha <= 0:
            return None
        return counter_rng(b.seed, "mixup-pairs", step, rank * b.micro_steps + micro).permutation(b.micro)

    def lam(self, step: int) -> float:
        b = self.batching
        return (
            float(counter_rng(b.seed, "mixup", step).beta(b.mixup_alpha, b.mixup_alpha)) if b.mixup_alpha > 0 else 1.0
        )

    def thetas(self, step: int, rank: int, micro: int) -> torch.Tensor:
        """Affine views drawn for the whole global batch; this micro-batch's rows of them."""
        b = self.batching
        rng = counter_rng(b.seed, "augment", step)
        first = rank * b.per_device_batch + micro * b.micro
        u = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(b.per_device_batch * b.world, 5)).astype(np.float32))
        hw = None if self.split.hw is None else self.split.hw[self.positions(step, rank, micro)]
        return b.augment.thetas(u[first : first + b.micro], hw)

    def known_targets(self, step: int) -> float:
        """Known (non-NaN) targets of the whole global batch of `step`, after MixUp masking."""
        with self._lock:
            if self._count is not None and self._count[0] == step:
                return self._count[1]
        b = self.batching
        total = 0
        for rank in range(b.world):
            for micro in range(b.micro_steps):
                known = ~np.isnan(self._targets[self.positions(step, rank, micro)])
                perm = self.pairing(step, rank, micro)
                if perm is not None:
                    known &= known[perm]
                total += int(known.sum())
        count = float(max(total, 1))
        with self._lock:
            self._count = (step, count)
        return count

    def host_batch(self, step: int, micro: int, out: np.ndarray | None = None) -> tuple[Any, ...]:
        b = self.batching
        positions = self.positions(step, b.rank, micro)
        images = self.split.gather(positions, out)
        targets = self.split.targets[torch.from_numpy(positions)]
        draws: dict[str, Any] = {"theta": self.thetas(step, b.rank, micro)}
        perm = self.pairing(step, b.rank, micro)
        if perm is not None:
            draws.update(perm=torch.from_numpy(perm), lam=self.lam(step))
        if b.multilabel:
            # The loss of one micro-batch is sum / denominator: summed over micro-batches (fastai's
            # GradientAccumulation scales each by its share) and averaged over ranks (DDP), it is the
            # mean over the known targets of the global batch.
            denominator = self.known_targets(step) * b.micro / (b.world * b.per_device_batch)
        else:
            denominator = float(b.micro)
        return images, draws, targets, torch.tensor(denominator, dtype=torch.float32)

    def _to_device(self, host: tuple[Any, ...], buffer: torch.Tensor | None) -> tuple[Any, ...]:
        images, draws, targets, denominator = host
        return (
            _device_images(images, buffer, self.device),
            {k: _move(v, self.device) for k, v in draws.items()},
            _move(targets, self.device),
            _move(denominator, self.device),
        )

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        micro_steps = self.batching.micro_steps
        items = [(step, micro) for step in range(self.start, self.stop) for micro in range(micro_steps)]
        return iter(
            Prefetcher(
                len(items),
                lambda i, out: self.host_batch(*items[i], out),
                self._to_device,
                self.device,
                self.batching.prefetch,
                (self.batching.micro, *self.split.image_shape),
                self.stats,
            )
        )


# ---- evaluation: the split in order ---------------------------------------------------------------
class EvalLoader:
    """Sequential batches over a whole split (valid / test): (images, {}, targets).

    Evaluation runs on one rank: `to_detach` (which fastai's get_preds calls through the loader)
    keeps the predictions local instead of all-gathering them from every rank, as fastai does by
    default when WORLD_SIZE is set.
    """

    n_inp = 2

    def __init__(self, split: Split, batch: int, device: torch.device = CPU, prefetch: int = DEFAULT_PREFETCH):
        self.split, self.batch, self.device, self.prefetch = split, max(1, batch), device, prefetch

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch)

    def to(self, device: torch.device) -> EvalLoader:
        self.device = torch.device(device)
        return self

    def to_detach(self, batch: Any, cpu: bool = True, gather: bool = True) -> Any:
        return to_detach(batch, cpu=cpu, gather=False)

    def host_batch(self, i: int, out: np.ndarray | None = None) -> tuple[Any, ...]:
        positions = np.arange(i * self.batch, min((i + 1) * self.batch, len(self.split)))
        return self.split.gather(positions, out), self.split.targets[torch.from_numpy(positions)]

    def _to_device(self, host: tuple[Any, ...], buffer: torch.Tensor | None) -> tuple[Any, ...]:
        images, targets = host
        return _device_images(images, buffer, self.device), {}, _move(targets, self.device)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(
            Prefetcher(
                len(self),
                self.host_batch,
                self._to_device,
                self.device,
                self.prefetch,
                (self.batch, *self.split.image_shape),
            )
        )


__all__ = [
    "Split",
    "Augment",
    "Batching",
    "StepLoader",
    "EvalLoader",
    "SAMPLERS",
    "class_balanced",
    "shuffled",
    "counter_rng",
    "empty_like",
    "DEFAULT_PREFETCH",
]
