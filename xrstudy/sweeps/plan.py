"""`xrstudy sweep plan`: every cell of a sweep with everything that decides its numbers, before any GPU hour.

No image and no model is loaded (and neither torch nor timm imported). Each row is the cell's
`xrstudy.training.resolve.ResolvedCell` (`row()`: recipe, pipeline, image size and cache mode, input statistics,
flips, precision, optimiser, MixUp group, micro-batch, cost), the object training resolves and stores in its
result, so the plan is what runs; plus the columns only a sweep knows:
- the cell's own fields (target / sources, init, arch, shots, seed, sampler, modes) and the paper's model name;
- `depends_on` (the pre-training cell it loads) and a `leak` flag when the target's test images were seen by
  the init's pre-training (`Source.shares_images_with`), with its warning;
- `errors` and `warnings` of the data's facts.
The data's facts come from the label files when the cell's roots exist here (`train_size_from: "label files"`,
`resolve.label_file_facts`: the training table `data.prepare` would build, read once per full table), else from
the registry's published facts (`resolve.registry_facts`). A root that does not exist on this machine counts as
not given. `micro_batch` is the one the cell runs with on one GPU (the memory table; `sweep submit` sets it per
cell for the GPUs it gives the cell, by the same function, `xrstudy.training.cost.micro_batch`).
- probe cells (`train_mode: probe`): no optimiser step; their cost is one forward pass over the dataset's
  images (a third of a training step each, `recipes.FORWARD_SHARE`: the resolver's `probe`), paid by the
  first cell of a feature group (`feature_group`) and read from its file by the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xrstudy.config import RunConfig
from xrstudy.data import audit
from xrstudy.results import store
from xrstudy.sweeps import sweepfile
from xrstudy.training import cost, resolve


# ---- pieces of a cell's plan ----------------------------------------------------------------------
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


def leak_of(cfg: RunConfig, by_id: dict[str, RunConfig]) -> tuple[bool | None, list[str]]:
    """(whether a transfer's target holds images its init's pre-training read, the warning); None for pre-training."""
    if cfg.kind != "transfer":
        return None, []
    overlap = audit.init_leak(cfg.target, init_sources(cfg, by_id))  # the rule of `xrstudy data audit`
    if not overlap:
        return False, []
    return True, [
        f"leak: {cfg.target} holds images of {', '.join(overlap)}, which the pre-training of "
        f"its init read: its test images may have been seen in pre-training"
    ]


# ---- one cell ------------------------------------------------------------------------------------
def plan_cell(
    cfg: RunConfig,
    by_id: dict[str, RunConfig],
    facts: resolve.DataFacts,
    device: str,
    pretrain_configs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The plan of one cell: its resolved row (`resolve.resolve(cfg, facts, device=device).row()`) among the
    sweep's columns; `by_id`: the sweep's cells (parents)."""
    if pretrain_configs is None:
        pretrain_configs = {c.run_id: c.to_dict() for c in by_id.values() if c.kind == "pretrain"}
    resolved = resolve.resolve(cfg, facts, device=device).row()
    leak, leak_warnings = leak_of(cfg, by_id)
    parent = sweepfile.parent_id(cfg)
    transfer = cfg.kind == "transfer"
    return {
        "kind": cfg.kind,
        "run_id": cfg.run_id,
        "name": cfg.name,
        "target": cfg.target if transfer else None,
        "sources": list(cfg.sources) if not transfer else None,
        "pretrained_model": pretrained_model(cfg, pretrain_configs),
        "init": cfg.init,
        "init_label": cfg.init_label,
        "arch": cfg.arch,
        "shots": cfg.shots,
        "seed": cfg.seed,
        **resolved,
        "sampler": cfg.sampler,
        "head_init": cfg.head_init if transfer else None,
        "views": list(cfg.views) if not transfer else None,
        "labels": cfg.labels if not transfer else None,
        "uncertain": cfg.uncertain,
        "split_mode": cfg.split_mode,
        "label_mode": cfg.label_mode,
        "loader_mode": cfg.loader_mode,
        "shots_mode": cfg.shots_mode if transfer else None,
        "depends_on": [parent] if parent in by_id else [],
        "leak": leak,
        "warnings": [*leak_warnings, *facts.warnings],
        "errors": list(facts.errors),
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


def _with_roots(cfg: RunConfig, roots: dict[str, str], metadata_only: bool) -> RunConfig | None:
    """The cell reading its files, when every dataset it reads has a root that exists here."""
    merged = {**{k: str(v) for k, v in cfg.root_map.items()}, **roots}
    needed = resolve.cell_sources(cfg)
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
    """The plan of every cell, in the sweep's order. `use_roots=False` plans from published facts alone. Nothing
    is written: label files are read (once per full table, `xrstudy.data.studydata.training_set`), never split
    files."""
    cost.check_device(device)
    cells = list(cells)
    by_id = {c.run_id: c for c in cells}
    pretrain_configs = {c.run_id: c.to_dict() for c in cells if c.kind == "pretrain"}
    rows = []
    for cfg in cells:
        reading = _with_roots(cfg, roots or {}, metadata_only) if use_roots else None
        facts = resolve.label_file_facts(reading) if reading else resolve.registry_facts(cfg)
        rows.append(plan_cell(reading or cfg, by_id, facts, device, pretrain_configs))
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


__all__ = ["plan_cells", "plan_cell", "init_sources", "pretrained_model", "leak_of", "summary", "format_table"]
