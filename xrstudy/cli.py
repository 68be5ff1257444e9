"""`xrstudy` command line: demo, data, train, sweep, models, results, figures.

The whole parser is built here from light modules only (`xrstudy.config` holds every allowed
value), so `xrstudy --help` and every command's `--help` answer without importing torch, timm,
fastai or pandas. Each command names its handler as "module:function"; the module is imported
only when that command runs.

Importing this module loads the standard library alone: everything else is imported inside `main`,
so Ctrl-C at any moment of start-up ends with one line and exit status 130, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout left (`| head`), as git and coreutils end


# ---- argument types -------------------------------------------------------------------------
def views_arg(text: str) -> tuple[str, ...]:
    """`PA,AP` -> ("PA", "AP"); the canonical view names of xrstudy.config.VIEWS."""
    from xrstudy.config import VIEWS

    views = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown view(s) {unknown}; choose from {','.join(VIEWS)}")
    return views


def _parsed_root(text: str, origin: str) -> tuple[str, Path]:
    """`NAME=DIR` parsed by xrstudy.config.parse_root (the one parser of root entries), as an argparse error."""
    from xrstudy.config import ConfigError, parse_root

    try:
        return parse_root(text, origin=origin)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def root_entry_arg(text: str) -> str:
    """`NAME=DIR`, checked (kept as written: the handler parses it again with the same parser)."""
    _parsed_root(text, "--source")
    return text


def root_arg(text: str) -> tuple[str, str]:
    """`padchest=/data/PadChest` -> ("padchest", "/data/PadChest")."""
    name, folder = _parsed_root(text, "--root")
    return name, str(folder)


def positive_int_arg(text: str) -> int:
    """An integer >= 1 (GPUs, nodes, a limit): 0 or -1 would reach a division or an sbatch line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; expected an integer >= 1")
    return value


def _add_max_grid_cells(parser: argparse.ArgumentParser) -> None:
    from xrstudy.yamlfiles import MAX_GRID_CELLS

    parser.add_argument(
        "--max-grid-cells",
        type=positive_int_arg,
        default=MAX_GRID_CELLS,
        metavar="N",
        help="refuse a sweep whose grids expand to more cells, counted before expanding (default: %(default)s)",
    )


