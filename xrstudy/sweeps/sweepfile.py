"""Sweeps as data: a YAML grid -> RunConfig cells, selection, dependencies, order. Pure (no execution).

Sweep file format::

    defaults: {out_dir: study-out, roots: [chexpert=/data/CheXpert]}   # RunConfig fields, every cell
    pretrain:                                 # one entry per pre-training cell (or grid of cells)
      - {name: chexpert, sources: [chexpert], grid: {arch: [resnetv2_50x1_bit, resnetv2_152x4_bit]}}
    transfer:                                 # blocks; only keys under `grid:` are expanded
      - target: cifar10
        init: pretrain:chexpert               # -> run:<run_id of that pretrain cell>, init_label chexpert
        grid: {arch: [resnetv2_50x1_bit], shots: [1, 5, 0], seed: [0, 1]}

`init: pretrain:<name>` picks the pretrain cell with that name and the same architecture; a name
without a cell of that architecture is an error (a transfer never loads another size's checkpoint).
Every cell is made canonical (`xrstudy.training.resolve.canonical`: recipe values the recipe would pick anyway
are reset), so a cell that spells out its recipe is the plain cell; cells are then de-duplicated by run id.

Where the cells go from here:
    xrstudy.sweeps.plan     every cell's resolved recipe, sizes and cost, without loading images or models
    xrstudy.sweeps.runner   executes cells here (warm Jupyter kernels or worker processes, GPU slots, locks)
    xrstudy.sweeps.slurm    sizes them by the plan and hands their jobs to submitit (`--dry-run` writes the sbatch
                     scripts submitit would send)
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import itertools
import os
from collections.abc import Iterable, Mapping
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from xrstudy.config import (
    FIELD_NAMES,
    PRETRAIN_REFERENCE,
    RUN_REFERENCE,
    ConfigError,
    RunConfig,
    base_arch,
    parent_run_id,
    read_yaml,
)
from xrstudy.training import resolve
from xrstudy.yamlfiles import MAX_GRID_CELLS, YamlError, check_grid_size, shorten

NOTEBOOKS = {"pretrain": "10_pretrain.ipynb", "transfer": "20_transfer.ipynb"}
TOP_KEYS = ("defaults", "pretrain", "transfer")
GRID_KEY = "grid"


class SweepError(ValueError):
    """A sweep file or a sweep request is not valid."""


# ---- notebooks ----------------------------------------------------------------------------------
def notebook_path(name: str) -> Path:
    """The notebook `name` that cells run: `$XRSTUDY_NOTEBOOKS/{name}` when set, else the package's copy
    (`xrstudy.notebooks`: the repository's `notebooks/` folder, shipped in the wheel as package data)."""
    name = name if name.endswith(".ipynb") else f"{name}.ipynb"
    folder = os.environ.get("XRSTUDY_NOTEBOOKS")
    if folder:
        candidate = Path(folder) / name
        where = f"$XRSTUDY_NOTEBOOKS ({folder})"
    else:
        try:
            candidate = Path(str(importlib.resources.files("xrstudy.notebooks") / name))
        except ModuleNotFoundError:
            candidate = None
        where = "the xrstudy.notebooks package data"
    if candidate is None or not candidate.is_file():
        raise SweepError(
            f"notebook {name!r} not found in {where}; reinstall xrstudy (its wheel ships the notebooks) "
            "or set XRSTUDY_NOTEBOOKS to a folder holding it"
        )
    return candidate


# ---- sweep file -> cells ----------------------------------------------------------------------
def _check_keys(entry: Any, allowed: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise SweepError(f"{where}: expected a mapping of RunConfig fields, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(allowed), key=repr)  # a dict given by code may mix key types
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {shorten(unknown)}; allowed: RunConfig fields and 'grid'")
    return dict(entry)


def _blocks(data: Mapping[str, Any], section: str, origin: str) -> list[Any]:
    blocks = data.get(section) or []
    if not isinstance(blocks, list):
        raise SweepError(f"{origin}: {section}: expected a list of blocks, got {type(blocks).__name__}")
    return blocks


def _expand(
    entry: dict[str, Any], where: str, max_grid_cells: int = MAX_GRID_CELLS, counted: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """(fixed fields x cartesian product of `grid:`, cells counted so far in the sweep). Only grid keys expand;
    list fields stay lists. The cells are counted before any is made: a sweep above `max_grid_cells` (this
    block and the `counted` cells of the blocks before it) is refused, naming the block and its count."""
    grid = entry.pop(GRID_KEY, None) or {}
    grid = _check_keys(grid, FIELD_NAMES, f"{where}.grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}.grid.{key}: expected a non-empty list of values")
        if key in entry:
            raise SweepError(f"{where}: {key!r} is both a fixed field and a grid key")
    try:
        counted = check_grid_size(grid, where, max_grid_cells, counted)
    except YamlError as err:
        raise SweepError(str(err)) from None
    keys = list(grid)
    cells = [{**entry, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys))]
    return cells, counted


def _make(fields: dict[str, Any], where: str) -> RunConfig:
    """The cell of `fields`, canonical: recipe values the recipe would pick anyway are reset, so one computation
    has one run id however the file spells it (`xrstudy.training.resolve.canonical`)."""
    try:
        return resolve.canonical(RunConfig.from_dict(fields, origin=where))
    except ConfigError as err:
        message = str(err)
        raise SweepError(message if message.startswith(where) else f"{where}: {message}") from None


def _resolve_pretrain(ref: str, arch: str, by_name: dict[str, list[RunConfig]], where: str) -> RunConfig:
    name = ref[len(PRETRAIN_REFERENCE) :]
    named = by_name.get(name, [])
    if not named:
        raise SweepError(f"{where}: init {shorten(ref)} matches 0 pretrain cells (pretrain names: {sorted(by_name)})")
    same_arch = [c for c in named if base_arch(c.arch) == base_arch(arch)]
    if len(same_arch) != 1:
        raise SweepError(
            f"{where}: init {shorten(ref)} matches {len(same_arch)} pretrain cells for arch {shorten(arch)}; "
            f"pretrain {name!r} exists for {sorted({c.arch for c in named})}"
        )
    return same_arch[0]


def load_sweep(source: str | Path | Mapping[str, Any], *, max_grid_cells: int = MAX_GRID_CELLS) -> list[RunConfig]:
    """Sweep YAML (path) or an already-parsed dict -> cells, pretrain cells first, unique run ids. The grids
    of all blocks together may expand to `max_grid_cells` cells at most (counted before expanding)."""
    if isinstance(source, Mapping):
        origin, data = "<sweep>", dict(source)
    else:
        origin = str(source)
        try:
            data = read_yaml(source, "sweep file", "a YAML sweep file")  # a FIFO is refused, not waited on
        except ConfigError as err:
            raise SweepError(str(err)) from None
    data = _check_keys(data or {}, TOP_KEYS, origin)
    defaults = _check_keys(data.get("defaults") or {}, FIELD_NAMES, f"{origin}: defaults")

    counted = 0  # cells of the blocks so far, against max_grid_cells
    pretrain: list[RunConfig] = []
    for i, entry in enumerate(_blocks(data, "pretrain", origin)):
        where = f"{origin}: pretrain[{i}]"
        entry = _check_keys(entry, (*FIELD_NAMES, GRID_KEY), where)
        if not entry.get("name"):
            raise SweepError(f"{where}: every pretrain cell needs a `name` (transfer cells refer to it)")
        cells, counted = _expand(entry, where, max_grid_cells, counted)
        for fields in cells:
            pretrain.append(_make({**defaults, **fields, "kind": "pretrain"}, where))
    by_name: dict[str, list[RunConfig]] = {}
    for cell in pretrain:
        by_name.setdefault(cell.name, []).append(cell)

    transfer: list[RunConfig] = []
    for i, block in enumerate(_blocks(data, "transfer", origin)):
        where = f"{origin}: transfer[{i}]"
        block = _check_keys(block, (*FIELD_NAMES, GRID_KEY), where)
        cells, counted = _expand(block, where, max_grid_cells, counted)
        for fields in cells:
            fields = {**defaults, **fields, "kind": "transfer"}
            init = str(fields.get("init", ""))
            if init.startswith(PRETRAIN_REFERENCE):
                parent = _resolve_pretrain(init, fields.get("arch", RunConfig.arch), by_name, where)
                fields["init"] = f"{RUN_REFERENCE}{parent.run_id}"
                fields["init_label"] = fields.get("init_label") or parent.name
            transfer.append(_make(fields, where))

    unique: dict[str, RunConfig] = {}
    for cell in pretrain + transfer:
        unique.setdefault(cell.run_id, cell)
    return list(unique.values())


# ---- dependencies, order, selection -------------------------------------------------------------
def parent_id(cfg: RunConfig) -> str | None:
    """The run id a cell initialises from (`init: run:<id>`), or None."""
    return parent_run_id(cfg.init)


def dependencies(cells: Iterable[RunConfig]) -> dict[str, set[str]]:
    """run_id -> run_ids (among `cells`) it needs first: a transfer cell needs its `init: run:<id>`."""
    cells = list(cells)
    ids = {c.run_id for c in cells}
    return {c.run_id: {p} & ids if (p := parent_id(c)) else set() for c in cells}


def graph(cells: Iterable[RunConfig]) -> TopologicalSorter[str]:
    """The cells' dependency graph (graphlib): `static_order()` lists parents before dependants."""
    return TopologicalSorter(dependencies(cells))


def select(cells: list[RunConfig], only: str | None) -> list[RunConfig]:
    """Cells whose name or run id matches the glob `only` (plus the pretrain cells they depend on). A glob
    that matches no cell is a SweepError: an empty selection would look like a sweep with nothing left to do."""
    if not only:
        return cells
    chosen = {c.run_id for c in cells if fnmatch.fnmatch(c.name, only) or fnmatch.fnmatch(c.run_id, only)}
    if not chosen:
        names = sorted({c.name for c in cells})
        raise SweepError(
            f"--only {shorten(only)} matches no cell name or run id of the sweep's {len(cells)} cell(s) "
            f"(names: {shorten(names, 200)})"
        )
    deps = dependencies(cells)
    chosen |= {d for rid in chosen for d in deps[rid]}
    return [c for c in cells if c.run_id in chosen]


def missing_parents(cells: Iterable[RunConfig], is_done: Any) -> list[tuple[RunConfig, str]]:
    """(cell, parent run id) for every `init: run:<id>` that is neither a cell of the sweep nor a
    finished result (`is_done(run_id, cell)`): the cell could never load its initialisation."""
    cells = list(cells)
    ids = {c.run_id for c in cells}
    return [(c, p) for c in cells if (p := parent_id(c)) and p not in ids and not is_done(p, c)]


__all__ = [
    "SweepError",
    "NOTEBOOKS",
    "notebook_path",
    "load_sweep",
    "parent_id",
    "dependencies",
    "graph",
    "select",
    "missing_parents",
]
