"""`xrstudy sweep plan`: every cell of a sweep with everything that decides its numbers, before any GPU hour.

No image and no model is loaded (and neither torch nor timm imported). Per cell:
- train_size from the label files when the cell's roots exist here (`train_size_from: "label files"`:
  `xrstudy.data.studydata.train_size`, the length of the training table `data.prepare` would build),
  else from the registry's published facts (`Source.published_train_size`, per-view counts of the
  pre-training sources); few-shot cells k x classes (capped by the full set), or the class counts of
  the label files. A root that does not exist on this machine counts as not given.
- the recipe from `xrstudy.training.recipes.recipe_for(cfg, train_size, image_hw, pipeline=...)`, the function
  training calls (`xrstudy.training.train.recipe_of`), so the plan is what runs.
- the init's input statistics, the paper's model name, dependencies, and a `leak` flag when the
  target's test images were seen by the init's pre-training (`Source.shares_images_with`).
- cost: image-steps, an estimated GPU-hours figure from the throughput table (`xrstudy.training.cost`), the
  image cache on disk and the images each rank holds in memory.
- memory: the images one GPU holds at the cell's crop (`benchmarks/memory.csv`) and the `micro_batch`
  the cell runs with on one GPU (gradient accumulation up to the global batch); `sweep submit` sets it
  per cell for the GPUs it gives the cell, by the same function (`xrstudy.training.cost.micro_batch`).
- probe cells (`train_mode: probe`): no optimiser step; their cost is one forward pass over the dataset's
  images (a third of a training step each, `recipes.FORWARD_SHARE`), paid by the first cell of a feature
  group (`feature_group`) and read from its file by the others; the regression runs on a CPU.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xrstudy.config import RunConfig, base_arch
from xrstudy.data import labels
from xrstudy.data.sources import Source, source_of
from xrstudy.results import store
from xrstudy.sweeps import sweepfile
from xrstudy.training import cost, recipes

LARGE_HW = (1024, 1024)  # "larger than 96 x 96": the HyperRule only asks whether images are small


# ---- pieces of a cell's plan ----------------------------------------------------------------------
def input_stats(cfg: RunConfig) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, str]:
    """(mean, std, why) the cell normalises with: the authors' rule (`xrstudy.training.recipes.input_stats`), which
    training uses too (`models.input_stats`). For `init: timm` training reads the tag's timm pretrained
    cfg; the plan, without torch, knows that Google's BiT tags carry 0.5 / 0.5."""
    if cfg.init == "timm":
        tag = cfg.arch.partition(".")[2]
        if tag.startswith("goog_"):
            return (*recipes.XRAY_STATS, f"timm pretrained cfg of {cfg.arch}: 0.5 / 0.5")
        return None, None, f"timm pretrained cfg of {cfg.arch} (read at run time)"
    target = source_of(cfg.target).input_stats if cfg.kind == "transfer" else None
    return recipes.input_stats(cfg, target)


def init_sources(cfg: RunConfig, by_id: dict[str, RunConfig]) -> tuple[str, ...]:
    """The datasets the init was pre-trained on, as far as the sweep says (empty when unknown)."""
    parent = sweepfile.parent_id(cfg)
    if parent is not None:
        return tuple(by_id[parent].sources) if parent in by_id else ()
    if cfg.init == "paper":
        return tuple(cfg.init_label.split("_"))
    return ()


def pretrained_model(cfg: RunConfig, pretrain_configs: dict[str, dict[str, Any]]) -> str:
    """The paper's name of the model a cell trains from (transfer) or produces (pretrain)."""
    if cfg.kind == "pretrain":
        return store.pretrained_model_name(cfg.init_label or cfg.name, cfg.arch)
    label = cfg.init_label or store.default_init_label(cfg.to_dict(), pretrain_configs)
    return store.pretrained_model_name(label, cfg.arch)


def _sources_of(cfg: RunConfig) -> tuple[str, ...]:
    return tuple(cfg.sources) if cfg.kind == "pretrain" else (cfg.target,)


