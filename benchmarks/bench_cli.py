"""CLI response time: each command's wall time as a user runs it (a fresh `xrstudy` process), beside
`python -c "import pandas"` measured in the same run, so the ratios hold on a loaded machine.

    python benchmarks/bench_cli.py [--repeat 3] [--real DIR] [--baseline OLD_CHECKOUT]

Commands: `xrstudy --help`, `xrstudy data merge` of the three real label files shipped in the
torchxrayvision wheel (`--labels union --metadata-only --json`; goal < 3.5 s end to end),
`xrstudy figures` of the paper-format fixtures, `xrstudy sweep plan --help` when that command exists,
`xrstudy sweep plan sweeps/paper.yaml --json` (1,456 cells resolved from published facts), and
the checks of results (issue 21): `results variance`, `results compare` (against the paper's CSV fixture)
and `results scaling` on the paper-format fixtures and on the demo's store, and `data audit` of the
authors' five-view PadChest split of the real label file (written first, not timed); `xrstudy sweep
status sweeps/paper.yaml` with an empty store (goal < 2 s) and with a result for each of its 1,456 cells,
each with a 200-point history (goal < 5 s). Goals: `--help` < 1 s; each check < 5 s. `--baseline DIR` times
the plan again with the package of another checkout (`PYTHONPATH=DIR`, e.g. a `git archive` of an older
commit) in the same run and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_FILES = {  # registry name -> (file in the torchxrayvision wheel, name the dataset distributes it as)
    "nih": ("Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017_v2020.csv.gz"),
    "chexpert": ("chexpert_train.csv.gz", "train.csv.gz"),
    "padchest": ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",) * 2,
}


def _xrstudy() -> list[str]:
    found = shutil.which("xrstudy", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "xrstudy.cli"]


def wall(argv: list[str], repeat: int, cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(best, median) seconds of `argv` as a fresh process, output discarded; fails loudly on a non-zero exit."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return min(times), statistics.median(times)


def finished_paper_store(base: Path) -> Path:
    """`base/paper-out/results` (sweeps/paper.yaml's out_dir, relative to where the command runs) with an ok
    result for every cell of the paper sweep, each carrying a 200-point history and its timings."""
    from xrstudy.results import store
    from xrstudy.sweeps import sweepfile

    steps = list(range(50, 10_001, 50))
    curve = {"step": steps, "train/loss": [1.0 / s for s in steps], "train/lr": [0.001] * len(steps)}
    cells = sweepfile.load_sweep(REPO / "sweeps" / "paper.yaml")
    results = base / "paper-out" / "results"
    for cfg in cells:
        result = store.new_result(
            cfg,
            {"test/acc": 0.9, "test/auc": 0.8},
            history=curve,
            timings={"train_s": 3600.0, "eval_s": 60.0},
            device="cuda:NVIDIA H100",
            last_step=10_000,
            reproducibility={"torch_threads": 8},
        )
        store.save(result, results)
    return results


def real_roots(base: Path, real: Path | None) -> dict[str, Path] | None:
    if real is None:
        try:
            import torchxrayvision

            real = Path(torchxrayvision.__file__).parent / "data"
        except ImportError:
            return None
    roots = {}
    for name, (shipped, distributed) in REAL_FILES.items():
        if not (real / shipped).is_file():
            return None
        (base / name).mkdir()
        (base / name / distributed).symlink_to(real / shipped)
        roots[name] = base / name
    return roots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--real", type=Path, default=None, help="folder with the real label files (default: torchxrayvision's)"
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another checkout whose `sweep plan` is timed beside this one's"
    )
    args = parser.parse_args()
    xrstudy = _xrstudy()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as scratch:
        base = Path(scratch)
        store = base / "store"
        subprocess.run(
            [*xrstudy, "results", "import-legacy", str(REPO / "tests" / "data" / "legacy"), "--results", str(store)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        commands = {
            "python -c 'import pandas'": [sys.executable, "-c", "import pandas"],
            "xrstudy --help": [*xrstudy, "--help"],
            "xrstudy data merge --help": [*xrstudy, "data", "merge", "--help"],
        }
        plan = subprocess.run([*xrstudy, "sweep", "plan", "--help"], capture_output=True)
        if plan.returncode == 0:
            commands["xrstudy sweep plan --help"] = [*xrstudy, "sweep", "plan", "--help"]
        paper = str(REPO / "sweeps" / "paper.yaml")
        empty, finished = base / "status-empty", base / "status-finished"
        empty.mkdir()
        finished.mkdir()
        finished_paper_store(finished)
        status_runs = {
            "xrstudy sweep status paper.yaml, empty store": ([*xrstudy, "sweep", "status", paper], empty),
            "xrstudy sweep status paper.yaml, 1,456 results": ([*xrstudy, "sweep", "status", paper], finished),
        }
        roots = real_roots(base, args.real)
        if roots:
            commands["xrstudy data merge (3 real label files, union)"] = [
                *xrstudy,
                "data",
                "merge",
                *[a for n, r in roots.items() for a in ("--source", f"{n}={r}")],
                "--labels",
                "union",
                "--metadata-only",
                "--json",
            ]
        example = REPO / "notebooks" / "example-results"
        for label, results in (("paper-format fixtures", store), ("demo store", example)):
            commands[f"xrstudy results variance ({label})"] = [
                *xrstudy,
                "results",
                "variance",
                "--results",
                str(results),
            ]
            commands[f"xrstudy results compare ({label})"] = [
                *xrstudy,
                "results",
                "compare",
                "--against",
                str(REPO / "tests" / "data" / "legacy") if results == store else str(example),
                "--results",
                str(results),
            ]
            commands[f"xrstudy results scaling ({label})"] = [*xrstudy, "results", "scaling", "--results", str(results)]
        if roots:
            split = base / "padchest-paper.csv"
            views = "PA,AP,AP_SUPINE,LATERAL,COSTAL"
            subprocess.run(
                [*xrstudy, "data", "split", "padchest", "--root", str(roots["padchest"]), "--metadata-only"]
                + ["--mode", "paper", "--views", views, "--out", str(split)],
                check=True,
                capture_output=True,
            )
            commands["xrstudy data audit (real PadChest, paper split)"] = [
                *xrstudy,
                "data",
                "audit",
                str(split),
                "--root",
                f"padchest={roots['padchest']}",
                "--metadata-only",
            ]
        paper_plan = ["sweep", "plan", str(REPO / "sweeps" / "paper.yaml"), "--json"]
        commands["xrstudy sweep plan sweeps/paper.yaml --json"] = [*xrstudy, *paper_plan]
        commands["xrstudy figures (paper-format fixtures)"] = [
            *xrstudy,
            "figures",
            "--results",
            str(store),
            "--out",
            str(base / "figs"),
        ]
        print(
            f"{len(os.sched_getaffinity(0))} cores, load avg {os.getloadavg()[0]:.1f}; best / median of {args.repeat}"
        )
        baseline = None
        for name, argv in commands.items():
            best, median = wall(argv, args.repeat, base)
            baseline = baseline or best
            print(f"  {name:52s} best {best:6.2f} s  median {median:6.2f} s  ({best / baseline:4.1f}x import pandas)")
        for name, (argv, cwd) in status_runs.items():
            best, median = wall(argv, args.repeat, cwd)
            print(f"  {name:52s} best {best:6.2f} s  median {median:6.2f} s  ({best / baseline:4.1f}x import pandas)")
        if not roots:
            print("  (real label files not found: install torchxrayvision or pass --real DIR)")
        if args.baseline is not None:
            now = wall([sys.executable, "-m", "xrstudy.cli", *paper_plan], args.repeat, base)[0]
            env = {**os.environ, "PYTHONPATH": str(args.baseline.absolute())}
            then = wall([sys.executable, "-m", "xrstudy.cli", *paper_plan], args.repeat, base, env=env)[0]
            print(
                f"  sweep plan sweeps/paper.yaml --json: this checkout {now:.2f} s, {args.baseline} {then:.2f} s "
                f"(best of {args.repeat}; ratio {now / then:.2f})"
            )


if __name__ == "__main__":
    main()
