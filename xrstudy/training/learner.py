"""The fastai Learner of a cell: masked losses, the optimiser, and the factory that wires the
loaders (xrstudy.pixels.loaders) and callbacks (xrstudy.training.callbacks) together.

    learn = make_learner(model, train_split, setup)     # setup: TrainSetup, one dataclass
    fit(learn)                                          # the remaining optimiser steps (or fit(learn, stop))
    probs, targets = predict(learn, test_split, batch)
    best = BestCheckpoint(path, sidecar, valid_split, batch, resumed)   # pre-training: after each epoch,
    best.update(learn, step)                                           # keep the lowest validation loss

It is fastai's own `Learner` and `DataLoaders`, with `default_cbs=False`: fastai's Recorder and
progress bar are left out, because they read the loss back to the host every batch.
benchmarks/bench_learner.py compares it with a plain PyTorch loop doing the same steps.

Precision: "bf16" / "fp16" = fastai's MixedPrecision (autocast on CUDA; fp16 with its GradScaler).
It autocasts CUDA only, and CPU bf16 autocast of BiT gave intermittent NaN gradients in torch 2.14,
so CPU runs are fp32 (precision "auto"), and bf16 / fp16 on a CPU are refused. Evaluation (`predict`,
and with it the validation loss that keeps the best pre-training checkpoint) always runs in fp32,
without the MixedPrecision callback (which would autocast fastai's `get_preds` too), as the authors'.
Gradient accumulation: when `micro_batch` is smaller than the per-device batch, fastai's
GradientAccumulation turns micro-batches into one optimiser step (the loader weighs each image's loss
so that the step equals the one of the whole batch, or of the authors' groups in loader_mode paper).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from fastai.callback.core import Callback, TrainEvalCallback
    from fastai.callback.fp16 import AMPMode, MixedPrecision
    from fastai.callback.training import GradientAccumulation
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import OptimWrapper
from torch import nn

from xrstudy.pixels.loaders import (
    DEFAULT_PREFETCH,
    Augment,
    Batching,
    EvalLoader,
    Sampler,
    Split,
    StepLoader,
    empty_like,
)
from xrstudy.training.callbacks import (
    AdaptiveGradClip,
    MaskedMixUp,
    PeriodicCheckpoint,
    PrepareBatch,
    StepSchedule,
    load_callback_states,
)
from xrstudy.training.checkpoints import unwrap, write_checkpoint
from xrstudy.training.recipes import AGC_CLIP, MOMENTUM, Schedule


# ---- losses -------------------------------------------------------------------------------------
def masked_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE over known targets only (NaN = unknown, as in the paper's `mask = ~isnan(target)`): their mean,
    or with per-image `weights` (the loader's) sum_i weights_i * (image i's BCE summed over its known targets)."""
    known = ~torch.isnan(target)
    losses = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(target), reduction="none")
    if weights is None:
        return (losses * known).sum() / known.sum().clamp(min=1)
    return ((losses * known).sum(dim=1) * weights).sum()


class MaskedBCE(nn.Module):
    """Multi-label loss; targets may be fractional (MixUp) or NaN (unknown). A training batch comes
    with the loader's per-image weights (xrstudy.pixels.loaders.StepPlan), so micro-batches and DDP ranks
    add up to the 1-process loss of the step."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return masked_bce_with_logits(logits, target, weights)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())


class SoftCrossEntropy(nn.Module):
    """Single-label loss; targets are class indices or (MixUp) class probabilities: their mean, or with
    per-image `weights` (the loader's) sum_i weights_i * cross-entropy_i."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if weights is None:
            return F.cross_entropy(logits.float(), target)
        return (F.cross_entropy(logits.float(), target, reduction="none") * weights).sum()

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)


def loss_for(multilabel: bool) -> nn.Module:
    return MaskedBCE() if multilabel else SoftCrossEntropy()


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
    micro_batch: int = 0  # images per forward pass on a device; 0 = the whole per-device batch
    sampler: Sampler = "shuffle"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # the init's input statistics (xrstudy.training.models.input_stats)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    prefetch: int = DEFAULT_PREFETCH
    group: int = 0  # images averaged together before the step averages its groups (recipes.loss_group); 0 = all
    group_stream: bool = False  # the authors' transfer micro-batch stream (recipes.loader_stream)

    @property
    def batching(self) -> Batching:
        return Batching(
            per_device_batch=self.per_device_batch,
            seed=self.seed,
            augment=self.augment,
            micro_batch=self.micro_batch if self.micro_batch < self.per_device_batch else 0,
            multilabel=self.multilabel,
            mixup_alpha=self.mixup_alpha,
            sampler=self.sampler,
            rank=self.rank,
            world=self.world,
            prefetch=self.prefetch,
            group=self.group,
            group_stream=self.group_stream,
        )


