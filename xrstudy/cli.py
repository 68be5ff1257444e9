"""`xrstudy` command line: demo, data, train, sweep, results, figures.

The whole parser is built here from light modules only (`xrstudy.config` holds every allowed
value), so `xrstudy --help` and every command's `--help` answer without importing torch, timm,
fastai or pandas. Each command names its handler as "module:function"; the module is imported
only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

from xrstudy.config import LABEL_SETS, UNCERTAIN_POLICIES, VIEWS


# ---- argument types -------------------------------------------------------------------------
def views_arg(text: str) -> tuple[str, ...]:
    """`PA,AP` -> ("PA", "AP"); the canonical view names of xrstudy.config.VIEWS."""
    views = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown view(s) {unknown}; choose from {','.join(VIEWS)}")
    return views


def gpu_list_arg(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def _handler(parser: argparse.ArgumentParser, target: str, *, draws: bool = False) -> None:
    """Run `module:function` (imported on use) for this (sub)command. `draws`: the command writes
    figures, so the CLI picks matplotlib's file-only Agg backend before the handler's module loads
    (the package itself never chooses a backend: notebooks keep their inline one)."""
    parser.set_defaults(handler=target, draws=draws)


# ---- command groups -------------------------------------------------------------------------
def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the whole study loop in miniature on a CPU, offline")
    demo.add_argument("--out", type=Path, default=Path("xrstudy-demo"), help="output directory (default: %(default)s)")
    demo.add_argument("--size", choices=("tiny", "small"), default="small", help="tiny: CI smoke run; small: default")
    demo.add_argument("--workers", type=int, default=2, help="cells run in parallel (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    _handler(demo, "xrstudy.demo:cmd_demo", draws=True)


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--views", type=views_arg, default=(), help="keep these views, e.g. PA,AP (default: all)")
    parser.add_argument("--uncertain", choices=UNCERTAIN_POLICIES, default="ignore",
                        help="uncertain (-1) labels become NaN (ignore, the paper's), 1 (ones) or 0 (zeros)")
    parser.add_argument("--metadata-only", action="store_true", help="read the label files alone (images may be absent)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_data(sub: Any) -> None:
    data = sub.add_parser("data", help="inspect, merge, split and cache the data sources")
    commands = data.add_subparsers(dest="data_command", required=True)

    inspect = commands.add_parser("inspect", help="counts of one source: images, patients, views, labels")
    inspect.add_argument("source", help="registry name (chexpert, mimic, nih, padchest, padchest-cl, covidx, ...) "
                                        "or an ImageFolder name")
    inspect.add_argument("--root", type=Path, required=True, help="the source's folder as distributed")
    _data_options(inspect)
    _handler(inspect, "xrstudy.data:cmd_inspect")

    merged = commands.add_parser("merge", help="merge sources into one canonical table")
    merged.add_argument("--source", action="append", required=True, metavar="NAME=DIR", help="repeat per source")
    merged.add_argument("--labels", choices=LABEL_SETS, default="intersection")
    merged.add_argument("--out", type=Path, help="write the merged table (.csv or .parquet)")
    _data_options(merged)
    _handler(merged, "xrstudy.data:cmd_merge")

    split = commands.add_parser("split", help="write a split file and print its SHA-256")
    split.add_argument("source")
    split.add_argument("--root", type=Path, required=True)
    split.add_argument("--metadata-only", action="store_true")
    split.add_argument("--mode", choices=("patient", "paper"), default="patient",
                       help="patient-grouped, or the paper's image-level split (patients leak)")
    split.add_argument("--test-fraction", type=float, default=0.1)
    split.add_argument("--valid-fraction", type=float, default=0.1)
    split.add_argument("--seed", type=int, default=None, help="default: 0 (patient), 42 (paper)")
    split.add_argument("--out", type=Path, required=True)
    _handler(split, "xrstudy.data:cmd_split")

    cache = commands.add_parser("cache", help="build the pre-resized uint8 image cache of a source")
    cache.add_argument("source")
    cache.add_argument("--root", type=Path, required=True)
    cache.add_argument("--size", type=int, default=224, help="side length in pixels")
    cache.add_argument("--mode", choices=("L", "RGB"), default=None, help="default: L for X-rays, RGB otherwise")
    cache.add_argument("--views", type=views_arg, default=())
    cache.add_argument("--workers", type=int, default=0, help="decoding processes (default: all cores)")
    cache.add_argument("--cache-dir", type=Path, default=Path("xrstudy-out/cache"))
    _handler(cache, "xrstudy.data:cmd_cache")


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="run one study cell from a RunConfig YAML (works under torchrun)")
    train.add_argument("config", type=Path, help="RunConfig YAML (the fields of xrstudy.config.RunConfig)")
    train.add_argument("--resume", action="store_true", help="continue from {run_dir}/train_state.pt if present")
    train.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                       help="also save the training state every STEPS steps (default: every 10 minutes)")
    _handler(train, "xrstudy.train:cmd_train")


def _add_sweep(sub: Any) -> None:
    sweep = sub.add_parser("sweep", help="run a sweep file: locally with papermill, or on SLURM")
    commands = sweep.add_subparsers(dest="sweep_command", required=True)

    local = commands.add_parser("run", help="execute every unfinished cell here")
    local.add_argument("sweep", help="sweep YAML")
    local.add_argument("--workers", type=int, default=None, help="cells at once (default: one per GPU, else 1)")
    local.add_argument("--gpus", type=gpu_list_arg, default=None, help="e.g. 0,1 (one cell per GPU at a time)")
    local.add_argument("--only", default=None, help="glob over cell names / run ids (deps included)")
    local.add_argument("--retries", type=int, default=1, help="retries when a kernel dies")
    local.add_argument("--isolate", action="store_true",
                       help="a fresh worker process (and kernel) per cell instead of one warm kernel per worker")
    local.add_argument("--dry-run", action="store_true", help="list what would run")
    local.add_argument("--no-progress", dest="progress", action="store_false")
    _handler(local, "xrstudy.sweep:cmd_run")

    cluster = commands.add_parser("submit", help="submit to SLURM through submitit")
    cluster.add_argument("sweep", help="sweep YAML")
    cluster.add_argument("--backend", choices=("slurm", "local", "debug"), default="slurm")
    cluster.add_argument("--folder", default=None, help="submitit folder (default: <out_dir>/slurm)")
    cluster.add_argument("--partition", default=None)
    cluster.add_argument("--timeout-min", type=int, default=24 * 60)
    cluster.add_argument("--gpus-per-node", type=int, default=1)
    cluster.add_argument("--pretrain-nodes", type=int, default=1)
    cluster.add_argument("--only", default=None)
    cluster.add_argument("--dry-run", action="store_true", help="write the sbatch scripts for review")
    _handler(cluster, "xrstudy.sweep:cmd_submit")


def _add_results(sub: Any) -> None:
    results = sub.add_parser("results", help="the results store: tidy table, legacy import")
    commands = results.add_subparsers(dest="results_command", required=True)

    show = commands.add_parser("table", help="all valid results as one tidy table")
    show.add_argument("--results", default="xrstudy-out/results", help="results directory")
    show.add_argument("--format", choices=("csv", "parquet"), default="csv")
    show.add_argument("--out", default=None, help="write here instead of printing CSV to stdout")
    _handler(show, "xrstudy.results:cmd_table")

    legacy = commands.add_parser("import-legacy", help="import the paper's finetuning_results_*.csv")
    legacy.add_argument("dir", help="directory with finetuning_results_{target}_{metric}.csv files")
    legacy.add_argument("--results", default="xrstudy-out/results", help="results directory to write to")
    _handler(legacy, "xrstudy.results:cmd_import_legacy")


def _add_figures(sub: Any) -> None:
    figures = sub.add_parser("figures", help="draw the paper's figures from a results store")
    figures.add_argument("--results", default="xrstudy-out/results", help="results directory")
    figures.add_argument("--out", default=None, help="output directory (default: <results parent>/figures)")
    figures.add_argument("--style", choices=("default", "paper"), default="default",
                         help="default: xrstudy's figures; paper: the paper's figures as the authors' plots.ipynb "
                              "draws them (%% on y, shot categories, the paper's model subsets), and the full-shot table")
    _handler(figures, "xrstudy.figures:cmd_figures", draws=True)


COMMAND_GROUPS: tuple[Callable[[Any], None], ...] = (_add_demo, _add_data, _add_train, _add_sweep, _add_results,
                                                     _add_figures)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from xrstudy import __version__

    parser = argparse.ArgumentParser(prog="xrstudy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_group in COMMAND_GROUPS:
        add_group(sub)
    return parser


def resolve_handler(target: str) -> Callable[[argparse.Namespace], int | None]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "draws", False):
        import matplotlib

        matplotlib.use("Agg")  # figures go to files; no display needed or wanted
    try:
        return int(resolve_handler(args.handler)(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are kept; run the same command again to continue.", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as err:
        if os.environ.get("XRSTUDY_DEBUG"):
            raise
        # Our errors (ConfigError, SourceLayoutError, DemoError, ...) carry the file/field at fault.
        print(f"xrstudy: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
