"""Recipes as pure functions: BiT-HyperRule, the pre-training schedule, learning-rate scaling, the
input statistics of an init, and what a cell needs from a machine (cache bytes on disk, RAM per rank).

Everything here is a function of numbers (train size, image size, batch, step), so the recipe table
of docs/PROTOCOL.md can be unit-tested without a model, the fastai schedule callback just calls `lr_at`, and
`xrstudy sweep plan` prints what will run without importing torch.

The two LR rules are the authors' own, step for step:
  "bit"    transfers (finetune.py -> bit_hyperrule.get_lr): linear warm-up base * step / warmup
           (the first step runs at LR 0), then x0.1 after each boundary (step > boundary).
  "goyal"  pre-training (pretrain.py -> lr_scheduler.adjust_learning_rate_step, Goyal et al.'s
           gradual warm-up as in Horovod's example): warm-up from base / K to base, K = the number of
           GPUs of the authors' run (global batch / 16), then x0.1 from each decay step on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from xrstudy.config import RunConfig

# BiT-HyperRule schedule table: (train-size upper bound, total steps, boundaries).
# The first boundary ends the linear warm-up; the LR is divided by 10 at every later one
# (as in google-research/big_transfer `bit_hyperrule.get_lr`).
_HYPERRULE_TABLE: tuple[tuple[float, int, tuple[int, ...]], ...] = (
    (20_000, 500, (100, 200, 300, 400)),
    (500_000, 10_000, (500, 3_000, 6_000, 9_000)),
    (float("inf"), 20_000, (500, 6_000, 12_000, 18_000)),
)
MIXUP_MIN_TRAIN_SIZE = 20_000
MIXUP_ALPHA = 0.1
SMALL_IMAGE_AREA = 96 * 96  # images under 96x96 px (CIFAR) are trained at 128 px (bit_hyperrule.get_resolution)

# Pre-training (X-ray sources): 90 epochs, 15 warm-up, x0.1 at 30, 60, 80 -- kept as fractions
# so that a short demo run has the same shape.
PRETRAIN_EPOCHS = 90
PRETRAIN_WARMUP_FRACTION = 15 / 90
PRETRAIN_DECAY_FRACTIONS = (30 / 90, 60 / 90, 80 / 90)
PRETRAIN_WEIGHT_DECAY = 1e-4
TRANSFER_WEIGHT_DECAY = 0.0
AGC_CLIP = 0.01
MOMENTUM = 0.9
PAPER_GPU_BATCH = 16  # images per GPU in the authors' X-ray pre-training (train_local_batch_size)
LrRule = Literal["bit", "goyal"]


@dataclass(frozen=True)
class HyperRule:
    """BiT-HyperRule for one transfer: schedule length, LR boundaries, resolution, MixUp."""

    steps: int
    boundaries: tuple[int, ...]  # boundaries[0] ends warm-up; LR x0.1 at each later boundary
    warmup: int
    resize: int
    crop: int
    mixup_alpha: float

    @property
    def decays(self) -> tuple[int, ...]:
        return self.boundaries[1:]


@dataclass(frozen=True)
class Schedule:
    """A warm-up + step-decay learning-rate schedule in optimiser steps (`rule`: see the module doc)."""

    steps: int
    warmup: int
    decays: tuple[int, ...]
    base_lr: float
    factor: float = 0.1
    rule: LrRule = "bit"
    warmup_start: float = 0.0  # "goyal": the warm-up starts at base_lr * warmup_start (1 / K)

    def lr_at(self, step: int) -> float:
        return LR_RULES[self.rule](self, step)


def bit_lr(schedule: Schedule, step: int) -> float:
    """BiT-HyperRule (big_transfer bit_hyperrule.get_lr): base * step / warmup, then x factor for
    every boundary the step has passed (step > boundary)."""
    if step < schedule.warmup:
        return schedule.base_lr * step / schedule.warmup
    return schedule.base_lr * schedule.factor ** sum(step > d for d in schedule.decays)


def goyal_lr(schedule: Schedule, step: int) -> float:
    """The authors' pre-training rule: warm-up linear in (fractional) epochs from base * start to
    base, reached at the last warm-up step; x factor from every decay step on."""
    if step < schedule.warmup:
        start = schedule.warmup_start
        return schedule.base_lr * (start + (1.0 - start) * (step + 1) / schedule.warmup)
    return schedule.base_lr * schedule.factor ** sum(step >= d for d in schedule.decays)


LR_RULES: dict[str, Callable[[Schedule, int], float]] = {"bit": bit_lr, "goyal": goyal_lr}


def lr_at(
    step: int,
    base_lr: float,
    warmup: int,
    decays: tuple[int, ...],
    factor: float = 0.1,
    rule: LrRule = "bit",
    warmup_start: float = 0.0,
) -> float:
    """LR for optimiser step `step` (0-based) under `rule`."""
    return Schedule(max(step + 1, 1), warmup, decays, base_lr, factor, rule, warmup_start).lr_at(step)


def _scale_boundaries(boundaries: tuple[int, ...], default_steps: int, steps: int) -> tuple[int, ...]:
    """Keep the schedule's shape when a (demo) run overrides its length."""
    scaled = [max(1, round(b * steps / default_steps)) for b in boundaries]
    return tuple(min(b, steps) for b in scaled)


