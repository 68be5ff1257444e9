"""One study cell, start to finish: `run(cfg) -> result dict`.

Read it top to bottom -- it is the whole path from a RunConfig to a result JSON:

    cfg     = resolve.canonical(cfg)                 one run id per computation (spelled-out recipe values reset)
    study   = data.prepare(cfg)                      tables, classes, split hash, modality
    cell    = resolve_cell(cfg, study, device)       recipe, cache size and mode, statistics, precision: the
                                                     `xrstudy sweep plan` row of the cell (xrstudy.training.resolve)
    (train_mode probe: run_probe_cell -- the frozen init's cached features + a logistic regression; the rest
     of this list is fine-tuning)
    splits  = open_splits(cfg, study, ...)           cache rows + targets (the pixels stay in the memmap)
    model   = create_model(cfg, num_classes)         timm network, init, head
    learn   = make_learner(model, splits.train, setup)
    fit(learn, epoch_end) ...                        (resumes from {run_dir}/train_state.pt); pre-training
                                                     validates every epoch and keeps the best checkpoint;
                                                     HistoryLogger writes history.csv + TensorBoard scalars
                                                     and stops a diverging run (a `failed` result)
    metrics = evaluate on valid and test             NaN-safe metrics + bootstrap CIs
    checkpoint (pre-training cells) + results.save   the result records `cell.row()` as `resolved`

Multi-GPU: the same command under `torchrun --nproc_per_node N xrstudy train cfg.yaml`. `batch_size`
is the global batch (the recipe's), split evenly over the processes, and `micro_batch` (> 0) caps
what one device runs per forward pass (gradients are accumulated to the global batch); the LR follows
the global batch, so a cell computes the same thing on 1 or N devices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from xrstudy.config import ConfigError, RunConfig, parent_run_id
from xrstudy.data.studydata import StudyData
from xrstudy.pixels.loaders import Augment, Split
from xrstudy.training import cost, history, recipes, resolve
from xrstudy.training.callbacks import load_train_state, unwrap
from xrstudy.training.checkpoints import checkpoint_path
from xrstudy.training.learner import (
    BestCheckpoint,
    TrainSetup,
    epoch_ends,
    fit,
    loss_for,
    make_learner,
    next_step,
    predict,
    restore,
)
from xrstudy.training.metrics import bootstrap_ci, classification_metrics
from xrstudy.training.models import (
    base_arch,
    create_model,
    read_checkpoint,
    standardisation_eps,
    timm_input_stats,
    write_checkpoint,
)
from xrstudy.training.monitor import HistoryLogger, ProbeHistory, TrainingDiverged, check_writable

if TYPE_CHECKING:
    from fastai.learner import Learner

    from xrstudy.pixels.imagecache import ImageCache

TRAIN_STATE = history.TRAIN_STATE_FILE
CHECKPOINT = "checkpoint.pt"  # pre-training: the best validation loss (what transfers load)
LAST_CHECKPOINT = "last.pt"  # pre-training: the final weights
BOOTSTRAP_SAMPLES = 200


# ---- where this process runs ------------------------------------------------------------------
@dataclass(frozen=True)
class Process:
    """Rank, world size and device of this process (world = 1 outside torchrun)."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: this process's GPU when there is one, else the CPU; "cuda" means this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)


def start_process(cfg: RunConfig) -> Process:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    rank = dist.get_rank() if world > 1 else 0
    return Process(rank=rank, world=world, device=device, owns_group=owns)


# ---- the resolved cell ------------------------------------------------------------------------
# Every number comes from xrstudy.training.resolve (pure, the same object `xrstudy sweep plan` prints); here the
# recipe becomes the learner's augmentation.
AUGMENTS: dict[str, Callable[[recipes.Recipe], Augment]] = {
    "bit": lambda r: Augment(out_size=r.crop, crop_fraction=r.crop / r.resize, flip=r.flip),
    # cohen_aug (transfer_learning/datasets/chexpert.py): ShiftScaleRotate(shift 0.25, scale 0.1, rotate 45,
    # albumentations' default border BORDER_REFLECT_101 ~ grid_sample "reflection"), HorizontalFlip(0.5).
    "xray": lambda r: Augment(
        out_size=r.crop, shift=0.25, scale=0.1, rotate_deg=45.0, flip=r.flip, padding="reflection"
    ),
}
PROBE_ATTEMPTS = 20  # unreadable leading images are skipped (the cache quarantines them)