def precision_callbacks(precision: str, device: torch.device) -> list[Callback]:
    """fastai's MixedPrecision for bf16 / fp16 (CUDA only); nothing for fp32."""
    if precision == "fp32":
        return []
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision {precision!r}; expected fp32, bf16 or fp16")
    if device.type != "cuda":
        raise ValueError(
            f"precision {precision!r} needs a CUDA device (fastai's MixedPrecision autocasts CUDA); "
            f"use fp32 (or precision: auto) on {device}"
        )
    return [MixedPrecision(amp_mode=AMPMode(precision))]


def sgd(params: Any, lr: float, weight_decay: float) -> OptimWrapper:
    """SGD, Nesterov momentum 0.9 (torch's foreach implementation), wrapped for fastai."""
    opt = torch.optim.SGD(list(params), lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=weight_decay)
    return OptimWrapper(opt=opt)


def make_learner(model: nn.Module, train: Split, setup: TrainSetup, callbacks: Sequence[Callback] = ()) -> Learner:
    """A fastai Learner whose `fit` runs optimiser steps [start_step, schedule.steps)."""
    model = model.to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if setup.world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[setup.device.index] if setup.device.type == "cuda" else None
        )
    if setup.compile:
        model = torch.compile(model)
    batching = setup.batching
    loaders = DataLoaders(
        StepLoader(train, batching, setup.start_step, setup.schedule.steps),
        EvalLoader(empty_like(train), 1),  # evaluation is explicit (predict), fastai's pass over it is empty
        device=setup.device,
    )
    cbs: list[Callback] = [
        TrainEvalCallback(),
        StepSchedule(setup.schedule),
        PrepareBatch(
            setup.augment.out_size, setup.eval_size, setup.mean, setup.std, setup.channels_last, setup.augment.padding
        ),
        *([MaskedMixUp(setup.num_classes, setup.multilabel)] if setup.mixup_alpha > 0 else []),
        *precision_callbacks(setup.precision, setup.device),
        AdaptiveGradClip(setup.agc),
    ]
    if batching.micro_steps > 1:
        cbs.append(GradientAccumulation(n_acc=setup.per_device_batch))
    if setup.checkpoint_path is not None:
        cbs.append(
            PeriodicCheckpoint(
                setup.checkpoint_path,
                {**setup.checkpoint_identity, "seed": setup.seed},
                setup.schedule,
                setup.checkpoint_every_steps,
                setup.checkpoint_every_s,
                setup.rank,
            )
        )
    learn = Learner(
        loaders,
        model,
        loss_func=loss_for(setup.multilabel),
        opt_func=partial(sgd, weight_decay=setup.weight_decay),
        lr=setup.schedule.base_lr,
        cbs=cbs + list(callbacks),
        default_cbs=False,
        path=setup.checkpoint_path.parent if setup.checkpoint_path else None,
    )
    learn.step = setup.start_step
    return learn


def next_step(learn: Learner) -> int:
    """The first optimiser step not yet run."""
    return learn.dls.train.start


def fit(learn: Learner, stop: int | None = None) -> None:
    """Run optimiser steps [next_step, stop) (default: to the end of the schedule); one fastai epoch."""
    loader: StepLoader = learn.dls.train
    stop = loader.stop if stop is None else min(stop, loader.stop)
    if stop <= loader.start:
        return
    learn.dls.train = loader.between(loader.start, stop)
    learn.fit(1)
    learn.dls.train = loader.between(stop, loader.stop)


def restore(learn: Learner, state: dict[str, Any], setup: TrainSetup) -> None:
    """Load model, optimiser and torch RNG state saved by `save_train_state` into a fresh learner
    (built with start_step = state["step"]); a different schedule is refused."""
    saved = state.get("schedule")
    schedule = setup.schedule
    if saved is not None and (saved["steps"], saved["warmup"], tuple(saved["decays"]), saved["base_lr"]) != (
        schedule.steps,
        schedule.warmup,
        tuple(schedule.decays),
        schedule.base_lr,
    ):
        raise ValueError(f"training state was saved with schedule {saved}, this run has {schedule}")
    if setup.start_step != state["step"]:
        raise ValueError(f"learner starts at step {setup.start_step}, the state is at step {state['step']}")
    unwrap(learn.model).load_state_dict(state["model"])
    if learn.opt is None:
        learn.create_opt()
    learn.opt.opt.load_state_dict(state["opt"])
    rng = state.get("rng", {})
    if isinstance(rng.get("torch"), torch.Tensor):
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    load_callback_states(learn, state.get("callbacks", {}))  # e.g. the training history's open interval


