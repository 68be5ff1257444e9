"""The fastai Learner of a cell: lean step-indexed loaders, masked losses, behaviour as callbacks, metrics.

    learn = make_learner(model, train_split, setup)     # setup: TrainSetup, one dataclass
    learn.fit(1)                                        # one fastai "epoch" = all remaining optimiser steps
    probs, targets = predict(learn, test_split)
    metrics, per_class = classification_metrics(probs, targets, classes, multilabel)

Design notes
- Batches are a pure function of (seed, step, rank): which images (a fresh permutation per data
  epoch), their augmentation and the MixUp pairing. So a run resumed at step s sees exactly the
  batches an uninterrupted run would, and its final weights are equal. The "RNG state" saved in a
  checkpoint is therefore just (seed, step).
- The hot path stays lean: images live pre-loaded as one uint8 tensor; a batch is an index_select,
  a (pinned, non_blocking) copy of uint8 bytes, then float conversion, augmentation (one
  affine_grid/grid_sample) and normalisation on the device. No fastai Datasets, no per-item Python,
  no per-batch host syncs (fastai's Recorder/Progress callbacks are left out for that reason).
- Callbacks, in the order they act on a batch: StepCounter, PrepareBatch, MaskedMixUp, Autocast,
  StepSchedule, AdaptiveGradClip, PeriodicCheckpoint (`learn.cbs` lists them). `LeanLearner` is
  fastai's Learner with its per-event dispatch cached (only callbacks that handle an event are
  called); benchmarks/bench_learner.py compares it with a plain PyTorch loop doing the same steps.
- DDP (world > 1): each rank takes its slice of the global batch, augmentation is drawn for the
  global batch, the masked BCE divides by the global count of known targets, so N processes compute
  the 1-process step up to float summation order (tests/test_ddp.py). MixUp pairs within a
  device's batch (one lambda per global step), so with MixUp on the pairing differs from 1 process.
- Precision: "bf16" = autocast on the device (CUDA; CPU bf16 autocast of BiT gives intermittent NaN
  gradients in torch 2.14, so CPU runs fp32), channels_last and torch.compile are TrainSetup options.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

# fastai.layers decorates helpers with torch.jit.script at import, which torch >= 2.10 flags as
# deprecated: a warning the user can do nothing about, printed at the top of every cell.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from fastai.callback.core import Callback, TrainEvalCallback
    from fastai.callback.core import event as _fastai_event
    from fastai.learner import Learner
    from fastai.optimizer import OptimWrapper
from sklearn.metrics import average_precision_score, roc_auc_score
from timm.utils import adaptive_clip_grad
from torch import nn

from xrstudy.hyper import AGC_CLIP, MOMENTUM, Schedule

TRAIN_STATE_FORMAT = "xrstudy.train_state/1"


# ---- counter-based randomness -----------------------------------------------------------------
def counter_rng(seed: int, stream: str, step: int, rank: int = 0) -> np.random.Generator:
    """A generator that depends only on its arguments (no hidden state to save or restore)."""
    key = hashlib.blake2b(f"{seed}:{stream}:{step}:{rank}".encode(), digest_size=16).digest()
    return np.random.default_rng(list(np.frombuffer(key, dtype=np.uint32)))


# ---- losses -------------------------------------------------------------------------------------
def masked_bce_with_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE over known targets only (NaN = unknown, as in the paper's `mask = ~isnan(target)`)."""
    known = ~torch.isnan(target)
    losses = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(target), reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1)


class MaskedBCE(nn.Module):
    """Multi-label loss; targets may be fractional (MixUp) or NaN (unknown).

    Under DDP (`world` > 1) a training step divides by the number of known targets in the *global*
    batch (one all_reduce of a scalar, no host sync), so that DDP's gradient averaging gives exactly
    the 1-process loss of the same global batch even when ranks hold different numbers of NaNs.
    Evaluation (no grad, rank 0 alone) uses the local mean.
    """

    def __init__(self, world: int = 1):
        super().__init__()
        self.world = world

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.world > 1 and torch.is_grad_enabled() and dist.is_initialized():
            known = ~torch.isnan(target)
            losses = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(target), reduction="none")
            count = known.sum().float()
            dist.all_reduce(count)
            return (losses * known).sum() * self.world / count.clamp(min=1)
        return masked_bce_with_logits(logits, target)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())