def probe_image(paths: Sequence[str], what: str = "training images") -> tuple[int, int]:
    """Original (height, width) of the first readable image, decoded by xrstudy.pixels.imagecache (so DICOM,
    16-bit PNG and CIFAR `FILE#N` members are probed like any JPEG). Unreadable files are skipped
    here; the image cache quarantines and counts them."""
    from xrstudy.pixels.decoding import ImageError, load_image

    first_error = None
    tried = list(paths)[:PROBE_ATTEMPTS]
    for path in tried:
        try:
            pixels = load_image(str(path))
        except ImageError as err:
            first_error = first_error or err
            continue
        return int(pixels.shape[0]), int(pixels.shape[1])
    raise ConfigError(f"none of the first {len(tried)} {what} is readable (the first: {first_error})")


def device_name(device: torch.device) -> str:
    """The cost tables' name of a device (`xrstudy.training.cost.table_device`); "cpu" for anything but CUDA."""
    if device.type != "cuda":
        return cost.CPU
    name = torch.cuda.get_device_name(device)
    try:
        return cost.table_device(name)
    except cost.CostTableError:  # the run's cost estimate says so (resolve, planning=False); the run goes on
        return name


def _data_name(cfg: RunConfig) -> str:
    """What a cell trains on, as messages name it: its target, or its pre-training sources."""
    return cfg.target if cfg.kind == "transfer" else "+".join(cfg.sources)


def resolve_cell(cfg: RunConfig, study: StudyData, device: torch.device, world: int = 1) -> resolve.ResolvedCell:
    """The cell resolved from the tables training built: the BiT pipeline needs the original image size, so only
    it probes the first readable training image; `init: timm` reads the tag's statistics from timm."""
    probed = (
        probe_image(study.train["path"], f"training images of {_data_name(cfg)}")
        if resolve.pipeline_of(cfg) == "bit"
        else None
    )
    facts = resolve.study_facts(cfg, study, probed, init_stats=timm_input_stats(cfg) if cfg.init == "timm" else None)
    return resolve.resolve(cfg, facts, device=device_name(device), world=world, planning=False)


# ---- images and targets -----------------------------------------------------------------------
def targets_of(table: pd.DataFrame, classes: Sequence[str], multilabel: bool) -> torch.Tensor:
    if multilabel:
        return torch.from_numpy(table[list(classes)].to_numpy(dtype=np.float32, na_value=np.nan, copy=True))
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(table["label"]) - set(index))
    if unknown:
        raise ConfigError(f"labels {unknown[:5]} are not among the classes {list(classes)[:10]}")
    return torch.tensor([index[name] for name in table["label"]], dtype=torch.int64)


def open_cache(cfg: RunConfig, paths: Sequence[str], size: int, mode: str) -> ImageCache:
    """The uint8 image cache of `paths` (built once, shared by every cell of the dataset); a build
    that cannot fit on its disk is refused before it starts."""
    from xrstudy.pixels import imagecache

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out_dir) / "cache"
    return imagecache.build_cache(paths, size, cache_dir, mode, cfg.workers, what=f"the image cache of {cfg.name}")


