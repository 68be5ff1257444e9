"""Figure redraw time: import the paper-format CSVs (tests/data/legacy or DIR) and draw every figure,
in the default and the paper style.

    python benchmarks/bench_figures.py [--legacy DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from xrstudy.plots import render
from xrstudy.results import legacy

LEGACY = Path(__file__).resolve().parents[1] / "tests" / "data" / "legacy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legacy", type=Path, default=LEGACY)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as scratch:
        work = Path(scratch)
        start = time.perf_counter()
        legacy.import_legacy(args.legacy, work / "results")
        imported = time.perf_counter() - start
        for style in render.STYLES:
            times = []
            for i in range(args.repeat):
                start = time.perf_counter()
                rendered = render.render_all(work / "results", work / f"figures-{style}{i}", style=style)
                times.append(time.perf_counter() - start)
            print(
                f"import-legacy {imported:.2f} s; style {style}: "
                f"redraw {len(rendered)} figures (PNG+PDF+CSV) + tables: "
                f"best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s over {args.repeat}"
            )


if __name__ == "__main__":
    main()
