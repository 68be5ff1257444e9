"""Batches for the learner, streamed from the memory-mapped uint8 image cache.

    train = Split(cache.images, rows, targets)            # cache rows + targets; no pixel is read yet
    loader = StepLoader(train, Batching(...), start=0, stop=500, device=device)
    for images, draws, targets, weights in loader: ...       # one micro-batch per item

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
  processes see the same views. Each image comes with its weight in the step's loss, computed here
  for the whole global batch (`StepPlan`): N processes x M micro-batches compute the 1-process loss of
  the step up to float summation order, with no collective besides DDP's own.
- Weights, `Batching.group` 0 (loader_mode uniform): every image weighs 1 / B (single-label), every
  known target 1 / (known targets of the global batch after MixUp) (multi-label), and MixUp pairs images
  within what a device holds at once (its micro-batch, an execution choice).
- Groups, `Batching.group` g > 0 (loader_mode paper, the authors' per-GPU / micro-batch groups): the
  step's loss is the mean over its groups of each group's mean (of its images; multi-label: of its known
  targets), and MixUp pairs within a group, whatever micro-batch or number of processes runs it.
  Pre-training groups are consecutive slices of g = 16 (their 64 GPUs x 16 images). With `group_stream`
  (their transfers) the images come as their recycled DataLoader gives them: each pass over the set a
  fresh order cut into micro-batches of g, the last one partial, a step = B / g consecutive micro-batches
  crossing passes, and a set smaller than g one micro-batch of g draws with replacement per pass. A
  partial micro-batch weighs as much as a full one; it fills its slot of g positions with weightless
  copies of its first image (padding), so shapes stay fixed and a group never straddles a micro-batch
  that holds whole groups.
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
    # Images averaged together before the step averages its groups (module doc); 0 = the whole global batch.
    group: int = 0
    group_stream: bool = False  # groups are the authors' transfer micro-batches of a recycled loader

    def __post_init__(self) -> None:
        if self.micro_batch and self.per_device_batch % self.micro_batch:
            raise ValueError(
                f"micro_batch {self.micro_batch} does not divide the per-device batch {self.per_device_batch}"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r}; expected one of {sorted(SAMPLERS)}")
        if self.group < 0 or (self.group_stream and not self.group):
            raise ValueError(f"group {self.group}; expected images per group >= 1 (0 = one group per step)")
        if self.group_stream and self.global_batch % self.group:
            raise ValueError(
                f"batch {self.global_batch} is not a whole number of the authors' micro-batches of "
                f"{self.group} images (loader_mode paper: a step is batch / micro-batch of them)"
            )
        if self.group and self.mixup_alpha > 0 and (self.per_device_batch % self.group or self.micro % self.group):
            raise ValueError(
                f"MixUp pairs images within the authors' micro-batch of {self.group} (loader_mode paper), but a "
                f"device holds {self.micro} at once (per-device batch {self.per_device_batch}); use a micro_batch "
                f"and a number of processes that keep whole groups of {self.group} together"
            )

    @property
    def micro(self) -> int:
        return self.micro_batch or self.per_device_batch

    @property
    def micro_steps(self) -> int:
        """Forward passes per optimiser step on one device."""
        return self.per_device_batch // self.micro

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.world


@dataclass(frozen=True)
class StepPlan:
    """The global batch of one optimiser step (B = world x per-device positions; rank r, micro-batch m
    take positions [r * per_device + m * micro, + micro))."""

    positions: np.ndarray  # (B,) split positions of the images
    real: np.ndarray  # (B,) False: padding of a partial group (a copy of its first image, weight 0)
    partner: np.ndarray | None  # (B,) position index of each image's MixUp partner; None without MixUp
    weights: np.ndarray  # (B,) the step's loss = sum_i weights_i * loss_i (loss_i: the image's cross-entropy,
    #                      or its BCE summed over its known targets)


class StepLoader:
    """Micro-batches of optimiser steps [start, stop), as fastai iterates a DataLoader.

    Each item is (images uint8 B x C x H x W, draws {"theta", "perm", "lam"}, targets, weights);
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
        self._plan: tuple[int, StepPlan] | None = None  # the step in flight (its micro-batches share it)
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
        """The order of one pass over the split: the sampler's, or -- a set smaller than the authors'
        micro-batch, group_stream -- `group` draws with replacement (their RandomSampler(replacement=True,
        num_samples=micro_batch), finetune.py:195-209)."""
        with self._lock:
            if epoch not in self._orders:
                if len(self._orders) > 4:
                    self._orders.pop(min(self._orders))
                b, n = self.batching, len(self._targets)
                rng = counter_rng(b.seed, "epoch", epoch)
                if b.group_stream and n < b.group:
                    self._orders[epoch] = rng.integers(0, n, size=b.group)
                else:
                    self._orders[epoch] = SAMPLERS[b.sampler](self._targets, rng)
            return self._orders[epoch]

    def _epoch_stream(self, first: int, count: int) -> np.ndarray:
        """Positions `first` .. `first + count` of the stream of epoch orders."""
        n = len(self.split)
        stream = np.arange(first, first + count)
        epochs, offsets = stream // n, stream % n
        if epochs[0] == epochs[-1]:
            return self.epoch_order(int(epochs[0]))[offsets]
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            out[where] = self.epoch_order(int(epoch))[offsets[where]]
        return out

    def _group_stream(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, real) of a step of the authors' recycled loader: B / g micro-batches of g, each pass
        (a fresh order) cut into ceil(n / g) of them, the last partial; padded to g with its first image."""
        b, n = self.batching, len(self.split)
        g, slots = b.group, b.global_batch // b.group
        per_pass = -(-n // g) if n >= g else 1
        positions = np.empty(b.global_batch, dtype=np.int64)
        real = np.zeros(b.global_batch, dtype=bool)
        for slot in range(slots):
            epoch, k = divmod(step * slots + slot, per_pass)
            chunk = self.epoch_order(epoch)[k * g : (k + 1) * g]
            positions[slot * g : (slot + 1) * g] = chunk[0]
            positions[slot * g : slot * g + len(chunk)] = chunk
            real[slot * g : slot * g + len(chunk)] = True
        return positions, real

    def plan(self, step: int) -> StepPlan:
        """The global batch of `step`: its images, MixUp partners and loss weights (module doc)."""
        with self._lock:
            if self._plan is not None and self._plan[0] == step:
                return self._plan[1]
        b = self.batching
        if b.group_stream:
            positions, real = self._group_stream(step)
        else:
            positions = self._epoch_stream(step * b.global_batch, b.global_batch)
            real = np.ones(b.global_batch, dtype=bool)
        group_of = np.arange(b.global_batch) // b.group if b.group else np.zeros(b.global_batch, dtype=np.int64)
        partner = self._partners(step, real)
        plan = StepPlan(positions, real, partner, self._weights(positions, real, partner, group_of))
        with self._lock:
            self._plan = (step, plan)
        return plan

    def _partners(self, step: int, real: np.ndarray) -> np.ndarray | None:
        """MixUp partner of each position: a permutation within each group's images (self-pairs allowed, as
        torch.randperm; padding keeps itself) or, without groups, within each device micro-batch."""
        b = self.batching
        if b.mixup_alpha <= 0:
            return None
        partner = np.arange(b.global_batch)
        if not b.group:
            for slot in range(b.global_batch // b.micro):
                rng = counter_rng(b.seed, "mixup-pairs", step, slot)
                partner[slot * b.micro : (slot + 1) * b.micro] = slot * b.micro + rng.permutation(b.micro)
            return partner
        rng = counter_rng(b.seed, "mixup-group-pairs", step)
        for start in range(0, b.global_batch, b.group):  # a group is `group` consecutive positions
            members = start + np.flatnonzero(real[start : start + b.group])
            partner[members] = members[rng.permutation(len(members))]
        return partner

    def _weights(
        self, positions: np.ndarray, real: np.ndarray, partner: np.ndarray | None, group_of: np.ndarray
    ) -> np.ndarray:
        """Each image's weight: 1 / (groups x the images of its group) (single-label), or 1 / (groups x the
        known targets of its group after MixUp) (multi-label; a group without any adds nothing and still
        counts, as Horovod averages a GPU whose BCE selected nothing)."""
        groups = int(group_of[-1]) + 1
        if self.batching.multilabel:
            known = ~np.isnan(self._targets[positions])
            if partner is not None:
                known &= known[partner]
            per_image = known.sum(axis=1) * real
        else:
            per_image = real.astype(np.int64)
        per_group = np.bincount(group_of, weights=per_image, minlength=groups)
        return real / (groups * np.maximum(per_group[group_of], 1.0))

    def _slice(self, rank: int, micro: int) -> slice:
        b = self.batching
        first = rank * b.per_device_batch + micro * b.micro
        return slice(first, first + b.micro)

    def positions(self, step: int, rank: int, micro: int) -> np.ndarray:
        """Split positions of micro-batch `micro` of `rank` at `step`."""
        return self.plan(step).positions[self._slice(rank, micro)]

    def pairing(self, step: int, rank: int, micro: int) -> np.ndarray | None:
        """MixUp partner of each image of a micro-batch, as an index into it (None without MixUp)."""
        partner = self.plan(step).partner
        where = self._slice(rank, micro)
        return None if partner is None else partner[where] - where.start

    def weights(self, step: int, rank: int, micro: int) -> np.ndarray:
        """The micro-batch's images' weights in the loss of the step (`StepPlan.weights`), scaled so that
        fastai's GradientAccumulation (x micro / per-device batch) and DDP's mean over ranks undo it."""
        b = self.batching
        return self.plan(step).weights[self._slice(rank, micro)] * (b.global_batch / b.micro)

    # -- what happens to them ------------------------------------------------------------------------
    def lam(self, step: int) -> float:
        """One MixUp lambda per optimiser step (the authors draw one per step, finetune.py:470, 546)."""
        b = self.batching
        return (
            float(counter_rng(b.seed, "mixup", step).beta(b.mixup_alpha, b.mixup_alpha)) if b.mixup_alpha > 0 else 1.0
        )

    def thetas(self, step: int, rank: int, micro: int) -> torch.Tensor:
        """Affine views drawn for the whole global batch; this micro-batch's rows of them."""
        b = self.batching
        rng = counter_rng(b.seed, "augment", step)
        first = rank * b.per_device_batch + micro * b.micro
        u = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(b.global_batch, 5)).astype(np.float32))
        hw = None if self.split.hw is None else self.split.hw[self.positions(step, rank, micro)]
        return b.augment.thetas(u[first : first + b.micro], hw)

    def host_batch(self, step: int, micro: int, out: np.ndarray | None = None) -> tuple[Any, ...]:
        b = self.batching
        positions = self.positions(step, b.rank, micro)
        images = self.split.gather(positions, out)
        targets = self.split.targets[torch.from_numpy(positions)]
        draws: dict[str, Any] = {"theta": self.thetas(step, b.rank, micro)}
        perm = self.pairing(step, b.rank, micro)
        if perm is not None:
            draws.update(perm=torch.from_numpy(perm), lam=self.lam(step))
        weights = torch.from_numpy(self.weights(step, b.rank, micro).astype(np.float32))
        return images, draws, targets, weights

    def _to_device(self, host: tuple[Any, ...], buffer: torch.Tensor | None) -> tuple[Any, ...]:
        images, draws, targets, weights = host
        return (
            _device_images(images, buffer, self.device),
            {k: _move(v, self.device) for k, v in draws.items()},
            _move(targets, self.device),
            _move(weights, self.device),
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
    "StepPlan",
    "EvalLoader",
    "SAMPLERS",
    "class_balanced",
    "shuffled",
    "counter_rng",
    "empty_like",
    "DEFAULT_PREFETCH",
]