def gpu_list_arg(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def _handler(parser: argparse.ArgumentParser, target: str, *, draws: bool = False) -> None:
    """Name the `module:function` that runs this (sub)command (`main` imports it on use). `draws`: the
    command writes figures, so the CLI picks matplotlib's file-only Agg backend before the handler's
    module loads (the package itself never chooses a backend: notebooks keep their inline one)."""
    parser.set_defaults(handler=target, draws=draws)


# ---- command groups -------------------------------------------------------------------------
def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the whole study loop in miniature on a CPU, offline")
    demo.add_argument("--out", type=Path, default=Path("xrstudy-demo"), help="output directory (default: %(default)s)")
    demo.add_argument("--size", choices=("tiny", "small"), default="small", help="tiny: CI smoke run; small: default")
    demo.add_argument("--workers", type=int, default=2, help="cells run in parallel (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    _handler(demo, "xrstudy.commands.demo:cmd_demo", draws=True)


def _data_options(parser: argparse.ArgumentParser) -> None:
    from xrstudy.config import LABEL_MODES, UNCERTAIN_POLICIES

    parser.add_argument("--views", type=views_arg, default=(), help="keep these views, e.g. PA,AP (default: all)")
    parser.add_argument(
        "--uncertain",
        choices=UNCERTAIN_POLICIES,
        default="ignore",
        help="uncertain (-1) labels become NaN (ignore, the paper's), 1 (ones) or 0 (zeros)",
    )
    parser.add_argument(
        "--label-mode",
        choices=LABEL_MODES,
        default="paper",
        help="paper: each dataset as the authors' code reads it (PadChest's 27 pathologies, "
        "PadChest-Cl their 27-class task); terms: the exact-term vocabulary (default: %(default)s)",
    )
    parser.add_argument(
        "--metadata-only", action="store_true", help="read the label files alone (images may be absent)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_data(sub: Any) -> None:
    from xrstudy.config import LABEL_MODES, LABEL_SETS, SHOTS_MODES, SPLIT_MODES

    data = sub.add_parser("data", help="inspect, merge, split and cache the data sources")
    commands = data.add_subparsers(dest="data_command", required=True)

    inspect = commands.add_parser("inspect", help="counts of one source: images, patients, views, labels, classes")
    inspect.add_argument(
        "source", help="registry name (chexpert, mimic, nih, padchest, padchest-cl, covidx, ...) or an ImageFolder name"
    )
    inspect.add_argument("--root", type=Path, required=True, help="the source's folder as distributed")
    inspect.add_argument(
        "--split-mode",
        choices=SPLIT_MODES,
        default=None,
        help="also count images per split (and per class of each split)",
    )
    _data_options(inspect)
    _handler(inspect, "xrstudy.commands.data:cmd_inspect")

    merged = commands.add_parser("merge", help="merge sources into one canonical table")
    merged.add_argument(
        "--source", action="append", required=True, type=root_entry_arg, metavar="NAME=DIR", help="repeat per source"
    )
    merged.add_argument("--labels", choices=LABEL_SETS, default="intersection")
    merged.add_argument("--out", type=Path, help="write the merged table (.csv or .parquet)")
    _data_options(merged)
    _handler(merged, "xrstudy.commands.data:cmd_merge")

    split = commands.add_parser("split", help="write a split file (source,image_id,split) and print its SHA-256")
    split.add_argument("source")
    split.add_argument("--root", type=Path, required=True)
    split.add_argument("--metadata-only", action="store_true")
    split.add_argument(
        "--mode",
        choices=SPLIT_MODES,
        default="patient",
        help="patient-grouped, official, or the authors' split (paper: e.g. PadChest's image-level "
        "90/10 of RandomState(42), patients leak)",
    )
    split.add_argument(
        "--views",
        type=views_arg,
        default=(),
        help="keep these views first, e.g. PA,AP,AP_SUPINE,LATERAL,COSTAL (default: all; "
        "padchest-cl in paper label mode: the authors' five)",
    )
    split.add_argument(
        "--label-mode", choices=LABEL_MODES, default=None, help="default: paper with --mode paper, else terms"
    )
    split.add_argument("--test-fraction", type=float, default=0.1, help="patient / official modes")
    split.add_argument("--valid-fraction", type=float, default=0.1, help="patient / official modes")
    split.add_argument("--seed", type=int, default=None, help="patient / official modes (default: 0)")
    split.add_argument("--out", type=Path, required=True)
    _handler(split, "xrstudy.commands.data:cmd_split")

    shots = commands.add_parser("shots", help="print the image ids of a k-shot training set, one per line")
    shots.add_argument(
        "target", help="transfer target (cifar10, pets, flowers102, covidx, tuberculosis, padchest-cl, ...)"
    )
    shots.add_argument("--root", type=Path, required=True)
    shots.add_argument("--metadata-only", action="store_true")
    shots.add_argument(
        "--mode",
        choices=SHOTS_MODES,
        default="paper",
        help="paper: the authors' sampler on their split and order; exact: exactly k per class (default: %(default)s)",
    )
    shots.add_argument("--shots", type=int, required=True, help="images per class")
    shots.add_argument("--seed", type=int, default=0)
    shots.add_argument(
        "--split-mode", choices=SPLIT_MODES, default=None, help="default: paper with --mode paper, else official"
    )
    shots.add_argument(
        "--label-mode", choices=LABEL_MODES, default=None, help="default: paper with --mode paper, else terms"
    )
    _handler(shots, "xrstudy.commands.data:cmd_shots")

    cache = commands.add_parser("cache", help="build the pre-resized uint8 image cache of a source")
    cache.add_argument("source")
    cache.add_argument("--root", type=Path, required=True)
    cache.add_argument("--size", type=int, default=224, help="side length in pixels")
    cache.add_argument(
        "--mode",
        choices=("L", "RGB", "L:squash", "RGB:squash"),
        default=None,
        help="L / RGB: centre square (X-ray pipeline); ':squash': the whole image squashed to a square "
        "(BiT-HyperRule targets, as transfer cells cache them; --size 512, or 160 for CIFAR). "
        "Default: L for X-rays, RGB otherwise",
    )
    cache.add_argument("--views", type=views_arg, default=())
    cache.add_argument("--workers", type=int, default=0, help="decoding processes (default: all cores)")
    cache.add_argument("--cache-dir", type=Path, default=Path("xrstudy-out/cache"))
    _handler(cache, "xrstudy.commands.data:cmd_cache")

    audit = commands.add_parser(
        "audit",
        help="leakage audit of split files: patients and images on more than one side, target test images "
        "in an init's pre-training data",
    )
    audit.add_argument("split_files", nargs="+", metavar="SPLIT_FILE", help="source,image_id,split files")
    audit.add_argument(
        "--root",
        type=root_arg,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a source's folder as distributed (repeat): patient ids, image files; a source with a root and "
        "no split file counts as pre-training data in full",
    )
    audit.add_argument(
        "--content",
        choices=("bytes", "pixels", "none"),
        default="bytes",
        help="how images are compared where they are on disk: file bytes (default), decoded pixels "
        "(re-encoded copies match), or not at all",
    )
    audit.add_argument("--metadata-only", action="store_true", help="read label files alone (compare by id)")
    audit.add_argument("--workers", type=int, default=0, help="hashing threads (default: one per core)")
    audit.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("xrstudy-out/cache"),
        help="keep content hashes here, so a rerun or an interrupted audit resumes (default: %(default)s)",
    )
    audit.add_argument("--fail-on-leak", action="store_true", help="exit 1 when any check finds a leak")
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    _handler(audit, "xrstudy.commands.data:cmd_audit")


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="run one study cell from a RunConfig YAML (works under torchrun)")
    train.add_argument("config", type=Path, help="RunConfig YAML (the fields of xrstudy.config.RunConfig)")
    train.add_argument("--resume", action="store_true", help="continue from {run_dir}/train_state.pt if present")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="also save the training state every STEPS steps (default: every 10 minutes)",
    )
    _handler(train, "xrstudy.commands.train:cmd_train")


