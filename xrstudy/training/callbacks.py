"""The behaviour of a training step, as fastai callbacks you can list and read (`learn.cbs`).

In the order they act on a batch:
  StepSchedule         learn.step = the optimiser step of the micro-batch in flight (continues across
                       resumes), and its LR from a pure xrstudy.training.recipes.Schedule
  PrepareBatch         uint8 -> float on the device, the drawn affine view (training) or the evaluation
                       resize, normalisation with the init's statistics, channels_last
  MaskedMixUp          the drawn MixUp pairing / lambda; unknown (NaN) targets stay unknown
  (fastai's GradientAccumulation and MixedPrecision, when the cell uses them)
  AdaptiveGradClip     AGC (timm), the classifier exempt
  PeriodicCheckpoint   atomic training state every N steps / T seconds (rank 0); never diverged weights

A callback with a `state_key` (xrstudy.training.monitor.HistoryLogger) keeps its own part of the training
state: `state_dict()` is saved under `callbacks[state_key]` and `load_state_dict` gets it back on resume.

The training state (`save_train_state` / `load_train_state`) lives here too: it is what
PeriodicCheckpoint writes and xrstudy.training.learner.restore reads. fastai calls every callback for every
event, so the step's work sits in few callbacks (benchmarks/bench_learner.py measures the overhead).
"""

from __future__ import annotations

import functools
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# fastai.layers decorates helpers with torch.jit.script at import, which torch >= 2.10 flags as
# deprecated: a warning the user can do nothing about, printed at the top of every cell.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from fastai.callback.core import Callback
    from fastai.learner import Learner
from timm.utils import adaptive_clip_grad

from xrstudy.fileio import NotRegularFileError, atomic_path, require_regular_file
from xrstudy.training.checkpoints import tensor_bytes, unwrap
from xrstudy.training.recipes import AGC_CLIP, Schedule

TRAIN_STATE_FORMAT = "xrstudy.train_state/1"


class LocalCallback(Callback):
    """A fastai Callback whose attribute lookups stay local, except `training`.

    fastai asks every callback for every event's handler; a fastai Callback delegates a name it
    lacks to the learner, which delegates it to the model, so each (callback, missing handler) pair
    walks that chain. fastcore's GetAttr `_xtra` limits delegation to the names listed. These
    callbacks use `self.learn.<name>` explicitly.
    """

    _xtra = ("training",)


@functools.lru_cache(maxsize=8)
def _channel_affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of `normalise` per channel, on `device`: built once, not copied to the GPU every batch."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return scale, shift


def normalise(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool
) -> torch.Tensor:
    """[0, 255] floats -> (x / 255 - mean) / std per channel; grayscale becomes 3 channels."""
    if len(set(mean)) == 1 and len(set(std)) == 1:  # one statistic for every channel (0.5 / 0.5)
        images = images.mul(1 / (255 * std[0])).sub_(mean[0] / std[0])
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    else:
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        scale, shift = _channel_affine(tuple(mean), tuple(std), images.device)
        images = images.mul(scale).sub_(shift)
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def eval_view(
    raw: torch.Tensor, eval_size: int, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool
) -> torch.Tensor:
    """The evaluation view of a uint8 batch: float32, resized to eval_size x eval_size (antialiased bilinear)
    when the cache holds another size, normalised. Evaluation and the probe's features see images this way."""
    images = raw.to(torch.float32, memory_format=torch.contiguous_format)
    if images.shape[-1] != eval_size or images.shape[-2] != eval_size:
        images = F.interpolate(images, size=(eval_size, eval_size), mode="bilinear", antialias=True)
    return normalise(images, mean, std, channels_last)


class PrepareBatch(LocalCallback):
    """uint8 batch -> float on the device, the loader's affine view (training) or a resize to the
    evaluation size, normalised with the init's mean / std; replaces xb by (images,)."""

    order = -5

    def __init__(
        self,
        out_size: int,
        eval_size: int,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        channels_last: bool = False,
        padding: str = "zeros",
    ):
        self.out_size, self.eval_size, self.mean, self.std = out_size, eval_size, tuple(mean), tuple(std)
        self.channels_last, self.padding = channels_last, padding

    def before_batch(self) -> None:
        raw, draws = self.learn.xb
        if self.learn.training:
            images = raw.to(torch.float32, memory_format=torch.contiguous_format)
            size = self.out_size
            grid = F.affine_grid(draws["theta"], [len(images), images.shape[1], size, size], align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)
            self.learn.xb = (normalise(images, self.mean, self.std, self.channels_last),)
        else:
            self.learn.xb = (eval_view(raw, self.eval_size, self.mean, self.std, self.channels_last),)
        self.learn.draws = draws  # the step's MixUp draws, for MaskedMixUp (it runs next)


def mix_targets(
    target: torch.Tensor, perm: torch.Tensor, lam: float, num_classes: int, multilabel: bool
) -> torch.Tensor:
    if not multilabel:
        target = F.one_hot(target, num_classes).float()
    return lam * target + (1.0 - lam) * target[perm]  # NaN in either -> NaN -> masked


class MaskedMixUp(LocalCallback):
    """MixUp with the loader's pairing and lambda, whose targets stay masked: a multi-label target
    is mixed only where both are known (NaN propagates, and the masked BCE ignores it); class
    indices become mixed one-hot probabilities for the soft cross-entropy."""

    order = -4

    def __init__(self, num_classes: int, multilabel: bool):
        self.num_classes, self.multilabel = num_classes, multilabel

    def before_batch(self) -> None:
        draws = self.learn.draws  # set by PrepareBatch
        if not self.learn.training or "perm" not in draws:
            return
        perm, lam = draws["perm"], draws["lam"]
        images = self.learn.xb[0]
        self.learn.xb = (images.lerp(images[perm], 1.0 - lam),)
        target, *rest = self.learn.yb
        self.learn.yb = (mix_targets(target, perm, lam, self.num_classes, self.multilabel), *rest)


