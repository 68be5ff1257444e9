"""A warm Jupyter kernel that papermill executes notebook after notebook in.

Importing torch + timm + fastai takes ~10 s on a small CPU node; a study has hundreds of short
cells. A worker keeps one kernel (pinned to its GPU through the environment it was started with),
clears the user namespace before each notebook so no cell sees another's variables, and restarts
the kernel when it died. Executed notebooks are still plain papermill outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import papermill
from jupyter_client.manager import KernelManager


class WarmKernel:
    """One long-lived kernel; `execute` runs a parameterised notebook in it with papermill."""

    def __init__(self, *, kernel_name: str = "python3", env: dict[str, str] | None = None, cwd: str | Path | None = None):
        self.kernel_name = kernel_name
        self.env = {**os.environ, **(env or {})}
        self.cwd = str(cwd) if cwd else None
        self.km: KernelManager | None = None
        self.restarts = 0

    def _ensure_started(self) -> KernelManager:
        if self.km is not None and self.km.is_alive():
            return self.km
        if self.km is not None:  # it died: a fresh kernel, never a half-dead one
            self.km.cleanup_resources()
            self.restarts += 1
        self.km = KernelManager(kernel_name=self.kernel_name)
        self.km.start_kernel(env=self.env, cwd=self.cwd)
        return self.km

    def _reset_namespace(self, km: KernelManager) -> None:
        client = km.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            client.execute_interactive("get_ipython().run_line_magic('reset', '-f')", timeout=60, store_history=False)
        finally:
            client.stop_channels()

    def execute(self, notebook: str | Path, output: str | Path, parameters: dict[str, Any], **papermill_kwargs: Any):
        """papermill.execute_notebook in this kernel; raises what papermill raises."""
        km = self._ensure_started()
        self._reset_namespace(km)
        return papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, km=km, kernel_name=self.kernel_name,
            progress_bar=False, **papermill_kwargs,
        )

    def close(self) -> None:
        if self.km is not None and self.km.has_kernel:
            self.km.shutdown_kernel(now=True)
        self.km = None

    def __enter__(self) -> "WarmKernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