def open_splits(
    cfg: RunConfig, study: StudyData, size: int, mode: str, cache: ImageCache | None = None
) -> tuple[dict[str, Split], dict[str, int]]:
    """Each split as rows of the memory-mapped cache + targets; quarantined images are dropped and
    counted. No pixel is read here: the loaders gather each batch when it is needed. Nor is a path
    looked up when the study knows its rows in the cache (`StudyData.universe_rows`, from prepare):
    the start-up then does no per-image work in Python, whatever the dataset's size. `cache`: the
    cache already opened (`open_cache`)."""
    cache = cache or open_cache(cfg, study.universe or study.paths, size, mode)
    known_rows = bool(study.universe_rows) and cache.paths == study.universe  # the universe is the cache's order
    splits, dropped = {}, {}
    for name, table in {"train": study.train, "valid": study.valid, "test": study.test}.items():
        rows = study.universe_rows[name] if known_rows else cache.rows_of(table["path"].astype(str))
        keep = ~table["path"].astype(str).isin(set(cache.quarantined)).to_numpy() if cache.quarantined else None
        dropped[name] = 0 if keep is None else int((~keep).sum())
        if dropped[name]:
            table, rows = table[keep], rows[keep]
        # A squashed image is cropped aspect-true in training: it needs the original sizes.
        hw = cache.original_sizes()[rows] if name == "train" and mode.endswith(":squash") else None
        targets = targets_of(table, study.classes, study.multilabel)
        splits[name] = Split(cache.images, rows, targets, hw, check=cache.check_rows)  # checksums checked on read
    if len(splits["train"]) == 0:  # every training image unreadable: say which data and where the reasons are
        train_paths = set(study.train["path"].astype(str))
        first = next(((p, why) for p, why in cache.quarantined.items() if p in train_paths), ("", ""))
        raise ConfigError(
            f"{cfg.name}: all {dropped['train']} training images of {_data_name(cfg)} were quarantined by the "
            f"image cache (unreadable), so nothing is left to train on; the reasons are in "
            f"{cache.quarantine_file} (e.g. {first[0]}: {first[1]})"
        )
    return splits, dropped


# ---- evaluation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    ci: dict[str, list[float]]
    seconds: float


def evaluate(learn: Learner, splits: dict[str, Split], study: StudyData, batch: int, seed: int) -> Evaluation:
    started = time.perf_counter()
    predictions = {name: predict(learn, splits[name], batch) for name in ("valid", "test") if len(splits[name])}
    return scored(predictions, study, seed, started)


def scored(
    predictions: dict[str, tuple[np.ndarray, np.ndarray]], study: StudyData, seed: int, started: float
) -> Evaluation:
    """Metrics of (probabilities, targets) per split, per-class values and bootstrap CIs on test: what a
    fine-tuned network's evaluation and a probe's regression both report."""
    metrics: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    ci: dict[str, list[float]] = {}
    for name in ("valid", "test"):
        if name not in predictions:
            continue
        probs, targets = predictions[name]
        values, by_class = classification_metrics(probs, targets, study.classes, study.multilabel)
        metrics.update({f"{name}/{k}": v for k, v in values.items()})
        if name == "test":
            per_class = by_class
            ci = {
                f"test/{k}": v
                for k, v in bootstrap_ci(probs, targets, study.multilabel, seed, BOOTSTRAP_SAMPLES).items()
            }
    return Evaluation(metrics, per_class, ci, time.perf_counter() - started)


# ---- provenance -------------------------------------------------------------------------------
def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import fastai
    import timm

    import xrstudy

    return {
        "xrstudy": xrstudy.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "fastai": fastai.__version__,
    }


def _device_name(device: torch.device) -> str:
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


# What decides whether a rerun gives the same digits: a CPU run's reductions follow its thread count (a demo
# cell gave digits accuracy 0.979 with 2 threads, 0.958 with the sweep worker's 1), a GPU run's its kernels.
THREAD_ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_VISIBLE_DEVICES",
)


def reproducibility(proc: Process) -> dict[str, Any]:
    """The settings that make two runs of one cell agree digit for digit, or explain why they do not."""
    return {
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),  # convolutions: TF32 on Ampere+ unless turned off
        "world": proc.world,
        "environment": {name: os.environ[name] for name in THREAD_ENVIRONMENT if name in os.environ},
    }


# ---- the cell ---------------------------------------------------------------------------------
def run(
    cfg: RunConfig,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    study: StudyData | None = None,
    checkpoint_every_steps: int = 0,
    checkpoint_every_s: float = 600.0,
) -> dict[str, Any]:
    """Train and evaluate one cell; returns (and on rank 0 saves) its result dict.

    resume: continue from `{run_dir}/train_state.pt` when it exists (same cfg -> same run_id).
    callbacks: extra fastai callbacks (notebooks, tests). study: a ready StudyData (else data.prepare).
    """
    cfg = resolve.canonical(cfg)  # the run id of what the cell computes, however the caller spelled it
    proc = start_process(cfg)
    try:
        return _run(cfg, proc, resume, callbacks, study, checkpoint_every_steps, checkpoint_every_s)
    finally:
        if proc.owns_group:
            dist.destroy_process_group()


