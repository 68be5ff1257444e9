"""One attempt at one cell, and `python -m xrstudy.sweeps.worker`, the process that makes it (--isolate, SLURM).

Every attempt follows one protocol (`locked_attempt`): claim the cell (`xrstudy.sweeps.celllock`), skip it
when another runner finished it meanwhile, execute under a heartbeat, and call it done only when its
result JSON verifies. What became of it is an `AttemptEnd`, whose values are also this process's exit
codes, so a runner reads a worker's outcome from its exit status.

A failure carries its cause in one line (`failure_cause`): "disk full at PATH" for ENOSPC anywhere in
the exception chain (also inside a notebook, where papermill only hands back the error's name and
text), the exception otherwise. A worker process writes the cause to `{run_dir}/attempt.json` (and
to stderr, i.e. `worker.log`), where its runner reads it (and `xrstudy sweep status`).

An executed cell notebook reads as a report of its cell: its parameter cells (the shipped defaults
and the values papermill injects) are collapsed (`collapse_parameter_cells`, JupyterLab's
`source_hidden`), so it opens on its summary and learning curve.
"""

from __future__ import annotations

import argparse
import enum
import errno
import importlib
import json
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from xrstudy.config import RunConfig
from xrstudy.fileio import atomic_write_json, atomic_write_text
from xrstudy.results import store
from xrstudy.sweeps.celllock import CellLock, heartbeat
from xrstudy.sweeps.sweepfile import NOTEBOOKS, SweepError, notebook_path


class AttemptEnd(enum.IntEnum):
    """What became of a cell (or one attempt at it). The values are the worker's exit codes."""

    DONE = 0  # ran here; its result verifies
    FAILED = 1  # the cell raised
    BUSY = 75  # another runner holds the cell: try again later
    DONE_ELSEWHERE = 76  # another runner finished it meanwhile
    DEAD_KERNEL = 77  # the kernel (or worker) died: worth another attempt
    NO_RESULT = 78  # the notebook finished without a valid `ok` result
    DISK_FULL = 79  # ENOSPC: no space left where the cell writes
    # Set by the runner, never an exit code of a worker:
    SKIPPED = 100  # finished before this sweep started
    DEPENDENCY_FAILED = 101
    INTERRUPTED = 102
    PLANNED = 103  # dry run: would run

    @property
    def status(self) -> str:
        """How the summary counts it: done | skipped | failed | planned (| busy: ask again later). A dead
        kernel is retried by the runner; once the retries are spent it counts as failed."""
        return _STATUS.get(self, "failed")

    @classmethod
    def of_exit(cls, code: int) -> AttemptEnd:
        """A worker's exit status; anything else (a signal, an unexpected code) is a dead worker."""
        try:
            outcome = cls(code)
        except ValueError:
            return cls.DEAD_KERNEL
        return outcome if outcome <= cls.DISK_FULL else cls.DEAD_KERNEL


_STATUS = {
    AttemptEnd.DONE: "done",
    AttemptEnd.DONE_ELSEWHERE: "skipped",
    AttemptEnd.SKIPPED: "skipped",
    AttemptEnd.PLANNED: "planned",
    AttemptEnd.BUSY: "busy",
}


@dataclass(frozen=True)
class Attempt:
    outcome: AttemptEnd
    cause: str = ""  # one line: why it failed ("disk full at /x", "ValueError: broken cell", ...)


# ---- failure causes ---------------------------------------------------------------------------
# jupyter_client's RuntimeErrors when a new kernel never comes up. With --isolate, workers in
# separate processes pick kernel ports independently and now and then two pick the same one
# (zmq "Address already in use"): the kernel dies at start, and another attempt fixes it.
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")
NO_SPACE = ("No space left on device", f"[Errno {errno.ENOSPC}]")
_QUOTED_PATH = re.compile(r"""['"]([^'"]+)['"]\s*$""")


def is_dead_kernel(err: BaseException | None) -> bool:
    """The kernel died (mid-cell, or at start): worth another attempt, unlike a cell that raised."""
    while err is not None:
        if type(err).__name__ == "DeadKernelError":
            return True
        if isinstance(err, RuntimeError) and str(err).startswith(KERNEL_START_FAILURES):
            return True
        err = err.__cause__ or err.__context__
    return False