def _add_sweep(sub: Any) -> None:
    from xrstudy.training.cost import DEFAULT_DEVICE

    sweep = sub.add_parser("sweep", help="plan a sweep file, run it here with papermill, or send it to SLURM")
    commands = sweep.add_subparsers(dest="sweep_command", required=True)

    plan = commands.add_parser("plan", help="every cell's resolved recipe, sizes and cost, without images or models")
    plan.add_argument("sweep", help="sweep YAML")
    plan.add_argument(
        "--root",
        type=root_arg,
        action="append",
        metavar="NAME=DIR",
        help="read NAME's label files from DIR (repeat; overrides the sweep's roots); a root that "
        "does not exist here counts as not given",
    )
    plan.add_argument("--metadata-only", action="store_true", help="read label files only (images may be absent)")
    plan.add_argument("--json", action="store_true", help="print a JSON array, one object per cell")
    plan.add_argument("--device", default=DEFAULT_DEVICE, help="throughput table rows to estimate GPU-hours with")
    plan.add_argument("--only", default=None, help="glob over cell names / run ids (deps included)")
    _add_max_grid_cells(plan)
    _handler(plan, "xrstudy.commands.sweep:cmd_plan")

    local = commands.add_parser("run", help="execute every unfinished cell here")
    local.add_argument("sweep", help="sweep YAML")
    local.add_argument("--workers", type=int, default=None, help="cells at once (default: one per GPU, else 1)")
    local.add_argument("--gpus", type=gpu_list_arg, default=None, help="e.g. 0,1 (one cell per GPU at a time)")
    local.add_argument(
        "--allow-cpu", action="store_true", help="run even when --gpus names GPUs this machine does not show (recorded)"
    )
    local.add_argument("--only", default=None, help="glob over cell names / run ids (deps included)")
    local.add_argument("--retries", type=int, default=1, help="retries when a kernel dies")
    local.add_argument(
        "--isolate",
        action="store_true",
        help="a fresh worker process (and kernel) per cell instead of one warm kernel per worker",
    )
    local.add_argument("--dry-run", action="store_true", help="check the cells and list what would run")
    local.add_argument("--no-progress", dest="progress", action="store_false")
    _add_max_grid_cells(local)
    _handler(local, "xrstudy.commands.sweep:cmd_run")

    status = commands.add_parser(
        "status", help="every cell: done, failed (why), running (step, loss, ETA), pending or blocked"
    )
    status.add_argument("sweep", help="sweep YAML")
    status.add_argument(
        "--results", default=None, metavar="DIR", help="the results store (default: each cell's out_dir/results)"
    )
    status.add_argument("--json", action="store_true", help="print {cells: [one object per cell], summary: {...}}")
    status.add_argument("--only", default=None, help="glob over cell names / run ids (deps included)")
    _handler(status, "xrstudy.commands.sweep:cmd_status")

    cluster = commands.add_parser("submit", help="size the cells by the plan and hand their jobs to submitit (SLURM)")
    cluster.add_argument("sweep", help="sweep YAML")
    cluster.add_argument(
        "--backend",
        choices=("slurm", "local"),
        default="slurm",
        help="slurm: submitit sends the jobs to sbatch; local: submitit runs the same jobs here",
    )
    cluster.add_argument(
        "--folder",
        default=None,
        help="jobs.json, cell lists, sbatch scripts and submitit's logs (default: <out_dir>/slurm)",
    )
    cluster.add_argument("--partition", default=None)
    cluster.add_argument(
        "--time-limit",
        default=None,
        metavar="[D-]HH:MM:SS",
        help="wall time per job; cells get the GPUs their estimate needs to fit it (default 24:00:00)",
    )
    cluster.add_argument("--timeout-min", type=int, default=24 * 60, help=argparse.SUPPRESS)  # older spelling
    cluster.add_argument(
        "--gpus-per-node", type=positive_int_arg, default=4, help="GPUs of one node (default: %(default)s)"
    )
    cluster.add_argument(
        "--max-nodes", type=positive_int_arg, default=16, help="most nodes one cell may take (default: %(default)s)"
    )
    cluster.add_argument(
        "--pretrain-nodes",
        type=positive_int_arg,
        default=None,
        help="fixed nodes per pre-training cell instead of sizing by the estimate",
    )
    cluster.add_argument(
        "--device", default=DEFAULT_DEVICE, help="rows of the throughput and memory tables (xrstudy/training/tables)"
    )
    cluster.add_argument("--only", default=None)
    cluster.add_argument(
        "--dry-run",
        action="store_true",
        help="write the jobs (jobs.json) and the sbatch scripts submitit would send; send nothing",
    )
    _add_max_grid_cells(cluster)
    _handler(cluster, "xrstudy.commands.sweep:cmd_submit")


