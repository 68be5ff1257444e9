"""One study cell, start to finish: `run(cfg) -> result dict`.

Read it top to bottom -- it is the whole path from a RunConfig to a result JSON:

    study   = data.prepare(cfg)                      tables, classes, split hash
    recipe  = recipe_of(cfg, len(study.train), ...)  steps, LR schedule, sizes (xrstudy.hyper.recipe_for)
    splits  = load_splits(cfg, study, size)          uint8 images from the image cache + targets
    model   = create_model(cfg, num_classes)         timm network, init, head
    learn   = make_learner(model, splits.train, setup)
    fit(learn)                                       (resumes from {run_dir}/train_state.pt)
    metrics = evaluate on valid and test             NaN-safe metrics + bootstrap CIs
    checkpoint (pre-training cells) + results.save

Multi-GPU: the same command under `torchrun --nproc_per_node N xrstudy train cfg.yaml`. `batch_size`
is the global batch (the recipe's), split evenly over the processes; the LR follows the global
batch, so a cell computes the same thing on 1 or N devices.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from xrstudy import hyper
from xrstudy.config import ConfigError, RunConfig
from xrstudy.learner import (
    Augment,
    Split,
    TrainSetup,
    bootstrap_ci,
    classification_metrics,
    fit,
    load_train_state,
    make_learner,
    predict,
    restore,
    unwrap,
)
from xrstudy.models import base_arch, create_model, write_checkpoint

TRAIN_STATE = "train_state.pt"
CHECKPOINT = "checkpoint.pt"
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


# ---- the recipe of a cell ---------------------------------------------------------------------
# The numbers come from xrstudy.hyper.recipe_for (pure, shared with `xrstudy sweep plan`); here they
# become the learner's augmentation.
AUGMENTS: dict[str, Callable[[hyper.Recipe], Augment]] = {
    "bit": lambda r: Augment(out_size=r.crop, crop_fraction=r.crop / r.resize, flip=True),
    "xray": lambda r: Augment(out_size=r.crop, shift=0.25, scale=0.1, rotate_deg=45.0, flip=True),
}


def recipe_of(cfg: RunConfig, train_size: int, image_hw: tuple[int, int]) -> hyper.Recipe:
    from xrstudy import sources

    name = cfg.target if cfg.kind == "transfer" else ""
    pipeline = sources.source_of(name).transfer_pipeline if name else "xray"
    return hyper.recipe_for(cfg, train_size, image_hw, pipeline=pipeline)


# ---- images and targets -----------------------------------------------------------------------
def _build_cache(paths: Sequence[str], size: int, cache_dir: Path, mode: str, workers: int) -> Any:
    from xrstudy.images import build_cache

    return build_cache(paths, size, cache_dir, mode, workers)


PROBE_ATTEMPTS = 20  # unreadable leading images are skipped (the cache quarantines them)


def probe_image(paths: Sequence[str]) -> tuple[str, tuple[int, int]]:
    """(cache mode "L" or "RGB", original (height, width)) of the first readable image, decoded by
    xrstudy.images (so DICOM, 16-bit PNG and CIFAR `FILE#N` members are probed like any JPEG).
    Unreadable files are skipped here; the image cache quarantines and counts them."""
    from xrstudy.images import ImageError, load_image

    for path in list(paths)[:PROBE_ATTEMPTS]:
        try:
            pixels = load_image(str(path))
        except ImageError:
            continue
        return ("RGB" if pixels.ndim == 3 else "L"), (int(pixels.shape[0]), int(pixels.shape[1]))
    raise ConfigError(f"none of the first {PROBE_ATTEMPTS} training images is readable (first: {list(paths)[:1]})")


def image_mode(cfg: RunConfig, table: pd.DataFrame) -> str:
    """X-ray sources are cached grayscale, natural images in colour; an ImageFolder is probed."""
    from xrstudy import sources

    name = cfg.sources[0] if cfg.kind == "pretrain" else cfg.target
    if name in sources.SOURCES and sources.SOURCES[name].modality == "xray":
        return "L"
    if table.empty:
        return "RGB"
    return probe_image(table["path"])[0]


def targets_of(table: pd.DataFrame, classes: Sequence[str], multilabel: bool) -> torch.Tensor:
    if multilabel:
        return torch.from_numpy(table[list(classes)].to_numpy(dtype=np.float32, na_value=np.nan, copy=True))
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(table["label"]) - set(index))
    if unknown:
        raise ConfigError(f"labels {unknown[:5]} are not among the classes {list(classes)[:10]}")
    return torch.tensor([index[name] for name in table["label"]], dtype=torch.int64)


def load_splits(cfg: RunConfig, study: Any, size: int, mode: str) -> tuple[dict[str, Split], dict[str, int]]:
    """Each split as uint8 images N x C x H x W + targets; quarantined images are dropped and counted."""
    tables = {"train": study.train, "valid": study.valid, "test": study.test}
    # StudyData.paths: the whole dataset (all shot counts and seeds of a target share one cache).
    paths = list(getattr(study, "paths", None) or sorted({str(p) for t in tables.values() for p in t["path"]}))
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out_dir) / "cache"
    cache = _build_cache(paths, size, cache_dir, mode, cfg.workers)
    quarantined = set(getattr(cache, "quarantined", {}) or {})
    splits, dropped = {}, {}
    for name, table in tables.items():
        keep = ~table["path"].astype(str).isin(quarantined)
        dropped[name] = int((~keep).sum())
        table = table[keep]
        arrays = [np.asarray(cache[cache.index_of(str(p))]) for p in table["path"]]
        images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, size, size), dtype=torch.uint8)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        splits[name] = Split(images.contiguous(), targets_of(table, study.classes, study.multilabel))
    return splits, dropped


# ---- evaluation -------------------------------------------------------------------------------
def evaluate(learn: Any, splits: dict[str, Split], classes: Sequence[str], multilabel: bool,
             seed: int) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, list[float]]]:
    metrics, per_class, ci = {}, {}, {}
    for name in ("valid", "test"):
        if len(splits[name]) == 0:
            continue
        probs, targets = predict(learn, splits[name])
        values, by_class = classification_metrics(probs, targets, classes, multilabel)
        metrics.update({f"{name}/{k}": v for k, v in values.items()})
        if name == "test":
            per_class = by_class
            ci = {f"test/{k}": v for k, v in bootstrap_ci(probs, targets, multilabel, seed, BOOTSTRAP_SAMPLES).items()}
    return metrics, per_class, ci


# ---- provenance -------------------------------------------------------------------------------
def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import fastai
    import timm

    import xrstudy

    return {"xrstudy": xrstudy.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "fastai": fastai.__version__}


def _device_name(device: torch.device) -> str:
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def _precision(cfg: RunConfig, device: torch.device) -> str:
    return ("bf16" if device.type == "cuda" else "fp32") if cfg.precision == "auto" else cfg.precision


# ---- the cell ---------------------------------------------------------------------------------
def run(cfg: RunConfig, *, resume: bool = False, callbacks: Sequence[Any] = (), study: Any = None,
        checkpoint_every_steps: int = 0, checkpoint_every_s: float = 600.0) -> dict[str, Any]:
    """Train and evaluate one cell; returns (and on rank 0 saves) its result dict.

    resume: continue from `{run_dir}/train_state.pt` when it exists (same cfg -> same run_id).
    callbacks: extra fastai callbacks (notebooks, tests). study: a ready StudyData (else data.prepare).
    """
    proc = start_process(cfg)
    try:
        return _run(cfg, proc, resume, callbacks, study, checkpoint_every_steps, checkpoint_every_s)
    finally:
        if proc.owns_group:
            dist.destroy_process_group()


def _run(cfg: RunConfig, proc: Process, resume: bool, callbacks: Sequence[Any], study: Any,
         checkpoint_every_steps: int, checkpoint_every_s: float) -> dict[str, Any]:
    if cfg.batch_size % proc.world:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) is not divisible by {proc.world} processes")
    if study is None:
        from xrstudy import data

        study = data.prepare(cfg)
    if len(study.train) == 0:
        raise ConfigError(f"{cfg.name}: the training split is empty ({dict(study.dropped)} rows dropped)")
    multilabel, classes = bool(study.multilabel), tuple(study.classes)

    # Recipe first (it fixes the cache size), then the images at that size.
    mode = image_mode(cfg, study.train)
    original_hw = probe_image(study.train["path"])[1]
    recipe = recipe_of(cfg, len(study.train), original_hw)
    splits, quarantined = load_splits(cfg, study, recipe.resize, mode)

    # Model, and the training state to resume from.
    model = create_model(cfg, num_classes=len(classes), head=cfg.head)
    run_dir = cfg.run_dir
    state_path = run_dir / TRAIN_STATE
    state = load_train_state(state_path) if resume and state_path.is_file() else None
    if state is not None and state.get("run_id") != cfg.run_id:
        raise ConfigError(f"{state_path}: training state of run {state.get('run_id')!r}, not {cfg.run_id!r}")
    start_step = int(state["step"]) if state else 0

    setup = TrainSetup(
        multilabel=multilabel,
        num_classes=len(classes),
        schedule=recipe.schedule,
        per_device_batch=cfg.batch_size // proc.world,
        seed=cfg.seed,
        augment=AUGMENTS[recipe.augment](recipe),
        eval_size=recipe.eval_size,
        weight_decay=recipe.weight_decay,
        mixup_alpha=recipe.mixup_alpha,
        device=proc.device,
        precision=_precision(cfg, proc.device),
        channels_last=proc.device.type == "cuda",
        compile=cfg.compile,
        start_step=start_step,
        rank=proc.rank,
        world=proc.world,
        checkpoint_path=state_path,
        checkpoint_identity={"run_id": cfg.run_id},
        checkpoint_every_steps=checkpoint_every_steps,
        checkpoint_every_s=checkpoint_every_s,
    )
    learn = make_learner(model, splits["train"], setup, callbacks)
    if state is not None:
        restore(learn, state)

    started = time.perf_counter()
    fit(learn)
    train_s = time.perf_counter() - started
    if proc.world > 1:
        dist.barrier()
    if not proc.is_main:
        return {}

    # Evaluate the plain model (not the DDP wrapper: rank 0 alone), then write the outputs.
    learn.model = unwrap(learn.model)
    started = time.perf_counter()
    metrics, per_class, ci = evaluate(learn, splits, classes, multilabel, cfg.seed)
    eval_s = time.perf_counter() - started

    checkpoint = None
    if cfg.kind == "pretrain":
        checkpoint = write_checkpoint(run_dir / CHECKPOINT, learn.model, {
            "arch": base_arch(cfg.arch), "run_id": cfg.run_id, "config": cfg.to_dict(),
            "split_sha256": study.split_sha256, "classes": list(classes), "multilabel": multilabel,
            "step": recipe.steps,
        })
    state_path.unlink(missing_ok=True)  # finished: the result (and checkpoint) supersede it

    result = _result(cfg, study, splits, quarantined, metrics, per_class, ci, checkpoint, proc,
                     {"train_s": train_s, "eval_s": eval_s}, recipe)
    save_result(result, cfg)
    return result


def _result(cfg: RunConfig, study: Any, splits: dict[str, Split], quarantined: dict[str, int],
            metrics: dict[str, float], per_class: dict[str, Any], ci: dict[str, Any], checkpoint: Any,
            proc: Process, timings: dict[str, float], recipe: hyper.Recipe) -> dict[str, Any]:
    from xrstudy import results

    dropped = dict(study.dropped)
    if any(quarantined.values()):
        dropped["quarantine"] = dropped.get("quarantine", 0) + sum(quarantined.values())
    return results.new_result(
        cfg, metrics,
        per_class=per_class,
        ci=ci,
        split_sha256=study.split_sha256,
        split_file=getattr(study, "split_path", ""),
        shots_ids=list(study.shots_ids),  # the k-shot training images, so a cell can be audited / redone
        checkpoint=checkpoint,
        counts={**{name: len(split) for name, split in splits.items()}, "dropped": dropped,
                "shots_ids": len(study.shots_ids)},
        versions=_versions(),
        git_commit=_git_commit(),
        device=_device_name(proc.device) + (f" x{proc.world}" if proc.world > 1 else ""),
        timings=timings,
        last_step=recipe.steps,
    )


def save_result(result: dict[str, Any], cfg: RunConfig) -> Path:
    from xrstudy import results

    return results.save(result, cfg.results_dir)


# ---- command line -----------------------------------------------------------------------------
def cmd_train(args: Any) -> int:
    cfg = RunConfig.from_yaml(args.config)
    result = run(cfg, resume=args.resume, checkpoint_every_steps=args.checkpoint_every)
    if result:
        shown = {k: round(v, 4) for k, v in result["metrics"].items() if isinstance(v, float)}
        print(f"{cfg.run_id}: {shown}")
    return 0


__all__ = ["run", "recipe_of", "AUGMENTS", "load_splits", "evaluate",
           "cmd_train", "start_process"]