@dataclass
class _Files:
    """Label-file reads shared by the cells of one plan (every shot and seed of a target reads the
    same full training table once; `data.train_size` keeps its own split stages)."""

    metadata_only: bool
    out_dir: str
    full: dict[tuple, Any] = field(default_factory=dict)

    @staticmethod
    def _key(cfg: RunConfig) -> tuple:
        """The fields that decide a cell's full training table (not its shots or seed)."""
        return (
            cfg.kind,
            _sources_of(cfg),
            cfg.roots,
            tuple(cfg.views) if cfg.kind == "pretrain" else (),
            cfg.labels,
            cfg.uncertain,
            cfg.label_mode,
            cfg.split_mode,
            cfg.data_fraction,
            cfg.metadata_only,
        )

    def study(self, cfg: RunConfig) -> Any:
        from xrstudy.data import studydata

        key = self._key(cfg)
        if key not in self.full:
            self.full[key] = studydata.prepare(cfg.replace(shots=0, seed=0, out_dir=self.out_dir))
        return self.full[key]

    def train_size(self, cfg: RunConfig) -> tuple[int, int, int]:
        """(training images of this cell, images of the dataset (cache), train + valid + test images)."""
        from xrstudy.data import studydata

        study = self.study(cfg)
        evaluated = len(study.valid) + len(study.test)
        universe = len(study.universe) or len(study.train) + evaluated
        size = studydata.train_size(cfg.replace(out_dir=self.out_dir))  # cached per data fields, shots and seed
        return size, universe, size + evaluated


def _published_size(cfg: RunConfig) -> tuple[int | None, str]:
    if cfg.kind == "pretrain":
        total, missing = 0, []
        for name in cfg.sources:
            by_view = dict(source_of(name).published_train_by_view)
            if not by_view:
                missing.append(name)
            views = set(cfg.views)
            if cfg.label_mode == "paper":  # the authors' view names (e.g. MIMIC has no "L"), as data.prepare reads
                views &= labels.SOURCE_VIEWS_NAMED_AS_AUTHORS.get(name, set(labels.AUTHORS_VIEW_NAMES))
            total += sum(by_view.get(view, 0) for view in views)
        if missing:
            return None, f"unresolved: no published per-view counts for {missing} (give their roots)"
        how = "published per-view counts (xrstudy.data.sources)"
        if cfg.data_fraction < 1:
            total, how = int(total * cfg.data_fraction), how + f" x data_fraction {cfg.data_fraction}"
        return total, how
    source = source_of(cfg.target)
    full, where = source.published_train_size, "published (registry)"
    if full is None:
        return None, f"unresolved: {cfg.target!r} has no published train size (give its root)"
    if cfg.shots == 0:
        return full, where
    classes = source.published_classes
    if classes is None:
        return None, f"unresolved: class count of {cfg.target!r} unknown (give its root)"
    # At most: a class shorter than k gives fewer (paper k-shot sets); the HyperRule only asks < 20k.
    return min(full, cfg.shots * classes), f"at most {cfg.shots} x {classes} classes (capped by the {where} full size)"


def _image_hw(cfg: RunConfig, source: Source, table: Any) -> tuple[tuple[int, int], str]:
    if cfg.kind == "pretrain":
        return (recipes.PRETRAIN_IMAGE_SIZE,) * 2, "pre-training pipeline"
    if source.native_hw is not None:
        return source.native_hw, "registry (native_hw)"
    if table is not None and len(table):
        from PIL import Image

        try:
            with Image.open(str(table["path"].iloc[0])) as image:  # the header only, no pixels decoded
                return (image.height, image.width), "first training image's header"
        except (OSError, ValueError):
            pass
    return LARGE_HW, "assumed larger than 96 x 96 px"