def _add_results(sub: Any) -> None:
    from xrstudy.fileio import TABLE_FORMATS

    results = sub.add_parser(
        "results", help="the results store: tidy table, legacy import, seed statistics, comparison, scaling fits"
    )
    commands = results.add_subparsers(dest="results_command", required=True)

    show = commands.add_parser("table", help="all valid results as one tidy table")
    show.add_argument("--results", default="xrstudy-out/results", help="results directory")
    show.add_argument("--format", choices=TABLE_FORMATS, default="csv")
    show.add_argument("--out", default=None, help="write here instead of printing CSV to stdout")
    _handler(show, "xrstudy.commands.results:cmd_table")

    legacy = commands.add_parser("import-legacy", help="import the paper's finetuning_results_*.csv in xrstudy's names")
    legacy.add_argument("dir", help="directory with finetuning_results_{target}_{metric}.csv files")
    legacy.add_argument("--results", default="xrstudy-out/results", help="results directory to write to")
    _handler(legacy, "xrstudy.commands.results:cmd_import_legacy")

    _add_results_statistics(commands)


def level_arg(text: str) -> float:
    """A confidence level strictly between 0 and 1 (0.95, 0.99)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a level between 0 and 1, e.g. 0.95")
    return value


def _add_results_statistics(commands: Any) -> None:
    """`results variance | compare | scaling` (xrstudy.results.stats and .scaling; no torch)."""
    variance = commands.add_parser(
        "variance", help="per cell: seeds, mean, SD, 95%% interval of the mean, seeds needed for ±1 point"
    )
    variance.add_argument("--results", default="xrstudy-out/results", help="results directory")
    variance.add_argument("--metric", default=None, help="one metric, e.g. valid/acc (default: every test/ metric)")
    variance.add_argument("--level", type=level_arg, default=0.95, help="interval level (default: %(default)s)")
    variance.add_argument(
        "--half-width", type=float, default=0.01, help="target half-width, as a fraction (default 0.01: ±1 point)"
    )
    variance.add_argument(
        "--n-boot", type=int, default=2000, help="bootstrap resamples per cell (default: %(default)s)"
    )
    variance.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    variance.add_argument("--out", default=None, help="also draw SD against shots per target here (PNG + PDF + CSV)")
    variance.add_argument("--json", action="store_true", help="print one JSON object")
    _handler(variance, "xrstudy.commands.results:cmd_variance")

    compare = commands.add_parser(
        "compare", help="new results against published ones: means, difference, Welch test, inside the interval?"
    )
    compare.add_argument(
        "--against", required=True, help="a folder of the paper's finetuning_results_*.csv, or a results store"
    )
    compare.add_argument("--results", default="xrstudy-out/results", help="results directory of the new runs")
    compare.add_argument("--metric", default=None, help="one metric (default: every test/ metric)")
    compare.add_argument(
        "--interval",
        choices=("prediction", "ci", "range"),
        default="prediction",
        help="prediction: where the new mean falls with probability LEVEL when nothing changed (default); "
        "ci: the published mean's interval (too narrow for that); range: min-max of the published seeds",
    )
    compare.add_argument("--level", type=level_arg, default=0.95, help="interval level (default: %(default)s)")
    compare.add_argument(
        "--adjust",
        choices=("holm", "bonferroni", "none"),
        default=None,
        help="multiple comparisons: holm (the default; none with --interval range, which has no p-value) and "
        "bonferroni make LEVEL family-wise, so an honest reproduction fails --fail-outside with probability "
        "<= 1 - LEVEL however many cells; none reads each cell at LEVEL (about 1 in 20 honest cells falls "
        "outside a 95%% interval)",
    )
    compare.add_argument(
        "--fail-outside",
        action="store_true",
        help="exit 1 when any cell lies outside, or when no cell is on both sides (a gate that compared nothing)",
    )
    compare.add_argument("--all", action="store_true", help="list every cell (default: the first 40, outside first)")
    compare.add_argument("--json", action="store_true", help="print one JSON object: summary and every cell")
    _handler(compare, "xrstudy.commands.results:cmd_compare")

    fits = commands.add_parser(
        "scaling", help="power and saturating laws against model size and data fraction, with bootstrap intervals"
    )
    fits.add_argument("--results", default="xrstudy-out/results", help="results directory")
    fits.add_argument("--level", type=level_arg, default=0.95, help="interval level (default: %(default)s)")
    fits.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per fit (default: %(default)s)")
    fits.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    fits.add_argument("--out", default=None, help="also write the fit table (scaling_fits.csv columns) here")
    fits.add_argument("--json", action="store_true", help="print the fit table as JSON")
    _handler(fits, "xrstudy.commands.results:cmd_scaling")


def _add_models(sub: Any) -> None:
    models = sub.add_parser("models", help="model weights: convert the authors' released checkpoints")
    commands = models.add_subparsers(dest="models_command", required=True)

    convert = commands.add_parser(
        "import-paper", help="convert one of the authors' model.pth.tar (big_transfer naming) to a timm state dict"
    )
    convert.add_argument("file", type=Path, help="e.g. pretrained_models/chexpert_mimic_bit152x4/model.pth.tar")
    convert.add_argument("--arch", required=True, help="timm BiT ResNet-v2: resnetv2_50x1_bit or resnetv2_152x4_bit")
    convert.add_argument("--out", type=Path, required=True, help="output file (torch.save of name -> tensor)")
    convert.add_argument("--json", action="store_true", help="print one JSON object (every tensor renamed)")
    _handler(convert, "xrstudy.commands.models:cmd_import_paper")


def _add_figures(sub: Any) -> None:
    figures = sub.add_parser("figures", help="draw the paper's figures from a results store")
    figures.add_argument("--results", default="xrstudy-out/results", help="results directory")
    figures.add_argument("--out", default=None, help="output directory (default: <results parent>/figures)")
    figures.add_argument(
        "--style",
        choices=("default", "paper"),
        default="default",
        help="default: xrstudy's figures; paper: the paper's figures as the authors' plots.ipynb "
        "draws them (%% on y, shot categories, the paper's model subsets), and the full-shot table",
    )
    _handler(figures, "xrstudy.commands.figures:cmd_figures", draws=True)


COMMAND_GROUPS: tuple[Callable[[Any], None], ...] = (
    _add_demo,
    _add_data,
    _add_train,
    _add_sweep,
    _add_models,
    _add_results,
    _add_figures,
)


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
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "draws", False):
            import matplotlib

            matplotlib.use("Agg")  # figures go to files; no display needed or wanted
        return int(resolve_handler(args.handler)(args) or 0)
    except BrokenPipeError:  # the reader went away (`xrstudy results variance | head`): not an error of ours
        # Python would complain again when it flushes stdout at exit; point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except KeyboardInterrupt:  # during the imports, the parser or the command
        print("\nxrstudy: interrupted; finished work is kept: run the same command again to continue", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, RuntimeError, OSError) as err:
        if os.environ.get("XRSTUDY_DEBUG"):
            raise
        # Our errors (ConfigError, SourceError, DiskFullError, ...) carry the file/field at fault.
        print(f"xrstudy: error: {_message(err)}", file=sys.stderr)
        return 2


def _message(err: BaseException) -> str:
    """The error's message; a full disk says so and names the file when the OS gave one."""
    from xrstudy.fileio import DiskFullError, is_disk_full

    if is_disk_full(err) and not isinstance(err, DiskFullError):
        filename = getattr(err, "filename", None)
        where = f"writing {filename}" if filename else "(the writer did not say which file)"
        return f"no space left on device {where}; free some space and run the same command again"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