def predict(learn: Learner, split: Split, batch: int, *, logits: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (or logits) and targets for a whole split (eval mode, no augmentation), computed in
    fp32 whatever the training precision: fastai's MixedPrecision would autocast `get_preds` too, so it
    is taken out while predicting (the model keeps its memory format; the authors' evaluation is fp32)."""
    if len(split) == 0:
        return np.zeros((0, _outputs(learn.model)), np.float32), split.targets.numpy()
    loader = EvalLoader(split, batch, learn.dls.device, learn.dls.train.batching.prefetch)
    autocasting = [cb for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    with learn.removed_cbs(autocasting):
        probs, targets = learn.get_preds(dl=loader, act=(lambda x: x.float()) if logits else None)
    return probs.float().numpy(), targets.numpy()


def _outputs(model: nn.Module) -> int:
    """Number of outputs of the classifier (the last Linear / Conv2d of the head)."""
    layers = [m for m in unwrap(model).get_classifier().modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1].out_features if isinstance(layers[-1], nn.Linear) else layers[-1].out_channels


def mean_loss(learn: Learner, split: Split, batch: int) -> float:
    """The training loss over a whole split (mean over its known targets; eval mode)."""
    logits, targets = predict(learn, split, batch, logits=True)
    return _loss_of(logits, targets)


def _loss_of(logits: np.ndarray, targets: np.ndarray) -> float:
    if len(logits) == 0:
        return float("nan")
    return float(loss_for(targets.ndim == 2)(torch.from_numpy(logits), torch.from_numpy(targets)))


# ---- pre-training: validate every epoch, keep the best checkpoint ---------------------------------
def epoch_ends(start: int, stop: int, every: int) -> list[int]:
    """The steps after which to validate: every `every` steps from 0 (data epochs), and the last."""
    if every <= 0:
        return [stop]
    return [*range((start // every + 1) * every, stop, every), stop]


class BestCheckpoint:
    """The checkpoint transfers load: the weights with the lowest validation loss so far, as the
    authors' pretrain.py keeps `model.pth.tar` (`save_best` when the epoch's val loss improves).
    Rank 0 validates the plain model; the loss and step go into the checkpoint's sidecar, so a
    resumed run compares with the same best."""

    def __init__(self, path: Path, sidecar: dict[str, Any], valid: Split, batch: int, resumed: bool):
        self.path, self.sidecar, self.valid, self.batch = path, sidecar, valid, batch
        self.loss, self.step = float("inf"), -1
        self.outputs: tuple[np.ndarray, np.ndarray] | None = None  # (logits, targets) of the last validation
        sidecar_path = path.with_suffix(".json")
        if resumed and sidecar_path.is_file():  # a fresh start ignores an old file, a resume continues it
            saved = json.loads(sidecar_path.read_text())
            if saved.get("run_id") == sidecar["run_id"] and "valid_loss" in saved:
                self.loss, self.step = float(saved["valid_loss"]), int(saved["step"])

    def update(self, learn: Learner, step: int) -> float:
        """Validate at `step`, keep the weights if the loss is the lowest so far; returns the loss
        (`outputs` holds the logits and targets, for metrics)."""
        model = learn.model
        learn.model = unwrap(model)  # rank 0 alone: not through DDP
        try:
            logits, targets = predict(learn, self.valid, self.batch, logits=True)
        finally:
            learn.model = model
        self.outputs = (logits, targets)
        loss = _loss_of(logits, targets)
        if loss < self.loss:
            self.loss, self.step = loss, step
            write_checkpoint(self.path, unwrap(model), {**self.sidecar, "step": step, "valid_loss": loss})
        return loss


__all__ = [
    "TrainSetup",
    "BestCheckpoint",
    "epoch_ends",
    "make_learner",
    "fit",
    "next_step",
    "predict",
    "mean_loss",
    "restore",
    "precision_callbacks",
    "masked_bce_with_logits",
    "MaskedBCE",
    "SoftCrossEntropy",
    "loss_for",
    "sgd",
]
