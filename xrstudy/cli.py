"""`xrstudy` command line: demo, data, train, sweep, results, figures.

Each command group lives beside the code it drives and registers itself through
`add_commands(subparsers)`; this module only lists the groups and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# module -> registers its sub-commands (imported lazily so `xrstudy --help` stays quick)
COMMAND_MODULES = ("xrstudy.data", "xrstudy.train", "xrstudy.sweep", "xrstudy.results", "xrstudy.figures")


def _demo(args: argparse.Namespace) -> int:
    from xrstudy.demo import run_demo

    outcome = run_demo(args.out, args.size, workers=args.workers, progress=not args.no_progress)
    print(f"\nresults:   {outcome['out'] / 'results'}")
    print(f"notebooks: {outcome['out'] / 'runs'}/<run_id>/notebook.ipynb")
    print(f"figures:   {outcome['out'] / 'figures'}")
    for path in outcome["figures"]:
        print(f"  {path}")
    if not outcome["table"].empty:
        print("\nmean ± SD over seeds (×100): PadChest-Cl mean AUC, digits accuracy")
        print(outcome["table"].to_string())
    failed = outcome["summary"].failed if hasattr(outcome["summary"], "failed") else []
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from xrstudy import __version__

    parser = argparse.ArgumentParser(prog="xrstudy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the whole study loop in miniature on a CPU, offline")
    demo.add_argument("--out", type=Path, default=Path("xrstudy-demo"), help="output directory (default: %(default)s)")
    demo.add_argument("--size", choices=("tiny", "small"), default="small", help="tiny: CI smoke run; small: default")
    demo.add_argument("--workers", type=int, default=2, help="cells run in parallel (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    demo.set_defaults(func=_demo)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
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
