"""What would make a sweep's cells fail for certain, checked before anything runs (and by a dry run, which
must fail where the real run would): an `init: run:<id>` that is neither a cell of the sweep nor a finished
result, or whose result is there but its checkpoint is not; an architecture or pretrained tag timm does not
know (its registry is asked; no model is created); a missing notebook; and `--gpus` that this machine does
not show.

GPUs asked for but absent are refused, not warned about: a cell pinned to a missing GPU trains on the CPU,
which for the paper's cells means days instead of hours, and the user asked for GPUs. `--allow-cpu`
turns the refusal into a warning that the summary and every cell's worker.log record.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from xrstudy.config import RunConfig, base_arch, init_checkpoint_path
from xrstudy.results import store
from xrstudy.sweeps import sweepfile
from xrstudy.sweeps.sweepfile import SweepError


def visible_gpus() -> int:
    """How many NVIDIA GPUs this machine shows (`nvidia-smi -L`, else /proc/driver/nvidia/gpus), without
    importing torch; 0 when neither answers."""
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
            if listed.returncode == 0:
                return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
        except (OSError, subprocess.TimeoutExpired):
            pass
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else 0


def check_gpus(gpus: list[str], allow_cpu: bool, count: int | None = None) -> list[str]:
    """Refuse GPU ids this machine does not show (a cell pinned to one would silently train on the
    CPU); with `allow_cpu`, the same finding becomes a warning that the summary records."""
    if not gpus:
        return []
    count = visible_gpus() if count is None else count
    # Numeric ids must exist; other ids (GPU-<uuid>, MIG-<uuid>) are the driver's to check.
    missing = [g for g in gpus if g.isdigit() and int(g) >= count] if count else list(gpus)
    if not missing:
        return []
    text = (
        f"--gpus {','.join(gpus)}: this machine shows {count} GPU(s) (nvidia-smi -L); cells pinned to "
        f"{','.join(missing)} would run on the CPU"
    )
    if not allow_cpu:
        raise SweepError(
            f"{text}. Pass --allow-cpu to run them there anyway (recorded in the summary and in each cell's worker.log)"
        )
    return [f"{text} (--allow-cpu)"]


def unknown_archs(cells: Iterable[RunConfig]) -> dict[str, str]:
    """arch -> why it cannot be built, for the cells' architectures, from timm's registry (no model is
    created; `xrstudy.training.archs` registers the project's own archs on import)."""
    archs = sorted({c.arch for c in cells})
    try:
        import timm

        import xrstudy.training.archs  # noqa: F401 - registers resnetv2_tiny_bit
    except ImportError as err:
        return dict.fromkeys(archs, f"cannot check: timm / xrstudy.training.archs not importable ({err})")
    bad = {}
    for arch in archs:
        base = base_arch(arch)
        if not timm.is_model(base):
            close = difflib.get_close_matches(base, timm.list_models(), n=4)
            bad[arch] = f"timm has no model {base!r} (closest: {close})"
        elif arch != base and arch not in (tags := timm.list_pretrained(f"{base}.*")):
            bad[arch] = f"timm has no pretrained tag {arch.partition('.')[2]!r} for {base!r} (has: {tags})"
    return bad


def missing_checkpoints(cells: Iterable[RunConfig]) -> list[str]:
    """Cells still to run whose init run:<id> has a finished result but no checkpoint file (deleted, or the
    run folders not copied with the store): the pre-training counts as done, so it would not run again, and
    every such transfer would fail loading its weights."""
    problems = []
    parent_ok: dict[Path, bool] = {}  # a parent's result is read once, not once per transfer of it
    for cell in cells:
        parent = sweepfile.parent_id(cell)
        if parent is None or store.is_done(cell):
            continue
        result = store.result_path(parent, cell.results_dir)
        if result not in parent_ok:
            parent_ok[result] = store.is_ok(result)
        checkpoint = init_checkpoint_path(cell, cell.init)
        if parent_ok[result] and not checkpoint.is_file():
            problems.append(
                f"{cell.name} [{cell.run_id}]: its init run:{parent} has a result ({result}) but no checkpoint "
                f"{checkpoint}: restore that file, or delete the result to train the pre-training again"
            )
    return problems


def preflight(cells: list[RunConfig], *, executor: str = "papermill", check_archs: bool = True) -> None:
    """Raise SweepError listing every cell that cannot run (the dry run and the real run call this)."""
    problems = []

    def parent_done(run_id: str, cell: RunConfig) -> bool:
        return store.is_ok(store.result_path(run_id, cell.results_dir))

    for cell, parent in sweepfile.missing_parents(cells, parent_done):
        problems.append(
            f"{cell.name} [{cell.run_id}]: init run:{parent} is neither a cell of this sweep nor a "
            f"finished result in {cell.results_dir}"
        )
    problems += missing_checkpoints(cells)
    if check_archs:
        for arch, why in unknown_archs(cells).items():
            users = [c.name for c in cells if c.arch == arch]
            problems.append(f"arch {arch!r} ({len(users)} cell(s), e.g. {users[0]}): {why}")
    if executor == "papermill" and cells:
        for kind in sorted({c.kind for c in cells}):
            sweepfile.notebook_path(sweepfile.NOTEBOOKS[kind])  # raises SweepError naming where it looked
    if problems:
        raise SweepError("these cells cannot run:\n  " + "\n  ".join(problems))


__all__ = ["preflight", "check_gpus", "visible_gpus", "unknown_archs", "missing_checkpoints"]
