"""Sweeps: a YAML grid → RunConfigs → papermill executions, locally (GPU-pinned) or on SLURM.

Sweep file format::

    defaults: {out_dir: study-out, roots: [chexpert=/data/CheXpert]}   # RunConfig fields, every cell
    pretrain:                                 # one entry per pre-training cell (or grid of cells)
      - {name: chexpert, sources: [chexpert], grid: {arch: [resnetv2_50x1_bit, resnetv2_152x4_bit]}}
    transfer:                                 # blocks; only keys under `grid:` are expanded
      - target: cifar10
        init: pretrain:chexpert               # → run:<run_id of that pretrain cell>, init_label chexpert
        grid: {arch: [resnetv2_50x1_bit], shots: [1, 5, 0], seed: [0, 1]}

`init: pretrain:<name>` picks the pretrain cell with that name (and the same architecture, when the
name covers several). Cells are de-duplicated by run id.

Execution: `run` keeps `workers` slots busy (threads of the runner). By default a slot owns one warm
Jupyter kernel (`xrstudy.kernels.WarmKernel`): papermill executes cell after cell in it, so torch /
timm / fastai are imported once per slot instead of once per cell (15.4 s → 1.3 s of overhead per
cell on 2 CPUs). `isolate=True` (`--isolate`) runs every attempt in its own worker process
(`python -m xrstudy.sweep worker ...`, a fresh kernel), as SLURM jobs do. Either way a cell's lock
file (O_EXCL; pids, host, token; mtime = heartbeat) is held while it runs, and the executed notebook
is kept at `{out_dir}/runs/{run_id}/notebook.ipynb` beside `worker.log`.

The result JSON is the record of completion: cells with a valid `status: ok` result are skipped
(a truncated or edited result fails its digest and the cell runs again). A lock whose processes are
all gone (or whose heartbeat stopped) is stale and broken under a second O_EXCL guard, so after
`kill -9` of a runner a re-run waits for still-live workers and redoes only what died; two runners on
one store never run a cell twice.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import itertools
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import yaml

from xrstudy import results
from xrstudy.config import FIELD_NAMES, ConfigError, RunConfig

NOTEBOOKS = {"pretrain": "10_pretrain.ipynb", "transfer": "20_transfer.ipynb"}
TOP_KEYS = ("defaults", "pretrain", "transfer")
GRID_KEY = "grid"
PRETRAIN_REF = "pretrain:"


class SweepError(ValueError):
    """A sweep file or a sweep request is not valid."""


# ---- notebooks --------------------------------------------------------------------------------
def notebook_path(name: str) -> Path:
    """The repo's `notebooks/{name}`: `$XRSTUDY_NOTEBOOKS` first, else `notebooks/` next to the package."""
    name = name if name.endswith(".ipynb") else f"{name}.ipynb"
    package = Path(__file__).resolve().parent
    candidates = [package.parent / "notebooks", package / "notebooks"]
    if os.environ.get("XRSTUDY_NOTEBOOKS"):
        candidates.insert(0, Path(os.environ["XRSTUDY_NOTEBOOKS"]))
    for folder in candidates:
        if (folder / name).is_file():
            return folder / name
    raise SweepError(
        f"notebook {name!r} not found in {[str(c) for c in candidates]}; install xrstudy editable "
        "from its repository (pip install -e .) or set XRSTUDY_NOTEBOOKS to the notebooks folder"
    )