def _run(
    cfg: RunConfig,
    proc: Process,
    resume: bool,
    callbacks: Sequence[Any],
    study: StudyData | None,
    checkpoint_every_steps: int,
    checkpoint_every_s: float,
) -> dict[str, Any]:
    if cfg.batch_size % proc.world:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) is not divisible by {proc.world} processes")
    per_device = cfg.batch_size // proc.world
    if cfg.micro_batch and per_device % min(cfg.micro_batch, per_device):
        raise ConfigError(
            f"micro_batch {cfg.micro_batch} does not divide the per-device batch {per_device} "
            f"(batch_size {cfg.batch_size} over {proc.world} processes)"
        )
    if proc.is_main:  # before any data is read: an unwritable run folder fails now, naming it
        check_writable(cfg.run_dir)
    if study is None:
        from xrstudy.data import studydata

        study = studydata.prepare(cfg)
    if len(study.train) == 0:
        raise ConfigError(f"{cfg.name}: the training split is empty ({dict(study.dropped)} rows dropped)")

    # The resolved cell first (its recipe fixes the cache size and mode), then the cache rows of each split.
    cell = resolve_cell(cfg, study, proc.device, proc.world)
    recipe = cell.recipe
    if cfg.train_mode == "probe":  # the backbone stays frozen: features once, then a logistic regression
        return run_probe_cell(cfg, proc, study, cell) if proc.is_main else {}
    splits, quarantined = open_splits(cfg, study, recipe.resize, cell.cache_mode)

    # Model, and the training state to resume from.
    model = create_model(cfg, num_classes=len(study.classes), head=cfg.head)
    state_path = cfg.run_dir / TRAIN_STATE
    state = load_train_state(state_path) if resume and state_path.is_file() else None
    if state is not None and state.get("run_id") != cfg.run_id:
        raise ConfigError(f"{state_path}: training state of run {state.get('run_id')!r}, not {cfg.run_id!r}")

    setup = TrainSetup(
        multilabel=study.multilabel,
        num_classes=len(study.classes),
        schedule=recipe.schedule,
        per_device_batch=per_device,
        micro_batch=cfg.micro_batch,
        seed=cfg.seed,
        augment=AUGMENTS[recipe.augment](recipe),
        eval_size=recipe.eval_size,
        weight_decay=recipe.weight_decay,
        mixup_alpha=recipe.mixup_alpha,
        group=recipes.loss_group(cfg),
        group_stream=recipes.loader_stream(cfg) == "micro-batches",
        sampler=cfg.sampler,
        mean=cell.mean,
        std=cell.std,
        device=proc.device,
        precision=cell.precision,
        channels_last=proc.device.type == "cuda",
        compile=cfg.compile,
        start_step=int(state["step"]) if state else 0,
        rank=proc.rank,
        world=proc.world,
        checkpoint_path=state_path,
        checkpoint_identity={"run_id": cfg.run_id},
        checkpoint_every_steps=checkpoint_every_steps,
        checkpoint_every_s=checkpoint_every_s,
    )
    watch = HistoryLogger(
        cfg.run_dir,
        total_steps=recipe.steps,
        every=cell.log_every,
        global_batch=cfg.batch_size,
        train_size=len(splits["train"]),
        rank=proc.rank,
        world=proc.world,
        hold_segment_ends=True,
    )
    learn = make_learner(model, splits["train"], setup, [watch, *callbacks])
    if state is not None:
        restore(learn, state, setup)
    watch.open(setup.start_step)
    eval_batch = 2 * min(cfg.micro_batch or per_device, per_device)
    sidecar = {
        "arch": base_arch(cfg.arch),
        "run_id": cfg.run_id,
        "config": cfg.to_dict(),
        "split_sha256": study.split_sha256,
        "classes": list(study.classes),
        "multilabel": study.multilabel,
        "std_eps": standardisation_eps(model),  # the weights' numerics, for the transfers that load them
    }
    best = None
    if cfg.kind == "pretrain" and len(splits["valid"]) and proc.is_main:
        best = BestCheckpoint(cfg.run_dir / CHECKPOINT, sidecar, splits["valid"], eval_batch, state is not None)

    def validate(step: int) -> dict[str, float]:
        """Pre-training (rank 0): the validation loss and metrics at `step`, keeping the best checkpoint."""
        if best is None:
            return {}
        loss = best.update(learn, step)
        logits, targets = best.outputs
        if not len(logits):
            return {"loss": loss}
        probs = loss_for(study.multilabel).activation(torch.from_numpy(logits)).numpy()
        return {"loss": loss, **classification_metrics(probs, targets, study.classes, study.multilabel)[0]}

    started = time.perf_counter()
    start = next_step(learn)
    ends = epoch_ends(start, recipe.steps, recipe.valid_every if cfg.kind == "pretrain" else 0)
    if watch.held_step == start and start not in ends:  # resumed between a segment's last step and its row
        ends.insert(0, start)
    try:
        for stop in ends:
            fit(learn, stop)
            watch.close_segment(stop, validate(stop))
    except TrainingDiverged as err:
        if proc.is_main:  # the last good training state stays beside it (PeriodicCheckpoint saves no NaN)
            save_result(_failed_result(cfg, study, err, proc, time.perf_counter() - started), cfg)
        raise
    finally:
        watch.close()
    train_s = time.perf_counter() - started
    if proc.world > 1:
        dist.barrier()
    if not proc.is_main:
        return {}

    # Evaluate the plain model (not the DDP wrapper: rank 0 alone) -- for a pre-training cell the
    # best-validation weights, the ones transfers load -- then write the outputs.
    learn.model = unwrap(learn.model)
    checkpoint = None
    if cfg.kind == "pretrain":
        write_checkpoint(cfg.run_dir / LAST_CHECKPOINT, learn.model, {**sidecar, "step": recipe.steps})
        if best is not None and best.step >= 0:
            kept = read_checkpoint(best.path)
            learn.model.load_state_dict(kept.state)
            checkpoint = {"path": str(kept.path), "sha256": kept.sidecar["sha256"]}
        else:  # no validation split (or no finite loss): the final weights
            checkpoint = write_checkpoint(cfg.run_dir / CHECKPOINT, learn.model, {**sidecar, "step": recipe.steps})
    evaluation = evaluate(learn, splits, study, eval_batch, cfg.seed)
    state_path.unlink(missing_ok=True)  # finished: the result (and checkpoint) supersede it

    outcome = Outcome(
        evaluation=evaluation,
        checkpoint=checkpoint,
        train_s=train_s,
        last_step=recipe.steps,
        counts={name: len(split) for name, split in splits.items()},
        quarantined=quarantined,
        resolved=cell.row(),
    )
    result = _result(cfg, study, outcome, proc)
    save_result(result, cfg)
    return result


