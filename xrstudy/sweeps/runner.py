"""Execute a sweep's cells here: slots (warm kernels or worker processes, pinned to GPUs), one scheduler.

`run` keeps `workers` slots busy (threads of the runner). By default a slot owns one warm Jupyter
kernel (`xrstudy.sweeps.kernels.WarmKernel`): papermill executes cell after cell in it, so torch / timm /
fastai are imported once per slot instead of once per cell (15.4 s -> 1.3 s of overhead per cell on
2 CPUs). `isolate=True` (`--isolate`) runs every attempt in its own worker process
(`python -m xrstudy.sweeps.worker`, a fresh kernel), as SLURM jobs do. Either way each attempt follows
`xrstudy.sweeps.worker.locked_attempt` (claim, heartbeat, verified result), and the executed notebook is kept
at `{out_dir}/runs/{run_id}/notebook.ipynb` beside `worker.log`.

The result JSON is the record of completion: cells with a valid `status: ok` result are skipped (a
truncated or edited result fails its digest and the cell runs again). After `kill -9` of a runner a
re-run waits for still-live workers and redoes only what died; two runners on one store never run a
cell twice (`xrstudy.sweeps.celllock`).

Before anything runs (and in a dry run, which must fail where the real run would) `xrstudy.sweeps.preflight`
checks what would make cells fail for certain, and refuses `--gpus` this machine does not show.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from xrstudy.config import RunConfig
from xrstudy.results import store
from xrstudy.sweeps import sweepfile
from xrstudy.sweeps.celllock import CellLock
from xrstudy.sweeps.preflight import check_gpus, preflight
from xrstudy.sweeps.worker import (
    Attempt,
    AttemptEnd,
    attempt_path,
    collapse_parameter_cells,
    failure_cause,
    is_dead_kernel,
    lock_path,
    locked_attempt,
    notebook_of,
    read_attempt,
    signal_cause,
    worker_command,
    write_attempt,
)


# ---- slots: where a cell executes ---------------------------------------------------------------
def slot_env(gpu: str | None, workers: int) -> dict[str, str]:
    """What a slot's kernel / worker gets on top of os.environ: its GPU, and a share of the CPU threads."""
    env: dict[str, str] = {}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if "OMP_NUM_THREADS" not in os.environ:  # N torch processes x all cores each oversubscribe the CPU
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    return env


class ProcessSlot:
    """`--isolate`: every attempt is a fresh `python -m xrstudy.sweeps.worker` (its own kernel)."""

    def __init__(self, env: dict[str, str], executor: str = "papermill", label: str = "") -> None:
        self.env, self.executor, self.label = {**os.environ, **env}, executor, label

    def attempt(self, cfg: RunConfig, notebook: Path, log: IO[str]) -> Attempt:
        attempt_path(cfg).unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "xrstudy.sweeps.worker",
            *worker_command(self.executor, notebook=str(notebook), config=cfg),
        ]
        code = subprocess.run(command, env=self.env, stdout=log, stderr=subprocess.STDOUT).returncode
        outcome = AttemptEnd.of_exit(code)
        if outcome == AttemptEnd.DEAD_KERNEL:
            return Attempt(outcome, f"worker died ({signal_cause(code) or f'exit {code}'})")
        return Attempt(outcome, read_attempt(cfg))

    def interrupt(self) -> None:  # Ctrl-C reaches the workers through the process group
        pass

    def close(self) -> None:
        pass


