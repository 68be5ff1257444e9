"""papermill overhead per cell: a fresh kernel, a warm kernel (xrstudy.sweeps.kernels), a direct call.

The cell imports what a study cell imports (torch, timm, fastai) and does a tiny amount of work,
so the figures are the per-cell cost the sweep runner adds on top of training.

    python benchmarks/bench_papermill.py [--cells 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nbformat
import papermill

from xrstudy.sweeps.kernels import WarmKernel

CELL = "import torch, timm\nfrom fastai.learner import Learner\nvalue = float(torch.ones(4).sum()) + x"


def write_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def direct_call(x: int) -> float:
    import torch

    return float(torch.ones(4).sum()) + x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-papermill-") as scratch:
        work = Path(scratch)
        notebook = write_notebook(work / "cell.ipynb")

        start = time.perf_counter()
        for i in range(args.cells):
            papermill.execute_notebook(
                str(notebook), str(work / f"fresh{i}.ipynb"), parameters={"x": i}, progress_bar=False
            )
        fresh = (time.perf_counter() - start) / args.cells

        with WarmKernel(cwd=work) as kernel:
            kernel.execute(notebook, work / "warmup.ipynb", {"x": -1})  # the one import every worker pays
            start = time.perf_counter()
            for i in range(args.cells):
                kernel.execute(notebook, work / f"warm{i}.ipynb", {"x": i})
            warm = (time.perf_counter() - start) / args.cells

        direct_call(0)
        start = time.perf_counter()
        for i in range(args.cells):
            direct_call(i)
        direct = (time.perf_counter() - start) / args.cells

        print(f"per cell: fresh kernel {fresh:.2f} s, warm kernel {warm:.2f} s, direct call {direct * 1e3:.2f} ms")
        print(f"ratio fresh/warm: {fresh / warm:.1f}x; warm-kernel overhead per cell: {warm - direct:.2f} s")


if __name__ == "__main__":
    main()
