"""A cell's claim while it runs: who runs it (pids, host), and a heartbeat, on top of `xrstudy.fileio.file_lock`.

`{run_dir}/cell.lock` is a small JSON claim ({pids, host, token, created}) whose mtime is the
heartbeat. Every change to it (claim, check-and-break of a stale claim, pid update, release) happens
under the cell's `file_lock` guard (`{run_dir}/.cell.lock.guard`, the `filelock` package: the OS
drops it when its holder dies, so the guard itself never goes stale), and the claim is written
atomically (`xrstudy.fileio.atomic_write_json`), so no reader ever sees a half-written claim.

Why a claim on top of the lock: the process that must keep the cell locked is not always the one
that took it. A warm Jupyter kernel executes the cell for its runner thread and can outlive a
`kill -9` of the runner by the second its parent poller needs; an orphaned `--isolate` worker keeps
running and finishes its cell. So a claim is alive while any of its pids lives on this host; on
other hosts (a shared store) the heartbeat decides: no touch for `stale_after_s` means the holder
is gone. A stale claim is broken by the next runner, under the guard, so two breakers never both win.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import Timeout

from xrstudy.fileio import atomic_write_json, file_lock

HEARTBEAT_S = 15.0
STALE_AFTER_S = 300.0  # no heartbeat for this long -> the holder is gone (other hosts, pid reuse)
GUARD_TIMEOUT_S = 60.0  # the guard is held for milliseconds; a minute means a hung filesystem


class LockError(RuntimeError):
    """A cell's claim cannot be read or changed (the guard was not obtained in time)."""


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


def read_claim(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
        return None


@dataclass
class CellLock:
    """The claim file `path`; `acquire` / `release` / `held` / `clear_if_stale` as the runner needs them."""

    path: Path
    stale_after_s: float = STALE_AFTER_S
    token: str = ""

    @property
    def guard_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.guard")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            with file_lock(self.guard_path, timeout=GUARD_TIMEOUT_S):
                yield
        except Timeout:
            raise LockError(
                f"{self.guard_path}: not obtained in {GUARD_TIMEOUT_S:.0f} s; is the store on a hung filesystem?"
            ) from None

    def _info(self, pids: Iterable[int]) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "pids": sorted({os.getpid(), *(int(p) for p in pids if p)}),
            "host": socket.gethostname(),
            "token": self.token,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def acquire(self, pids: Iterable[int] = ()) -> bool:
        """Claim the cell for this process (and `pids`, e.g. the kernel running it); False when a live
        claim exists. A stale claim is broken and replaced."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard():
            if self.path.exists() and not self._stale():
                return False
            self.token = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{time.time_ns()}"
            atomic_write_json(self.path, self._info(pids))
            return True

    def set_pids(self, pids: Iterable[int]) -> None:
        """Record the processes working on the cell now (a restarted kernel has a new pid)."""
        with self._guard():
            info = read_claim(self.path)
            if info is not None and info.get("token") == self.token:
                atomic_write_json(self.path, self._info(pids))

    def heartbeat(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        with self._guard():
            info = read_claim(self.path)
            if info is not None and info.get("token") == self.token:
                self.path.unlink(missing_ok=True)

    def held(self) -> bool:
        """Someone (alive) holds it."""
        return self.path.exists() and not self._stale()

    def clear_if_stale(self) -> None:
        """Tidy up the claim of a dead holder (a killed runner's finished cell); a live one is kept."""
        if not self.path.exists():
            return
        with self._guard():
            if self.path.exists() and self._stale():
                self.path.unlink(missing_ok=True)

    def _stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        info = read_claim(self.path)
        if info is None:  # not a claim we can read (claims are written atomically): nobody holds it
            return True
        if age > self.stale_after_s:
            return True
        pids = info.get("pids") or [info.get("pid", -1)]
        return info.get("host") == socket.gethostname() and not any(_pid_alive(int(p)) for p in pids)


@contextlib.contextmanager
def heartbeat(lock: CellLock, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Touch the claim every `every_s` seconds while the cell runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            lock.heartbeat()

    threading.Thread(target=beat, daemon=True, name=f"heartbeat {lock.path.parent.name}").start()
    try:
        yield
    finally:
        stop.set()


__all__ = ["CellLock", "LockError", "heartbeat", "read_claim", "HEARTBEAT_S", "STALE_AFTER_S"]