def run_probe_cell(cfg: RunConfig, proc: Process, study: StudyData, cell: resolve.ResolvedCell) -> dict[str, Any]:
    """The probe's fork of `run` (`train_mode: probe`, xrstudy.training.probe): the same data, image cache,
    init and evaluation as a fine-tuned cell; instead of training, the frozen backbone's features of every
    image of the dataset (read from the feature cache when an earlier seed or shot count made them) and an
    L2 logistic regression. Rank 0 alone: the regression runs on its CPU."""
    from xrstudy.training import probe

    recipe, mode = cell.recipe, cell.cache_mode
    cache = open_cache(cfg, study.universe or study.paths, recipe.resize, mode)
    splits, quarantined = open_splits(cfg, study, recipe.resize, mode, cache=cache)
    model = create_model(cfg, num_classes=len(study.classes), head=cfg.head)
    mean, std = cell.mean, cell.std
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out_dir) / "cache"
    started = time.perf_counter()
    done = probe.run_probe(
        model,
        # every image of the dataset, its checksums checked on read as in fine-tuning
        Split(cache.images, np.arange(len(cache)), torch.zeros(len(cache)), check=cache.check_rows),
        cache.content_key,  # the pixels as built: a repaired image gets new features
        splits,
        arch=base_arch(cfg.arch),
        multilabel=study.multilabel,
        num_classes=len(study.classes),
        recipe=cell.probe,
        mean=mean,
        std=std,
        device=proc.device,
        seed=cfg.seed,
        feature_root=cache_root / "features",
        log=ProbeHistory(cfg.run_dir, len(cell.probe.c_grid) + 1),
    )
    evaluation = scored(done.predictions, study, cfg.seed, started + done.extract_s + done.fit_s)
    outcome = Outcome(
        evaluation=evaluation,
        checkpoint=None,
        train_s=done.extract_s + done.fit_s,
        last_step=None,
        counts={name: len(split) for name, split in splits.items()},
        quarantined=quarantined,
        extra={"probe": done.details},
        resolved=cell.row(),
        timings={"extract_s": done.extract_s, "fit_s": done.fit_s},
    )
    result = _result(cfg, study, outcome, proc)
    save_result(result, cfg)
    return result


