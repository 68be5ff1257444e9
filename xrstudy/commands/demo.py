"""`xrstudy demo`: run the miniature study and print where everything went."""

from __future__ import annotations

import argparse

from xrstudy import demo


def cmd_demo(args: argparse.Namespace) -> int:
    outcome = demo.run_demo(
        args.out,
        args.size,
        workers=args.workers,
        progress=not args.no_progress,
        say=lambda line: print(line, flush=True),
    )
    print(f"\nresults:   {outcome['out'] / 'results'}")
    print(f"notebooks: {outcome['out'] / 'runs'}/<run_id>/notebook.ipynb")
    print(f"figures:   {outcome['out'] / 'figures'}")
    pngs = sum(p.suffix == ".png" for p in outcome["figures"])
    print(f"  {pngs} figures, each as PNG + PDF + the CSV it was drawn from")
    if not outcome["table"].empty:
        print("\nmean ± SD over seeds (×100): PadChest-Cl mean AUC, digits accuracy; fine-tuned and linear probe")
        print(outcome["table"].to_string())
        print("\n" + demo.xray_pretraining_effect(outcome["out"] / "results"))
    return 1 if outcome["summary"].failed else 0
