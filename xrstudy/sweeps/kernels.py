"""A warm Jupyter kernel that papermill executes notebook after notebook in.

Importing torch + timm + fastai takes ~10 s on a small CPU node; a study has hundreds of short
cells. A worker keeps one kernel (pinned to its GPU through the environment it was started with),
clears the user namespace before each notebook so no cell sees another's variables, and restarts
the kernel when it died. Executed notebooks are still plain papermill outputs.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import papermill
from jupyter_client.manager import KernelManager
from jupyter_core.utils import run_sync

ASYNC_CLIENT = "jupyter_client.asynchronous.AsyncKernelClient"
RESET = "get_ipython().run_line_magic('reset', '-f')"
# The kernel app's own log (not a cell's output, which papermill records): at WARNING it prints, for
# every kernel start, that loopback TCP is unencrypted, noise in every sweep's terminal.
IPYKERNEL_QUIET = ["--IPKernelApp.log_level=ERROR"]


class DeadKernelError(RuntimeError):
    """The kernel died before or while a notebook ran in it (named as nbclient's, which
    `xrstudy.sweeps.worker.is_dead_kernel` recognises by name: the runner retries or, after Ctrl-C, stops)."""


async def _reset(km: KernelManager) -> None:
    """`%reset -f` in the kernel: no variable of one notebook reaches the next. A kernel killed meanwhile
    (Ctrl-C of the runner) ends it at once with DeadKernelError: the reply it will never send is not
    waited for (execute_interactive alone would wait out its 60 s timeout)."""
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        reply = asyncio.ensure_future(
            client.execute_interactive(RESET, timeout=60, store_history=False, output_hook=lambda msg: None)
        )
        while not reply.done():
            await asyncio.wait([reply], timeout=0.2)
            if not reply.done() and not km.is_alive():
                reply.cancel()
                raise DeadKernelError("the kernel died while its namespace was reset")
        if reply.result()["content"].get("status") != "ok":
            raise RuntimeError(f"could not reset the kernel namespace: {reply.result()['content']}")
    finally:
        client.stop_channels()


class WarmKernel:
    """One long-lived kernel; `execute` runs a parameterised notebook in it with papermill."""

    def __init__(
        self, *, kernel_name: str = "python3", env: dict[str, str] | None = None, cwd: str | Path | None = None
    ):
        self.kernel_name = kernel_name
        self.env = {**os.environ, **(env or {})}
        self.cwd = str(cwd) if cwd else None
        self.km: KernelManager | None = None
        self.restarts = 0
        self.killed = False  # by kill(): the sweep is stopping, no fresh kernel is started for it

    def _ensure_started(self) -> KernelManager:
        if self.km is not None and self.km.is_alive():
            return self.km
        if self.km is not None:  # it died: a fresh kernel, never a half-dead one
            self.km.cleanup_resources()
            self.restarts += 1
        # papermill/nbclient take their client from km.client(). A blocking client waits for a cell's
        # reply with no timeout and blocks nbclient's event loop, so a kernel that dies mid-cell is never
        # noticed (the execution hangs); an async client lets nbclient poll liveness and raise
        # DeadKernelError.
        self.km = KernelManager(kernel_name=self.kernel_name, client_class=ASYNC_CLIENT)
        quiet = IPYKERNEL_QUIET if self.kernel_name == "python3" else []
        self.km.start_kernel(env=self.env, cwd=self.cwd, extra_arguments=quiet)
        return self.km

    def start(self) -> int:
        """Start the kernel unless it is alive already (a dead one is replaced); returns its pid."""
        self._ensure_started()
        return self.pid or 0

    @property
    def _process(self) -> Any:
        """The kernel's Popen, as jupyter_client's local provisioner holds it (None before the first start)."""
        return getattr(getattr(self.km, "provisioner", None), "process", None)

    @property
    def pid(self) -> int | None:
        """The kernel process id (None before the first start)."""
        return getattr(self._process, "pid", None)

    @property
    def returncode(self) -> int | None:
        """The kernel process's exit status once it ended (negative: killed by that signal), else None."""
        process = self._process
        return process.poll() if hasattr(process, "poll") else None

    def alive(self) -> bool:
        return self.km is not None and self.km.is_alive()

    def restart(self) -> None:
        """A fresh process (after a failed cell: CUDA contexts and stray threads do not survive it)."""
        self.close()
        self.restarts += 1
        self._ensure_started()

    def kill(self) -> None:
        """SIGKILL the kernel from any thread (Ctrl-C of the runner); a running execute sees a dead kernel,
        and one about to start raises DeadKernelError instead of starting a fresh kernel for its cell."""
        self.killed = True
        pid = self.pid
        if pid is not None and self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _reset_namespace(self, km: KernelManager) -> None:
        run_sync(_reset)(km)

    def execute(self, notebook: str | Path, output: str | Path, parameters: dict[str, Any], **papermill_kwargs: Any):
        """papermill.execute_notebook in this kernel; raises what papermill raises."""
        if self.killed:
            raise DeadKernelError("the kernel was killed: the sweep is stopping")
        km = self._ensure_started()
        self._reset_namespace(km)
        return papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            km=km,
            kernel_name=self.kernel_name,
            progress_bar=False,
            **papermill_kwargs,
        )

    def close(self) -> None:
        if self.km is not None:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)  # cleans up its ports and files too
            else:
                self.km.cleanup_resources()
        self.km = None

    def __enter__(self) -> WarmKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