def _history_of(cfg: RunConfig) -> dict[str, list[Any]]:
    """The run's history.csv, at most 200 points, for its result (the store alone draws the curves)."""
    return history.for_result(history.read_rows(cfg.run_dir / history.HISTORY_FILE))


def _failed_result(cfg: RunConfig, study: StudyData, err: Exception, proc: Process, train_s: float) -> dict[str, Any]:
    """A diverged cell: `status: failed` with its cause, its history up to the divergence."""
    from xrstudy.results import store

    return store.new_result(
        cfg,
        {},
        status="failed",
        error=str(err),
        split_sha256=study.split_sha256,
        history=_history_of(cfg),
        reproducibility=reproducibility(proc),
        versions=_versions(),
        git_commit=_git_commit(),
        device=_device_name(proc.device) + (f" x{proc.world}" if proc.world > 1 else ""),
        timings={"train_s": train_s},
        last_step=getattr(err, "step", None),
    )


@dataclass(frozen=True)
class Outcome:
    """What a finished cell produced, for its result JSON."""

    evaluation: Evaluation
    checkpoint: dict[str, str] | None
    train_s: float
    last_step: int | None  # None: a probe takes no optimiser step
    counts: dict[str, int]  # images per split (after the quarantine)
    quarantined: dict[str, int]  # per split: images dropped because the cache could not decode them
    resolved: dict[str, Any] = dataclasses.field(default_factory=dict)  # the resolved cell (`ResolvedCell.row()`)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # more top-level result fields (a probe's "probe")
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # beyond train_s and eval_s


def _result(cfg: RunConfig, study: StudyData, outcome: Outcome, proc: Process) -> dict[str, Any]:
    from xrstudy.results import store

    dropped = dict(study.dropped)
    if any(outcome.quarantined.values()):
        dropped["quarantine"] = dropped.get("quarantine", 0) + sum(outcome.quarantined.values())
    return store.new_result(
        cfg,
        outcome.evaluation.metrics,
        per_class=outcome.evaluation.per_class,
        ci=outcome.evaluation.ci,
        split_sha256=study.split_sha256,
        split_file=study.split_path,
        shots_ids=list(study.shots_ids),  # the k-shot training images, so a cell can be audited / redone
        checkpoint=outcome.checkpoint,
        counts={**outcome.counts, "dropped": dropped, "shots_ids": len(study.shots_ids)},
        versions=_versions(),
        git_commit=_git_commit(),
        device=_device_name(proc.device) + (f" x{proc.world}" if proc.world > 1 else ""),
        timings={"train_s": outcome.train_s, "eval_s": outcome.evaluation.seconds, **outcome.timings},
        last_step=outcome.last_step,
        resolved=outcome.resolved,
        **outcome.extra,
        history=_history_of(cfg),
        reproducibility=reproducibility(proc),
        **_init_config(cfg),
    )


def _init_config(cfg: RunConfig) -> dict[str, Any]:
    """{"init_config": the pre-training cell's config} for an init run:<id> (its checkpoint's sidecar holds it),
    so the results table knows the init's data fraction without the pre-training result; else {}."""
    if parent_run_id(cfg.init) is None:
        return {}
    sidecar = checkpoint_path(cfg, cfg.init).with_suffix(".json")
    try:
        config = json.loads(sidecar.read_text()).get("config")
    except (OSError, ValueError):  # read and checked when the init was loaded; nothing to add if it went since
        return {}
    return {"init_config": config} if isinstance(config, dict) else {}


def save_result(result: dict[str, Any], cfg: RunConfig) -> Path:
    from xrstudy.results import store

    return store.save(result, cfg.results_dir)


# ---- command line -----------------------------------------------------------------------------
__all__ = [
    "run",
    "run_probe_cell",
    "resolve_cell",
    "AUGMENTS",
    "open_splits",
    "evaluate",
    "scored",
    "start_process",
    "Outcome",
    "probe_image",
    "reproducibility",
]