def _chain(err: BaseException | None) -> Iterable[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _disk_full(text: str) -> str | None:
    """'disk full at PATH' from an error text naming ENOSPC (PATH when the text ends with a quoted one)."""
    if not any(marker in text for marker in NO_SPACE):
        return None
    path = _QUOTED_PATH.search(text.strip().splitlines()[-1] if text.strip() else "")
    return f"disk full at {path.group(1)}" if path else "disk full (no space left on device)"


def failure_cause(err: BaseException) -> tuple[AttemptEnd, str]:
    """(outcome, one-line cause) of an exception raised while executing a cell."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno == errno.ENOSPC:
            return AttemptEnd.DISK_FULL, f"disk full at {link.filename}" if link.filename else "disk full"
        # papermill's PapermillExecutionError: the notebook's exception as name + text
        name, value = getattr(link, "ename", None), getattr(link, "evalue", None)
        if isinstance(name, str) and isinstance(value, str):
            full = _disk_full(value)
            if full:
                return AttemptEnd.DISK_FULL, full
            if name == "DiskFullError":  # xrstudy.fileio's: its text names the path
                return AttemptEnd.DISK_FULL, value.strip().splitlines()[0] if value.strip() else "disk full"
            return AttemptEnd.FAILED, f"{name}: {value.strip().splitlines()[0] if value.strip() else ''}".rstrip(": ")
    full = _disk_full(str(err))
    if full:
        return AttemptEnd.DISK_FULL, full
    text = str(err).strip().splitlines()
    return AttemptEnd.FAILED, f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def signal_cause(returncode: int | None) -> str:
    """'killed by SIGBUS' for a process that died of a signal (negative return code)."""
    if returncode is None or returncode >= 0:
        return ""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = " (a memory-mapped file on a full disk?)" if name == "SIGBUS" else ""
    return f"killed by {name}{hint}"


# ---- executors --------------------------------------------------------------------------------
PARAMETER_TAGS = ("parameters", "injected-parameters")


def collapse_parameter_cells(notebook: Path) -> None:
    """Collapse the executed notebook's parameter cells (JupyterLab hides a cell's source when its
    metadata says `jupyter: {source_hidden: true}`); a notebook that cannot be read is left as it is."""
    import nbformat

    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError):
        return
    changed = False
    for cell in nb.cells:
        if set(cell.metadata.get("tags", [])) & set(PARAMETER_TAGS) and not cell.metadata.get("jupyter", {}).get(
            "source_hidden"
        ):
            cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
            changed = True
    if changed:
        atomic_write_text(notebook, nbformat.writes(nb))


def papermill_executor(cfg: RunConfig, notebook: Path, output: Path) -> None:
    """Execute the cell's notebook; the notebook calls xrstudy.training.train.run(cfg), which saves the result."""
    import papermill

    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=cfg.to_dict(), progress_bar=False, log_output=True
        )
    finally:
        collapse_parameter_cells(output)


EXECUTORS: dict[str, Callable[[RunConfig, Path, Path], None]] = {"papermill": papermill_executor}


def executor_of(spec: str) -> Callable[[RunConfig, Path, Path], None]:
    """A registered name, or `module:function` (tests use a stub that does not train)."""
    if spec in EXECUTORS:
        return EXECUTORS[spec]
    module, _, name = spec.partition(":")
    if not name:
        raise SweepError(f"executor {spec!r}: expected one of {sorted(EXECUTORS)} or 'module:function'")
    return getattr(importlib.import_module(module), name)


def notebook_of(cfg: RunConfig, executor: str = "papermill") -> Path:
    """The notebook an attempt executes (a stub executor does not read it, so it need not exist)."""
    return notebook_path(NOTEBOOKS[cfg.kind]) if executor == "papermill" else Path(NOTEBOOKS[cfg.kind])


# ---- the attempt protocol ---------------------------------------------------------------------
def lock_path(cfg: RunConfig) -> Path:
    return cfg.run_dir / "cell.lock"


def attempt_path(cfg: RunConfig) -> Path:
    """Where a worker process leaves the cause of its last failed attempt for its runner."""
    return cfg.run_dir / "attempt.json"


def locked_attempt(cfg: RunConfig, execute: Callable[[CellLock], Attempt | None], pids: Iterable[int] = ()) -> Attempt:
    """Claim the cell, skip it when finished elsewhere, execute under a heartbeat, verify the result.
    `execute` returns an Attempt on failure, None when it ran through."""
    lock = CellLock(lock_path(cfg))
    if not lock.acquire(pids=pids):
        return Attempt(AttemptEnd.BUSY)
    try:
        if store.is_done(cfg):
            return Attempt(AttemptEnd.DONE_ELSEWHERE, "finished by another runner")
        with heartbeat(lock):
            failed = execute(lock)
        if failed is not None:
            return failed
        if store.is_done(cfg):
            return Attempt(AttemptEnd.DONE)
        return Attempt(AttemptEnd.NO_RESULT, "notebook finished without a valid ok result")
    finally:
        lock.release()


