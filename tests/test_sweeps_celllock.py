"""`xrstudy.sweeps.celllock`: a dead runner's claim is broken; a live one is held while any of its
processes lives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xrstudy.config import RunConfig
from xrstudy.sweeps.celllock import CellLock
from xrstudy.sweeps.worker import lock_path


@pytest.mark.slow
def test_stale_lock_of_dead_process_is_broken(tmp_path):
    cfg = RunConfig(target="cifar10", out_dir=str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = lock_path(cfg)
    path.parent.mkdir(parents=True)
    import socket

    path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "token": "old"}))
    lock = CellLock(path)
    assert not lock.held() and lock.acquire()
    assert not CellLock(path).acquire(), "a live holder keeps it"
    lock.release()
    assert not path.exists()


@pytest.mark.slow
def test_lock_is_held_while_any_of_its_processes_lives(tmp_path):
    """A warm kernel outliving its runner (for the second its parent poller needs) keeps the cell locked."""
    path = tmp_path / "cell.lock"
    lock = CellLock(path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert lock.acquire(pids=[sleeper.pid])
        info = json.loads(path.read_text())
        info["pid"], info["pids"] = 0, [0, sleeper.pid]  # the runner is gone, the kernel is not
        path.write_text(json.dumps(info))
        assert CellLock(path).held()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not CellLock(path).held()
    lock.set_pids([os.getpid()])  # a holder updating a lock it no longer owns changes nothing