class SoftCrossEntropy(nn.Module):
    """Single-label loss; targets are class indices or (MixUp) class probabilities."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)


def loss_for(multilabel: bool, world: int = 1) -> nn.Module:
    return MaskedBCE(world) if multilabel else SoftCrossEntropy()


# ---- data: pre-loaded uint8 images and step-indexed loaders ------------------------------------
@dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images N x C x H x W (C = 1 or 3) and targets.

    targets: float32 N x K with NaN for unknown (multi-label) or int64 N (single-label).
    """

    images: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"Split.images: expected uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.targets):
            raise ValueError(f"Split: {len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.images)

    def pin(self) -> "Split":
        return Split(self.images.pin_memory(), self.targets.pin_memory())


def _to_device(split: Split, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = split.images.index_select(0, index), split.targets.index_select(0, index)
    if device.type == "cpu":
        return images, targets
    if split.images.is_pinned():
        images, targets = images.pin_memory(), targets.pin_memory()
    return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)


class StepLoader:
    """Training batches for optimiser steps [start, stop); batch `s` depends only on (seed, s, rank).

    The data is walked as one stream of per-epoch permutations, so a batch larger than a few-shot
    training set simply wraps into the next epoch. Under DDP each rank takes its slice of the
    global batch.
    """

    def __init__(self, split: Split, per_device_batch: int, seed: int, start: int, stop: int,
                 device: torch.device, rank: int = 0, world: int = 1):
        if len(split) == 0:
            raise ValueError("StepLoader: empty training split")
        self.split, self.batch, self.seed = split, per_device_batch, seed
        self.start, self.stop, self.device, self.rank, self.world = start, stop, device, rank, world
        self._perms: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            rng = counter_rng(self.seed, "epoch", epoch)
            self._perms[epoch] = torch.from_numpy(rng.permutation(len(self.split)))
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        n = len(self.split)
        first = (step * self.world + self.rank) * self.batch
        positions = torch.arange(first, first + self.batch)
        epochs, offsets = positions // n, positions % n
        if bool(epochs[0] == epochs[-1]):
            return self._perm(int(epochs[0]))[offsets]
        return torch.stack([self._perm(int(e))[o] for e, o in zip(epochs, offsets)])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(self.start, self.stop):
            yield _to_device(self.split, self.indices(step), self.device)


class EvalLoader:
    """Sequential batches over a whole split (valid / test)."""

    def __init__(self, split: Split, batch: int, device: torch.device):
        self.split, self.batch, self.device = split, batch, device

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for first in range(0, len(self.split), self.batch):
            index = torch.arange(first, min(first + self.batch, len(self.split)))
            yield _to_device(self.split, index, self.device)


@dataclass
class Loaders:
    """The little of fastai's DataLoaders that Learner uses."""

    train: Any
    valid: Any
    device: torch.device
    path: Path = Path(os.devnull).parent
    n_inp: int = 1

    def __getitem__(self, i: int) -> Any:
        return (self.train, self.valid)[i]


# ---- augmentation on the device ---------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Random affine view of a batch, drawn per sample; sizes in pixels, shifts as image fractions.

    Transfer (BiT): `crop_fraction` = crop / resize, random position, horizontal flip.
    Pre-training (paper): shift 0.25, scale 0.1, rotate 45 deg, horizontal flip.
    """

    out_size: int
    crop_fraction: float = 1.0
    shift: float = 0.0
    scale: float = 0.0
    rotate_deg: float = 0.0
    flip: bool = True

    def thetas(self, batch: int, rng: np.random.Generator) -> torch.Tensor:
        u = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(batch, 5)).astype(np.float32))
        zoom = 1.0 + self.scale * u[:, 0]
        angle = math.radians(self.rotate_deg) * u[:, 1]
        side = self.crop_fraction / zoom
        room = abs(1.0 - self.crop_fraction) + 2 * self.shift  # how far the view centre may move
        tx, ty = room * u[:, 2], room * u[:, 3]
        flip = torch.where(u[:, 4] < 0, -1.0, 1.0) if self.flip else torch.ones(batch)
        cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
        return torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)


def normalise(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8-range float -> [-1, 1] (mean = std = 0.5, BiT and the paper), grayscale -> 3 channels."""
    images = images.mul(1 / 127.5).sub_(1.0)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# ---- callbacks ------------------------------------------------------------------------------------
class StepCounter(Callback):
    """`learn.step`: the global optimiser step of the batch in flight (continues across resumes)."""

    order = -9

    def __init__(self, start_step: int = 0):
        self.start_step = start_step

    def before_batch(self) -> None:
        if self.learn.training:
            self.learn.step = self.start_step + self.learn.train_iter


class PrepareBatch(Callback):
    """uint8 batch -> float on the device, augmented (training only), normalised, channels_last."""

    order = -5

    def __init__(self, augment: Augment, eval_size: int, seed: int, rank: int = 0, channels_last: bool = False,
                 world: int = 1):
        self.augment, self.eval_size, self.seed, self.rank = augment, eval_size, seed, rank
        self.channels_last, self.world = channels_last, world

    def before_batch(self) -> None:
        images = self.learn.xb[0].float()
        if self.learn.training:
            # Drawn for the whole global batch, this rank takes its rows: 1 or N processes see the
            # same augmented global batch.
            batch = len(images)
            rng = counter_rng(self.seed, "augment", self.learn.step)
            theta = self.augment.thetas(batch * self.world, rng)[self.rank * batch:(self.rank + 1) * batch]
            theta = theta.to(images.device, non_blocking=True)
            size = self.augment.out_size
            grid = F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        elif images.shape[-1] != self.eval_size or images.shape[-2] != self.eval_size:
            images = F.interpolate(images, size=(self.eval_size, self.eval_size), mode="bilinear", antialias=True)
        self.learn.xb = (normalise(images, self.channels_last),)


class MaskedMixUp(Callback):
    """MixUp whose targets stay masked: a multi-label target is mixed only where both are known
    (NaN propagates through the mix, and the masked BCE ignores it); class indices become mixed
    one-hot probabilities for the soft cross-entropy.

    One lambda per global step (all ranks agree); images are paired within this device's batch (as
    in BiT), so with MixUp on, N processes pair differently from 1 process.
    """

    order = -4

    def __init__(self, alpha: float, seed: int, num_classes: int, multilabel: bool, rank: int = 0):
        self.alpha, self.seed, self.num_classes, self.multilabel, self.rank = alpha, seed, num_classes, multilabel, rank

    def before_batch(self) -> None:
        if not self.learn.training or self.alpha <= 0:
            return
        lam = float(counter_rng(self.seed, "mixup", self.learn.step).beta(self.alpha, self.alpha))
        pairing = counter_rng(self.seed, "mixup-pairs", self.learn.step, self.rank)
        perm = torch.from_numpy(pairing.permutation(len(self.learn.xb[0]))).to(self.learn.xb[0].device)
        images, target = self.learn.xb[0], self.learn.yb[0]
        self.learn.xb = (images.lerp(images[perm], 1.0 - lam),)
        self.learn.yb = (mix_targets(target, perm, lam, self.num_classes, self.multilabel),)


def mix_targets(target: torch.Tensor, perm: torch.Tensor, lam: float, num_classes: int, multilabel: bool) -> torch.Tensor:
    if not multilabel:
        target = F.one_hot(target, num_classes).float()
    return lam * target + (1.0 - lam) * target[perm]  # NaN in either -> NaN -> masked


class Autocast(Callback):
    """bf16 autocast for forward + loss (no GradScaler needed for bf16)."""

    order = 10

    def __init__(self, device_type: str, dtype: torch.dtype = torch.bfloat16):
        self.device_type, self.dtype = device_type, dtype

    def before_batch(self) -> None:
        self._ctx = torch.autocast(self.device_type, dtype=self.dtype)
        self._ctx.__enter__()

    def after_pred(self) -> None:
        self.learn.pred = self.learn.pred.float()

    def after_loss(self) -> None:
        self._ctx.__exit__(None, None, None)

    def after_cancel_batch(self) -> None:
        self.after_loss()


class StepSchedule(Callback):
    """Sets the LR of every optimiser step from a pure `Schedule` (warm-up + step decay)."""

    order = 20

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def before_batch(self) -> None:
        if self.learn.training:
            lr = self.schedule.lr_at(self.learn.step)
            for group in self.learn.opt.opt.param_groups:
                group["lr"] = lr


class AdaptiveGradClip(Callback):
    """AGC (Brock et al. 2021) via timm, lambda = 0.01; the classifier is exempt (as in NFNets)."""

    order = 30

    def __init__(self, clip_factor: float = AGC_CLIP):
        self.clip_factor = clip_factor

    def before_fit(self) -> None:
        head = set(unwrap(self.learn.model).get_classifier().parameters())
        self.params = [p for p in self.learn.model.parameters() if p.requires_grad and p not in head]

    def before_step(self) -> None:
        adaptive_clip_grad(self.params, clip_factor=self.clip_factor)


class PeriodicCheckpoint(Callback):
    """Atomic training state every `every_steps` steps and/or `every_s` seconds (rank 0 writes)."""

    order = 90

    def __init__(self, path: str | Path, identity: dict[str, Any], every_steps: int = 0,
                 every_s: float = 600.0, rank: int = 0):
        self.path, self.identity, self.every_steps, self.every_s = Path(path), identity, every_steps, every_s
        self.rank = rank

    def before_fit(self) -> None:
        self._last = time.monotonic()

    def after_step(self) -> None:
        done = self.learn.step + 1
        due_steps = self.every_steps and done % self.every_steps == 0
        due_time = self.every_s and time.monotonic() - self._last >= self.every_s
        if (due_steps or due_time) and self.rank == 0:
            save_train_state(self.path, self.learn, done, self.identity)
            self._last = time.monotonic()


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)


