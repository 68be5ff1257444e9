"""SLURM: one launcher. `submit` writes sbatch scripts and a `submit.sh` that sends them; `--dry-run`
stops after writing, so what you review is byte for byte what `submit` sends (it runs that `submit.sh`).

Sizing: each cell gets the fewest GPUs (1, 2, 4, ... up to `max_nodes` x `gpus_per_node`, dividing its
global batch) whose estimated wall time (`xrstudy.plan`: image-steps / throughput, a scaling
efficiency for several GPUs, a safety margin and start-up time) fits the wall-time limit you set.
Cells with the same size (and, for transfers, the same parent pre-training cell) share one job array;
a transfer array waits for exactly the pre-training array task its cells load (`afterany:JOB_TASK`),
so transfers from ImageNet inits start at once.

Every job runs `python -m xrstudy.worker --from-list CELLS --index $SLURM_ARRAY_TASK_ID`; a cell on
several GPUs runs it under torchrun (`torchrun_command`, the one place that command is built).
`--backend local` runs the same scripts here, one array task after another (offline tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xrstudy import results, sweep
from xrstudy.config import RunConfig
from xrstudy.io import atomic_write_text
from xrstudy.preflight import preflight
from xrstudy.sweep import SweepError
from xrstudy.worker import worker_command

SAFETY = 0.8  # plan for 80 % of the limit: the estimate is a model, not a measurement of this cell
STARTUP_H = 0.25  # queue-to-first-step: environment, kernel, label files, image cache
SCALING_EFFICIENCY = 0.9  # assumed throughput per GPU on several GPUs vs one (not measured here)
MAX_ARRAY = 1000  # SLURM's default MaxArraySize is 1001
RENDEZVOUS_PORT = 29500


# ---- wall time ----------------------------------------------------------------------------------
def parse_time(text: str | int) -> int:
    """SLURM time -> minutes: MM, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    raw = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", raw)
    if not match:
        raise SweepError(f"time limit {raw!r}; expected minutes or [D-]HH:MM:SS, e.g. 24:00:00")
    days, first, second, third = match.groups()
    if days is None and second is None:  # plain minutes
        return int(first)
    hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    return int(days or 0) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)