class KernelSlot:
    """The default: one warm Jupyter kernel for the slot's cells (imports paid once per slot).

    The runner thread holds the cell's claim on the kernel's behalf (claim pids: runner + kernel),
    clears the kernel's namespace before each notebook (WarmKernel), replaces a kernel that died, and
    restarts it after a failed cell so no broken state (CUDA context, stray threads) reaches the next
    cell. When the runner is killed, ipykernel's parent poller ends the kernel within a second: the
    cell it was running has no result and its claim goes stale, so the next runner redoes it.
    """

    def __init__(self, env: dict[str, str], label: str = "") -> None:
        from xrstudy.sweeps.kernels import WarmKernel

        self.kernel = WarmKernel(env=env)
        self.label = label

    def attempt(self, cfg: RunConfig, notebook: Path, log: IO[str]) -> Attempt:
        kernel = self.kernel
        kernel.start()

        def execute(lock: CellLock) -> Attempt | None:
            try:
                kernel.start()  # again: a kernel that died since is replaced, and the claim follows it
                lock.set_pids([kernel.pid or 0])
                log.write(f"kernel pid {kernel.pid}\n")
                log.flush()
                try:
                    kernel.execute(notebook, cfg.run_dir / "notebook.ipynb", cfg.to_dict(), log_output=False)
                finally:
                    collapse_parameter_cells(cfg.run_dir / "notebook.ipynb")
            except Exception as err:  # noqa: BLE001 - every failure goes to the summary
                traceback.print_exc(file=log)
                if is_dead_kernel(err) or not kernel.alive():
                    died = signal_cause(kernel.returncode)
                    return Attempt(AttemptEnd.DEAD_KERNEL, f"kernel died{f' ({died})' if died else ''}")
                kernel.restart()
                return Attempt(*failure_cause(err))
            return None

        return locked_attempt(cfg, execute, pids=[kernel.pid or 0])

    def interrupt(self) -> None:
        self.kernel.kill()

    def close(self) -> None:
        self.kernel.close()


Slot = ProcessSlot | KernelSlot


def run_cell(cfg: RunConfig, slot: Slot, retries: int, stop: threading.Event, note: str = "") -> Attempt:
    """Attempt one cell in `slot`; retry when its kernel or process died."""
    notebook = notebook_of(cfg, slot.executor if isinstance(slot, ProcessSlot) else "papermill")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    attempt_path(cfg).unlink(missing_ok=True)  # the cause of an earlier failure is no longer true
    log_path = cfg.run_dir / "worker.log"
    last = Attempt(AttemptEnd.DEAD_KERNEL)
    for number in range(1, 2 + retries):
        if stop.is_set():
            return Attempt(AttemptEnd.INTERRUPTED, "interrupted")
        with open(log_path, "a") as log:
            log.write(
                f"\n== attempt {number} {datetime.now(timezone.utc).isoformat()} slot={slot.label} "
                f"host={socket.gethostname()} runner={os.getpid()}{f' WARNING {note}' if note else ''}\n"
            )
            log.flush()
            last = slot.attempt(cfg, notebook, log)
        if stop.is_set() and last.outcome.status == "failed":  # Ctrl-C ended it: not the cell's failure
            attempt_path(cfg).unlink(missing_ok=True)  # (an isolated worker wrote "KeyboardInterrupt" there)
            return Attempt(AttemptEnd.INTERRUPTED, "interrupted")
        if last.outcome != AttemptEnd.DEAD_KERNEL:
            break
    see = f" (see {log_path})"
    if last.outcome.status == "failed" and last.cause and not attempt_path(cfg).exists():
        write_attempt(cfg, last)  # `xrstudy sweep status` reads it (a worker process wrote its own)
    if last.outcome == AttemptEnd.FAILED:
        return Attempt(last.outcome, f"cell raised {last.cause or 'an error'}{see}")
    if last.outcome == AttemptEnd.DISK_FULL:
        return Attempt(last.outcome, f"{last.cause or 'disk full'}{see}")
    if last.outcome == AttemptEnd.DEAD_KERNEL:
        return Attempt(last.outcome, f"{last.cause or 'kernel died'} after {1 + retries} attempt(s){see}")
    return last


# ---- the summary ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    run_id: str
    name: str
    reason: str
    notebook: str
    outcome: AttemptEnd = AttemptEnd.FAILED