def save_train_state(path: str | Path, learn: Learner, next_step: int, identity: dict[str, Any]) -> None:
    """Write-then-rename (fsync'd): model, optimiser, schedule + position, step, RNG, identity.

    The data / augmentation / MixUp randomness is counter-based (a function of seed and step), so
    the step *is* its state; torch's own generators are saved too, for anything that draws from
    them (e.g. dropout in fastai's head).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schedule = learn.setup.schedule if hasattr(learn, "setup") else None
    state = {
        "format": TRAIN_STATE_FORMAT,
        **identity,
        "step": next_step,
        "model": unwrap(learn.model).state_dict(),
        "opt": learn.opt.opt.state_dict(),
        "schedule": None if schedule is None else {
            "steps": schedule.steps, "warmup": schedule.warmup, "decays": list(schedule.decays),
            "base_lr": schedule.base_lr, "factor": schedule.factor},
        "rng": {"kind": "counter", "seed": identity.get("seed", 0), "step": next_step,
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a training state (weights_only=True); a truncated / foreign file is a clear error."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing here
        raise RuntimeError(f"{path}: cannot read the training state ({type(err).__name__}: {err}); "
                           "delete it to start the run afresh") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise RuntimeError(f"{path}: not an xrstudy training state (expected format {TRAIN_STATE_FORMAT!r})")
    return state


# ---- a Learner with cached callback dispatch -------------------------------------------------------
class LeanLearner(Learner):
    """fastai's Learner, with event dispatch cached per event.

    fastai calls every callback for every event (sorting the list each time) and each call resolves
    `training` / the handler through `GetAttr`; on a short step that is ~1-2 ms of Python per batch
    (measured: benchmarks/bench_learner.py). Here each event calls, in the same order and through the
    same `Callback.__call__` (run / run_train / run_valid / exception handling unchanged), only the
    callbacks that define a handler for it. `after_fit` still reaches every callback (it resets
    `cb.run`). The cache is rebuilt whenever a callback is added or removed.
    """

    _dispatch: dict[str, list[Callback]] | None = None

    def add_cb(self, cb: Any) -> "LeanLearner":
        self._dispatch = None
        return super().add_cb(cb)

    def remove_cb(self, cb: Any) -> "LeanLearner":
        self._dispatch = None
        return super().remove_cb(cb)

    @staticmethod
    def _handles(cb: Callback, event_name: str) -> bool:
        return event_name in vars(cb) or any(event_name in vars(k) for k in type(cb).__mro__ if k is not object)

    def __call__(self, event_name: Any) -> None:
        for name in (event_name,) if isinstance(event_name, str) else event_name:
            self._call_one(name)

    def _call_one(self, event_name: str) -> None:
        if self._dispatch is None:
            self._dispatch = {}
        targets = self._dispatch.get(event_name)
        if targets is None:
            if not hasattr(_fastai_event, event_name):
                raise Exception(f"missing {event_name}")  # noqa: TRY002 - fastai's own behaviour
            ordered = list(self.cbs.sorted("order"))
            targets = ordered if event_name == "after_fit" else [cb for cb in ordered if self._handles(cb, event_name)]
            self._dispatch[event_name] = targets
        for cb in targets:
            cb(event_name)


# ---- the factory ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSetup:
    """Everything the learner needs besides the model and the data."""

    multilabel: bool
    num_classes: int
    schedule: Schedule
    per_device_batch: int
    seed: int
    augment: Augment
    eval_size: int
    weight_decay: float
    mixup_alpha: float = 0.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    start_step: int = 0
    rank: int = 0
    world: int = 1
    agc: float = AGC_CLIP
    checkpoint_path: Path | None = None
    checkpoint_identity: dict[str, Any] = field(default_factory=dict)
    checkpoint_every_steps: int = 0
    checkpoint_every_s: float = 600.0
    eval_batch: int = 0


def _precision_callbacks(setup: TrainSetup) -> list[Callback]:
    from fastai.callback.fp16 import AMPMode, MixedPrecision

    makers: dict[str, Callable[[], list[Callback]]] = {
        "fp32": lambda: [],
        "bf16": lambda: [Autocast(setup.device.type, torch.bfloat16)],
        "fp16": lambda: [MixedPrecision(amp_mode=AMPMode.FP16)],  # needs GradScaler: fastai's
    }
    return makers[setup.precision]()


def sgd(params: Any, lr: float, weight_decay: float) -> OptimWrapper:
    """SGD, Nesterov momentum 0.9 (torch's foreach implementation), wrapped for fastai."""
    opt = torch.optim.SGD(list(params), lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=weight_decay)
    return OptimWrapper(opt=opt)


def make_learner(model: nn.Module, train: Split, setup: TrainSetup, callbacks: Sequence[Callback] = ()) -> Learner:
    """A fastai Learner whose one `fit(1)` runs optimiser steps [start_step, schedule.steps)."""
    model = model.to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if setup.world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[setup.device.index] if setup.device.type == "cuda" else None
        )
    if setup.compile:
        model = torch.compile(model)
    if setup.device.type == "cuda":
        train = train.pin()
    loaders = Loaders(
        train=StepLoader(train, setup.per_device_batch, setup.seed, setup.start_step, setup.schedule.steps,
                         setup.device, setup.rank, setup.world),
        valid=EvalLoader(Split(train.images[:0], train.targets[:0]), 1, setup.device),  # eval is explicit
        device=setup.device,
    )
    cbs: list[Callback] = [
        TrainEvalCallback(),
        StepCounter(setup.start_step),
        PrepareBatch(setup.augment, setup.eval_size, setup.seed, setup.rank, setup.channels_last, setup.world),
        MaskedMixUp(setup.mixup_alpha, setup.seed, setup.num_classes, setup.multilabel, setup.rank),
        *_precision_callbacks(setup),
        StepSchedule(setup.schedule),
        AdaptiveGradClip(setup.agc),
    ]
    if setup.checkpoint_path is not None:
        cbs.append(PeriodicCheckpoint(setup.checkpoint_path, {**setup.checkpoint_identity, "seed": setup.seed},
                                      setup.checkpoint_every_steps, setup.checkpoint_every_s, setup.rank))
    learn = LeanLearner(
        loaders, model, loss_func=loss_for(setup.multilabel, setup.world),
        opt_func=partial(sgd, weight_decay=setup.weight_decay), lr=setup.schedule.base_lr,
        cbs=cbs + list(callbacks), default_cbs=False,
        path=setup.checkpoint_path.parent if setup.checkpoint_path else None,
    )
    learn.step = setup.start_step
    learn.setup = setup
    return learn