def format_time(minutes: int) -> str:
    days, rest = divmod(int(minutes), 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


# ---- sizing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    nodes: int
    gpus_per_node: int
    minutes: int  # requested wall time
    estimate_h: float | None  # estimated wall hours on this size (None: no estimate)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def size_cell(gpu_hours: float | None, limit_min: int, *, gpus_per_node: int, max_nodes: int, global_batch: int,
              fixed_nodes: int | None = None, name: str = "cell") -> Size:
    """The fewest GPUs on which `gpu_hours` fits the limit (powers of two dividing the global batch)."""
    if fixed_nodes:
        gpus = fixed_nodes * gpus_per_node
        wall = _wall(gpu_hours, gpus)
        return Size(fixed_nodes, gpus_per_node, limit_min, wall)
    if gpu_hours is None:
        return Size(1, 1, limit_min, None)
    budget_h = limit_min / 60 * SAFETY - STARTUP_H
    for gpus in _gpu_counts(gpus_per_node, max_nodes):
        wall = _wall(gpu_hours, gpus)
        if global_batch % gpus == 0 and wall is not None and wall <= budget_h:
            minutes = min(limit_min, _round_up(60 * (wall / SAFETY + STARTUP_H), 15))
            return Size(max(1, gpus // gpus_per_node), min(gpus, gpus_per_node), minutes, wall)
    most = max_nodes * gpus_per_node
    raise SweepError(f"{name}: ~{gpu_hours:.0f} GPU-hours do not fit {format_time(limit_min)} on up to {max_nodes} "
                     f"node(s) x {gpus_per_node} GPU(s) ({_wall(gpu_hours, most):.1f} h on {most}); raise "
                     f"--time-limit or --max-nodes")


def _gpu_counts(gpus_per_node: int, max_nodes: int) -> list[int]:
    """1, 2, 4, ... GPUs on one node, then whole nodes: 2, 3, ... x gpus_per_node."""
    counts = [1 << k for k in range(gpus_per_node.bit_length()) if 1 << k < gpus_per_node]
    return counts + [gpus_per_node * nodes for nodes in range(1, max_nodes + 1)]


def _wall(gpu_hours: float | None, gpus: int) -> float | None:
    if gpu_hours is None:
        return None
    return gpu_hours / (gpus * (SCALING_EFFICIENCY if gpus > 1 else 1.0))


def _round_up(minutes: float, step: int) -> int:
    return int(math.ceil(minutes / step) * step)


# ---- jobs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    name: str  # file stem and SLURM job name suffix
    kind: str
    cells: tuple[RunConfig, ...]
    size: Size
    after: tuple[tuple[str, int], ...] = ()  # (job name, array index) this job waits for


def plan_jobs(cells: list[RunConfig], gpu_hours: dict[str, float | None], *, limit_min: int, gpus_per_node: int,
              max_nodes: int, pretrain_nodes: int | None = None) -> list[Job]:
    """Group cells into array jobs: pre-training by size; transfers by size and parent cell."""
    sizes = {c.run_id: size_cell(gpu_hours.get(c.run_id), limit_min, gpus_per_node=gpus_per_node,
                                 max_nodes=max_nodes, global_batch=c.batch_size, name=f"{c.name} [{c.run_id}]",
                                 fixed_nodes=pretrain_nodes if c.kind == "pretrain" else None)
             for c in cells}  # fmt: skip
    jobs: list[Job] = []
    where: dict[str, tuple[str, int]] = {}  # pretrain run id -> (job, index)
    groups: dict[tuple, list[RunConfig]] = {}
    for cell in (c for c in cells if c.kind == "pretrain"):
        groups.setdefault(("pretrain", _shape(sizes[cell.run_id]), ""), []).append(cell)
    by_id = {c.run_id: c for c in cells}
    for cell in (c for c in cells if c.kind == "transfer"):
        parent = sweep.parent_id(cell)
        groups.setdefault(("transfer", _shape(sizes[cell.run_id]), parent if parent in by_id else ""), []).append(cell)
    shapes = {kind: {shape for k, shape, _ in groups if k == kind} for kind in ("pretrain", "transfer")}
    for (kind, shape, parent), members in groups.items():  # pretrain groups first (inserted first)
        stem = kind
        if parent:
            stem += f"-after-{_slug(by_id[parent].name)}-{results.arch_short(by_id[parent].arch)}"
        if len(shapes[kind]) > 1:
            stem += f"-{shape[0]}x{shape[1]}"
        for part, start in enumerate(range(0, len(members), MAX_ARRAY)):
            chunk = tuple(members[start : start + MAX_ARRAY])
            name = stem if len(members) <= MAX_ARRAY else f"{stem}-part{part + 1}"
            size = Size(shape[0], shape[1], max(sizes[c.run_id].minutes for c in chunk),
                        max((sizes[c.run_id].estimate_h or 0.0) for c in chunk) or None)  # fmt: skip
            after = (where[parent],) if parent else ()
            jobs.append(Job(name, kind, chunk, size, after))
            if kind == "pretrain":
                where.update({c.run_id: (name, i) for i, c in enumerate(chunk)})
    return jobs


def _shape(size: Size) -> tuple[int, int]:
    return size.nodes, size.gpus_per_node


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "cell"


# ---- scripts ------------------------------------------------------------------------------------
def torchrun_command(nodes: int, gpus_per_node: int) -> list[str]:
    """torchrun for one cell on `nodes` x `gpus_per_node` GPUs (rendezvous on the job's first node)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus_per_node}"]
    if nodes == 1:
        return command + ["--standalone", "--nnodes=1"]
    return command + [f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint=$MASTER_ADDR:{RENDEZVOUS_PORT}",
                      "--rdzv_id=$SLURM_JOB_ID"]  # fmt: skip


def launch_line(job: Job, cell_list: Path, executor: str) -> str:
    worker = worker_command(executor, cell_list=str(cell_list), index="$INDEX")
    if job.size.gpus == 1:
        command = [sys.executable, "-m", "xrstudy.worker", *worker]
    else:
        command = [*torchrun_command(job.size.nodes, job.size.gpus_per_node), "-m", "xrstudy.worker", *worker]
    text = " ".join(a if a.startswith(("$", "--rdzv")) else shlex.quote(a) for a in command)
    return f"srun --ntasks-per-node=1 {text}" if job.size.nodes > 1 else text


def render_script(job: Job, folder: Path, *, executor: str, cpus_per_task: int, partition: str | None,
                  parallelism: int) -> str:
    cell_list = folder / f"{job.name}_cells.jsonl"
    est = f"~{job.size.estimate_h:.1f} h per cell on this size" if job.size.estimate_h else "no estimate"
    lines = [
        "#!/bin/bash",
        f"# xrstudy sweep submit: {len(job.cells)} {job.kind} cell(s), {est}; sent by submit.sh beside this file.",
        f"#SBATCH --job-name=xrstudy-{job.name}",
        f"#SBATCH --nodes={job.size.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={job.size.gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={format_time(job.size.minutes)}",
        f"#SBATCH --array=0-{len(job.cells) - 1}%{parallelism}",
        f"#SBATCH --output={folder / 'logs'}/%x-%A_%a.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["set -euo pipefail", "INDEX=${SLURM_ARRAY_TASK_ID:-0}"]
    if job.size.nodes > 1:
        lines.append('export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)')
    lines.append(launch_line(job, cell_list, executor))
    return "\n".join(lines) + "\n"


def render_submit(jobs: list[Job]) -> str:
    """The submission itself: one `sbatch` per job, each dependant waiting for its parents' array tasks."""
    lines = ["#!/bin/bash", "# Written by `xrstudy sweep submit`; --dry-run stops here, submit runs this file.",
             "set -euo pipefail", 'cd "$(dirname "$0")"']  # fmt: skip
    for job in jobs:
        variable = "JOB_" + _slug(job.name)
        dependency = ""
        if job.after:
            dependency = " --dependency=afterany:" + ":".join(f"${{JOB_{_slug(n)}}}_{i}" for n, i in job.after)
        lines.append(f"{variable}=$(sbatch --parsable{dependency} {job.name}.sbatch)")
        lines.append(f"{variable}=${{{variable}%%;*}}")
        lines.append(f'echo "{job.name} ${variable}"')
    return "\n".join(lines) + "\n"


def write_jobs(jobs: list[Job], folder: Path, **script_options: Any) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    written = []
    for job in jobs:
        atomic_write_text(folder / f"{job.name}_cells.jsonl", "".join(json.dumps(c.to_dict()) + "\n" for c in job.cells))
        atomic_write_text(folder / f"{job.name}.sbatch", render_script(job, folder, **script_options))
        written.append(folder / f"{job.name}.sbatch")
    atomic_write_text(folder / "submit.sh", render_submit(jobs))
    return written


# ---- submit -------------------------------------------------------------------------------------
def estimates(cells: list[RunConfig], device: str) -> dict[str, float | None]:
    """run id -> estimated GPU-hours from the plan (published sizes where the roots are absent here)."""
    from xrstudy.plan import plan_cells

    return {row["run_id"]: row["gpu_hours"] for row in plan_cells(cells, device=device)}


def submit(
    cells: Iterable[RunConfig],
    *,
    backend: str = "slurm",
    folder: str | Path = "xrstudy-out/slurm",
    dry_run: bool = False,
    only: str | None = None,
    partition: str | None = None,
    time_limit: str | int = "24:00:00",
    gpus_per_node: int = 4,
    max_nodes: int = 16,
    pretrain_nodes: int | None = None,
    cpus_per_task: int = 8,
    array_parallelism: int = 64,
    executor: str = "papermill",
    device: str = "H100",
) -> dict[str, Any]:
    """Write the jobs of every unfinished cell under `folder` (scripts, cell lists, submit.sh); then, unless
    `dry_run`, send them: `slurm` runs submit.sh (sbatch), `local` runs each array task here in order."""
    if backend not in ("slurm", "local"):
        raise SweepError(f"backend {backend!r}; expected slurm or local")
    cells = [c for c in sweep.select(list(cells), only) if not results.is_done(c)]
    preflight(cells, executor=executor)  # what would fail on the cluster fails here, dry run or not
    limit = parse_time(time_limit)
    jobs = plan_jobs(cells, estimates(cells, device), limit_min=limit, gpus_per_node=gpus_per_node,
                     max_nodes=max_nodes, pretrain_nodes=pretrain_nodes)  # fmt: skip
    folder = Path(folder).absolute()
    scripts = write_jobs(jobs, folder, executor=executor, cpus_per_task=cpus_per_task, partition=partition,
                         parallelism=array_parallelism)  # fmt: skip
    info: dict[str, Any] = {
        "folder": str(folder), "submit": str(folder / "submit.sh"), "scripts": [str(s) for s in scripts],
        "jobs": {}, "sizes": {j.name: {"cells": len(j.cells), "nodes": j.size.nodes, "gpus_per_node": j.size.gpus_per_node,
                                        "time": format_time(j.size.minutes), "estimate_h": j.size.estimate_h,
                                        "after": [f"{n}[{i}]" for n, i in j.after]} for j in jobs},
    }  # fmt: skip
    if dry_run or not jobs:
        return info
    if backend == "local":
        info["jobs"] = _run_local(jobs, folder)
        return info
    sent = subprocess.run(["bash", str(folder / "submit.sh")], capture_output=True, text=True, check=False)
    if sent.returncode != 0:
        raise SweepError(f"{folder / 'submit.sh'} failed (exit {sent.returncode}): {sent.stderr.strip()[-2000:]}")
    info["jobs"] = dict(line.split(" ", 1) for line in sent.stdout.splitlines() if " " in line)
    return info


def _run_local(jobs: list[Job], folder: Path) -> dict[str, str]:
    """Each job's array tasks, one after another, with the environment SLURM would give them."""
    ids = {}
    for number, job in enumerate(jobs):
        if job.size.nodes > 1:
            raise SweepError(f"{job.name}: {job.size.nodes} nodes; the local backend runs single-node jobs only")
        ids[job.name] = f"local{number}"
        for index in range(len(job.cells)):
            env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(index), "SLURM_JOB_ID": ids[job.name],
                   "SLURM_JOB_NODELIST": socket.gethostname()}  # fmt: skip
            with open(folder / "logs" / f"{job.name}-{index}.out", "w") as log:
                subprocess.run(["bash", str(folder / f"{job.name}.sbatch")], env=env, stdout=log,
                               stderr=subprocess.STDOUT, check=False)  # fmt: skip
    return ids


def cmd_submit(args: argparse.Namespace) -> int:
    cells = sweep.load_sweep(args.sweep)
    folder = args.folder or str(Path(cells[0].out_dir if cells else "xrstudy-out") / "slurm")
    limit = args.time_limit if args.time_limit is not None else args.timeout_min
    info = submit(cells, backend=args.backend, folder=folder, dry_run=args.dry_run, only=args.only,
                  partition=args.partition, time_limit=limit, gpus_per_node=args.gpus_per_node,
                  max_nodes=args.max_nodes, pretrain_nodes=args.pretrain_nodes, device=args.device)  # fmt: skip
    print(json.dumps(info, indent=1))
    if args.dry_run:
        print(f"review {info['submit']} and the scripts beside it; without --dry-run, submit runs that file",
              file=sys.stderr)
    return 0


__all__ = ["submit", "plan_jobs", "size_cell", "Size", "Job", "torchrun_command", "launch_line", "render_script",
           "render_submit", "parse_time", "format_time", "cmd_submit"]  # fmt: skip
