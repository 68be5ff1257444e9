"""A warm kernel runs notebook after notebook with no state leaking between them, and survives a kill."""

from __future__ import annotations

import os
import signal
import threading

import nbformat
import pytest
from nbclient.exceptions import DeadKernelError

from xrstudy.sweeps import kernels
from xrstudy.sweeps.kernels import WarmKernel

pytestmark = pytest.mark.slow


def _counter_notebook(path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 0")
    params.metadata["tags"] = ["parameters"]
    body = "import os\ntry:\n    seen += 1\nexcept NameError:\n    seen = 1\nprint(os.getpid(), x, seen)"
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _printed(path):
    return nbformat.read(path, as_version=4).cells[-1].outputs[0]["text"].split()


def test_namespace_is_fresh_each_notebook_and_a_dead_kernel_is_replaced(tmp_path):
    notebook = _counter_notebook(tmp_path / "in.ipynb")
    with WarmKernel(cwd=tmp_path) as kernel:
        kernel.execute(notebook, tmp_path / "a.ipynb", {"x": 1})
        kernel.execute(notebook, tmp_path / "b.ipynb", {"x": 2})
        pid_a, x_a, seen_a = _printed(tmp_path / "a.ipynb")
        pid_b, x_b, seen_b = _printed(tmp_path / "b.ipynb")
        assert pid_a == pid_b  # one warm kernel
        assert (x_a, x_b) == ("1", "2") and seen_a == seen_b == "1"  # nothing leaked

        os.kill(kernel.km.provisioner.process.pid, signal.SIGKILL)
        kernel.km.provisioner.process.wait()
        kernel.execute(notebook, tmp_path / "c.ipynb", {"x": 3})
        pid_c, x_c, _ = _printed(tmp_path / "c.ipynb")
        assert pid_c != pid_a and x_c == "3" and kernel.restarts == 1


def test_a_kernel_dying_mid_cell_raises_instead_of_hanging(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "import os, signal, time\nif x:\n    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(0.1)"
        ),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "die.ipynb")
    with WarmKernel(cwd=tmp_path) as kernel:
        with pytest.raises(DeadKernelError, match="Kernel died"):
            kernel.execute(tmp_path / "die.ipynb", tmp_path / "a.ipynb", {"x": 1})
        assert not kernel.alive() and kernel.returncode == -signal.SIGKILL
        kernel.execute(tmp_path / "die.ipynb", tmp_path / "b.ipynb", {"x": 0})  # a fresh kernel takes over
        assert kernel.restarts == 1


def test_a_kernel_killed_by_ctrl_c_ends_its_reset_at_once_and_starts_no_new_one(tmp_path, monkeypatch):
    """The runner's Ctrl-C kills every warm kernel. One killed while the namespace is reset raises at once
    (execute_interactive alone waits its 60 s timeout for a reply that never comes); one killed before its
    next notebook starts no fresh kernel to run it in."""
    notebook = _counter_notebook(tmp_path / "in.ipynb")
    monkeypatch.setattr(kernels, "RESET", "import time; time.sleep(120)")  # a reset that is still running
    with WarmKernel(cwd=tmp_path) as kernel:
        kernel.start()
        killer = threading.Timer(1.0, kernel.kill)
        killer.start()
        with pytest.raises(kernels.DeadKernelError, match="died while its namespace was reset"):
            kernel.execute(notebook, tmp_path / "a.ipynb", {"x": 1})
        killer.join()
        with pytest.raises(kernels.DeadKernelError, match="was killed: the sweep is stopping"):
            kernel.execute(notebook, tmp_path / "b.ipynb", {"x": 2})
        assert kernel.restarts == 0 and not kernel.alive()