@dataclass
class SweepSummary:
    """Every cell's AttemptEnd (in the order cells settled); `done` / `skipped` / `failed` / `planned` read it."""

    outcomes: dict[str, AttemptEnd] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    mode: str = ""  # warm | isolate
    seconds: float = 0.0

    def record(self, cfg: RunConfig, attempt: Attempt) -> None:
        self.outcomes[cfg.run_id] = attempt.outcome
        if attempt.outcome.status == "failed":
            self.failures[cfg.run_id] = Failure(
                cfg.run_id, cfg.name, attempt.cause, str(cfg.run_dir / "notebook.ipynb"), attempt.outcome
            )

    def _with(self, status: str) -> list[str]:
        return [rid for rid, outcome in self.outcomes.items() if outcome.status == status]

    done = property(lambda self: self._with("done"))
    skipped = property(lambda self: self._with("skipped"))
    planned = property(lambda self: self._with("planned"))
    failed = property(lambda self: [self.failures[rid] for rid in self._with("failed")])

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> str:
        lines = [
            f"done {len(self.done)}, skipped {len(self.skipped)}, failed {len(self.failed)}"
            + (f" in {self.seconds:.0f} s ({self.mode})" if self.mode else "")
        ]
        lines += [f"WARNING {w}" for w in self.warnings]
        if self.planned:
            lines.append(f"dry run: {len(self.planned)} cell(s) would run")
        for f in self.failed:
            lines.append(f"  FAILED {f.name} [{f.run_id}]: {f.reason}\n    notebook: {f.notebook}")
        return "\n".join(lines)


# ---- the scheduler ----------------------------------------------------------------------------
class _Scheduler:
    """Cells leave graphlib's TopologicalSorter when their parents have settled; a cell whose parent
    failed settles as DEPENDENCY_FAILED, one another runner holds waits `poll_s` and is asked again."""

    def __init__(
        self,
        cells: list[RunConfig],
        slots: list[Slot],
        summary: SweepSummary,
        retries: int,
        poll_s: float,
        progress: bool,
        note: str,
    ) -> None:
        from tqdm.auto import tqdm

        self.by_id = {c.run_id: c for c in cells}
        self.deps = sweepfile.dependencies(cells)
        self.graph = sweepfile.graph(cells)
        self.graph.prepare()
        self.slots, self.summary, self.retries, self.poll_s, self.note = slots, summary, retries, poll_s, note
        self.free: queue.Queue[Slot] = queue.Queue()
        for slot in slots:
            self.free.put(slot)
        self.waiting: dict[str, float] = {}  # ready cells -> when to ask again
        self.running: dict[Future[Attempt], str] = {}
        self.stop = threading.Event()
        pending = sum(not store.is_done(c) for c in cells)
        self.bar = tqdm(
            total=pending, disable=not progress or not pending, unit="cell", desc="sweep", dynamic_ncols=True
        )

    def settle(self, rid: str, attempt: Attempt, counted: bool = True) -> None:
        cfg = self.by_id[rid]
        self.summary.record(cfg, attempt)
        self.graph.done(rid)
        if attempt.outcome.status == "skipped":
            CellLock(lock_path(cfg)).clear_if_stale()  # a killed runner's claim on a cell that finished
        if counted:
            self.bar.update(1)
            s = self.summary
            self.bar.set_postfix(
                done=len(s.done), skipped=len(s.skipped), failed=len(s.failed), running=len(self.running), refresh=False
            )

    def _task(self, cfg: RunConfig) -> Attempt:
        slot = self.free.get()
        try:
            return run_cell(cfg, slot, self.retries, self.stop, self.note)
        except Exception as err:  # noqa: BLE001 - a broken cell must not stop the sweep
            return Attempt(AttemptEnd.FAILED, f"runner error: {err}")
        finally:
            self.free.put(slot)

    def _start_ready(self, pool: ThreadPoolExecutor) -> None:
        for rid in self.graph.get_ready():
            self.waiting[rid] = 0.0
        now = time.monotonic()
        for rid in [r for r, when in self.waiting.items() if when <= now]:
            cfg = self.by_id[rid]
            failed = [d for d in self.deps[rid] if self.summary.outcomes[d].status == "failed"]
            if store.is_done(cfg):
                del self.waiting[rid]
                self.settle(rid, Attempt(AttemptEnd.SKIPPED), counted=False)
            elif failed:
                del self.waiting[rid]
                self.settle(rid, Attempt(AttemptEnd.DEPENDENCY_FAILED, f"dependency failed: {failed}"))
            elif len(self.running) >= len(self.slots):
                return
            elif CellLock(lock_path(cfg)).held():  # another runner (or an orphaned worker) has it
                self.waiting[rid] = now + self.poll_s
            else:
                del self.waiting[rid]
                self.running[pool.submit(self._task, cfg)] = rid

    def run(self) -> None:
        pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="xrstudy-slot")
        try:
            while self.graph.is_active():
                self._start_ready(pool)
                if not self.running:
                    time.sleep(self.poll_s / 4)
                    continue
                finished, _ = wait(list(self.running), timeout=self.poll_s, return_when=FIRST_COMPLETED)
                for future in finished:
                    rid = self.running.pop(future)
                    attempt = future.result()
                    if attempt.outcome == AttemptEnd.BUSY:  # claimed elsewhere since we looked: ask again later
                        self.waiting[rid] = time.monotonic() + self.poll_s
                    else:
                        self.settle(rid, attempt)
        except KeyboardInterrupt:
            self.stop.set()  # no new attempts; running cells end now (kernels killed, workers got SIGINT)
            for slot in self.slots:
                slot.interrupt()
            raise
        finally:
            pool.shutdown(wait=True)
            for slot in self.slots:
                try:
                    slot.close()
                except Exception:  # noqa: BLE001 - closing a dead kernel must not hide the summary
                    pass
            self.bar.close()