class StepSchedule(LocalCallback):
    """`learn.step`, the global optimiser step of the micro-batch in flight (the loader knows where
    its range starts and how many micro-batches make a step), and its LR from a pure `Schedule`
    (warm-up + step decay)."""

    order = -9

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def before_batch(self) -> None:
        learn = self.learn
        if learn.training:
            loader = learn.dl
            learn.step = loader.start + learn.train_iter // loader.batching.micro_steps
            lr = self.schedule.lr_at(learn.step)
            for group in learn.opt.opt.param_groups:
                group["lr"] = lr


class AdaptiveGradClip(LocalCallback):
    """AGC (Brock et al. 2021) via timm, lambda = 0.01; the classifier is exempt (as in NFNets and
    the authors' SGD_AGC, which skips the layer with `output_size` rows)."""

    order = 30

    def __init__(self, clip_factor: float = AGC_CLIP):
        self.clip_factor = clip_factor

    def before_fit(self) -> None:
        head = set(unwrap(self.learn.model).get_classifier().parameters())
        self.params = [p for p in self.learn.model.parameters() if p.requires_grad and p not in head]

    def before_step(self) -> None:
        adaptive_clip_grad(self.params, clip_factor=self.clip_factor)


class PeriodicCheckpoint(LocalCallback):
    """Atomic training state every `every_steps` steps and/or `every_s` seconds (rank 0 writes)."""

    order = 90

    def __init__(
        self,
        path: str | Path,
        identity: dict[str, Any],
        schedule: Schedule | None = None,
        every_steps: int = 0,
        every_s: float = 600.0,
        rank: int = 0,
    ):
        self.path, self.identity, self.schedule = Path(path), identity, schedule
        self.every_steps, self.every_s, self.rank = every_steps, every_s, rank

    def before_fit(self) -> None:
        self._last = time.monotonic()

    def after_step(self) -> None:
        done = self.learn.step + 1
        due_steps = self.every_steps and done % self.every_steps == 0
        due_time = self.every_s and time.monotonic() - self._last >= self.every_s
        if (due_steps or due_time) and self.rank == 0 and finite_weights(self.learn.model):
            # A diverged model is not saved: the last good state stays, and the next history row stops the run.
            save_train_state(self.path, self.learn, done, self.identity, self.schedule)
            self._last = time.monotonic()


def finite_weights(model: torch.nn.Module) -> bool:
    """True when every parameter is finite (one host sync)."""
    checks = [p.detach().isfinite().all() for p in model.parameters()]
    return bool(torch.stack(checks).all()) if checks else True


def callback_states(learn: Learner) -> dict[str, Any]:
    """The parts of the training state that callbacks keep (those with a `state_key`)."""
    return {cb.state_key: cb.state_dict() for cb in learn.cbs if isinstance(getattr(cb, "state_key", None), str)}


def load_callback_states(learn: Learner, states: dict[str, Any]) -> None:
    for cb in learn.cbs:
        key = getattr(cb, "state_key", None)
        if isinstance(key, str) and key in states:
            cb.load_state_dict(states[key])


# ---- the training state -------------------------------------------------------------------------
def save_train_state(
    path: str | Path, learn: Learner, next_step: int, identity: dict[str, Any], schedule: Schedule | None = None
) -> None:
    """Write-then-rename (fsync'd): model, optimiser, schedule + position, step, RNG, identity.

    The data / augmentation / MixUp randomness is counter-based (a function of seed and step), so
    the step *is* its state; torch's own generators are saved too, for anything that draws from
    them (e.g. dropout in fastai's head).
    """
    state = {
        "format": TRAIN_STATE_FORMAT,
        **identity,
        "step": next_step,
        "model": unwrap(learn.model).state_dict(),
        "opt": learn.opt.opt.state_dict(),
        "schedule": None
        if schedule is None
        else {
            "steps": schedule.steps,
            "warmup": schedule.warmup,
            "decays": list(schedule.decays),
            "base_lr": schedule.base_lr,
            "factor": schedule.factor,
        },
        "rng": {
            "kind": "counter",
            "seed": identity.get("seed", 0),
            "step": next_step,
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "callbacks": callback_states(learn),
    }
    with atomic_path(path, needed_bytes=2 * tensor_bytes(state["model"])) as temp, open(temp, "wb") as handle:
        torch.save(state, handle)  # weights + optimiser momentum: about twice the weights


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a training state (weights_only=True); a truncated / foreign file is a clear error."""
    path = Path(path)
    try:
        require_regular_file(path)  # torch.load opens by name: on a FIFO it would wait forever
        state = torch.load(path, map_location="cpu", weights_only=True)
    except NotRegularFileError as err:
        raise RuntimeError(
            f"{path}: not a regular file (a {err.kind}); expected a training state: delete it to start the run afresh"
        ) from None
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing here
        raise RuntimeError(
            f"{path}: cannot read the training state ({type(err).__name__}: {err}); delete it to start the run afresh"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise RuntimeError(f"{path}: not an xrstudy training state (expected format {TRAIN_STATE_FORMAT!r})")
    return state


__all__ = [
    "LocalCallback",
    "PrepareBatch",
    "MaskedMixUp",
    "StepSchedule",
    "AdaptiveGradClip",
    "PeriodicCheckpoint",
    "finite_weights",
    "callback_states",
    "load_callback_states",
    "save_train_state",
    "load_train_state",
    "normalise",
    "eval_view",
    "mix_targets",
    "unwrap",
    "TRAIN_STATE_FORMAT",
]
