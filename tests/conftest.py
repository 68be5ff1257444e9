"""Test environment: offline, no writes to ~, no network beyond loopback."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub, matplotlib or jupyter.
_SCRATCH = Path(tempfile.mkdtemp(prefix="xrstudy-tests-home-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
for _var, _sub in {
    "MPLCONFIGDIR": "mpl",
    "HF_HOME": "hf",
    "TORCH_HOME": "torch",
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "JUPYTER_DATA_DIR": "jupyter-data",
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
    "IPYTHONDIR": "ipython",
    "XDG_CACHE_HOME": "cache",
}.items():
    os.environ[_var] = str(_SCRATCH / _sub)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MPLBACKEND"] = "Agg"
# OMP_NUM_THREADS stays unset: the sweep runner gives each of its N workers cores / N threads (set here,
# 2 workers x 2 threads on 2 cores made the shared tiny demo 9x slower: 424 s instead of ~46 s).

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):  # noqa: ANN001 - socket API
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, (bytes, bytearray)):
        host = host.decode()
    if self.family == getattr(socket, "AF_UNIX", None) or str(host).startswith(_LOOPBACK):
        return _real_connect(self, address)
    raise OSError(f"network access blocked in tests: connect({address!r})")


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """The study must run offline: any non-loopback connection fails the test that tries it."""
    socket.socket.connect = _loopback_only_connect
    yield
    socket.socket.connect = _real_connect


# ---- one tiny demo for the whole session -------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """`xrstudy demo --size tiny`, run once per test session and shared by the demo, notebook and
    JupyterLab tests (its data, results store and figures). Lives in `<tmp>/xrstudy-demo`, so a kernel
    whose working directory is its parent finds the data as the notebooks' `xrstudy-demo/data`."""
    from xrstudy import demo

    out = tmp_path_factory.mktemp("tiny-demo") / "xrstudy-demo"
    return demo.run_demo(out, "tiny", workers=2, progress=False)
