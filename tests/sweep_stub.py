"""A cell executor for sweep tests: writes a result instead of training (imported by sweep workers).

Behaviour from the environment (the runner passes its environment to every worker):
XRSTUDY_STUB_LOG   append "{run_id} {pid} start" per execution and "{run_id} {pid} done" once its result is
                   saved (to count executions across runners and kernels)
XRSTUDY_STUB_SLEEP seconds to sleep before saving
XRSTUDY_STUB_FAIL  glob over cell names that raise
XRSTUDY_STUB_DIE   glob over cell names whose first attempt dies by SIGKILL (a dead kernel)
XRSTUDY_STUB_ENOSPC glob over cell names that fail as a full disk does (OSError ENOSPC naming a cache file)
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import time
from pathlib import Path

from xrstudy.config import RunConfig, init_checkpoint_path
from xrstudy.results import store


def _log(cfg: RunConfig, event: str) -> None:
    log = os.environ.get("XRSTUDY_STUB_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"{cfg.run_id} {os.getpid()} {event}\n")


def execute(cfg: RunConfig, notebook: Path | None, output: Path) -> None:
    _log(cfg, "start")
    time.sleep(float(os.environ.get("XRSTUDY_STUB_SLEEP", "0")))
    if fnmatch.fnmatch(cfg.name, os.environ.get("XRSTUDY_STUB_FAIL", "\0")):
        raise RuntimeError(f"stub failure for {cfg.name}")
    if fnmatch.fnmatch(cfg.name, os.environ.get("XRSTUDY_STUB_ENOSPC", "\0")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(cfg.out_dir) / "cache" / "images.u8"))
    marker = cfg.run_dir / "died-once"
    if fnmatch.fnmatch(cfg.name, os.environ.get("XRSTUDY_STUB_DIE", "\0")) and not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.kind == "transfer" and cfg.init.startswith("run:"):
        parent = Path(cfg.results_dir) / f"{cfg.init[4:]}.json"
        assert store.load(parent)["status"] == "ok", "pretrain cell must finish first"
    output.write_text("{}")
    if cfg.kind == "pretrain":  # what its transfers load (a sweep refuses a finished pre-training without it)
        init_checkpoint_path(cfg, f"run:{cfg.run_id}").write_bytes(b"stub weights")
    store.save(store.new_result(cfg, {"test/acc": 0.5 + 0.01 * cfg.seed}, last_step=1), cfg.results_dir)
    _log(cfg, "done")


# The body of the stub cell notebooks (tests write 10_pretrain / 20_transfer with it): the same stub,
# run inside the sweep's warm kernels.
NOTEBOOK_BODY = """
from pathlib import Path
import sweep_stub
from xrstudy.config import RunConfig
cfg = RunConfig.from_parameters(globals())
sweep_stub.execute(cfg, None, cfg.run_dir / "stub-output.json")
"""
