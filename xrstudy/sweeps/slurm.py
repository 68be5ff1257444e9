"""SLURM through submitit: one description per job (`JobSpec`), built once (`job_specs`), shown by
`--dry-run` and handed as it is to submitit by `submit`.

Sizing: each cell gets the fewest GPUs (1, 2, 4, ... up to `max_nodes` x `gpus_per_node`, dividing its
global batch) whose estimated wall time (`xrstudy.sweeps.plan`: image-steps / throughput, a scaling
efficiency for several GPUs, a safety margin and start-up time) fits the wall-time limit you set, and
the `micro_batch` its devices can hold (`xrstudy.training.cost.micro_batch`: gradient accumulation reaches the
global batch). Cells with the same size (and, for transfers, the same parent pre-training cell) share
one job array; a transfer array waits for exactly the pre-training array task its cells load
(`afterany:JOB_TASK`), so transfers from ImageNet inits start at once.

Every array task calls `run_cell(command)`: the cell's command, `python -m xrstudy.sweeps.worker --from-list
CELLS --index I` (the worker entry point of `sweep run --isolate`), under torchrun on several GPUs
(`torchrun_command`, the one place that command is built). `--dry-run` writes `jobs.json` (the specs),
the cell lists the commands read and, per job, the sbatch script submitit sends (`sbatch_script`: its
own text, job ids of dependencies written `@job@` until sbatch gives numbers). `--backend local` hands
the same specs to submitit's LocalExecutor (one node), one job after another.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xrstudy.config import RunConfig
from xrstudy.fileio import atomic_write_json, atomic_write_text
from xrstudy.results import store
from xrstudy.sweeps import sweepfile
from xrstudy.sweeps.plan import plan_cells
from xrstudy.sweeps.preflight import preflight
from xrstudy.sweeps.sweepfile import SweepError
from xrstudy.sweeps.worker import AttemptEnd, worker_command
from xrstudy.training import cost

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


def size_cell(
    gpu_hours: float | None,
    limit_min: int,
    *,
    gpus_per_node: int,
    max_nodes: int,
    global_batch: int,
    fixed_nodes: int | None = None,
    name: str = "cell",
    group: int = 1,
) -> Size:
    """The fewest GPUs on which `gpu_hours` fits the limit (powers of two dividing the global batch, each GPU's
    share a whole number of `group`s: the authors' MixUp micro-batch in loader_mode paper pairs within one
    device)."""
    if fixed_nodes:
        if global_batch % (fixed_nodes * gpus_per_node):
            raise SweepError(
                f"{name}: {fixed_nodes} node(s) x {gpus_per_node} GPU(s) do not divide its global batch "
                f"of {global_batch}; choose another --pretrain-nodes"
            )
        return Size(fixed_nodes, gpus_per_node, limit_min, _wall(gpu_hours, fixed_nodes * gpus_per_node))
    if gpu_hours is None:
        return Size(1, 1, limit_min, None)
    budget_h = limit_min / 60 * SAFETY - STARTUP_H
    for gpus in _gpu_counts(gpus_per_node, max_nodes):
        wall = _wall(gpu_hours, gpus)
        whole = global_batch % gpus == 0 and (global_batch // gpus) % group == 0
        if whole and wall is not None and wall <= budget_h:
            minutes = min(limit_min, int(math.ceil(60 * (wall / SAFETY + STARTUP_H) / 15) * 15))
            return Size(max(1, gpus // gpus_per_node), min(gpus, gpus_per_node), minutes, wall)
    most = max_nodes * gpus_per_node
    if group > 1:  # the MixUp groups, not the cluster, bound the GPUs
        most = max(g for g in _gpu_counts(gpus_per_node, max_nodes) if (global_batch // g) % group == 0 or g == 1)
        raise SweepError(
            f"{name}: ~{gpu_hours:.0f} GPU-hours do not fit {format_time(limit_min)}: its batch of {global_batch} "
            f"keeps whole MixUp groups of {group} images (loader_mode paper) on at most {most} GPU(s) "
            f"({_wall(gpu_hours, most):.1f} h); raise --time-limit"
        )
    raise SweepError(
        f"{name}: ~{gpu_hours:.0f} GPU-hours do not fit {format_time(limit_min)} on up to {max_nodes} "
        f"node(s) x {gpus_per_node} GPU(s) ({_wall(gpu_hours, most):.1f} h on {most}); raise "
        f"--time-limit or --max-nodes"
    )


def _gpu_counts(gpus_per_node: int, max_nodes: int) -> list[int]:
    """1, 2, 4, ... GPUs on one node, then whole nodes: 2, 3, ... x gpus_per_node."""
    counts = [1 << k for k in range(gpus_per_node.bit_length()) if 1 << k < gpus_per_node]
    return counts + [gpus_per_node * nodes for nodes in range(1, max_nodes + 1)]


def _wall(gpu_hours: float | None, gpus: int) -> float | None:
    if gpu_hours is None:
        return None
    return gpu_hours / (gpus * (SCALING_EFFICIENCY if gpus > 1 else 1.0))


# ---- the command of one cell ----------------------------------------------------------------------
# Several nodes rendezvous (c10d) at the job's first node, whose name is known only inside the job: the
# job's setup lines export it as PET_RDZV_ENDPOINT, torchrun's environment spelling of --rdzv_endpoint.
RENDEZVOUS_SETUP = (
    f'export PET_RDZV_ENDPOINT="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):{RENDEZVOUS_PORT}"',
)


def torchrun_command(nodes: int, gpus_per_node: int, rdzv_id: str) -> list[str]:
    """torchrun for one cell on `nodes` x `gpus_per_node` GPUs (srun starts one per node)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus_per_node}"]
    if nodes == 1:
        return command + ["--standalone", "--nnodes=1"]
    return command + [f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_id={rdzv_id}"]


def cell_command(cell_list: Path, index: int, cell: RunConfig, size: Size, executor: str) -> tuple[str, ...]:
    """What array task `index` runs: the worker on line `index` of `cell_list`, under torchrun on several GPUs."""
    worker = ["-m", "xrstudy.sweeps.worker", *worker_command(executor, cell_list=str(cell_list), index=str(index))]
    if size.gpus == 1:
        return (sys.executable, *worker)
    return (*torchrun_command(size.nodes, size.gpus_per_node, cell.run_id), *worker)


def run_cell(command: tuple[str, ...]) -> str:
    """What every submitit task calls: the cell's command, its output in the task's log. The worker's exit
    status is its AttemptEnd; a failure raises, so submitit (and `sacct`) record the task as failed."""
    code = subprocess.run(list(command), check=False).returncode
    outcome = AttemptEnd.of_exit(code)
    if outcome.status == "failed":
        raise SweepError(f"{' '.join(command[-4:])}: {outcome.name} (exit {code}); see this task's log")
    return outcome.name


# ---- jobs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """What `sweep submit` may ask for (its flags)."""

    folder: Path
    limit_min: int = 24 * 60
    gpus_per_node: int = 4
    max_nodes: int = 16
    pretrain_nodes: int | None = None
    cpus_per_task: int = 8
    partition: str | None = None
    array_parallelism: int = 64
    executor: str = "papermill"


@dataclass(frozen=True)
class JobSpec:
    """One submitit job: an array whose task i runs cells[i] through commands[i]."""

    name: str  # SLURM job name xrstudy-{name}; its files in the submit folder start with it
    kind: str
    cells: tuple[RunConfig, ...]  # with the micro_batch of this size
    commands: tuple[tuple[str, ...], ...]
    nodes: int
    gpus_per_node: int
    timeout_min: int
    cpus_per_task: int
    partition: str | None
    array_parallelism: int
    after: tuple[tuple[str, int], ...] = ()  # (job name, array task) whose end this job waits for
    estimate_h: float | None = None  # the longest cell's estimated wall hours on this size

    @property
    def setup(self) -> tuple[str, ...]:
        return RENDEZVOUS_SETUP if self.nodes > 1 else ()

    def slurm_parameters(self, dependency: str | None) -> dict[str, Any]:
        """The arguments of submitit's `SlurmExecutor.update_parameters` for this job."""
        params: dict[str, Any] = {
            "job_name": f"xrstudy-{self.name}",
            "time": self.timeout_min,
            "nodes": self.nodes,
            "ntasks_per_node": 1,
            "gpus_per_node": self.gpus_per_node,
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism,
            "stderr_to_stdout": True,
        }
        optional = {"partition": self.partition, "setup": list(self.setup) or None, "dependency": dependency}
        return params | {key: value for key, value in optional.items() if value}

    def local_parameters(self) -> dict[str, Any]:
        """The same job for submitit's LocalExecutor (one node; no partition, array or dependency)."""
        return {
            "timeout_min": self.timeout_min,
            "nodes": self.nodes,
            "tasks_per_node": 1,
            "gpus_per_node": self.gpus_per_node,
        }

    def to_dict(self, dependency: str | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "time": format_time(self.timeout_min),
            "estimate_h": self.estimate_h,
            "after": [f"{name}[{index}]" for name, index in self.after],
            "cells": [{"run_id": c.run_id, "name": c.name, "micro_batch": c.micro_batch} for c in self.cells],
            "commands": [shlex.join(command) for command in self.commands],
            "slurm_parameters": self.slurm_parameters(dependency),
        }


def cell_list_path(folder: Path, name: str) -> Path:
    return folder / f"{name}_cells.jsonl"


def job_specs(cells: list[RunConfig], plan: Mapping[str, Mapping[str, Any]], cluster: Cluster) -> list[JobSpec]:
    """Every job of the sweep, built once: cells sized by their plan rows (`gpu_hours`, `images_per_gpu`),
    grouped into arrays (pre-training by size; transfers by size and parent cell), commands built."""
    sizes = {
        c.run_id: size_cell(
            plan[c.run_id]["gpu_hours"],
            cluster.limit_min,
            gpus_per_node=cluster.gpus_per_node,
            max_nodes=cluster.max_nodes,
            global_batch=c.batch_size,
            name=f"{c.name} [{c.run_id}]",
            fixed_nodes=cluster.pretrain_nodes if c.kind == "pretrain" else None,
            group=_mixup_group(plan[c.run_id]),
        )
        for c in cells
    }
    by_id = {c.run_id: c for c in cells}
    groups: dict[tuple, list[RunConfig]] = {}
    for cell in sorted(cells, key=lambda c: c.kind != "pretrain"):  # pre-training groups first
        parent = sweepfile.parent_id(cell) if cell.kind == "transfer" else None
        shape = (sizes[cell.run_id].nodes, sizes[cell.run_id].gpus_per_node)
        groups.setdefault((cell.kind, shape, parent if parent in by_id else ""), []).append(cell)
    shapes = {kind: {shape for k, shape, _ in groups if k == kind} for kind in ("pretrain", "transfer")}
    specs: list[JobSpec] = []
    where: dict[str, tuple[str, int]] = {}  # pre-training run id -> (job, array task)
    for (kind, shape, parent), members in groups.items():
        stem = kind
        if parent:
            stem += f"-after-{_slug(by_id[parent].name)}-{store.arch_short(by_id[parent].arch)}"
        if len(shapes[kind]) > 1:
            stem += f"-{shape[0]}x{shape[1]}"
        for part, start in enumerate(range(0, len(members), MAX_ARRAY)):
            name = stem if len(members) <= MAX_ARRAY else f"{stem}-part{part + 1}"
            chunk = [_with_micro_batch(c, sizes[c.run_id], plan[c.run_id]) for c in members[start : start + MAX_ARRAY]]
            longest = max((sizes[c.run_id].estimate_h or 0.0) for c in chunk)
            size = Size(shape[0], shape[1], max(sizes[c.run_id].minutes for c in chunk), round(longest, 2) or None)
            cell_list = cell_list_path(cluster.folder, name)
            commands = tuple(cell_command(cell_list, i, c, size, cluster.executor) for i, c in enumerate(chunk))
            specs.append(
                JobSpec(
                    name,
                    kind,
                    tuple(chunk),
                    commands,
                    size.nodes,
                    size.gpus_per_node,
                    size.minutes,
                    cluster.cpus_per_task,
                    cluster.partition,
                    cluster.array_parallelism,
                    (where[parent],) if parent else (),
                    size.estimate_h,
                )
            )
            if kind == "pretrain":
                where.update({c.run_id: (name, i) for i, c in enumerate(chunk)})
    return specs


def _mixup_group(row: Mapping[str, Any]) -> int:
    """Images one device must hold together: the MixUp group of a cell that mixes in loader_mode paper (the
    resolver's `mixup_group`), else 1."""
    if (row.get("mixup_alpha") or 0) > 0 and row.get("loader_mode") == "paper":
        return int(row.get("mixup_group") or 1)
    return 1


def _with_micro_batch(cell: RunConfig, size: Size, row: Mapping[str, Any]) -> RunConfig:
    """The cell as it runs on `size`: a micro-batch its devices hold (whole MixUp groups), unless the sweep
    file sets one."""
    if cell.micro_batch:
        return cell
    per_device = cell.batch_size // size.gpus
    return cell.replace(micro_batch=cost.micro_batch(row.get("images_per_gpu"), per_device, _mixup_group(row)))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "cell"


# ---- submitit -----------------------------------------------------------------------------------
def pending_ids(specs: Iterable[JobSpec]) -> dict[str, list[str]]:
    """Job ids before sbatch answers: `@name@`, and `@name@_i` for array tasks as submitit names them. The
    one place a dry run's script differs from the one sent (tests substitute the numbers and compare)."""
    return {
        s.name: [f"@{s.name}@_{i}" for i in range(len(s.commands))] if len(s.commands) > 1 else [f"@{s.name}@"]
        for s in specs
    }


def dependency(spec: JobSpec, ids: Mapping[str, list[str]]) -> str | None:
    return "afterany:" + ":".join(ids[name][index] for name, index in spec.after) if spec.after else None


def job_folder(folder: Path, spec: JobSpec) -> Path:
    """submitit's folder for one job: its submission script, pickles and logs."""
    return folder / spec.name


def sbatch_script(spec: JobSpec, folder: Path, dependency: str | None) -> str:
    """The sbatch script submitit's SlurmExecutor writes and sends for `spec`. submitit has no public dry
    run, so this takes its steps, private ones included (pinned by tests/test_sweeps_slurm.py with a fake sbatch
    that keeps what it receives): the executor with `spec`'s parameters, `map_count` for several tasks
    (as `_internal_process_submissions` does; one task is a plain job), `_make_submission_file_text`
    of `_submitit_command_str`. The subclass exists because SlurmExecutor's constructor refuses to run
    without `srun` on PATH, and a dry run happens anywhere."""
    import submitit

    class ScriptOnly(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 2

    executor = ScriptOnly(folder=job_folder(folder, spec))
    executor.update_parameters(**spec.slurm_parameters(dependency))
    if len(spec.commands) > 1:
        executor.parameters["map_count"] = len(spec.commands)
    return executor._make_submission_file_text(executor._submitit_command_str, "")


def write_specs(specs: list[JobSpec], folder: Path) -> dict[str, Path]:
    """What `--dry-run` shows and `submit` sends from: jobs.json, each job's cell list and sbatch script."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = pending_ids(specs)
    scripts = {}
    for spec in specs:
        lines = "".join(json.dumps(c.to_dict()) + "\n" for c in spec.cells)
        atomic_write_text(cell_list_path(folder, spec.name), lines)
        script = sbatch_script(spec, folder, dependency(spec, ids))
        scripts[spec.name] = atomic_write_text(folder / f"{spec.name}.sbatch", script)
    atomic_write_json(folder / "jobs.json", [s.to_dict(dependency(s, ids)) for s in specs], sort_keys=False)
    return scripts


def send(specs: list[JobSpec], folder: Path) -> dict[str, list[str]]:
    """Hand every spec to submitit's SlurmExecutor, in order, each dependant naming its parents' job ids."""
    import submitit

    ids: dict[str, list[str]] = {}
    for spec in specs:
        executor = submitit.SlurmExecutor(folder=job_folder(folder, spec))
        executor.update_parameters(**spec.slurm_parameters(dependency(spec, ids)))
        ids[spec.name] = [job.job_id for job in executor.map_array(run_cell, spec.commands)]
    return ids


def run_local(specs: list[JobSpec], folder: Path) -> dict[str, list[str]]:
    """The same specs through submitit's LocalExecutor: a job's tasks at once, the next job after them
    (which keeps every dependency). Returns each task's outcome."""
    import submitit

    outcomes: dict[str, list[str]] = {}
    for spec in specs:
        if spec.nodes > 1:
            raise SweepError(f"{spec.name}: {spec.nodes} nodes; the local backend runs single-node jobs only")
        executor = submitit.LocalExecutor(folder=job_folder(folder, spec))
        executor.update_parameters(**spec.local_parameters())
        jobs = executor.map_array(run_cell, spec.commands)
        outcomes[spec.name] = []
        for job in jobs:
            job.wait()
            error = job.exception()
            outcomes[spec.name].append(job.result() if error is None else f"FAILED: {str(error).strip()[-300:]}")
    return outcomes


# ---- submit -------------------------------------------------------------------------------------
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
    device: str = cost.DEFAULT_DEVICE,
) -> dict[str, Any]:
    """Build the jobs of every unfinished cell and write them under `folder` (jobs.json, cell lists, sbatch
    scripts); then, unless `dry_run`, hand them to submitit: `slurm` sends them to sbatch, `local` runs them
    here."""
    if backend not in ("slurm", "local"):
        raise SweepError(f"backend {backend!r}; expected slurm or local")
    # Checked before anything is planned or written: 0 GPUs per node divides by zero while sizing, and
    # -1 nodes would be written into the sbatch script.
    for option, value in (("--gpus-per-node", gpus_per_node), ("--max-nodes", max_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SweepError(f"{option} {value!r}; expected an integer >= 1")
    if pretrain_nodes is not None and (
        isinstance(pretrain_nodes, bool) or not isinstance(pretrain_nodes, int) or pretrain_nodes < 1
    ):
        raise SweepError(f"--pretrain-nodes {pretrain_nodes!r}; expected an integer >= 1 (or none: sized by the plan)")
    cost.check_device(device)
    cells = [c for c in sweepfile.select(list(cells), only) if not store.is_done(c)]
    preflight(cells, executor=executor)  # what would fail on the cluster fails here, dry run or not
    cluster = Cluster(
        Path(folder).absolute(),
        parse_time(time_limit),
        gpus_per_node,
        max_nodes,
        pretrain_nodes,
        cpus_per_task,
        partition,
        array_parallelism,
        executor,
    )
    plan = {row["run_id"]: row for row in plan_cells(cells, device=device)}  # published sizes without roots
    specs = job_specs(cells, plan, cluster)
    scripts = write_specs(specs, cluster.folder)
    info: dict[str, Any] = {
        "folder": str(cluster.folder),
        "specs": str(cluster.folder / "jobs.json"),
        "jobs": {
            s.name: {
                "cells": len(s.cells),
                "nodes": s.nodes,
                "gpus_per_node": s.gpus_per_node,
                "time": format_time(s.timeout_min),
                "estimate_h": s.estimate_h,
                "after": [f"{n}[{i}]" for n, i in s.after],
                "micro_batch": sorted({c.micro_batch for c in s.cells}),
                "script": str(scripts[s.name]),
            }
            for s in specs
        },
    }
    if dry_run or not specs:
        return info
    if backend == "local":
        for name, outcomes in run_local(specs, cluster.folder).items():
            info["jobs"][name]["outcomes"] = outcomes
        return info
    ids = send(specs, cluster.folder)
    for name, job_ids in ids.items():
        info["jobs"][name]["job_id"] = job_ids[0].split("_")[0]
    atomic_write_json(cluster.folder / "submitted.json", ids)
    return info


__all__ = [
    "submit",
    "job_specs",
    "JobSpec",
    "Cluster",
    "size_cell",
    "Size",
    "torchrun_command",
    "cell_command",
    "run_cell",
    "sbatch_script",
    "pending_ids",
    "dependency",
    "write_specs",
    "send",
    "run_local",
    "parse_time",
    "format_time",
    "RENDEZVOUS_SETUP",
]