# ---- one cell ------------------------------------------------------------------------------------
def plan_cell(
    cfg: RunConfig,
    by_id: dict[str, RunConfig],
    files: _Files | None,
    device: str,
    pretrain_configs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The plan of one cell; `by_id`: the sweep's cells (parents), `files`: label-file reads or None."""
    if pretrain_configs is None:
        pretrain_configs = {c.run_id: c.to_dict() for c in by_id.values() if c.kind == "pretrain"}
    source = source_of(cfg.target) if cfg.kind == "transfer" else source_of(cfg.sources[0])
    warnings: list[str] = []
    errors: list[str] = []
    table = None
    n_cache = None
    memory_from = "published train size only (valid / test sizes not recorded)"
    if files is not None:
        try:
            size, n_cache, _ = files.train_size(cfg)
            table = files.study(cfg).train
            size_from, memory_from = "label files", "label files"
        except (ValueError, OSError) as err:  # ConfigError, SourceError, FewShotError
            errors.append(str(err))
            size, size_from = None, f"unresolved: {err}"
    else:
        size, size_from = _published_size(cfg)
    if size is not None and n_cache is None:  # published: the full training set is the cache we know of
        full = size if cfg.kind == "pretrain" or cfg.shots == 0 else _published_size(cfg.replace(shots=0))[0]
        n_cache = full
    image_hw, hw_from = _image_hw(cfg, source, table)
    pipeline = source.transfer_pipeline if cfg.kind == "transfer" else "xray"
    recipe = (
        recipes.recipe_for(cfg, size, image_hw, pipeline=pipeline, flip=source.mirror_invariant)
        if size is not None
        else None
    )
    mean, std, stats_from = input_stats(cfg)
    seen = set(init_sources(cfg, by_id))
    leak = None
    if cfg.kind == "transfer":
        overlap = sorted(seen & ({cfg.target} | set(source.shares_images_with)))
        leak = bool(overlap)
        if leak:
            warnings.append(
                f"leak: {cfg.target} holds images of {', '.join(overlap)}, which the pre-training of "
                f"its init read: its test images may have been seen in pre-training"
            )
    parent = sweepfile.parent_id(cfg)
    image_steps = recipe.steps * recipe.global_batch if recipe else None
    speed = cost.throughput(cfg.arch, recipe.crop, device, compiled=cfg.compile) if recipe else None
    side = recipe.resize if recipe else None
    mode = "L" if source.modality == "xray" else "RGB"
    fit = cost.images_per_gpu(cfg.arch, recipe.crop, device) if recipe else None
    micro = cfg.micro_batch or cost.micro_batch(fit.images if fit else None, cfg.batch_size)
    micro_from = (
        "the sweep file"
        if cfg.micro_batch
        else f"on one GPU ({fit.images} images fit)"
        if fit
        else f"no memory entry for {cfg.arch} on {device}: the whole batch at once"
    )
    probe = _probe_plan(cfg, recipe, n_cache, speed, micro, from_files=files is not None) if recipe else {}
    if probe:  # no optimiser step: what it costs is one forward pass over the dataset's images
        image_steps, speed = probe.pop("image_steps"), probe.pop("speed")
    return {
        "kind": cfg.kind,
        "run_id": cfg.run_id,
        "name": cfg.name,
        "target": cfg.target if cfg.kind == "transfer" else None,
        "sources": list(cfg.sources) if cfg.kind == "pretrain" else None,
        "pretrained_model": pretrained_model(cfg, pretrain_configs),
        "init": cfg.init,
        "init_label": cfg.init_label,
        "arch": cfg.arch,
        "shots": cfg.shots,
        "seed": cfg.seed,
        "train_size": size,
        "train_size_from": size_from,
        "image_hw": list(image_hw),
        "image_hw_from": hw_from,
        "pipeline": pipeline,
        "steps": recipe.steps if recipe else None,
        "epochs": recipe.epochs if recipe and cfg.kind == "pretrain" else None,
        "boundaries": list(recipe.boundaries) if recipe else None,
        "warmup": recipe.warmup if recipe else None,
        "resize": recipe.resize if recipe else None,
        "crop": recipe.crop if recipe else None,
        "eval_resize": recipe.eval_size if recipe else None,
        "augment": recipe.augment if recipe else None,
        "flip": recipe.flip if recipe else None,
        "mixup_alpha": recipe.mixup_alpha if recipe else None,
        "lr": recipe.base_lr if recipe else None,
        "global_batch": cfg.batch_size,
        "weight_decay": recipe.weight_decay if recipe else None,
        "sampler": cfg.sampler,
        "head_init": cfg.head_init if cfg.kind == "transfer" else None,
        "mean": list(mean) if mean else None,
        "std": list(std) if std else None,
        "stats_from": stats_from,
        "views": list(cfg.views) if cfg.kind == "pretrain" else None,
        "labels": cfg.labels if cfg.kind == "pretrain" else None,
        "uncertain": cfg.uncertain,
        "split_mode": cfg.split_mode,
        "label_mode": cfg.label_mode,
        "shots_mode": cfg.shots_mode if cfg.kind == "transfer" else None,
        "depends_on": [parent] if parent in by_id else [],
        "image_steps": image_steps,
        "images_per_s": round(speed.images_per_s, 1) if speed else None,
        "throughput_from": f"{device} bf16: {speed.how}" if speed else f"no throughput for {cfg.arch} on {device}",
        "gpu_hours": round(cost.gpu_hours(image_steps, speed), 3) if speed and image_steps else None,
        "images_per_gpu": fit.images if fit else None,
        "images_per_gpu_from": fit.how if fit else None,
        "micro_batch": micro,
        "micro_batch_from": micro_from,
        "cache_images": n_cache,
        "cache_bytes": recipes.cache_bytes(n_cache, side, mode) if side and n_cache else None,
        "ram_per_rank_bytes": _ram_per_rank(cfg, n_cache, side, mode, micro, device) if side and n_cache else None,
        "memory_from": f"{memory_from}; xrstudy.training.recipes (uint8 cache at the resize side, shared through "
        f"the page cache; a rank holds its tables, a staging ring of micro-batches and the model's host copy)",
        "leak": leak,
        "warnings": warnings,
        "errors": errors,
        "train_mode": cfg.train_mode if cfg.kind == "transfer" else None,
        **probe,
    }


def feature_group(cfg: RunConfig) -> tuple:
    """Probe cells that read one feature file (xrstudy.training.probe: the same init weights, images and
    evaluation view): every seed and shot count of an (init, target, preprocessing), or one seed for a
    scratch init, whose random weights depend on it."""
    scratch = cfg.init == "scratch"
    return (
        cfg.init,
        cfg.init_label if cfg.init == "paper" else "",
        cfg.arch,
        (cfg.weight_init, cfg.seed) if scratch else (),
        cfg.target,
        cfg.roots,
        cfg.label_mode,
        cfg.split_mode,
        cfg.uncertain,
        cfg.image_size,
    )


def _probe_plan(
    cfg: RunConfig, recipe: recipes.Recipe, n_images: int | None, train_speed: Any, micro: int, *, from_files: bool
) -> dict[str, Any]:
    """The plan fields of a probe cell (empty for a fine-tune cell): its numbers (`recipes.probe_recipe`),
    and the one forward pass over the dataset's images its features cost. `plan_cells` leaves that cost
    with the first cell of each feature group; the others read the file."""
    if cfg.train_mode != "probe":
        return {}
    numbers = recipes.probe_recipe(recipe, batch_size=cfg.batch_size, micro_batch=micro)
    speed = (
        cost.Throughput(
            train_speed.images_per_s / recipes.FORWARD_SHARE,
            f"forward only: {1 / recipes.FORWARD_SHARE:.0f} x the training images/s ({train_speed.how}); the "
            f"features are fp32, the training figure bf16: not measured, a lower bound on the time",
        )
        if train_speed
        else None
    )
    counted = "every image of the dataset" if from_files else "the published training images (valid / test unknown)"
    return {
        "image_steps": n_images,
        "speed": speed,
        "steps": 0,
        "boundaries": [],
        "warmup": None,
        "lr": None,
        "mixup_alpha": None,
        "augment": "evaluation view",
        "eval_resize": numbers.eval_size,
        "feature_batch": numbers.feature_batch,
        "feature_images": n_images,
        "feature_images_from": counted,
        "probe_c_grid": list(numbers.c_grid),
    }


def _share_features(rows: list[dict[str, Any]], cells: list[RunConfig]) -> None:
    """Only the first probe cell of a feature group extracts; the others' GPU-hours are 0 (they read its file)."""
    first: dict[tuple, dict[str, Any]] = {}
    for row, cfg in zip(rows, cells):
        if row.get("train_mode") != "probe":
            continue
        group = feature_group(cfg)
        if group not in first:
            first[group] = row
            row["features_from"] = "extracted here"
            continue
        row["features_from"] = f"the feature file of {first[group]['run_id']} ({first[group]['name']})"
        row["image_steps"] = 0
        if row["gpu_hours"] is not None:
            row["gpu_hours"] = 0.0


def _ram_per_rank(cfg: RunConfig, n_images: int, side: int, mode: str, micro: int, device: str) -> int:
    """Host memory of one training rank (`recipes.ram_per_rank`, measured by benchmarks/bench_memory.py)."""
    per_device = micro or cfg.batch_size
    params = cost.arch_params().get(base_arch(cfg.arch))
    return recipes.ram_per_rank(
        n_images,
        recipes.cache_bytes(1, side, mode),
        per_device,
        model_params=int(params * 1e6) if params else 0,
        cuda=device != "cpu",
    )


def _with_roots(cfg: RunConfig, roots: dict[str, str], metadata_only: bool) -> RunConfig | None:
    """The cell reading its files, when every dataset it reads has a root that exists here."""
    merged = {**{k: str(v) for k, v in cfg.root_map.items()}, **roots}
    needed = _sources_of(cfg)
    if not all(name in merged and Path(merged[name]).is_dir() for name in needed):
        return None
    return cfg.replace(
        roots=tuple(f"{k}={v}" for k, v in merged.items()), metadata_only=metadata_only or cfg.metadata_only
    )


def plan_cells(
    cells: Iterable[RunConfig],
    *,
    roots: dict[str, str] | None = None,
    metadata_only: bool = False,
    use_roots: bool = True,
    device: str = cost.DEFAULT_DEVICE,
) -> list[dict[str, Any]]:
    """The plan of every cell, in the sweep's order. `use_roots=False` plans from published facts alone."""
    cells = list(cells)
    by_id = {c.run_id: c for c in cells}
    pretrain_configs = {c.run_id: c.to_dict() for c in cells if c.kind == "pretrain"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="xrstudy-plan-") as scratch:  # split files of the reads land here
        files = _Files(metadata_only, scratch)
        for cfg in cells:
            reading = _with_roots(cfg, roots or {}, metadata_only) if use_roots else None
            rows.append(plan_cell(reading or cfg, by_id, files if reading else None, device, pretrain_configs))
            rows[-1]["run_id"] = cfg.run_id  # roots are execution fields: the id does not change
    _share_features(rows, cells)
    return rows


# ---- summaries and the CLI -----------------------------------------------------------------------
def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = Counter(r["kind"] for r in rows)
    targets = Counter(r["target"] for r in rows if r["kind"] == "transfer")
    hours = {kind: round(sum(r["gpu_hours"] or 0 for r in rows if r["kind"] == kind), 1) for kind in kinds}
    return {
        "cells": len(rows),
        "per_kind": dict(kinds),
        "per_target": dict(targets),
        "gpu_hours": hours,
        "unresolved": sum(r["steps"] is None for r in rows),
        "leaks": sum(bool(r["leak"]) for r in rows),
        "no_estimate": sum(r["gpu_hours"] is None for r in rows),
        "probe": sum(r.get("train_mode") == "probe" for r in rows),
    }


COLUMNS = (
    ("kind", 8),
    ("pretrained_model", 36),
    ("target", 13),
    ("shots", 5),
    ("seed", 4),
    ("train_mode", 8),
    ("train_size", 10),
    ("steps", 6),
    ("resize", 6),
    ("crop", 4),
    ("mixup_alpha", 5),
    ("sampler", 10),
    ("lr", 7),
    ("micro_batch", 5),
    ("gpu_hours", 9),
    ("leak", 5),
)
HEADINGS = {
    "mixup_alpha": "mixup",
    "pretrained_model": "model",
    "train_size": "train",
    "micro_batch": "micro",
    "train_mode": "mode",
}


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["  ".join(HEADINGS.get(name, name)[:width].ljust(width) for name, width in COLUMNS).rstrip()]
    for row in rows:
        lines.append("  ".join(cell(row[name]).ljust(width) for name, width in COLUMNS).rstrip())
    info = summary(rows)
    per_target = ", ".join(f"{t} {n}" for t, n in info["per_target"].items())
    hours = ", ".join(f"{k} {h:,.1f}" for k, h in info["gpu_hours"].items())
    lines.append(
        f"{info['cells']} cells: "
        + ", ".join(f"{k} {n}" for k, n in info["per_kind"].items())
        + (f" (transfer: {per_target})" if per_target else "")
        + (f" ({info['probe']} of them linear probes)" if info["probe"] else "")
        + f"; estimated GPU-hours: {hours}; unresolved {info['unresolved']}, leaks {info['leaks']}"
    )
    return "\n".join(lines)


__all__ = ["plan_cells", "plan_cell", "input_stats", "init_sources", "pretrained_model", "summary", "format_table"]