def run_sweep(
    cells: Iterable[RunConfig],
    *,
    workers: int = 1,
    gpus: Iterable[str | int] | None = None,
    only: str | None = None,
    retries: int = 1,
    dry_run: bool = False,
    progress: bool = True,
    executor: str = "papermill",
    isolate: bool = False,
    poll_s: float = 1.0,
    allow_cpu: bool = False,
    check_archs: bool = True,
) -> SweepSummary:
    """Execute every cell not yet done; parents before their dependants. Never raises for a cell (but
    raises SweepError before starting when `preflight` or the GPU check finds cells that cannot run).

    `workers` slots run cells at once (threads of this process). By default each slot owns one warm
    kernel (KernelSlot); `isolate=True`, or an executor other than papermill, gives every attempt its
    own worker process instead (ProcessSlot). With `gpus`, slot i is pinned to gpus[i % len(gpus)]
    through CUDA_VISIBLE_DEVICES, set when its kernel or worker starts.
    """
    started = time.perf_counter()
    cells = sweepfile.select(list(cells), only)
    isolate = isolate or executor != "papermill"
    gpu_list = [str(g) for g in gpus] if gpus is not None else []
    summary = SweepSummary(mode="isolate" if isolate else "warm", warnings=check_gpus(gpu_list, allow_cpu))
    preflight(cells, executor=executor, check_archs=check_archs)

    if dry_run:
        for cfg in cells:
            summary.record(cfg, Attempt(AttemptEnd.SKIPPED if store.is_done(cfg) else AttemptEnd.PLANNED))
        return summary

    if gpu_list:  # one GPU per cell: accumulate gradients where its share of the global batch does not fit
        cells = with_micro_batches(cells)
    pending = sum(not store.is_done(c) for c in cells)
    workers = max(1, int(workers))
    slots: list[Slot] = []
    for i in range(min(workers, max(1, pending))):
        gpu = gpu_list[i % len(gpu_list)] if gpu_list else None
        env, label = slot_env(gpu, workers), f"{i}" + (f" gpu={gpu}" if gpu is not None else "")
        slots.append(ProcessSlot(env, executor, label) if isolate else KernelSlot(env, label))
    _Scheduler(cells, slots, summary, retries, poll_s, progress, "; ".join(summary.warnings)).run()
    summary.seconds = time.perf_counter() - started
    return summary


def with_micro_batches(cells: list[RunConfig]) -> list[RunConfig]:
    """Cells on one GPU each, with the plan's `micro_batch` where the sweep sets none (as `sweep submit`
    does per job size; an execution field, so run ids do not change). Planned from published facts
    alone: the micro-batch depends on the arch and resolution, not on the label files."""
    from xrstudy.sweeps import plan

    rows = {row["run_id"]: row for row in plan.plan_cells(cells, use_roots=False)}
    return [
        c
        if c.micro_batch or not rows[c.run_id]["micro_batch"]
        else c.replace(micro_batch=rows[c.run_id]["micro_batch"])
        for c in cells
    ]


# ---- CLI --------------------------------------------------------------------------------------
__all__ = [
    "run_sweep",
    "SweepSummary",
    "Failure",
    "ProcessSlot",
    "KernelSlot",
    "run_cell",
    "slot_env",
    "with_micro_batches",
]