def bit_hyperrule(train_size: int, image_hw: tuple[int, int], steps: int = 0) -> HyperRule:
    """BiT-HyperRule from the training-set size and the original image size (height, width).

    `steps` > 0 overrides the schedule length (demo cells); boundaries scale proportionally.
    """
    if train_size < 0:
        raise ValueError(f"train_size = {train_size}; expected >= 0")
    default_steps, boundaries = next((s, b) for bound, s, b in _HYPERRULE_TABLE if train_size < bound)
    if steps:
        boundaries = _scale_boundaries(boundaries, default_steps, steps)
    height, width = image_hw
    resize, crop = (160, 128) if height * width < SMALL_IMAGE_AREA else (512, 480)
    return HyperRule(
        steps=steps or default_steps,
        boundaries=boundaries,
        warmup=boundaries[0],
        resize=resize,
        crop=crop,
        mixup_alpha=MIXUP_ALPHA if train_size >= MIXUP_MIN_TRAIN_SIZE else 0.0,
    )


def pretrain_schedule(total_steps: int, base_lr: float, global_batch: int = PAPER_GPU_BATCH) -> Schedule:
    """Pre-training schedule: 15/90 of the run warm-up (from base / K, K = global_batch / 16 GPUs of
    the authors' setup), x0.1 at 30/90, 60/90 and 80/90 (epochs 30, 60, 80 of 90)."""
    if total_steps < 1:
        raise ValueError(f"total_steps = {total_steps}; expected >= 1")
    warmup = max(1, round(total_steps * PRETRAIN_WARMUP_FRACTION))
    decays = tuple(round(total_steps * f) for f in PRETRAIN_DECAY_FRACTIONS)
    gpus = max(1, global_batch // PAPER_GPU_BATCH)
    return Schedule(
        steps=total_steps, warmup=warmup, decays=decays, base_lr=base_lr, rule="goyal", warmup_start=1.0 / gpus
    )


def pretrain_lr(global_batch: int) -> float:
    """Base LR 0.01 per 256 images, scaled linearly with the (global) batch size."""
    return 0.01 * global_batch / 256


def transfer_lr(global_batch: int) -> float:
    """BiT transfer LR 0.001 at batch 128, scaled linearly."""
    return 0.001 * global_batch / 128


def steps_per_epoch(train_size: int, global_batch: int) -> int:
    return max(1, -(-train_size // global_batch))


# ---- the resolved recipe of one cell -----------------------------------------------------------
PRETRAIN_IMAGE_SIZE = 224  # the X-ray pre-training pipeline (and PadChest-Cl's transfer)


@dataclass(frozen=True)
class Recipe:
    """Every number of a cell's recipe, resolved from its RunConfig and training-set size. Pure:
    `xrstudy sweep plan` prints it, `xrstudy.training.train` runs it, so the plan is what runs."""

    kind: str  # pretrain | transfer
    steps: int
    warmup: int
    decays: tuple[int, ...]
    base_lr: float
    global_batch: int
    weight_decay: float
    mixup_alpha: float
    resize: int  # images are cached at this side length
    crop: int  # training crop side
    eval_size: int  # evaluation images are resized to eval_size x eval_size
    augment: str  # "bit" (random crop + flip) | "xray" (the authors' X-ray augmentation)
    epochs: int = 0  # pre-training epochs (0 for transfers)
    rule: LrRule = "bit"  # the LR rule (module doc)
    warmup_start: float = 0.0
    cache_fit: str = "centre"  # "centre": centre square (X-ray pipeline) | "squash": whole image (BiT pipeline)
    valid_every: int = 0  # pre-training: validate every data epoch (steps) and keep the best checkpoint
    flip: bool = True  # random horizontal flips in training (not for a target with handedness)

    @property
    def boundaries(self) -> tuple[int, ...]:
        """BiT's notation: the end of the warm-up, then every decay step."""
        return (self.warmup, *self.decays)

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            steps=self.steps,
            warmup=self.warmup,
            decays=self.decays,
            base_lr=self.base_lr,
            rule=self.rule,
            warmup_start=self.warmup_start,
        )


def recipe_for(
    cfg: RunConfig, train_size: int, image_hw: tuple[int, int], *, pipeline: str = "bit", flip: bool = True
) -> Recipe:
    """The recipe of `cfg` for a training set of `train_size` images of original size `image_hw`.

    pipeline: the target's transfer pipeline (`xrstudy.data.sources.Source.transfer_pipeline`): "bit"
    (BiT-HyperRule resolution) or "xray" (the pre-training pipeline at 224 px, PadChest-Cl).
    flip: whether a transfer's training crops may be mirrored (`Source.mirror_invariant` of the target);
    pre-training always flips.
    """
    if cfg.kind == "pretrain":
        epochs = cfg.epochs or PRETRAIN_EPOCHS
        per_epoch = steps_per_epoch(train_size, cfg.batch_size)
        steps = cfg.steps or epochs * per_epoch
        schedule = pretrain_schedule(steps, cfg.lr or pretrain_lr(cfg.batch_size), cfg.batch_size)
        size = cfg.image_size or PRETRAIN_IMAGE_SIZE
        return Recipe(
            kind="pretrain",
            steps=schedule.steps,
            warmup=schedule.warmup,
            decays=schedule.decays,
            base_lr=schedule.base_lr,
            global_batch=cfg.batch_size,
            weight_decay=PRETRAIN_WEIGHT_DECAY,
            mixup_alpha=max(cfg.mixup, 0.0),
            resize=size,
            crop=size,
            eval_size=size,
            augment="xray",
            epochs=epochs,
            rule=schedule.rule,
            warmup_start=schedule.warmup_start,
            valid_every=per_epoch,
        )
    rule = bit_hyperrule(train_size, image_hw, steps=cfg.steps)
    if pipeline == "xray":
        crop = cfg.image_size or PRETRAIN_IMAGE_SIZE
        resize, augment, fit = crop, "xray", "centre"
    else:
        crop = cfg.image_size or rule.crop
        resize, augment, fit = round(crop * rule.resize / rule.crop), "bit", "squash"
    return Recipe(
        kind="transfer",
        steps=rule.steps,
        warmup=rule.warmup,
        decays=rule.decays,
        base_lr=cfg.lr or transfer_lr(cfg.batch_size),
        global_batch=cfg.batch_size,
        weight_decay=TRANSFER_WEIGHT_DECAY,
        mixup_alpha=rule.mixup_alpha if cfg.mixup < 0 else cfg.mixup,
        resize=resize,
        crop=crop,
        eval_size=crop,
        augment=augment,
        cache_fit=fit,
        flip=flip,
    )


# ---- the linear probe of a cell (train_mode: probe) ------------------------------------------------
# A probe keeps the backbone frozen: its images are seen once, through the evaluation view of the cell's
# recipe, and its only training is a logistic regression on CPU (xrstudy.training.probe).
PROBE_C_GRID = tuple(10.0**k for k in range(-4, 5))  # inverse L2 strengths tried, 1e-4 .. 1e4
PROBE_DEFAULT_C = 1.0  # scikit-learn's default, when no validation image can be held out (1-shot)
PROBE_VALID_FRACTION = 0.2  # of the training images, per class, held out to choose C
PROBE_MAX_ITER = 1000
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of a training step (forward + backward + update)


@dataclass(frozen=True)
class ProbeRecipe:
    """Every number of a probe cell, resolved from its fine-tuning recipe: the images are cached at `resize`
    (`cache_fit`) and seen at `eval_size` x `eval_size` (the evaluation view), `feature_batch` per forward
    pass; C from `c_grid` by validation log-loss on `valid_fraction` of the training images per class,
    or `default_c` when a class has a single training image."""

    resize: int
    eval_size: int
    cache_fit: str
    feature_batch: int
    c_grid: tuple[float, ...] = PROBE_C_GRID
    default_c: float = PROBE_DEFAULT_C
    valid_fraction: float = PROBE_VALID_FRACTION
    max_iter: int = PROBE_MAX_ITER


def probe_recipe(recipe: Recipe, *, batch_size: int, micro_batch: int = 0, world: int = 1) -> ProbeRecipe:
    """The probe of a cell whose fine-tuning recipe is `recipe`: its evaluation view, and a feature batch of
    twice what one device runs per training pass (no activations are kept for a backward pass: the
    evaluation batch of xrstudy.training.train). `micro_batch` comes from the memory table (sweep plan /
    submit) when the per-device batch does not fit."""
    per_device = max(1, batch_size // max(1, world))
    return ProbeRecipe(
        resize=recipe.resize,
        eval_size=recipe.eval_size,
        cache_fit=recipe.cache_fit,
        feature_batch=2 * min(micro_batch or per_device, per_device),
    )


# ---- input normalisation ------------------------------------------------------------------------
XRAY_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the authors' X-ray configs (data.mean / data.std); BiT's
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # their build_transforms' default


def input_stats(
    cfg: RunConfig, target_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, why) the cell's inputs are normalised with (per channel, on [0, 1] pixels), the
    authors' rule (finetune.py): the pre-training config's mean / std when it sets them (their X-ray
    models: 0.5 / 0.5), else the target's fine-tuning config's (`target_stats`, the registry's
    `Source.input_stats`: PadChest-Cl 0.5 / 0.5), else torchvision's ImageNet mean / std (their ImageNet
    models on every other target). xrstudy's own inits (scratch, run:<id>, checkpoint files) are
    normalised as its pre-training is, 0.5 / 0.5. `init: timm` is the tag's pretrained cfg, which only
    timm knows: the caller reads it (`models.input_stats`, `plan.input_stats`); here it is a ValueError."""
    if cfg.init == "timm":
        raise ValueError(
            "init 'timm': the statistics are the tag's timm pretrained cfg (xrstudy.training.models.input_stats)"
        )
    if cfg.init != "paper" or not cfg.init_label.startswith("imagenet"):
        label = f"the authors' {cfg.init_label} checkpoint" if cfg.init == "paper" else "xrstudy's X-ray pipeline"
        return (*XRAY_STATS, f"{label}: 0.5 / 0.5")
    if target_stats is not None:
        return (*target_stats, f"{cfg.init_label} sets none: the target's fine-tuning config")
    return (*IMAGENET_STATS, f"{cfg.init_label} sets none: ImageNet mean / std (their loader's default)")


# ---- the authors' execution rules: groups, colour, initialisation, evaluation precision ------------
# Pure decisions the resolver (and `sweep plan`) shows and training obeys (docs/PROTOCOL.md rows
# "pre-training loss", "micro-batches and MixUp", "X-ray pixels", "weight initialisation", "evaluation").
EVAL_PRECISION = "fp32"  # finetune.py run_eval and pretrain.py validate run without autocast, in every mode


PAPER_TRANSFER_BATCH = 128  # `batch` of every configs/finetune/*.yaml


def paper_micro_batch(target: str) -> int:
    """The authors' fine-tuning micro-batch of `target`: their batch 128 // batch_split of its
    configs/finetune/*.yaml, 64 for CIFAR-10/100, 4 for every other target (`Source.paper_batch_split`)."""
    from xrstudy.data import sources

    return PAPER_TRANSFER_BATCH // sources.source_of(target).paper_batch_split


def loss_group(cfg: RunConfig) -> int:
    """Images whose loss is averaged together before a step averages its groups. 0 = one group, the whole
    global batch (loader_mode uniform: every image / known target of a step weighs the same). In loader_mode
    paper the authors' groups: pre-training the 16 images of one of their 64 GPUs (pretrain.py compute_loss,
    then Horovod's average), transfers their micro-batch (`paper_micro_batch`: each of the batch_split
    micro-batches of a step weighs 1 / batch_split, a partial one too; finetune.py:521)."""
    if cfg.loader_mode != "paper":
        return 0
    return PAPER_GPU_BATCH if cfg.kind == "pretrain" else paper_micro_batch(cfg.target)


def loader_stream(cfg: RunConfig) -> str:
    """Which images make a step: "epochs" (xrstudy: the global batch is the next `batch` positions of one
    permutation per data epoch) or, for transfers in loader_mode paper, "micro-batches" (the authors'
    recycled DataLoader: each pass cut into micro-batches, the last one partial, a step = batch_split of
    them, crossing passes; a set smaller than a micro-batch gives one micro-batch of draws with replacement
    per pass)."""
    return "micro-batches" if cfg.loader_mode == "paper" and cfg.kind == "transfer" else "epochs"


def mixup_group(cfg: RunConfig, device_micro: int) -> int:
    """Images MixUp pairs within: the authors' micro-batch in loader_mode paper (64 for CIFAR, 4 otherwise:
    finetune.py mixup_data permutes each micro-batch), else what one device holds at once (`device_micro`,
    its micro-batch: an execution choice)."""
    return loss_group(cfg) or device_micro


def image_colour(cfg: RunConfig, modality: str, paper_keeps_colour: bool = False) -> str:
    """How a cell's images are cached: "RGB" for natural images; X-rays "L" (one grey channel), except a
    transfer target the authors read in colour (`Source.paper_keeps_colour`: COVIDx, Tuberculosis, through
    torchvision's default_loader) in loader_mode paper, which keeps the file's channels (grey files are
    the same either way; the cache is 3x larger)."""
    if modality != "xray":
        return "RGB"
    keeps = cfg.loader_mode == "paper" and cfg.kind == "transfer" and paper_keeps_colour
    return "RGB" if keeps else "L"


def weight_init_of(cfg: RunConfig) -> str:
    """What initialises the network: `cfg.weight_init` ("torch": PyTorch's default init in the authors'
    draw order with their weight-standardisation eps; "timm": timm's) for a network built from scratch;
    "loaded" when the weights come from a file (`init` timm / paper / run:<id> / path), where weight_init
    has nothing to act on (and stays out of the run id). A transfer's fresh head follows `head_init`."""
    return cfg.weight_init if cfg.init == "scratch" else "loaded"


def eval_precision(cfg: RunConfig) -> str:
    """Evaluation (test metrics, the pre-training validation loss that picks the kept checkpoint) runs in
    fp32 whatever the training precision, as the authors' does."""
    return EVAL_PRECISION


# ---- what a cell needs from the machine ----------------------------------------------------------
def cache_bytes(n_images: int, size: int, mode: str) -> int:
    """Bytes of the uint8 image cache on disk: n x size x size (x 3 for colour modes "RGB...")."""
    return n_images * size * size * (3 if mode.startswith("RGB") else 1)


# Per-rank host memory of a training process, from benchmarks/bench_memory.py (CPU, 1 and 2 gloo
# processes, benchmarks/RESULTS.md): a fixed part (interpreter, torch, fastai, timm; measured 0.60 -
# 0.64 GB) and a part per dataset image (its rows in the label tables, its path in the cache index,
# its targets; measured 455 - 528 bytes with a 9-column synthetic table, rounded up to 1 kB for the
# wider real tables: the merged NIH + CheXpert + PadChest table alone is 291 bytes per row). The
# pixels are not in it: they stay in the memory-mapped cache, whose pages the OS shares by all ranks.
# A CUDA process adds its CUDA context (not measured here).
RANK_BASE_BYTES = 650_000_000
RANK_BYTES_PER_IMAGE = 1_000


def ram_per_rank(
    n_images: int, image_bytes: int, micro_batch: int, *, prefetch: int = 2, model_params: int = 0, cuda: bool = True
) -> int:
    """Expected peak host memory of one training rank (bytes), excluding the shared page cache.

    n_images: images of the dataset (all splits); image_bytes: bytes of one cached image (size^2 or
    3 size^2); micro_batch: images per forward pass; prefetch: batches gathered ahead. On CUDA the
    staging ring is (prefetch + 2) page-locked micro-batches of uint8; on a CPU the batch in flight
    is float32 too (and the model's activations, not counted here, live in host memory).
    model_params: the weights are built and loaded on the host first (state dict + model: 2 x 4
    bytes per parameter), then moved to the GPU.
    """
    staging = (prefetch + 2) * micro_batch * image_bytes
    if not cuda:  # the batch in flight as float32 (converted, augmented, normalised); activations not counted
        staging += 16 * micro_batch * image_bytes
    return RANK_BASE_BYTES + RANK_BYTES_PER_IMAGE * n_images + staging + 8 * model_params


__all__ = [
    "Recipe",
    "recipe_for",
    "paper_micro_batch",
    "loss_group",
    "loader_stream",
    "mixup_group",
    "image_colour",
    "weight_init_of",
    "eval_precision",
    "EVAL_PRECISION",
    "ProbeRecipe",
    "probe_recipe",
    "PROBE_C_GRID",
    "FORWARD_SHARE",
    "cache_bytes",
    "ram_per_rank",
    "input_stats",
    "XRAY_STATS",
    "IMAGENET_STATS",
    "LR_RULES",
    "HyperRule",
    "Schedule",
    "bit_hyperrule",
    "pretrain_schedule",
    "lr_at",
    "pretrain_lr",
    "transfer_lr",
    "steps_per_epoch",
    "PRETRAIN_EPOCHS",
    "PRETRAIN_WEIGHT_DECAY",
    "TRANSFER_WEIGHT_DECAY",
    "AGC_CLIP",
    "MOMENTUM",
]