def restore(learn: Learner, state: dict[str, Any]) -> None:
    """Load model, optimiser and torch RNG state saved by `save_train_state` into a fresh learner
    (built with start_step = state["step"]); a different schedule is refused."""
    saved = state.get("schedule")
    schedule = learn.setup.schedule
    if saved is not None and (saved["steps"], saved["warmup"], tuple(saved["decays"]), saved["base_lr"]) != (
            schedule.steps, schedule.warmup, tuple(schedule.decays), schedule.base_lr):
        raise ValueError(f"training state was saved with schedule {saved}, this run has {schedule}")
    if learn.setup.start_step != state["step"]:
        raise ValueError(f"learner starts at step {learn.setup.start_step}, the state is at step {state['step']}")
    unwrap(learn.model).load_state_dict(state["model"])
    if learn.opt is None:
        learn.create_opt()
    learn.opt.opt.load_state_dict(state["opt"])
    rng = state.get("rng", {})
    if isinstance(rng.get("torch"), torch.Tensor):
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def fit(learn: Learner) -> None:
    """Run the remaining steps (none left: nothing to do)."""
    if len(learn.dls.train):
        learn.fit(1)


def predict(learn: Learner, split: Split, batch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets for a whole split (eval mode, no augmentation)."""
    if len(split) == 0:
        width = learn.setup.num_classes
        return np.zeros((0, width), np.float32), split.targets.numpy()
    batch = batch or learn.setup.eval_batch or 2 * learn.setup.per_device_batch
    probs, targets = learn.get_preds(dl=EvalLoader(split, batch, learn.dls.device))
    return probs.float().numpy(), targets.numpy()


# ---- metrics (never crash on few-shot data) -----------------------------------------------------
def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _class_columns(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(binary truth, score) per class, restricted to known entries."""
    for k in range(probs.shape[1]):
        if multilabel:
            known = ~np.isnan(targets[:, k])
            yield targets[known, k], probs[known, k]
        else:
            yield (targets == k).astype(np.float32), probs[:, k]


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else float("nan")


def _ap(truth: np.ndarray, score: np.ndarray) -> float:
    return float(average_precision_score(truth, score)) if truth.sum() > 0 else float("nan")


def accuracy(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Single-label: top-1. Multi-label: element-wise at 0.5 over known targets."""
    if len(probs) == 0:
        return float("nan")
    if multilabel:
        known = ~np.isnan(targets)
        return float(((probs >= 0.5) == (targets >= 0.5))[known].mean()) if known.any() else float("nan")
    return float((probs.argmax(1) == targets).mean())


def classification_metrics(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str],
                           multilabel: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """acc, mean AUC over classes with both labels present, mean AP; plus per-class AUC / AP (NaN = undefined)."""
    aucs, aps = [], []
    for truth, score in _class_columns(probs, targets, multilabel):
        aucs.append(_auc(truth, score))
        aps.append(_ap(truth, score))
    metrics = {"acc": accuracy(probs, targets, multilabel), "auc": _nanmean(aucs), "ap": _nanmean(aps)}
    per_class = {"auc": dict(zip(classes, aucs)), "ap": dict(zip(classes, aps))}
    return metrics, per_class


def bootstrap_ci(probs: np.ndarray, targets: np.ndarray, multilabel: bool, seed: int = 0,
                 n_boot: int = 200, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap CIs (rows resampled with a seeded generator) for acc, auc, ap."""
    if len(probs) == 0:
        return {}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {"acc": [], "auc": [], "ap": []}
    classes = [str(k) for k in range(probs.shape[1])]
    for _ in range(n_boot):
        rows = rng.integers(0, len(probs), len(probs))
        metrics, _ = classification_metrics(probs[rows], targets[rows], classes, multilabel)
        for key, value in metrics.items():
            samples[key].append(value)
    tail = (1 - level) / 2 * 100
    out = {}
    for key, values in samples.items():
        finite = np.array([v for v in values if not math.isnan(v)])
        if len(finite):
            out[key] = [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
    return out


__all__ = [
    "Split",
    "StepLoader",
    "EvalLoader",
    "Augment",
    "TrainSetup",
    "make_learner",
    "fit",
    "predict",
    "restore",
    "save_train_state",
    "load_train_state",
    "masked_bce_with_logits",
    "MaskedBCE",
    "SoftCrossEntropy",
    "mix_targets",
    "classification_metrics",
    "bootstrap_ci",
    "accuracy",
    "counter_rng",
    "StepCounter",
    "PrepareBatch",
    "MaskedMixUp",
    "Autocast",
    "StepSchedule",
    "AdaptiveGradClip",
    "PeriodicCheckpoint",
    "unwrap",
    "LeanLearner",
]