def run_in_process(cfg: RunConfig, executor: str, notebook: Path) -> Attempt:
    """The attempt of a worker process: its failure cause goes to stderr and to attempt.json."""

    def execute(_lock: CellLock) -> Attempt | None:
        try:
            executor_of(executor)(cfg, notebook, cfg.run_dir / "notebook.ipynb")
        except BaseException as err:  # noqa: BLE001 - report every failure to the runner
            traceback.print_exc()
            if is_dead_kernel(err):
                return Attempt(AttemptEnd.DEAD_KERNEL, "kernel died")
            return Attempt(*failure_cause(err))
        return None

    attempt = locked_attempt(cfg, execute)
    if attempt.cause:
        print(f"xrstudy worker: {attempt.outcome.name}: {attempt.cause}", file=sys.stderr, flush=True)
        write_attempt(cfg, attempt)
    return attempt


def write_attempt(cfg: RunConfig, attempt: Attempt) -> None:
    """Leave a failed attempt's cause in the run folder (best effort: on a full disk it may not fit either)."""
    try:
        atomic_write_json(attempt_path(cfg), {"outcome": attempt.outcome.name, "cause": attempt.cause})
    except OSError:
        pass


def read_attempt(cfg: RunConfig) -> str:
    """The cause a worker process left (empty when none)."""
    try:
        return str(json.loads(attempt_path(cfg).read_text()).get("cause", ""))
    except (OSError, ValueError, AttributeError):
        return ""


# ---- python -m xrstudy.sweeps.worker -------------------------------------------------------------------
def worker_command(
    executor: str, *, notebook: str = "", config: RunConfig | None = None, cell_list: str = "", index: str = "0"
) -> list[str]:
    """The arguments after `python -m xrstudy.sweeps.worker` (runner slots and SLURM scripts build them here)."""
    args = ["--executor", executor]
    if notebook:
        args += ["--notebook", notebook]
    if config is not None:
        args += ["--config", json.dumps(config.to_dict())]
    if cell_list:
        args += ["--from-list", cell_list, "--index", index]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xrstudy.sweeps.worker", description="execute one sweep cell")
    parser.add_argument("--executor", default="papermill")
    parser.add_argument("--notebook", default="")
    parser.add_argument("--config", default=None, help="RunConfig as JSON")
    parser.add_argument("--from-list", default=None, help="JSONL of configs, one per line (SLURM arrays)")
    parser.add_argument("--index", type=int, default=0, help="line of --from-list (0-based)")
    args = parser.parse_args(argv)
    if args.from_list:
        config = json.loads(Path(args.from_list).read_text().splitlines()[args.index])
    elif args.config:
        config = json.loads(args.config)
    else:
        parser.error("one of --config or --from-list is required")
    cfg = RunConfig.from_dict(config)
    notebook = Path(args.notebook) if args.notebook else notebook_of(cfg, args.executor)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    # Under torchrun any non-zero exit fails the whole job (and `slurm.run_cell` with it): a cell finished
    # before the job started (a requeued task) ends every rank with 0 there, not with DONE_ELSEWHERE.
    finished = 0 if world > 1 else int(AttemptEnd.DONE_ELSEWHERE)
    if rank != 0:
        # Multi-GPU cells under torchrun: every rank executes the cell; rank 0 alone holds the claim
        # and writes the result. A cell finished before the job started is left alone by every rank.
        if store.is_done(cfg):
            return finished
        executor_of(args.executor)(cfg, notebook, cfg.run_dir / f"notebook.rank{rank}.ipynb")
        return int(AttemptEnd.DONE)
    outcome = run_in_process(cfg, args.executor, notebook).outcome
    return finished if outcome == AttemptEnd.DONE_ELSEWHERE else int(outcome)


__all__ = [
    "AttemptEnd",
    "Attempt",
    "failure_cause",
    "signal_cause",
    "is_dead_kernel",
    "executor_of",
    "EXECUTORS",
    "papermill_executor",
    "notebook_of",
    "lock_path",
    "locked_attempt",
    "run_in_process",
    "read_attempt",
    "write_attempt",
    "collapse_parameter_cells",
    "worker_command",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