# ---- sweep file → cells -----------------------------------------------------------------------
def _check_keys(entry: Any, allowed: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise SweepError(f"{where}: expected a mapping of RunConfig fields, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; allowed: RunConfig fields and 'grid'")
    return dict(entry)


def _expand(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Fixed fields × cartesian product of `grid:` (only grid keys expand; list fields stay lists)."""
    grid = entry.pop(GRID_KEY, None) or {}
    grid = _check_keys(grid, FIELD_NAMES, f"{where}.grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}.grid.{key}: expected a non-empty list of values")
        if key in entry:
            raise SweepError(f"{where}: {key!r} is both a fixed field and a grid key")
    keys = list(grid)
    return [{**entry, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys))]


def _make(fields: dict[str, Any], where: str) -> RunConfig:
    try:
        return RunConfig.from_dict(fields, origin=where)
    except ConfigError as err:
        message = str(err)
        raise SweepError(message if message.startswith(where) else f"{where}: {message}") from None


def _resolve_pretrain(ref: str, arch: str, by_name: dict[str, list[RunConfig]], where: str) -> RunConfig:
    name = ref[len(PRETRAIN_REF) :]
    candidates = by_name.get(name, [])
    if len(candidates) > 1:
        candidates = [c for c in candidates if results.arch_short(c.arch) == results.arch_short(arch)]
    if len(candidates) != 1:
        raise SweepError(
            f"{where}: init {ref!r} matches {len(candidates)} pretrain cells for arch {arch!r} "
            f"(pretrain names: {sorted(by_name)})"
        )
    return candidates[0]


def load_sweep(source: str | Path | Mapping[str, Any]) -> list[RunConfig]:
    """Sweep YAML (path) or an already-parsed dict → cells, pretrain cells first, unique run ids."""
    if isinstance(source, Mapping):
        origin, data = "<sweep>", dict(source)
    else:
        origin = str(source)
        try:
            data = yaml.safe_load(Path(source).read_text())
        except FileNotFoundError:
            raise SweepError(f"{origin}: no such sweep file") from None
        except yaml.YAMLError as err:
            raise SweepError(f"{origin}: not valid YAML ({err})") from None
    data = _check_keys(data or {}, TOP_KEYS, origin)
    defaults = _check_keys(data.get("defaults") or {}, FIELD_NAMES, f"{origin}: defaults")

    pretrain: list[RunConfig] = []
    for i, entry in enumerate(data.get("pretrain") or []):
        where = f"{origin}: pretrain[{i}]"
        entry = _check_keys(entry, (*FIELD_NAMES, GRID_KEY), where)
        if not entry.get("name"):
            raise SweepError(f"{where}: every pretrain cell needs a `name` (transfer cells refer to it)")
        for fields in _expand(entry, where):
            pretrain.append(_make({**defaults, **fields, "kind": "pretrain"}, where))
    by_name: dict[str, list[RunConfig]] = {}
    for cell in pretrain:
        by_name.setdefault(cell.name, []).append(cell)

    transfer: list[RunConfig] = []
    for i, block in enumerate(data.get("transfer") or []):
        where = f"{origin}: transfer[{i}]"
        block = _check_keys(block, (*FIELD_NAMES, GRID_KEY), where)
        for fields in _expand(block, where):
            fields = {**defaults, **fields, "kind": "transfer"}
            init = str(fields.get("init", ""))
            if init.startswith(PRETRAIN_REF):
                parent = _resolve_pretrain(init, fields.get("arch", RunConfig.arch), by_name, where)
                fields["init"] = f"run:{parent.run_id}"
                fields["init_label"] = fields.get("init_label") or parent.name
            transfer.append(_make(fields, where))

    unique: dict[str, RunConfig] = {}
    for cell in pretrain + transfer:
        unique.setdefault(cell.run_id, cell)
    return list(unique.values())


def dependencies(cells: Iterable[RunConfig]) -> dict[str, set[str]]:
    """run_id → run_ids (among `cells`) it needs first: a transfer cell needs its `init: run:<id>`."""
    cells = list(cells)
    ids = {c.run_id for c in cells}
    return {c.run_id: ({c.init[4:]} & ids) if c.init.startswith("run:") else set() for c in cells}


def select(cells: list[RunConfig], only: str | None) -> list[RunConfig]:
    """Cells whose name or run id matches the glob `only` (plus the pretrain cells they depend on)."""
    if not only:
        return cells
    chosen = {c.run_id for c in cells if fnmatch.fnmatch(c.name, only) or fnmatch.fnmatch(c.run_id, only)}
    deps = dependencies(cells)
    chosen |= {d for rid in chosen for d in deps[rid]}
    return [c for c in cells if c.run_id in chosen]


# ---- per-cell lock ----------------------------------------------------------------------------
HEARTBEAT_S = 15.0
STALE_AFTER_S = 300.0  # no heartbeat for this long → the holder is gone (other hosts, pid reuse)


def lock_path(cfg: RunConfig) -> Path:
    return cfg.run_dir / "cell.lock"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class CellLock:
    """An O_EXCL lock file holding {pid, pids, host, token}; its mtime is the heartbeat.

    `pids` are every process that may still be working on the cell (the runner and the warm kernel
    executing it, or the worker process); the lock is stale when none of them is alive on this host,
    or when the heartbeat stopped for `stale_after_s` (other hosts, pid reuse).
    """

    path: Path
    stale_after_s: float = STALE_AFTER_S
    token: str = ""

    def acquire(self, pids: Iterable[int] = ()) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # second try after breaking a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._break_if_stale():
                    return False
                continue
            self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
            with os.fdopen(fd, "w") as handle:
                json.dump(self._info(pids), handle)
            return True
        return False

    def _info(self, pids: Iterable[int]) -> dict[str, Any]:
        return {"pid": os.getpid(), "pids": sorted({os.getpid(), *(int(p) for p in pids if p)}),
                "host": socket.gethostname(), "token": self.token,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip

    def set_pids(self, pids: Iterable[int]) -> None:
        """Record the processes working on the cell now (a restarted kernel has a new pid); atomic."""
        info = _read_lock(self.path)
        if info is None or info.get("token") != self.token:
            return
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        temp.write_text(json.dumps(self._info(pids)))
        os.replace(temp, self.path)

    def heartbeat(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        info = _read_lock(self.path)
        if info is not None and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def held(self) -> bool:
        """Someone (alive) holds it."""
        return self.path.exists() and not self._stale()

    def _stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        info = _read_lock(self.path)
        if info is None:  # half-written by a process killed between open and write
            return age > 10.0
        if age > self.stale_after_s:
            return True
        pids = info.get("pids") or [info.get("pid", -1)]
        return info.get("host") == socket.gethostname() and not any(_pid_alive(int(p)) for p in pids)

    def clear_if_stale(self) -> None:
        """Tidy up the lock of a dead holder (a killed runner's finished cell); a live one is kept."""
        if self.path.exists():
            self._break_if_stale()

    def _break_if_stale(self) -> bool:
        """Remove a stale lock under a second O_EXCL guard, so two breakers cannot both win."""
        guard = self.path.with_suffix(".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > 60.0:  # its breaker died mid-break
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            if not self._stale():
                return False
            self.path.unlink(missing_ok=True)
            return True
        finally:
            guard.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


@contextlib.contextmanager
def _heartbeat(lock: CellLock) -> Iterator[None]:
    """Touch the lock every HEARTBEAT_S while the cell runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            lock.heartbeat()

    threading.Thread(target=beat, daemon=True, name=f"heartbeat {lock.path.parent.name}").start()
    try:
        yield
    finally:
        stop.set()


# ---- executing one cell -----------------------------------------------------------------------
def papermill_executor(cfg: RunConfig, notebook: Path, output: Path) -> None:
    """Execute the cell's notebook; the notebook calls xrstudy.train.run(cfg), which saves the result."""
    import papermill

    papermill.execute_notebook(
        str(notebook), str(output), parameters=cfg.to_dict(), progress_bar=False, log_output=True
    )


EXECUTORS: dict[str, Callable[[RunConfig, Path, Path], None]] = {"papermill": papermill_executor}


def _executor(spec: str) -> Callable[[RunConfig, Path, Path], None]:
    """A registered name, or `module:function` (tests use a stub that does not train)."""
    if spec in EXECUTORS:
        return EXECUTORS[spec]
    module, _, name = spec.partition(":")
    if not name:
        raise SweepError(f"executor {spec!r}: expected one of {sorted(EXECUTORS)} or 'module:function'")
    return getattr(importlib.import_module(module), name)


# Attempt outcomes (also the worker process's exit codes).
EXIT_OK, EXIT_FAILED, EXIT_BUSY, EXIT_DONE_ELSEWHERE, EXIT_DEAD_KERNEL, EXIT_NO_RESULT = 0, 1, 75, 76, 77, 78


# jupyter_client's RuntimeErrors when a new kernel never comes up. With --isolate, workers in
# separate processes pick kernel ports independently and now and then two pick the same one
# (zmq "Address already in use"): the kernel dies at start, and another attempt fixes it.
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")


def _is_dead_kernel(err: BaseException | None) -> bool:
    """The kernel died (mid-cell, or at start): worth another attempt, unlike a cell that raised."""
    while err is not None:
        if type(err).__name__ == "DeadKernelError":
            return True
        if isinstance(err, RuntimeError) and str(err).startswith(KERNEL_START_FAILURES):
            return True
        err = err.__cause__ or err.__context__
    return False


def _locked_attempt(cfg: RunConfig, execute: Callable[[CellLock], int | None], pids: Iterable[int] = ()) -> int:
    """Every attempt's protocol: take the cell's lock, skip a cell finished elsewhere, execute under a
    heartbeat, and call the cell done only when its result verifies. `execute` returns an exit code
    on failure, None otherwise."""
    lock = CellLock(lock_path(cfg))
    if not lock.acquire(pids=pids):
        return EXIT_BUSY
    try:
        if results.is_done(cfg):
            return EXIT_DONE_ELSEWHERE
        with _heartbeat(lock):
            failed = execute(lock)
        if failed is not None:
            return failed
        return EXIT_OK if results.is_done(cfg) else EXIT_NO_RESULT
    finally:
        lock.release()


def _worker(cfg: RunConfig, executor: str, notebook: Path) -> int:
    """Runs in its own process (--isolate, SLURM): lock, execute, release. Returns an exit code."""

    def execute(_lock: CellLock) -> int | None:
        try:
            _executor(executor)(cfg, notebook, cfg.run_dir / "notebook.ipynb")
        except BaseException as err:  # noqa: BLE001 - report every failure to the runner
            traceback.print_exc()
            return EXIT_DEAD_KERNEL if _is_dead_kernel(err) else EXIT_FAILED
        return None

    return _locked_attempt(cfg, execute)


# ---- worker slots: where a cell executes ------------------------------------------------------
def slot_env(gpu: str | None, workers: int) -> dict[str, str]:
    """What a slot's kernel / worker gets on top of os.environ: its GPU, and a share of the CPU threads."""
    env: dict[str, str] = {}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if "OMP_NUM_THREADS" not in os.environ:  # N torch processes × all cores each oversubscribe the CPU
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    return env


class ProcessSlot:
    """`--isolate`: every attempt is a fresh `python -m xrstudy.sweep worker` (its own kernel)."""

    def __init__(self, env: dict[str, str], executor: str = "papermill", label: str = "") -> None:
        self.env, self.executor, self.label = {**os.environ, **env}, executor, label

    def attempt(self, cfg: RunConfig, notebook: Path, log: IO[str]) -> int:
        command = [sys.executable, "-m", "xrstudy.sweep", "worker", "--executor", self.executor,
                   "--notebook", str(notebook), "--config", json.dumps(cfg.to_dict())]  # fmt: skip
        return subprocess.run(command, env=self.env, stdout=log, stderr=subprocess.STDOUT).returncode

    def interrupt(self) -> None:  # Ctrl-C reaches the workers through the process group
        pass

    def close(self) -> None:
        pass


class KernelSlot:
    """The default: one warm Jupyter kernel for the slot's cells (imports paid once per slot).

    The runner thread holds the cell's lock on the kernel's behalf (lock pids: runner + kernel), clears
    the kernel's namespace before each notebook (WarmKernel), replaces a kernel that died, and restarts
    it after a failed cell so no broken state (CUDA context, stray threads) reaches the next cell. When
    the runner is killed, ipykernel's parent poller ends the kernel within a second: the cell it was
    running has no result and its lock goes stale, so the next runner redoes it.
    """

    def __init__(self, env: dict[str, str], label: str = "") -> None:
        from xrstudy.kernels import WarmKernel

        self.kernel = WarmKernel(env=env)
        self.label = label

    def attempt(self, cfg: RunConfig, notebook: Path, log: IO[str]) -> int:
        kernel = self.kernel
        kernel.start()

        def execute(lock: CellLock) -> int | None:
            try:
                kernel.start()  # again: a kernel that died since is replaced, and the lock follows it
                lock.set_pids([kernel.pid or 0])
                log.write(f"kernel pid {kernel.pid}\n")
                log.flush()
                kernel.execute(notebook, cfg.run_dir / "notebook.ipynb", cfg.to_dict(), log_output=False)
            except Exception as err:  # noqa: BLE001 - every failure goes to the summary
                traceback.print_exc(file=log)
                if _is_dead_kernel(err) or not kernel.alive():
                    return EXIT_DEAD_KERNEL
                kernel.restart()
                return EXIT_FAILED
            return None

        return _locked_attempt(cfg, execute, pids=[kernel.pid or 0])

    def interrupt(self) -> None:
        self.kernel.kill()

    def close(self) -> None:
        self.kernel.close()


# ---- the runner -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    run_id: str
    name: str
    reason: str
    notebook: str


@dataclass
class SweepSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)  # dry run: cells that would run
    mode: str = ""  # warm | isolate
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def report(self) -> str:
        lines = [f"done {len(self.done)}, skipped {len(self.skipped)}, failed {len(self.failed)}"
                 + (f" in {self.seconds:.0f} s ({self.mode})" if self.mode else "")]  # fmt: skip
        if self.planned:
            lines.append(f"dry run: {len(self.planned)} cell(s) would run")
        for f in self.failed:
            lines.append(f"  FAILED {f.name} [{f.run_id}]: {f.reason}\n    notebook: {f.notebook}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Outcome:
    status: str  # done | skipped | failed | busy
    reason: str = ""


def _run_cell(cfg: RunConfig, slot: ProcessSlot | KernelSlot, retries: int, stop: threading.Event) -> _Outcome:
    """Attempt one cell in `slot`; retry when its kernel or process died."""
    if isinstance(slot, ProcessSlot) and slot.executor != "papermill":
        notebook = Path(NOTEBOOKS[cfg.kind])  # a stub executor does not read it
    else:
        notebook = notebook_path(NOTEBOOKS[cfg.kind])
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    reason = ""
    for attempt in range(1 + retries):
        if stop.is_set():
            return _Outcome("failed", "interrupted")
        with open(cfg.run_dir / "worker.log", "a") as log:
            log.write(f"\n== attempt {attempt + 1} {datetime.now(timezone.utc).isoformat()} "
                      f"slot={slot.label} host={socket.gethostname()} runner={os.getpid()}\n")  # fmt: skip
            log.flush()
            code = slot.attempt(cfg, notebook, log)
        if code == EXIT_OK:
            return _Outcome("done")
        if code == EXIT_DONE_ELSEWHERE:
            return _Outcome("skipped", "finished by another runner")
        if code == EXIT_BUSY:
            return _Outcome("busy")
        if code == EXIT_NO_RESULT:
            return _Outcome("failed", "notebook finished without a valid ok result")
        if code == EXIT_FAILED:
            return _Outcome("failed", f"cell raised (see {cfg.run_dir / 'worker.log'})")
        # Dead kernel or a killed worker: worth another try.
        reason = "kernel died" if code == EXIT_DEAD_KERNEL else f"worker died (exit {code})"
    return _Outcome("failed", f"{reason} after {1 + retries} attempt(s)")


def run(
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
) -> SweepSummary:
    """Execute every cell not yet done; pretrain cells before their dependants. Never raises for a cell.

    `workers` slots run cells at once (threads of this process). By default each slot owns one warm
    kernel (KernelSlot); `isolate=True`, or an executor other than papermill, gives every attempt its
    own worker process instead (ProcessSlot). With `gpus`, slot i is pinned to gpus[i % len(gpus)]
    through CUDA_VISIBLE_DEVICES, set when its kernel or worker starts.
    """
    started = time.perf_counter()
    cells = select(list(cells), only)
    by_id = {c.run_id: c for c in cells}
    deps = dependencies(cells)
    isolate = isolate or executor != "papermill"
    summary = SweepSummary(mode="isolate" if isolate else "warm")
    gpu_list = [str(g) for g in gpus] if gpus is not None else []
    workers = max(1, int(workers))

    if dry_run:
        for cfg in cells:
            (summary.skipped if results.is_done(cfg) else summary.planned).append(cfg.run_id)
        return summary

    from tqdm.auto import tqdm

    state: dict[str, str] = {}
    for cfg in cells:  # already finished: not part of the work (nor of the ETA)
        if results.is_done(cfg):
            state[cfg.run_id] = "skipped"
            summary.skipped.append(cfg.run_id)
            CellLock(lock_path(cfg)).clear_if_stale()
    pending = [c.run_id for c in cells if c.run_id not in state]
    bar = tqdm(total=len(pending), disable=not progress or not pending, unit="cell", desc="sweep", dynamic_ncols=True)

    def finish(rid: str, status: str, reason: str = "") -> None:
        state[rid] = status
        cfg = by_id[rid]
        if status == "failed":
            summary.failed.append(Failure(rid, cfg.name, reason, str(cfg.run_dir / "notebook.ipynb")))
        else:
            (summary.done if status == "done" else summary.skipped).append(rid)
        bar.update(1)
        bar.set_postfix(done=len(summary.done), skipped=len(summary.skipped), failed=len(summary.failed),
                        running=len(running), refresh=False)  # fmt: skip

    slots: queue.Queue[ProcessSlot | KernelSlot] = queue.Queue()
    all_slots: list[ProcessSlot | KernelSlot] = []
    for i in range(min(workers, max(1, len(pending)))):
        gpu = gpu_list[i % len(gpu_list)] if gpu_list else None
        env, label = slot_env(gpu, workers), f"{i}" + (f" gpu={gpu}" if gpu is not None else "")
        slot = ProcessSlot(env, executor, label) if isolate else KernelSlot(env, label)
        all_slots.append(slot)
        slots.put(slot)
    stop = threading.Event()

    def task(cfg: RunConfig) -> _Outcome:
        slot = slots.get()
        try:
            return _run_cell(cfg, slot, retries, stop)
        except Exception as err:  # noqa: BLE001 - a broken cell must not stop the sweep
            return _Outcome("failed", f"runner error: {err}")
        finally:
            slots.put(slot)

    wait_until: dict[str, float] = {}
    running: dict[Future[_Outcome], str] = {}
    pool = ThreadPoolExecutor(max_workers=len(all_slots), thread_name_prefix="xrstudy-slot")
    try:
        while pending or running:
            for rid in list(pending):
                if len(running) >= len(all_slots):
                    break
                failed_deps = [d for d in deps[rid] if state.get(d) == "failed"]
                if failed_deps:
                    pending.remove(rid)
                    finish(rid, "failed", f"dependency failed: {failed_deps}")
                    continue
                if any(state.get(d) not in ("done", "skipped") for d in deps[rid]):
                    continue
                if wait_until.get(rid, 0.0) > time.monotonic():
                    continue
                cfg = by_id[rid]
                if results.is_done(cfg):
                    pending.remove(rid)
                    finish(rid, "skipped")
                    CellLock(lock_path(cfg)).clear_if_stale()
                    continue
                if CellLock(lock_path(cfg)).held():  # another runner (or an orphaned worker) has it
                    wait_until[rid] = time.monotonic() + poll_s
                    continue
                pending.remove(rid)
                running[pool.submit(task, cfg)] = rid
            if not running:
                time.sleep(poll_s / 4)
                continue
            finished, _ = wait(list(running), timeout=poll_s, return_when=FIRST_COMPLETED)
            for future in finished:
                rid = running.pop(future)
                outcome = future.result()
                if outcome.status == "busy":
                    pending.append(rid)
                    wait_until[rid] = time.monotonic() + poll_s
                else:
                    finish(rid, outcome.status, outcome.reason)
    except KeyboardInterrupt:
        stop.set()  # no new attempts; running cells end now (kernels killed, workers got SIGINT)
        for slot in all_slots:
            slot.interrupt()
        raise
    finally:
        pool.shutdown(wait=True)
        for slot in all_slots:
            try:
                slot.close()
            except Exception:  # noqa: BLE001 - closing a dead kernel must not hide the summary
                pass
        bar.close()
    for rid in summary.skipped:  # locks a killed runner left on cells that finished without it
        CellLock(lock_path(by_id[rid])).clear_if_stale()
    summary.seconds = time.perf_counter() - started
    return summary


# ---- SLURM through submitit -------------------------------------------------------------------
def _submitit_cell(config: dict[str, Any], executor: str, nodes: int, gpus_per_node: int) -> int:
    """The job body: one worker, or torchrun across the job's nodes for a multi-node pretrain cell."""
    cfg = RunConfig.from_dict(config)
    worker = ["-m", "xrstudy.sweep", "worker", "--executor", executor,
              "--notebook", str(notebook_path(NOTEBOOKS[cfg.kind]) if executor == "papermill" else ""),
              "--config", json.dumps(config)]  # fmt: skip
    if cfg.kind == "pretrain" and nodes > 1:
        command = torchrun_command(nodes, gpus_per_node) + worker[1:]
    else:
        command = [sys.executable, *worker]
    return subprocess.run(command, check=False).returncode


def torchrun_command(nodes: int, gpus_per_node: int) -> list[str]:
    """torchrun over the SLURM allocation (rendezvous on the first node of the job)."""
    master = os.environ.get("MASTER_ADDR") or os.environ.get("SLURMD_NODENAME", "localhost")
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
            f"--nproc_per_node={gpus_per_node}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={master}:29500", f"--rdzv_id={os.environ.get('SLURM_JOB_ID', 'xrstudy')}",
            "-m", "xrstudy.sweep"]  # fmt: skip


def submit(
    cells: Iterable[RunConfig],
    *,
    backend: str = "slurm",
    folder: str | Path = "xrstudy-out/slurm",
    dry_run: bool = False,
    only: str | None = None,
    partition: str | None = None,
    timeout_min: int = 24 * 60,
    gpus_per_node: int = 1,
    pretrain_nodes: int = 1,
    cpus_per_task: int = 8,
    array_parallelism: int = 64,
    executor: str = "papermill",
) -> dict[str, Any]:
    """Submit pretrain cells (one job each, multi-node via torchrun), then transfer cells as a job array
    that starts after them. `dry_run` writes the sbatch scripts under `folder` instead of submitting.
    backend: `slurm`, or submitit's `local` / `debug` executors (offline tests)."""
    import submitit

    cells = [c for c in select(list(cells), only) if not results.is_done(c)]
    pretrain = [c for c in cells if c.kind == "pretrain"]
    transfer = [c for c in cells if c.kind == "transfer"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slurm_params = {"slurm_partition": partition} if partition else {}

    def params(nodes: int) -> dict[str, Any]:
        return dict(timeout_min=timeout_min, nodes=nodes, tasks_per_node=1, gpus_per_node=gpus_per_node,
                    cpus_per_task=cpus_per_task, slurm_array_parallelism=array_parallelism, **slurm_params)  # fmt: skip

    if dry_run:
        return _write_sbatch_scripts(folder, pretrain, transfer, params, executor, pretrain_nodes, gpus_per_node)
    if backend not in ("slurm", "local", "debug"):
        raise SweepError(f"backend {backend!r}; expected slurm, local or debug")

    job_ids: dict[str, list[str]] = {"pretrain": [], "transfer": []}
    if pretrain:
        ex = submitit.AutoExecutor(folder=folder / "pretrain", cluster=backend)
        ex.update_parameters(name="xrstudy-pretrain", **(params(pretrain_nodes) if backend == "slurm" else {}))
        jobs = ex.map_array(_submitit_cell, [c.to_dict() for c in pretrain], [executor] * len(pretrain),
                            [pretrain_nodes] * len(pretrain), [gpus_per_node] * len(pretrain))  # fmt: skip
        job_ids["pretrain"] = [j.job_id for j in jobs]
        if backend != "slurm":  # local/debug: no scheduler to hold the dependency, wait here
            [j.result() for j in jobs]
    if transfer:
        ex = submitit.AutoExecutor(folder=folder / "transfer", cluster=backend)
        extra: dict[str, Any] = {}
        if backend == "slurm":
            extra = params(1)
            if job_ids["pretrain"]:
                extra["slurm_additional_parameters"] = {"dependency": "afterany:" + ":".join(job_ids["pretrain"])}
        ex.update_parameters(name="xrstudy-transfer", **extra)
        jobs = ex.map_array(_submitit_cell, [c.to_dict() for c in transfer], [executor] * len(transfer),
                            [1] * len(transfer), [gpus_per_node] * len(transfer))  # fmt: skip
        job_ids["transfer"] = [j.job_id for j in jobs]
        if backend != "slurm":
            [j.result() for j in jobs]
    return {"folder": str(folder), "jobs": job_ids}


SBATCH_TEMPLATE = """#!/bin/bash
# Review copy written by `xrstudy sweep submit --dry-run`; `submit` sends the same cells through submitit.
#SBATCH --job-name=xrstudy-{kind}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus_per_node}
#SBATCH --cpus-per-task={cpus_per_task}
#SBATCH --time={timeout_min}
#SBATCH --array=0-{last}%{parallelism}
#SBATCH --output={log_dir}/%A_%a.out
{partition_line}
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
srun {launcher} -m xrstudy.sweep worker --executor {executor} --from-list {cell_file} --index $SLURM_ARRAY_TASK_ID
"""


def _write_sbatch_scripts(folder, pretrain, transfer, params, executor, pretrain_nodes, gpus_per_node):
    """Review copies of what `submit` would send: one sbatch array script per kind + the cell lists."""
    written = []
    for kind, cells, nodes in (("pretrain", pretrain, pretrain_nodes), ("transfer", transfer, 1)):
        if not cells:
            continue
        cell_file = folder / f"{kind}_cells.jsonl"
        cell_file.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in cells))
        if kind == "pretrain" and nodes > 1:  # one torchrun per node, rendezvous on the first node
            launcher = (f"{sys.executable} -m torch.distributed.run --nnodes={nodes} --nproc_per_node={gpus_per_node} "
                        "--rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500 --rdzv_id=$SLURM_JOB_ID")  # fmt: skip
        else:
            launcher = sys.executable
        p = params(nodes)
        text = SBATCH_TEMPLATE.format(
            kind=kind, nodes=nodes, gpus_per_node=p["gpus_per_node"], cpus_per_task=p["cpus_per_task"],
            timeout_min=p["timeout_min"], last=len(cells) - 1, parallelism=p["slurm_array_parallelism"],
            log_dir=folder / kind, executor=executor, cell_file=cell_file, launcher=launcher,
            partition_line=f"#SBATCH --partition={p['slurm_partition']}" if p.get("slurm_partition") else "",
        )  # fmt: skip
        script = folder / f"{kind}.sbatch"
        script.write_text(text)
        written.append(str(script))
    return {"folder": str(folder), "scripts": written, "jobs": {}}


# ---- CLI --------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    cells = load_sweep(args.sweep)
    workers = args.workers if args.workers is not None else max(1, len(args.gpus or []))
    summary = run(cells, workers=workers, gpus=args.gpus, only=args.only, retries=args.retries,
                  dry_run=args.dry_run, progress=args.progress, isolate=args.isolate)  # fmt: skip
    if args.dry_run:
        by_id = {c.run_id: c for c in cells}
        for rid in summary.planned:
            print(f"would run  {by_id[rid].kind:8s} {rid}  {by_id[rid].name}")
    print(summary.report())
    return 0 if summary.ok else 1


def cmd_submit(args: argparse.Namespace) -> int:
    cells = load_sweep(args.sweep)
    folder = args.folder or str(Path(cells[0].out_dir if cells else "xrstudy-out") / "slurm")
    info = submit(cells, backend=args.backend, folder=folder, dry_run=args.dry_run, only=args.only,
                  partition=args.partition, timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_node,
                  pretrain_nodes=args.pretrain_nodes)  # fmt: skip
    print(json.dumps(info, indent=1))
    return 0


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m xrstudy.sweep worker")
    parser.add_argument("mode", choices=("worker",))
    parser.add_argument("--executor", default="papermill")
    parser.add_argument("--notebook", default="")
    parser.add_argument("--config", default=None, help="RunConfig as JSON")
    parser.add_argument("--from-list", default=None, help="JSONL of configs (SLURM arrays)")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    if args.from_list:
        config = json.loads(Path(args.from_list).read_text().splitlines()[args.index])
    else:
        config = json.loads(args.config)
    cfg = RunConfig.from_dict(config)
    if int(os.environ.get("RANK", "0")) != 0 and cfg.kind == "pretrain":
        # Multi-node pretraining: every rank executes the cell; only rank 0 holds the lock.
        _executor(args.executor)(cfg, Path(args.notebook), cfg.run_dir / f"notebook.rank{os.environ['RANK']}.ipynb")
        return EXIT_OK
    notebook = Path(args.notebook) if args.notebook else notebook_path(NOTEBOOKS[cfg.kind])
    return _worker(cfg, args.executor, notebook)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
